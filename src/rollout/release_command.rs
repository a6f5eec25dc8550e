//! `[deploy] release_command`: run once on a temporary machine with the new image before any app
//! machine changes, as flyctl runs it. A non-zero exit stops the deploy.

use super::error::RolloutError;
use super::health::wait_for_new_machine;
use super::one_shot::{self, Ended};
use super::update::Ctx;
use super::waves::{ConfigChange, Fleet};
use crate::fly::types::{
    META_PLATFORM_VERSION, META_PROCESS_GROUP, META_RELEASE_ID, META_RELEASE_VERSION, RELEASE_COMMAND_GROUP,
};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// The release command as the deploy runs it.
#[derive(Clone, Debug)]
pub struct ReleaseCommand {
    pub command: String,
    pub timeout: Duration,
    /// `[deploy.release_command_vm]` as a Machines API guest; None: the largest guest of the
    /// default process group's machines.
    pub guest: Option<Value>,
    /// fly.toml's default process group (`AppConfig::default_group`).
    pub default_group: String,
    /// fly.toml's part of the machine (`AppConfig::release_command_config`): the
    /// `[experimental]` entrypoint, swap, stop signal and `[[files]]` flyctl gives it.
    pub fly_toml: Option<Value>,
}

/// The guest flyctl falls back to when the app has no machine to copy one from.
fn default_guest() -> Value {
    json!({"cpu_kind": "shared", "cpus": 2, "memory_mb": 512})
}

/// The temporary machine's create request, as flyctl's `launchInputForReleaseCommand`
/// (`machines_releasecommand.go`) and `ToReleaseMachineConfig` (`appconfig/machines.go`)
/// make it. `primary_region` is fly.toml's: only it sets `PRIMARY_REGION` (else `[env]`'s, or
/// without a fly.toml the app machine's, stays); without it the machine goes to the region of
/// an app machine.
pub fn machine_request(
    change: &ConfigChange,
    primary_region: Option<&str>,
    rc: &ReleaseCommand,
    fleet: &Fleet,
) -> Result<Value, RolloutError> {
    let cmd = crate::fly::appconfig::shlex::split(&rc.command).map_err(|err| {
        RolloutError::ReleaseCommandInvalid {
            command: rc.command.clone(),
            reason: err.to_string(),
        }
    })?;
    let template = fleet.machines().next();
    let region = primary_region
        .map(str::to_string)
        .or_else(|| template.and_then(|m| m.region.clone()));
    let mut env: Map<String, Value> = match &change.env {
        Some(env) => env
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
        None => template
            .and_then(|m| m.config.get("env"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
    };
    for (name, value) in &change.env_flags {
        env.insert(name.clone(), Value::String(value.clone()));
    }
    env.insert("RELEASE_COMMAND".into(), "1".into());
    env.insert("FLY_PROCESS_GROUP".into(), RELEASE_COMMAND_GROUP.into());
    if let Some(region) = primary_region {
        env.insert("PRIMARY_REGION".into(), region.into());
    }
    let mut guest = rc
        .guest
        .clone()
        .or_else(|| largest_guest(fleet, &rc.default_group))
        .unwrap_or_else(default_guest);
    // On fly.toml's host dedication too, as flyctl puts it on the release command's guest.
    if let Some(host) = &change.host_dedication_id {
        guest["host_dedication_id"] = Value::String(host.clone());
    }
    let mut metadata = json!({
        META_PLATFORM_VERSION: "v2",
        META_PROCESS_GROUP: RELEASE_COMMAND_GROUP,
    });
    if let Some(id) = &change.release_id {
        metadata[META_RELEASE_ID] = Value::String(id.clone());
    }
    if let Some(version) = &change.release_version {
        metadata[META_RELEASE_VERSION] = Value::String(version.clone());
    }
    let mut body = json!({
        "skip_launch": true,
        "config": {
            "image": change.image,
            "init": {"cmd": cmd},
            "restart": {"policy": "no"},
            "auto_destroy": true,
            "dns": {"skip_registration": true},
            "env": env,
            "guest": guest,
            "metadata": metadata,
        }
    });
    if let Some(region) = region {
        body["region"] = Value::String(region);
    }
    if let Some(fly_toml) = &rc.fly_toml {
        body["config"]["init"] = fly_toml["init"].clone();
        for key in ["stop_config", "files"] {
            if let Some(value) = fly_toml.get(key) {
                body["config"][key] = value.clone();
            }
        }
    }
    Ok(body)
}

/// The guest of the default group's machine with the most memory, as flyctl infers it
/// (`machines_releasecommand.go`, `inferReleaseCommandGuest`): not a GPU or performance worker
/// of another group.
fn largest_guest(fleet: &Fleet, default_group: &str) -> Option<Value> {
    fleet
        .machines()
        .filter(|m| m.process_group() == default_group)
        .filter_map(|m| m.config.get("guest"))
        .max_by_key(|g| g.get("memory_mb").and_then(Value::as_u64).unwrap_or(0))
        .cloned()
}

pub async fn run(ctx: &Ctx, rc: &ReleaseCommand, fleet: &Fleet) -> Result<(), RolloutError> {
    let group = RELEASE_COMMAND_GROUP;
    for leftover in &fleet.leftover_release_machines {
        ctx.reporter.info(format!(
            "destroying release_command machine {} left by an earlier deploy",
            leftover.id
        ));
        // A leftover that cannot be destroyed does not stop the deploy: flyctl only records
        // it (`machines_releasecommand.go`); the next deploy tries again.
        if let Err(err) = ctx.destroy(&leftover.id, group).await {
            ctx.reporter.warn(format!(
                "cannot destroy release_command machine {} left by an earlier deploy ({err}); \
                 going on, the next deploy tries again (or `fly machine destroy --force {}`)",
                leftover.id, leftover.id
            ));
        }
    }
    let body = machine_request(&ctx.change, ctx.spec.primary_region.as_deref(), rc, fleet)?;
    ctx.reporter
        .info(format!("running release_command `{}`", rc.command));
    let machine = ctx
        .create_machine(body, super::update::Purpose::ForTheDeploy)
        .await
        .map_err(|source| RolloutError::AppApi {
            action: "creating the release_command machine",
            app: ctx.spec.app.clone(),
            source: source.into(),
        })?;
    let id = machine.id.as_str();
    ctx.add_temporary(id, group, "release_command machine");
    ctx.status(id, group, "created");
    let version = machine.instance_id.as_deref();
    let result = one_shot::watched(ctx, id, "release_command machine", run_on(ctx, rc, id, version)).await;
    // Started, it destroys itself (auto_destroy) or `watched` saw to it; never started, it
    // stays stopped, and the failure's cleanup destroys it.
    ctx.forget_if_started(id);
    result
}

/// Start the created machine once it has settled, wait for the command to finish, read its
/// exit code.
async fn run_on(ctx: &Ctx, rc: &ReleaseCommand, id: &str, version: Option<&str>) -> Result<(), RolloutError> {
    let group = RELEASE_COMMAND_GROUP;
    // The image is pulled before the machine settles into `stopped`: a large Nix image can
    // take minutes, so this waits as long as any machine of the deploy may (flyctl
    // `machines_releasecommand.go`: `md.waitTimeout`, with `WithJustCreated`). The wait names
    // the version the create answered: flaps once refused a wait for `stopped` without it
    // ("instance_id required when waiting for stopped machine", flyctl issue 1751), and fly-go
    // sent it on every wait until 2026 (`flaps/flaps_machines_wait.go`).
    wait_for_new_machine(&ctx.api, id, "stopped", version, ctx.spec.wait_timeout).await?;
    ctx.api
        .machine_action(id, "start", None)
        .await
        .map_err(|source| RolloutError::api("starting", id, source))?;
    ctx.temporary_running(id);
    ctx.status(id, group, "running");
    let exit_code = match one_shot::run_to_exit(ctx, id, rc.timeout).await? {
        Ended::Exited(code) => code,
        Ended::TimedOut => {
            return Err(RolloutError::ReleaseCommandTimeout {
                command: rc.command.clone(),
                machine: id.to_string(),
                timeout: rc.timeout,
            });
        }
        Ended::NoExitEvent => {
            return Err(RolloutError::ReleaseCommandUnknownExit {
                command: rc.command.clone(),
                machine: id.to_string(),
            });
        }
    };
    if exit_code != 0 {
        ctx.done(id, group, format!("exited with code {exit_code}"), false);
        return Err(RolloutError::ReleaseCommandFailed {
            command: rc.command.clone(),
            machine: id.to_string(),
            exit_code,
            // `one_shot::watched` puts them here when it can read the app's logs.
            logs: format!("its logs: `fly logs -i {id}`"),
        });
    }
    ctx.done(id, group, "release_command succeeded", true);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fly::appconfig::AppConfig;
    use crate::fly::types::Machine;
    use crate::rollout::launch_input_tests::FLYCTL_RELEASE_COMMAND_TOML;

    fn release_command(toml: &str, machines: Vec<Machine>) -> Value {
        let config = AppConfig::parse(toml, std::path::Path::new("fly.toml"))
            .unwrap()
            .0;
        let rc = ReleaseCommand {
            command: config.deploy.release_command.clone().unwrap(),
            timeout: Duration::from_secs(300),
            guest: None,
            default_group: config.default_group(),
            fly_toml: config.release_command_config().unwrap(),
        };
        let change = ConfigChange {
            image: "super/balloon".into(),
            env: Some(config.env.clone()),
            host_dedication_id: config.host_dedication_id.clone(),
            ..ConfigChange::default()
        };
        machine_request(
            &change,
            config.primary_region.as_deref(),
            &rc,
            &Fleet::classify(machines),
        )
        .unwrap()
    }

    /// flyctl `machines_test.go`, `Test_resolveUpdatedMachineConfig_ReleaseCommand` (the release
    /// command half): the command split into `init.cmd`, fly.toml's env (its
    /// `PRIMARY_REGION` as `[env]` has it: there is no primary_region) with `RELEASE_COMMAND`
    /// and the release command's process group, no restart, destroyed when done, out of DNS,
    /// `shared-cpu-2x` when the app has no machine to take a guest from, created stopped; and
    /// none of the app machine's metrics, mounts, statics, services or checks.
    #[test]
    fn the_release_command_machine_is_flyctls() {
        let body = release_command(FLYCTL_RELEASE_COMMAND_TOML, Vec::new());
        assert_eq!(body["skip_launch"], true);
        assert!(body.get("region").is_none(), "{body}");
        assert_eq!(
            body["config"],
            json!({
                "image": "super/balloon",
                "init": {"cmd": ["touch", "sky"]},
                "env": {
                    "PRIMARY_REGION": "scl",
                    "OTHER": "value",
                    "RELEASE_COMMAND": "1",
                    "FLY_PROCESS_GROUP": "fly_app_release_command",
                },
                "metadata": {
                    "fly_platform_version": "v2",
                    "fly_process_group": "fly_app_release_command",
                },
                "restart": {"policy": "no"},
                "auto_destroy": true,
                "dns": {"skip_registration": true},
                "guest": {"cpu_kind": "shared", "cpus": 2, "memory_mb": 512},
            })
        );
    }

    /// The rules of flyctl's `launchInputForReleaseCommand` and `ToReleaseMachineConfig`
    /// behind the test above: only `primary_region` sets `PRIMARY_REGION` (an app machine
    /// elsewhere does not), and fly.toml's `host_dedication_id` goes on the guest, which
    /// comes from the default group's largest machine.
    #[test]
    fn the_release_command_keeps_envs_primary_region_and_takes_the_host_dedication() {
        let app_machine: Machine = serde_json::from_value(json!({
            "id": "m1", "state": "started", "region": "ams",
            "config": {"metadata": {"fly_platform_version": "v2", "fly_process_group": "app"},
                       "guest": {"cpu_kind": "performance", "cpus": 1, "memory_mb": 2048}},
        }))
        .unwrap();
        let body = release_command(
            "app = \"a\"\nhost_dedication_id = \"host-a\"\n[env]\nPRIMARY_REGION = \"scl\"\n\
             [deploy]\nrelease_command = \"touch sky\"\n",
            vec![app_machine],
        );
        assert_eq!(body["config"]["env"]["PRIMARY_REGION"], "scl");
        assert_eq!(body["region"], "ams");
        assert_eq!(
            body["config"]["guest"],
            json!({"cpu_kind": "performance", "cpus": 1, "memory_mb": 2048,
                   "host_dedication_id": "host-a"})
        );
    }
}
