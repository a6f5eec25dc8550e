//! Waves: which machines a deploy touches, in which order, and the config each gets.
//! Nothing here talks to the network, so `--dry-run` and the real run share it exactly.

use crate::fly::appconfig::{self, MaxUnavailable, Strategy};
use crate::fly::types::{
    CONSOLE_GROUP, DEFAULT_GROUP, META_MANAGED_POSTGRES, META_RELEASE_ID, META_RELEASE_VERSION, Machine,
    TEST_MACHINE_GROUP, normalize_config_for_request,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Immediate deploys update this many machines at once, as flyctl does.
pub const IMMEDIATE_CONCURRENCY: usize = 8;

/// Env keys the platform sets on every machine; fly.toml `[env]` never removes them.
const PLATFORM_ENV: [&str; 2] = ["FLY_PROCESS_GROUP", "PRIMARY_REGION"];

/// The app's machines, sorted for the deploy.
#[derive(Debug, Default)]
pub struct Fleet {
    /// Process group → its machines, sorted by id.
    pub groups: BTreeMap<String, Vec<Machine>>,
    /// Release-command machines left behind by an earlier deploy: destroyed before a new one runs.
    pub leftover_release_machines: Vec<Machine>,
    /// Machines the deploy leaves alone, with why (console machines, non-v2 machines).
    pub ignored: Vec<(String, &'static str)>,
    /// The ignored machines that are not Fly Launch machines (no `fly_platform_version` v2):
    /// `fly machine run` ones, say. With their process group (fly.toml's default when they
    /// name none, as flyctl's `machineProcessGroup`).
    pub unmanaged: Vec<(String, String)>,
}

impl Fleet {
    pub fn classify(machines: Vec<Machine>) -> Fleet {
        Self::classify_with_default(machines, crate::fly::types::DEFAULT_GROUP)
    }

    /// `classify`, with machines that name no process group put in `default_group` (fly.toml's
    /// default), as flyctl does before it deploys (`internal/command/deploy/machines.go`,
    /// `setMachinesForDeployment`: `DefaultProcessName()` into their metadata).
    pub fn classify_with_default(machines: Vec<Machine>, default_group: &str) -> Fleet {
        let mut fleet = Fleet::default();
        for mut machine in machines {
            if machine.is_gone() {
                continue;
            }
            // From here on `fly_process_group` names the group: the legacy `process_group`
            // when only that is set (fly-go's `MachineConfig.ProcessGroup`), else fly.toml's
            // default group. An update then writes it, as flyctl's does. flyctl's deploy
            // (`setMachinesForDeployment`) looks only at `fly_process_group` and so moves a
            // machine named by the legacy key alone into the default group; nixfly keeps its
            // group, on purpose (README, fly.toml).
            if machine
                .metadata(crate::fly::types::META_PROCESS_GROUP)
                .is_none_or(str::is_empty)
            {
                let group = machine.named_group().unwrap_or(default_group).to_string();
                if let Some(config) = machine.config.as_object_mut() {
                    let metadata = config.entry("metadata").or_insert_with(|| serde_json::json!({}));
                    if let Some(metadata) = metadata.as_object_mut() {
                        metadata.insert(crate::fly::types::META_PROCESS_GROUP.into(), group.into());
                    }
                }
            }
            if machine.is_release_command() {
                fleet.leftover_release_machines.push(machine);
                continue;
            }
            match machine.process_group() {
                CONSOLE_GROUP => fleet.ignored.push((machine.id, "console machine")),
                // Destroyed by itself once its check has run; one still here belongs to a
                // deploy running now, or was left by an interrupted one. (flyctl lists it with
                // the app's machines, in a process group fly.toml lacks.)
                TEST_MACHINE_GROUP => fleet.ignored.push((machine.id, "a machine check's test machine")),
                group if !machine.is_platform_v2() => {
                    fleet.unmanaged.push((machine.id.clone(), group.to_string()));
                    fleet
                        .ignored
                        .push((machine.id, "not a Machines platform v2 machine"));
                }
                group => fleet.groups.entry(group.to_string()).or_default().push(machine),
            }
        }
        for machines in fleet.groups.values_mut() {
            machines.sort_by(|a, b| a.id.cmp(&b.id));
            complete_partial_configs(machines);
        }
        fleet
    }

    /// A machine whose whole config Fly could not read (its host is not `ok`) and that no
    /// machine of its group can stand in for: its replacement would be made from a partial
    /// config.
    pub fn partial_config_machine(&self) -> Option<&Machine> {
        self.machines().find(|m| m.config_incomplete)
    }

    pub fn machine_count(&self) -> usize {
        self.groups.values().map(Vec::len).sum()
    }

    pub fn machines(&self) -> impl Iterator<Item = &Machine> {
        self.groups.values().flatten()
    }
}

/// What flaps shows of a machine on a host that is not `ok` is a partial config, "not suitable
/// to clone or recreate the original machine" (fly-go `machine_types.go`,
/// `IncompleteConfig`), and such a machine is always replaced. flyctl makes the replacement from
/// the app's config, which without a fly.toml it rebuilds from the machines' configs
/// (`internal/appconfig/from_machine_set.go`, `FromAppAndMachineSet`); here a machine of the
/// same group whose config is whole stands in, with the partial config's own fields (image,
/// metadata, mounts, guest: its process group and volume) laid over it.
fn complete_partial_configs(machines: &mut [Machine]) {
    let Some(whole) = machines
        .iter()
        .find(|m| !m.config_incomplete && m.config.is_object())
        .map(|m| m.config.clone())
    else {
        return;
    };
    for machine in machines.iter_mut().filter(|m| m.config_incomplete) {
        let mut config = whole.clone();
        for (key, value) in machine.config.as_object().into_iter().flatten() {
            config[key.as_str()] = value.clone();
        }
        if machine.config.get("mounts").is_none()
            && let Some(object) = config.as_object_mut()
        {
            object.remove("mounts");
        }
        machine.config = config;
        machine.config_incomplete = false;
    }
}

/// Stopped machines of a group updated at once: flyctl's `STOPPED_MACHINES_POOL_SIZE`
/// (internal/command/deploy/plan.go). They take no traffic, so they do not count against
/// `max_unavailable`.
pub const STOPPED_POOL: usize = 30;
/// Process groups rolled at the same time: flyctl's `rollingStrategyMaxConcurrentGroups`
/// (internal/command/deploy/plan.go).
pub const GROUP_CONCURRENCY: usize = 16;

/// Machines updated together: the first alone (a bad image then breaks one machine, not a
/// whole pool; flyctl does not do this, see the README's differences), then the rest `size`
/// at a time.
#[derive(Debug, Default)]
pub struct Pool<'a> {
    pub first: Option<&'a Machine>,
    pub rest: Vec<&'a Machine>,
    pub size: usize,
}

impl<'a> Pool<'a> {
    fn new(machines: Vec<&'a Machine>, size: usize) -> Self {
        let mut machines = machines.into_iter();
        Pool {
            first: machines.next(),
            rest: machines.collect(),
            size: size.max(1),
        }
    }

    /// The pool as waves of at most `size` machines, for the preview.
    pub fn waves(&self) -> Vec<Vec<&'a Machine>> {
        let mut waves: Vec<Vec<&'a Machine>> = self.first.iter().map(|m| vec![*m]).collect();
        waves.extend(self.rest.chunks(self.size).map(<[&Machine]>::to_vec));
        waves
    }
}

/// The order a rolling update takes within one group, as flyctl's
/// `updateUsingRollingStrategy` (internal/command/deploy/machines_deploymachinesapp.go) does
/// it: the running machines in a pool of `max_unavailable`, and beside them, at the same
/// time, the others in their own pool; each pool in id order. Its first machine going alone
/// is nixfly's (`Pool`): flyctl starts each pool with `max_unavailable` machines at once.
#[derive(Debug)]
pub struct RollingOrder<'a> {
    /// The machines in state `started`: they take traffic.
    pub running: Pool<'a>,
    /// Every other machine: stopped or suspended ones (left stopped), and `starting` or
    /// `failed` ones, which are launched (`Machine::should_skip_launch`) but serve no traffic
    /// yet, so flyctl counts them with the stopped ones.
    pub stopped: Pool<'a>,
}

pub fn rolling_order(machines: &[Machine], max_unavailable: MaxUnavailable) -> RollingOrder<'_> {
    // flyctl's warm machines are those whose state is exactly "started".
    let (running, stopped): (Vec<&Machine>, Vec<&Machine>) =
        machines.iter().partition(|m| m.state == "started");
    let running_pool = max_unavailable.pool_size(running.len());
    let stopped_pool = stopped.len().min(STOPPED_POOL);
    RollingOrder {
        running: Pool::new(running, running_pool),
        stopped: Pool::new(stopped, stopped_pool),
    }
}

/// The waves a strategy goes through for one group, for the preview: the running machines'
/// waves, then (rolling and canary) the stopped machines' waves, which run beside them.
pub fn waves(
    strategy: Strategy,
    machines: &[Machine],
    max_unavailable: MaxUnavailable,
) -> (Vec<Vec<&Machine>>, Vec<Vec<&Machine>>) {
    match strategy {
        Strategy::Rolling | Strategy::Canary => {
            let order = rolling_order(machines, max_unavailable);
            (order.running.waves(), order.stopped.waves())
        }
        Strategy::Immediate => (
            machines
                .chunks(IMMEDIATE_CONCURRENCY)
                .map(|c| c.iter().collect())
                .collect(),
            Vec::new(),
        ),
        Strategy::Bluegreen => (vec![machines.iter().collect()], Vec::new()),
    }
}

/// What the new config of a machine is made of besides its current config.
#[derive(Clone, Debug, Default)]
pub struct ConfigChange {
    pub image: String,
    /// fly.toml `[env]`, when there is a fly.toml: it replaces the machine's env (as flyctl does).
    pub env: Option<BTreeMap<String, String>>,
    /// `--env NAME=VALUE`: set over whatever env the machine gets, as `fly deploy -e` sets
    /// them over the app config's env (`machines.go`, `determineAppConfigForMachines`). With a
    /// fly.toml they are in `env` already (`AppConfig::override_from_flags`) and setting them
    /// again changes nothing; without one, this is where they reach the machines.
    pub env_flags: BTreeMap<String, String>,
    pub release_id: Option<String>,
    pub release_version: Option<String>,
    /// fly.toml's machine config per process group (when there is a fly.toml): laid over each
    /// machine of the group first, as flyctl rebuilds the config on every deploy.
    pub fly_toml: BTreeMap<String, Value>,
    /// fly.toml's top-level `host_dedication_id`: every machine asks for it, as flyctl's
    /// `launchInputForUpdate` sets it on one whose guest differs, replacements included
    /// (`Ctx::put_config` replaces the machines on another host dedication).
    pub host_dedication_id: Option<String>,
    /// The app is a Fly Postgres cluster (app_role `postgres_cluster`): its machines carry
    /// `fly-managed-postgres`, which every other app's machines lose, as flyctl's
    /// `setMachineReleaseData` (`machines_launchinput.go`) does on every deploy.
    pub postgres: bool,
}

impl ConfigChange {
    /// The machine's current config with the image, env and release metadata replaced; every
    /// other field stays as the API returned it.
    pub fn apply(&self, current: &Value) -> Value {
        let group = current["metadata"]["fly_process_group"]
            .as_str()
            .unwrap_or(DEFAULT_GROUP);
        // A volume change makes the config of the machine's replacement (the update sees its
        // mounts differ from the machine's, `Ctx::put_config`).
        let translated = self.fly_toml.get(group).map(|fly_toml| {
            appconfig::apply::apply(fly_toml, current)
                .unwrap_or_else(|_| appconfig::apply::apply_replacing(fly_toml, current))
        });
        let mut config = match translated {
            Some(config) => config,
            None if current.is_object() => current.clone(),
            None => json!({}),
        };
        let object = config.as_object_mut().expect("config is an object");
        object.insert("image".into(), Value::String(self.image.clone()));
        // The platform's keys as the translated (or current) config has them. flyctl sets them
        // after fly.toml's `[env]` and `--env` (`internal/appconfig/machines.go`:
        // `FLY_PROCESS_GROUP` always, `PRIMARY_REGION` when `primary_region` is set), so they
        // win over an `[env]` or `--env` of the same name.
        let platform: Vec<(String, Value)> = object
            .get("env")
            .and_then(Value::as_object)
            .map(|old| {
                PLATFORM_ENV
                    .iter()
                    .filter_map(|key| Some((key.to_string(), old.get(*key)?.clone())))
                    .collect()
            })
            .unwrap_or_default();
        if self.env.is_some() || !self.env_flags.is_empty() {
            let env = object.entry("env").or_insert_with(|| json!({}));
            if !env.is_object() {
                *env = json!({});
            }
            if let Some(env) = env.as_object_mut() {
                if let Some(fly_toml_env) = &self.env {
                    *env = fly_toml_env
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                        .collect();
                }
                for (name, value) in &self.env_flags {
                    env.insert(name.clone(), Value::String(value.clone()));
                }
                env.extend(platform);
            }
        }
        self.set_release_data(&mut config);
        normalize_config_for_request(&mut config);
        config
    }

    /// The release's metadata (flyctl's `setMachineReleaseData`, `machines_launchinput.go`)
    /// and fly.toml's host dedication on the guest, which flyctl sets on every machine it
    /// makes or updates, test machines included (`machinebasedtest.go`,
    /// `launchInputForTestMachine`).
    pub fn set_release_data(&self, config: &mut Value) {
        let metadata = config
            .as_object_mut()
            .expect("config is an object")
            .entry("metadata")
            .or_insert_with(|| json!({}));
        if let Some(metadata) = metadata.as_object_mut() {
            for (key, value) in [
                (META_RELEASE_ID, &self.release_id),
                (META_RELEASE_VERSION, &self.release_version),
            ] {
                if let Some(value) = value {
                    metadata.insert(key.into(), Value::String(value.clone()));
                }
            }
            if self.postgres {
                metadata.insert(META_MANAGED_POSTGRES.into(), "true".into());
            } else {
                metadata.remove(META_MANAGED_POSTGRES);
            }
        }
        if let Some(host) = &self.host_dedication_id {
            config["guest"]["host_dedication_id"] = Value::String(host.clone());
        }
    }

    /// Env keys this change adds, changes or removes on a machine, for the preview: the env
    /// `apply` gives it (fly.toml's `[env]`, `--env`, the platform's keys over both) against
    /// the one it has. The platform's own keys are left out: they follow the group and
    /// `primary_region`, not the user's env.
    pub fn env_diff(&self, current: &Value) -> Vec<String> {
        if self.env.is_none() {
            return Vec::new();
        }
        let strings = |config: &Value| -> BTreeMap<String, String> {
            config
                .get("env")
                .and_then(Value::as_object)
                .map(|o| {
                    o.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default()
        };
        let (old, new) = (strings(current), strings(&self.apply(current)));
        let mut diff = Vec::new();
        for (key, value) in new.iter().filter(|(k, _)| !PLATFORM_ENV.contains(&k.as_str())) {
            match old.get(key) {
                None => diff.push(format!("+{key}")),
                Some(v) if v != value => diff.push(format!("~{key}")),
                Some(_) => {}
            }
        }
        for key in old.keys() {
            if !new.contains_key(key) && !PLATFORM_ENV.contains(&key.as_str()) {
                diff.push(format!("-{key}"));
            }
        }
        diff
    }
}

/// The body of `POST /machines/{id}`: the full config, the machine's region, and whether to
/// leave it stopped.
pub fn update_body(machine: &Machine, config: Value, skip_launch: bool) -> Value {
    let mut body = json!({"config": config, "skip_launch": skip_launch, "skip_secrets": false});
    if let Some(region) = &machine.region {
        body["region"] = Value::String(region.clone());
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fly::types::RELEASE_COMMAND_GROUP;

    /// fly-go's `TestGetProcessGroup` and `TestIsReleaseCommandMachine` (`machine_types_test.go`):
    /// `fly_process_group` names the group, else the legacy `process_group`; a legacy
    /// `process_group = "release_command"` is a release-command machine. After classifying,
    /// `fly_process_group` says it, so that the update writes it.
    #[test]
    fn legacy_process_group_metadata_is_read_as_fly_go_reads_it() {
        let with = |id: &str, metadata: Value| -> Machine {
            let mut metadata = metadata;
            metadata["fly_platform_version"] = json!("v2");
            serde_json::from_value(json!({
                "id": id, "state": "started",
                "config": {"image": "old", "metadata": metadata}
            }))
            .unwrap()
        };
        let fleet = Fleet::classify_with_default(
            vec![
                with("only-legacy", json!({"process_group": "web"})),
                with(
                    "both",
                    json!({"process_group": "web", "fly_process_group": "worker"}),
                ),
                with("only-new", json!({"fly_process_group": "web"})),
                with(
                    "empty-new",
                    json!({"fly_process_group": "", "process_group": "worker"}),
                ),
                with("legacy-release", json!({"process_group": "release_command"})),
                with("new-release", json!({"fly_process_group": RELEASE_COMMAND_GROUP})),
                with(
                    "legacy-web-release",
                    json!({"process_group": "web", "fly_process_group": RELEASE_COMMAND_GROUP}),
                ),
                with("none", json!({})),
            ],
            "app",
        );
        let ids = |group: &str| -> Vec<&str> { fleet.groups[group].iter().map(|m| m.id.as_str()).collect() };
        assert_eq!(ids("web"), ["only-legacy", "only-new"]);
        assert_eq!(ids("worker"), ["both", "empty-new"]);
        assert_eq!(ids("app"), ["none"]);
        let leftovers: Vec<&str> = fleet
            .leftover_release_machines
            .iter()
            .map(|m| m.id.as_str())
            .collect();
        assert_eq!(leftovers, ["legacy-release", "new-release", "legacy-web-release"]);
        assert_eq!(fleet.groups["web"][0].metadata("fly_process_group"), Some("web"));
    }

    fn m(id: &str, group: &str, state: &str) -> Machine {
        serde_json::from_value(json!({
            "id": id, "state": state, "region": "ams",
            "config": {"image": "old", "metadata": {"fly_platform_version": "v2", "fly_process_group": group}}
        }))
        .unwrap()
    }

    fn ids(waves: &[Vec<&Machine>]) -> Vec<Vec<String>> {
        waves
            .iter()
            .map(|w| w.iter().map(|m| m.id.clone()).collect())
            .collect()
    }

    /// A v2 machine naming no process group belongs to fly.toml's default group, as flyctl's
    /// `setMachinesForDeployment` puts it, not to a group `app` that fly.toml may not have.
    #[test]
    fn a_machine_without_a_process_group_is_in_the_default_group() {
        let mut unnamed = m("u1", "app", "started");
        unnamed.config["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("fly_process_group");
        let fleet = Fleet::classify_with_default(vec![unnamed, m("w1", "web", "started")], "web");
        let web: Vec<&str> = fleet.groups["web"].iter().map(|m| m.id.as_str()).collect();
        assert_eq!(web, ["u1", "w1"]);
        assert_eq!(fleet.groups["web"][0].process_group(), "web");
        assert!(!fleet.groups.contains_key("app"));
    }

    #[test]
    fn fleet_groups_by_process_group_sorted_by_id_and_sets_aside_the_rest() {
        let mut nomad = m("n1", "app", "started");
        nomad.config["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("fly_platform_version");
        let mut destroyed = m("d1", "app", "destroyed");
        destroyed.state = "destroyed".into();
        let fleet = Fleet::classify(vec![
            m("w2", "worker", "started"),
            m("a3", "app", "started"),
            m("a1", "app", "stopped"),
            m("w1", "worker", "started"),
            m("r1", RELEASE_COMMAND_GROUP, "stopped"),
            m("c1", CONSOLE_GROUP, "started"),
            nomad,
            destroyed,
        ]);
        let groups: Vec<(&str, Vec<&str>)> = fleet
            .groups
            .iter()
            .map(|(g, ms)| (g.as_str(), ms.iter().map(|m| m.id.as_str()).collect()))
            .collect();
        assert_eq!(
            groups,
            vec![("app", vec!["a1", "a3"]), ("worker", vec!["w1", "w2"])]
        );
        assert_eq!(fleet.leftover_release_machines[0].id, "r1");
        let ignored: Vec<&str> = fleet.ignored.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ignored, vec!["c1", "n1"]);
        assert_eq!(fleet.machine_count(), 4);
    }

    #[test]
    fn rolling_pools_running_machines_by_count_and_stopped_ones_beside_them() {
        let machines = vec![
            m("a", "app", "stopped"),
            m("b", "app", "started"),
            m("c", "app", "started"),
            m("d", "app", "started"),
            m("e", "app", "stopped"),
        ];
        let order = rolling_order(&machines, MaxUnavailable::Count(2));
        assert_eq!(order.running.first.unwrap().id, "b");
        assert_eq!(ids(&order.running.waves()), vec![vec!["b"], vec!["c", "d"]]);
        assert_eq!(ids(&order.stopped.waves()), vec![vec!["a"], vec!["e"]]);
    }

    #[test]
    fn rolling_fraction_counts_running_machines_only_and_is_never_zero() {
        let mut machines: Vec<Machine> = (0..10)
            .map(|i| m(&format!("m{i:02}"), "app", "started"))
            .collect();
        machines.extend((10..40).map(|i| m(&format!("m{i:02}"), "app", "stopped")));
        let (running, stopped) = waves(Strategy::Rolling, &machines, MaxUnavailable::Fraction(0.33));
        // 10 running * 0.33 = 3.3 -> 4 at a time after the first.
        assert_eq!(running.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 4, 4, 1]);
        // 30 stopped: the first alone, then the other 29 at once (flyctl's pool of 30).
        assert_eq!(stopped.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 29]);
        let (tiny, _) = waves(Strategy::Rolling, &machines[..2], MaxUnavailable::Fraction(0.01));
        assert_eq!(tiny.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 1]);
    }

    /// flyctl `machines_deploymachinesapp.go`, `updateUsingRollingStrategy` (and the warm test
    /// of `plan.go`'s `updateMachinesWRecovery`): only `started` machines are warm and count
    /// for `max_unavailable`; a `starting` or `failed` one goes with the stopped ones, in the
    /// pool of up to 30 beside them (it is still launched: `skip_launch` is false for it).
    #[test]
    fn starting_and_failed_machines_are_pooled_with_the_stopped_ones() {
        let machines = vec![
            m("a", "app", "started"),
            m("b", "app", "failed"),
            m("c", "app", "started"),
            m("d", "app", "starting"),
            m("e", "app", "stopped"),
            m("f", "app", "started"),
        ];
        let order = rolling_order(&machines, MaxUnavailable::Fraction(0.5));
        // 3 warm machines * 0.5 = 1.5 -> 2 at a time after the first.
        assert_eq!(ids(&order.running.waves()), vec![vec!["a"], vec!["c", "f"]]);
        assert_eq!(ids(&order.stopped.waves()), vec![vec!["b"], vec!["d", "e"]]);
        assert!(!machines[1].should_skip_launch() && !machines[3].should_skip_launch());
    }

    #[test]
    fn all_stopped_group_has_only_the_stopped_pool() {
        let machines = vec![m("a", "app", "stopped"), m("b", "app", "stopped")];
        let order = rolling_order(&machines, MaxUnavailable::Count(1));
        assert!(order.running.first.is_none());
        assert_eq!(ids(&order.stopped.waves()), vec![vec!["a"], vec!["b"]]);
    }

    #[test]
    fn immediate_is_chunked_by_eight_and_bluegreen_is_one_wave() {
        let machines: Vec<Machine> = (0..10)
            .map(|i| m(&format!("m{i:02}"), "app", "started"))
            .collect();
        let lens = |s| {
            waves(s, &machines, MaxUnavailable::Count(1))
                .0
                .iter()
                .map(Vec::len)
                .collect::<Vec<_>>()
        };
        assert_eq!(lens(Strategy::Immediate), vec![8, 2]);
        assert_eq!(lens(Strategy::Bluegreen), vec![10]);
    }

    #[test]
    fn config_change_replaces_image_env_and_release_metadata_and_keeps_the_rest() {
        let current = json!({
            "image": "old@sha256:aa",
            "env": {"FLY_PROCESS_GROUP": "app", "PRIMARY_REGION": "ams", "OLD": "1", "KEEP": "x"},
            "metadata": {"fly_platform_version": "v2", "fly_release_id": "r0"},
            "services": [{"internal_port": 8080, "autostop": true}],
            "unknown_future_field": {"a": 1}
        });
        let change = ConfigChange {
            image: "new@sha256:bb".into(),
            env: Some(BTreeMap::from([
                ("KEEP".to_string(), "y".to_string()),
                ("NEW".to_string(), "2".to_string()),
            ])),
            release_id: Some("r1".into()),
            release_version: Some("4".into()),
            ..ConfigChange::default()
        };
        let config = change.apply(&current);
        assert_eq!(config["image"], "new@sha256:bb");
        assert_eq!(
            config["env"],
            json!({"FLY_PROCESS_GROUP": "app", "PRIMARY_REGION": "ams", "KEEP": "y", "NEW": "2"})
        );
        assert_eq!(config["metadata"]["fly_release_id"], "r1");
        assert_eq!(config["metadata"]["fly_release_version"], "4");
        assert_eq!(config["metadata"]["fly_platform_version"], "v2");
        assert_eq!(config["services"][0]["autostop"], "stop");
        assert_eq!(config["unknown_future_field"], json!({"a": 1}));
        assert_eq!(change.env_diff(&current), vec!["~KEEP", "+NEW", "-OLD"]);
    }

    /// flyctl `internal/appconfig/machines.go`: `FLY_PROCESS_GROUP` and (with a
    /// `primary_region`) `PRIMARY_REGION` are set after `[env]` and `--env`, so they win over
    /// an entry of the same name in either.
    #[test]
    fn the_platform_env_wins_over_fly_toml_env_and_env_flags() {
        let current = json!({"image": "old", "env": {"FLY_PROCESS_GROUP": "app", "PRIMARY_REGION": "ams"}});
        let change = ConfigChange {
            image: "new".into(),
            env: Some(BTreeMap::from([
                ("PRIMARY_REGION".to_string(), "iad".to_string()),
                ("A".to_string(), "1".to_string()),
            ])),
            env_flags: BTreeMap::from([("FLY_PROCESS_GROUP".to_string(), "web".to_string())]),
            ..ConfigChange::default()
        };
        let config = change.apply(&current);
        assert_eq!(
            config["env"],
            json!({"FLY_PROCESS_GROUP": "app", "PRIMARY_REGION": "ams", "A": "1"})
        );
        // The preview shows what the machine gets: A, not an overridden PRIMARY_REGION.
        assert_eq!(change.env_diff(&current), vec!["+A"]);
        // No primary_region: fly.toml's own PRIMARY_REGION stays, as in flyctl.
        let current = json!({"image": "old", "env": {"FLY_PROCESS_GROUP": "app"}});
        assert_eq!(
            change.apply(&current)["env"],
            json!({"FLY_PROCESS_GROUP": "app", "PRIMARY_REGION": "iad", "A": "1"})
        );
    }

    #[test]
    fn without_fly_toml_the_env_is_left_alone() {
        let current = json!({"image": "old", "env": {"A": "1"}});
        let change = ConfigChange {
            image: "new".into(),
            ..ConfigChange::default()
        };
        let config = change.apply(&current);
        assert_eq!(config["env"], json!({"A": "1"}));
        assert!(change.env_diff(&current).is_empty());
    }

    #[test]
    fn update_body_carries_region_and_skip_launch() {
        let machine = m("a", "app", "stopped");
        let body = update_body(&machine, json!({"image": "x"}), true);
        assert_eq!(
            body,
            json!({"config": {"image": "x"}, "skip_launch": true, "skip_secrets": false, "region": "ams"})
        );
    }
}
