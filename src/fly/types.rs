//! What the Machines and platform APIs exchange. A machine's config stays a `serde_json::Value`
//! so that an update sends back everything the API returned, including fields this version of
//! nixfly does not know; the typed accessors read only what the rollout needs.

use serde::Deserialize;
use serde_json::{Map, Value};

/// Metadata keys flyctl and the platform use.
pub const META_PLATFORM_VERSION: &str = "fly_platform_version";
pub const META_PROCESS_GROUP: &str = "fly_process_group";
/// What `fly_process_group` was called before: fly-go still reads it when the new key is
/// missing (`machine_types.go`, `MachineConfig.ProcessGroup`), and a release-command machine
/// of that era says `release_command` there (`IsReleaseCommandMachine`).
pub const META_LEGACY_PROCESS_GROUP: &str = "process_group";
pub const META_RELEASE_ID: &str = "fly_release_id";
pub const META_RELEASE_VERSION: &str = "fly_release_version";
pub const META_CANARY: &str = "fly_canary";
pub const META_BLUEGREEN_TAG: &str = "fly_bluegreen_deployment_tag";
/// fly-go's `MachineConfigMetadataKeyFlyManagedPostgres` (with dashes, unlike the others).
pub const META_MANAGED_POSTGRES: &str = "fly-managed-postgres";

/// Process groups that are not part of the app's fleet: flyctl leaves them alone on deploy.
pub const RELEASE_COMMAND_GROUP: &str = "fly_app_release_command";
pub const CONSOLE_GROUP: &str = "fly_app_console";
/// The test machines of fly.toml's machine checks (fly-go `machine_types.go`,
/// `MachineProcessGroupFlyAppTestMachineCommand`).
pub const TEST_MACHINE_GROUP: &str = "fly_app_test_machine_command";
/// Group name for machines with no `fly_process_group` metadata (flyctl's default).
pub const DEFAULT_GROUP: &str = "app";

#[derive(Clone, Debug, Deserialize)]
pub struct App {
    #[serde(default)]
    pub status: Option<String>,
    /// `postgres_cluster` for a Fly Postgres app (fly-go `flaps.App.AppRole`; not in the
    /// Machines API's OpenAPI file, which the API answers it beside).
    #[serde(default)]
    pub app_role: Option<String>,
    /// The organization the app belongs to (the spec's `AppOrganizationInfo`).
    #[serde(default)]
    pub organization: Option<AppOrganization>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct AppOrganization {
    #[serde(default)]
    pub slug: String,
}

impl App {
    /// fly-go's `App.IsPostgresApp`.
    pub fn is_postgres(&self) -> bool {
        self.app_role.as_deref() == Some("postgres_cluster")
    }
}

/// A volume, as far as placing a new machine on it goes.
#[derive(Clone, Debug, Deserialize)]
pub struct Volume {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub attached_machine_id: Option<String>,
    #[serde(default)]
    pub attached_alloc_id: Option<String>,
    /// `ok`, `unknown`, `unreachable`.
    #[serde(default)]
    pub host_status: Option<String>,
}

impl Volume {
    /// Named `name`, in `region` (any region when empty, as flyctl's `popVolumeFor` takes
    /// one for a new machine without a primary_region), mounted by no machine nor allocation,
    /// on a host that answers: one a new machine there can take (flyctl's `setVolumes`,
    /// `internal/command/deploy/machines.go`, counts only those as unattached).
    pub fn is_free(&self, name: &str, region: &str) -> bool {
        let empty = |v: &Option<String>| v.as_deref().is_none_or(str::is_empty);
        self.name == name
            && (region.is_empty() || self.region == region)
            && empty(&self.attached_machine_id)
            && empty(&self.attached_alloc_id)
            && self.host_status.as_deref().is_none_or(|s| s == "ok")
    }

    /// `is_free` and not going away: one a new machine can be given. fly-go drops volumes in
    /// its destroy states from every list flyctl's deploy reads (`flaps/flaps_volumes.go`,
    /// `GetVolumes`, `destroyedVolumeStates`), and counts any other unattached one on an ok
    /// host as free (`internal/command/deploy/machines.go`), also one still being restored
    /// from a snapshot, not yet `created` (flyctl `test/preflight/fly_volume_test.go` waits for
    /// that). `destroyed`, which a list can show too (the same test), goes with them.
    pub fn is_ready_for(&self, name: &str, region: &str) -> bool {
        const GOING_AWAY: [&str; 6] = [
            "scheduling_destroy",
            "fork_cleanup",
            "waiting_for_detach",
            "pending_destroy",
            "destroying",
            "destroyed",
        ];
        self.is_free(name, region) && !GOING_AWAY.contains(&self.state.as_str())
    }
}

/// A process of a running machine (`GET .../ps`, schema `ProcessStat`), as far as the rollout
/// reads it.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ProcessStat {
    #[serde(default)]
    pub command: String,
    /// fly-go's `ListenSockets` has no `omitempty`: a process that listens on nothing comes as
    /// `null` (`machine_types.go`, `ProcessStat`).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub listen_sockets: Vec<ListenSocket>,
}

/// A list Go may send as `null` (a nil slice without `omitempty`), read as empty.
pub fn null_as_empty<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

/// A socket a process listens on: `proto` `tcp` or `udp`, `address` `HOST:PORT`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ListenSocket {
    #[serde(default)]
    pub proto: String,
    #[serde(default)]
    pub address: String,
}

/// One machine as the API returned it: typed fields for what the rollout reads, the config as
/// the raw JSON it arrived as.
#[derive(Clone, Debug, Deserialize)]
pub struct Machine {
    pub id: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub instance_id: Option<String>,
    /// The config; for a machine whose host is not `ok`, the partial one flaps sends as
    /// `incomplete_config` instead (fly-go `machine_types.go`, `GetConfig`): see
    /// `with_incomplete_config`.
    #[serde(default)]
    pub config: Value,
    #[serde(default)]
    incomplete_config: Option<Value>,
    /// `config` is flaps' partial `incomplete_config` ("not suitable to clone or recreate the
    /// original machine", fly-go `machine_types.go`): see `Fleet::classify_with_default`.
    #[serde(skip)]
    pub config_incomplete: bool,
    /// Without flaps' `bg_deployments_compat*` entries (see `without_compat_checks`).
    #[serde(default, deserialize_with = "without_compat_checks")]
    pub checks: Vec<CheckStatus>,
    #[serde(default)]
    pub events: Vec<MachineEvent>,
    /// `ok`, `unknown` or `unreachable`: whether Fly can reach the machine's host.
    #[serde(default)]
    pub host_status: Option<String>,
    /// Out of Fly's proxy: created with `skip_service_registration`, or cordoned.
    #[serde(default)]
    pub cordoned: bool,
    /// RFC 3339: when its config or state last changed.
    #[serde(default)]
    pub updated_at: Option<String>,
    /// Its 6PN address: a machine check's test machine gets it as `FLY_TEST_MACHINE_IP`.
    #[serde(default)]
    pub private_ip: Option<String>,
}

/// flaps adds fake `bg_deployments_compat*` checks to machines it answers with, for old
/// flyctl bluegreen deploys; they are no checks of the machine's config, and fly-go drops them
/// from every machine it reads (`machine_types.go`, `RemoveCompatChecks`). So do we: counted,
/// one that is not passing would hold a health wait forever.
fn without_compat_checks<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<CheckStatus>, D::Error> {
    let mut checks = Option::<Vec<CheckStatus>>::deserialize(deserializer)?.unwrap_or_default();
    checks.retain(|check| !check.name.starts_with("bg_deployments_compat"));
    Ok(checks)
}

#[derive(Clone, Debug, Deserialize)]
pub struct CheckStatus {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub output: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct MachineEvent {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub request: Value,
}

/// What an `exit` event says about the main process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitInfo {
    pub exit_code: i64,
    pub restarting: bool,
    pub restart_count: i64,
    pub oom_killed: bool,
}

impl MachineEvent {
    /// The exit details of an `exit` event: `request.MonitorEvent.exit_event`, else
    /// `request.exit_event`, in the order fly-go reads them (`machine_types.go`,
    /// `MachineRequest.GetExitCode`, which flyctl's release command trusts).
    pub fn exit_info(&self) -> Option<ExitInfo> {
        if self.kind != "exit" {
            return None;
        }
        let exit = self
            .request
            .pointer("/MonitorEvent/exit_event")
            .or_else(|| self.request.get("exit_event"))?;
        let int = |v: Option<&Value>| v.and_then(Value::as_i64).unwrap_or(0);
        Some(ExitInfo {
            exit_code: int(exit.get("exit_code")),
            restarting: exit.get("restarting").and_then(Value::as_bool).unwrap_or(false),
            restart_count: int(self.request.get("restart_count")),
            oom_killed: exit.get("oom_killed").and_then(Value::as_bool).unwrap_or(false),
        })
    }
}

impl Machine {
    /// fly-go's `GetConfig`: `config`, else `incomplete_config`. The API layer applies it to
    /// every machine it reads, so that a machine on an unreachable host keeps its process
    /// group, image and mounts.
    pub fn with_incomplete_config(mut self) -> Self {
        if self.config.is_null()
            && let Some(partial) = self.incomplete_config.take()
        {
            self.config = partial;
            self.config_incomplete = true;
        }
        self
    }

    pub fn image(&self) -> &str {
        self.config.get("image").and_then(Value::as_str).unwrap_or("")
    }

    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.config.get("metadata")?.get(key)?.as_str()
    }

    /// The process group, `app` when the machine has none (as flyctl assumes): fly-go's
    /// `ProcessGroup`, `fly_process_group`, else the legacy `process_group`.
    pub fn process_group(&self) -> &str {
        self.named_group().unwrap_or(DEFAULT_GROUP)
    }

    /// The group the machine's metadata names, if any (fly-go's rule, empty values skipped).
    pub fn named_group(&self) -> Option<&str> {
        [META_PROCESS_GROUP, META_LEGACY_PROCESS_GROUP]
            .into_iter()
            .filter_map(|key| self.metadata(key))
            .find(|group| !group.is_empty())
    }

    /// A machine a release command ran on: fly-go's `IsReleaseCommandMachine`.
    pub fn is_release_command(&self) -> bool {
        self.process_group() == RELEASE_COMMAND_GROUP
            || self.metadata(META_LEGACY_PROCESS_GROUP) == Some("release_command")
    }

    /// Deployed by the Machines platform (not a Nomad-era or hand-made machine).
    pub fn is_platform_v2(&self) -> bool {
        self.metadata(META_PLATFORM_VERSION) == Some("v2")
    }

    pub fn is_gone(&self) -> bool {
        matches!(self.state.as_str(), "destroyed" | "destroying")
    }

    /// A standby for another machine (`config.standbys`): never started by a deploy.
    pub fn is_standby(&self) -> bool {
        self.config
            .get("standbys")
            .and_then(Value::as_array)
            .is_some_and(|s| !s.is_empty())
    }

    /// Whether the update should leave the machine stopped, as flyctl decides it
    /// (`machines_launchinput.go`, `shouldSkipLaunch`): only machines that were running (or
    /// trying to) get launched again, standbys among them; the rest (stopped standbys too)
    /// stay stopped.
    pub fn should_skip_launch(&self) -> bool {
        !matches!(self.state.as_str(), "started" | "starting" | "failed")
    }

    /// The host dedication its guest asks for (`guest.host_dedication_id`), if any.
    pub fn host_dedication_id(&self) -> Option<&str> {
        self.config
            .pointer("/guest/host_dedication_id")
            .and_then(Value::as_str)
    }

    /// Fly cannot reach the machine's host (`host_status` other than `ok`): it cannot be
    /// updated where it is (flyctl `machines_launchinput.go` replaces it). A machine the API
    /// gives no `host_status` for counts as reachable, on purpose: flyctl would replace it
    /// (`HostStatus != "ok"`), and destroying machines over a missing field is the worse
    /// mistake.
    pub fn host_unavailable(&self) -> bool {
        self.host_status.as_deref().is_some_and(|s| s != "ok")
    }

    /// The volume the machine mounts, if any: it ties the machine to its host.
    pub fn volume(&self) -> Option<&str> {
        self.config.pointer("/mounts/0/volume")?.as_str()
    }

    /// The newest `exit` event of the machine's current config (events come newest first).
    /// The event list outlives updates, so an exit older than the latest `update` or
    /// `launch` is a run of an earlier config: a crash loop of the image a rollback just
    /// replaced is not one of the image it put back. (flyctl's `isConstantlyRestarting` reads
    /// the newest exit whatever its age; it never rolls back onto a machine that crashed.)
    pub fn latest_exit(&self) -> Option<ExitInfo> {
        self.events_since_change().find_map(MachineEvent::exit_info)
    }

    /// The events of the machine's current config, newest first: those after its latest
    /// `update` or `launch`.
    fn events_since_change(&self) -> impl Iterator<Item = &MachineEvent> {
        self.events
            .iter()
            .take_while(|e| !matches!(e.kind.as_str(), "update" | "launch"))
    }

    /// A machine its latest update (or create) left `stopped` without starting it: Fly starts
    /// on update only a machine that was running (flyctl preflight `fly_machine_test.go`,
    /// `TestFlyMachineRun_standbyFor`). One that started since and exited is not.
    pub fn left_stopped_by_change(&self) -> bool {
        self.state == "stopped" && !self.events_since_change().any(|e| e.kind == "start")
    }
}

/// The health checks of a machine config: its own `checks`, then its services' `checks`.
pub fn config_checks(config: &Value) -> impl Iterator<Item = &Value> {
    let top = config
        .get("checks")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(Map::values);
    let services = config
        .get("services")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("checks").and_then(Value::as_array))
        .flatten();
    top.chain(services)
}

pub fn config_check_count(config: &Value) -> usize {
    config_checks(config).count()
}

/// A held lease. The API has answered both flat (2026 spec) and wrapped in
/// `{"status":"success","data":{...}}` (older fly-go); `LeaseResponse` accepts both.
#[derive(Clone, Debug, Deserialize)]
pub struct Lease {
    #[serde(default)]
    pub nonce: String,
    #[serde(default)]
    pub expires_at: Option<i64>,
    #[serde(default)]
    pub owner: Option<String>,
    /// The machine's version (`instance_id`) when the lease was granted: fly-go's
    /// `MachineLease.Data.Version`, which flyctl's `internal/machine/lease.go` compares with the
    /// machine it read.
    #[serde(default)]
    pub version: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum LeaseResponse {
    /// fly-go's `MachineLease`: `status` is what says whether the lease was granted.
    Wrapped {
        status: String,
        #[serde(default)]
        data: Option<Lease>,
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        code: Option<String>,
    },
    Flat(Lease),
}

impl LeaseResponse {
    /// The lease this answer grants, or why it grants none. flyctl takes a wrapped answer whose
    /// status is not "success", or one without data, as no lease
    /// (`internal/machine/leasable_machine.go`, `AcquireLease` and `RefreshLease`); and a lease
    /// without a nonce cannot be presented to the machine's later writes.
    pub(crate) fn granted(self) -> Result<Lease, String> {
        let lease = match self {
            LeaseResponse::Wrapped {
                status,
                message,
                code,
                ..
            } if status != "success" => {
                let code = code.map(|c| format!(", code {c}")).unwrap_or_default();
                let message = message.map(|m| format!(": {m}")).unwrap_or_default();
                return Err(format!("status {status:?}{code}{message}"));
            }
            LeaseResponse::Wrapped { data: None, .. } => return Err("no lease data".into()),
            LeaseResponse::Wrapped {
                data: Some(lease), ..
            }
            | LeaseResponse::Flat(lease) => lease,
        };
        if lease.nonce.is_empty() {
            return Err("a lease without a nonce".into());
        }
        Ok(lease)
    }

    /// Who holds the lease, as far as the answer tells.
    pub(crate) fn holder(self) -> Option<Lease> {
        match self {
            LeaseResponse::Wrapped { data, .. } => data,
            LeaseResponse::Flat(lease) => Some(lease),
        }
    }
}

/// A release record on the platform API.
#[derive(Clone, Debug, Deserialize)]
pub struct Release {
    pub id: String,
    #[serde(default)]
    pub version: Option<Value>,
}

impl Release {
    /// The version as the string that goes into machine metadata (the API sends a number).
    pub fn version_string(&self) -> String {
        match &self.version {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        }
    }
}

/// Make a config read from the API a request body of the spec's shape again: the API answers
/// `services[].autostop` as a boolean, as fly-go writes off and stop too (`MachineAutostop`'s
/// `MarshalJSON`, `machine_types.go`), while the Machines spec types it as the string enum
/// ("off", "stop", "suspend"), which fly-go also reads. Fly takes both; nixfly sends the
/// spec's.
pub fn normalize_config_for_request(config: &mut Value) {
    if let Some(services) = config.get_mut("services").and_then(Value::as_array_mut) {
        for service in services {
            if let Some(autostop) = service.get_mut("autostop")
                && let Some(flag) = autostop.as_bool()
            {
                *autostop = Value::String(if flag { "stop" } else { "off" }.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// fly-go `flaps/flaps_volumes.go` `destroyedVolumeStates` (and `destroyed`) are not a new
    /// machine's; any other state of an unattached volume on an ok host is, as for flyctl. The
    /// name of a restoring volume's state is not known: any other name stands for it here.
    #[test]
    fn a_volume_is_free_unless_attached_or_going_away() {
        let volume = |state: &str, attached: Option<&str>| -> Volume {
            serde_json::from_value(json!({"id": "vol_1", "name": "data", "region": "ams",
                "state": state, "attached_machine_id": attached, "host_status": "ok"}))
            .unwrap()
        };
        for state in ["created", "restoring-from-snapshot"] {
            assert!(volume(state, None).is_ready_for("data", "ams"), "{state}");
            assert!(!volume(state, Some("m1")).is_ready_for("data", "ams"), "{state}");
        }
        for state in ["scheduling_destroy", "pending_destroy", "destroying", "destroyed"] {
            assert!(!volume(state, None).is_ready_for("data", "ams"), "{state}");
        }
        assert!(!volume("created", None).is_ready_for("logs", "ams"));
    }

    /// fly-go's `GetConfig` (`machine_types.go`): a machine whose host is not `ok` comes with
    /// `incomplete_config` and no `config`; that partial config is the one to read.
    #[test]
    fn a_machine_without_config_is_read_from_its_incomplete_config() {
        let partial = json!({"image": "img", "metadata": {"fly_process_group": "web"}});
        let machine: Machine = serde_json::from_value(json!({
            "id": "m1", "state": "started", "host_status": "unreachable",
            "incomplete_config": partial,
        }))
        .unwrap();
        let machine = machine.with_incomplete_config();
        assert_eq!((machine.image(), machine.process_group()), ("img", "web"));
        let full: Machine = serde_json::from_value(json!({
            "id": "m2", "config": {"image": "full"}, "incomplete_config": {"image": "partial"},
        }))
        .unwrap();
        assert_eq!(full.with_incomplete_config().image(), "full");
    }
    fn machine(value: Value) -> Machine {
        serde_json::from_value(value).unwrap()
    }

    /// flaps' compatibility checks (fly-go `machine_types.go`: names starting with
    /// `bg_deployments_compat`) are dropped; the machine's own checks, and a null list, are not
    /// a problem.
    #[test]
    fn flaps_compat_checks_are_not_the_machines_checks() {
        let m = machine(json!({
            "id": "m1",
            "checks": [
                {"name": "servicecheck-00-http-8080", "status": "passing"},
                {"name": "bg_deployments_compat", "status": "critical"},
                {"name": "bg_deployments_compat_http", "status": "warning"},
                {"name": "db", "status": "passing"},
            ],
        }));
        let names: Vec<&str> = m.checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["servicecheck-00-http-8080", "db"]);
        assert!(machine(json!({"id": "m2", "checks": null})).checks.is_empty());
        assert!(machine(json!({"id": "m3"})).checks.is_empty());
    }

    #[test]
    fn group_defaults_to_app_and_v2_is_read_from_metadata() {
        let m = machine(
            json!({"id": "m1", "state": "started", "config": {"metadata": {"fly_platform_version": "v2"}}}),
        );
        assert_eq!(m.process_group(), "app");
        assert!(m.is_platform_v2());
        let m = machine(json!({"id": "m2", "config": {"metadata": {"fly_process_group": "worker"}}}));
        assert_eq!(m.process_group(), "worker");
        assert!(!m.is_platform_v2());
    }

    /// flyctl `plan_test.go`, `TestSkipLaunch` (the cases of machines that exist; a new
    /// machine is created launched, a new standby stopped: `GroupChanges::create`).
    #[test]
    fn skip_launch_for_stopped_machines_and_standbys() {
        // flyctl's `shouldSkipLaunch` looks at the state first: a started standby is launched,
        // a stopped one (as standbys are) stays stopped.
        for (state, standbys, skip) in [
            ("started", json!([]), false),
            ("starting", json!(null), false),
            ("failed", json!(null), false),
            ("stopped", json!(null), true),
            ("suspended", json!(null), true),
            ("created", json!(null), true),
            ("started", json!(["m9"]), false),
            ("stopped", json!(["m9"]), true),
        ] {
            let m = machine(json!({"id": "m", "state": state, "config": {"standbys": standbys}}));
            assert_eq!(m.should_skip_launch(), skip, "{state} {standbys}");
        }
    }

    /// flyctl preflight `TestFlyMachineRun_standbyFor`: an update leaves a stopped machine
    /// stopped; one that started after its update and exited is not one of those.
    #[test]
    fn a_machine_left_stopped_by_its_update_has_not_started_since() {
        let events = |kinds: &[&str]| -> Value { kinds.iter().map(|k| json!({"type": k})).collect() };
        for (state, kinds, left) in [
            ("stopped", events(&["update", "stop"]), true),
            ("stopped", events(&["exit", "start", "update"]), false),
            ("stopped", events(&["update", "exit", "start"]), true),
            ("started", events(&["update"]), false),
            ("stopped", events(&[]), true),
        ] {
            let m = machine(json!({"id": "m", "state": state, "events": kinds}));
            assert_eq!(m.left_stopped_by_change(), left, "{state} {kinds}");
        }
    }

    /// flyctl `strategy_bluegreen_test.go`, `TestMachineHasConfiguredChecks`: top-level and
    /// service checks count, a service without checks does not.
    #[test]
    fn checks_are_counted_across_top_level_and_services() {
        let config = json!({
            "checks": {"a": {"type": "tcp"}, "b": {"type": "http"}},
            "services": [{"checks": [{"type": "tcp"}]}, {"internal_port": 8080}]
        });
        assert_eq!(config_check_count(&config), 3);
        assert_eq!(config_check_count(&json!({})), 0);
    }

    #[test]
    fn exit_events_are_read_from_both_payload_shapes() {
        let m = machine(json!({"id": "m", "events": [
            {"type": "start", "status": "started"},
            {"type": "exit", "request": {"exit_event": {"exit_code": 1, "restarting": true}, "restart_count": 3}},
            {"type": "exit", "request": {"MonitorEvent": {"exit_event": {"exit_code": 0}}}}
        ]}));
        assert_eq!(
            m.latest_exit(),
            Some(ExitInfo {
                exit_code: 1,
                restarting: true,
                restart_count: 3,
                oom_killed: false
            })
        );
        assert_eq!(m.events[2].exit_info().unwrap().exit_code, 0);
        // Both shapes in one event: the monitor's code first, as fly-go's
        // `MachineRequest.GetExitCode` (`machine_types.go`) reads it.
        let both = machine(json!({"id": "m", "events": [{"type": "exit", "request": {
            "exit_event": {"exit_code": 0},
            "MonitorEvent": {"exit_event": {"exit_code": 1}}
        }}]}));
        assert_eq!(both.events[0].exit_info().unwrap().exit_code, 1);
        // Exits before the latest update belong to the config it replaced.
        let updated = machine(json!({"id": "m", "events": [
            {"type": "start", "status": "started"},
            {"type": "update", "status": "replacing"},
            {"type": "exit", "request": {"exit_event": {"exit_code": 1, "restarting": true}, "restart_count": 3}}
        ]}));
        assert_eq!(updated.latest_exit(), None);
    }

    #[test]
    fn lease_is_read_flat_or_wrapped() {
        let read = |body| serde_json::from_value::<LeaseResponse>(body).unwrap().granted();
        assert_eq!(read(json!({"nonce": "n1", "owner": "a@b"})).unwrap().nonce, "n1");
        let lease = read(json!({"status": "success", "data": {"nonce": "n2", "expires_at": 5}})).unwrap();
        assert_eq!((lease.nonce.as_str(), lease.expires_at), ("n2", Some(5)));
    }

    /// flyctl's `AcquireLease`: a status other than "success", or no data, is no lease.
    #[test]
    fn an_answer_that_grants_no_lease_is_not_taken_for_one() {
        let read = |body| serde_json::from_value::<LeaseResponse>(body).unwrap().granted();
        assert_eq!(
            read(json!({"status": "failed", "code": "held", "message": "lease currently held"})).unwrap_err(),
            "status \"failed\", code held: lease currently held"
        );
        assert_eq!(read(json!({"status": "success"})).unwrap_err(), "no lease data");
        assert_eq!(
            read(json!({"owner": "a@b"})).unwrap_err(),
            "a lease without a nonce"
        );
        assert_eq!(
            read(json!({"status": "success", "data": {"nonce": ""}})).unwrap_err(),
            "a lease without a nonce"
        );
    }

    #[test]
    fn boolean_autostop_becomes_the_string_form() {
        let mut config =
            json!({"services": [{"autostop": true}, {"autostop": false}, {"autostop": "suspend"}]});
        normalize_config_for_request(&mut config);
        assert_eq!(
            config,
            json!({"services": [{"autostop": "stop"}, {"autostop": "off"}, {"autostop": "suspend"}]})
        );
    }

    #[test]
    fn release_version_is_a_string_whatever_its_json_type() {
        let r: Release = serde_json::from_value(json!({"id": "r1", "version": 7})).unwrap();
        assert_eq!(r.version_string(), "7");
        let r: Release = serde_json::from_value(json!({"id": "r1", "version": "8"})).unwrap();
        assert_eq!(r.version_string(), "8");
    }
}
