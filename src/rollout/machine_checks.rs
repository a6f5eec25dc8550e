//! fly.toml's machine checks, run as `fly deploy` runs them (`internal/command/deploy/
//! machinebasedtest.go`, `runTestMachines`): once a machine is updated and started, each check
//! that applies to its process group gets a test machine (the check's command, on the check's
//! image or the machine's new one, told the machine's address in `FLY_TEST_MACHINE_IP`), all
//! created, then all waited for until destroyed; one exiting non-zero fails that machine, which
//! the rollout then rolls back like a machine whose health checks failed.

use super::error::RolloutError;
use super::one_shot::{self, Ended};
use super::update::{Ctx, Purpose};
use crate::fly::appconfig::machine::default_guest;
use crate::fly::appconfig::{AppConfig, MachineCheck};
use crate::fly::types::{Machine, TEST_MACHINE_GROUP};
use serde_json::{Value, json};
use std::borrow::Cow;

/// The machine checks of a deploy, with the app config their test machines are built from
/// (fly.toml, or without one the app's current release config, as `fly deploy` takes it).
#[derive(Clone, Debug)]
pub struct MachineChecks {
    config: AppConfig,
}

impl MachineChecks {
    /// None when no process group has a machine check.
    pub fn from_config(config: &AppConfig) -> Option<Self> {
        config.has_machine_checks().then(|| MachineChecks {
            config: config.clone(),
        })
    }

    pub fn for_group(&self, group: &str) -> Vec<&MachineCheck> {
        self.config.machine_checks_for(group)
    }

    /// The preview's lines: which checks each group's machines get.
    pub fn describe(&self, groups: impl Iterator<Item = String>) -> Vec<String> {
        groups
            .filter_map(|group| {
                let checks = self.for_group(&group);
                (!checks.is_empty()).then(|| {
                    let each: Vec<String> = checks
                        .iter()
                        .map(|c| {
                            format!(
                                "`{}` on {}",
                                shell_words::join(&c.command),
                                c.image.as_deref().unwrap_or("the new image")
                            )
                        })
                        .collect();
                    format!(
                        "process group {group}: machine checks after each machine's update, each on a \
                         test machine: {}",
                        each.join(", ")
                    )
                })
            })
            .collect()
    }
}

/// The create request of `check`'s test machine for `tested` (as its update or create left
/// it, with the new image: `with_image`): fly.toml's part (`AppConfig::test_machine_config`), then what flyctl's
/// `launchInputForTestMachine` adds: the guest `inferCanaryGuest` finds for the test machine's
/// own process group, where no machine of the deploy is, so flyctl's default guest (nixfly
/// has no `--vm-*` flags to change it); the release data and host dedication; the tested
/// machine's region. Launched at once, as flyctl's `Launch` does.
fn test_machine_request(ctx: &Ctx, checks: &MachineChecks, check: &MachineCheck, tested: &Machine) -> Value {
    let mut config = checks
        .config
        .test_machine_config(check, Some(tested))
        .expect("the tested machine has an image");
    config["guest"] = default_guest();
    ctx.change.set_release_data(&mut config);
    let mut body = json!({"config": config});
    if let Some(region) = &tested.region {
        body["region"] = json!(region);
    }
    body
}

/// `tested` with the new image it runs, whether or not the API's answer says so.
fn with_image<'a>(ctx: &Ctx, tested: &'a Machine) -> Cow<'a, Machine> {
    if !tested.image().is_empty() {
        return Cow::Borrowed(tested);
    }
    let mut tested = tested.clone();
    tested.config["image"] = json!(ctx.change.image);
    Cow::Owned(tested)
}

/// Run the machine checks of `tested`'s process group; Ok when there are none.
pub async fn run(ctx: &Ctx, tested: &Machine) -> Result<(), RolloutError> {
    let Some(checks) = &ctx.spec.machine_checks else {
        return Ok(());
    };
    let group = tested.process_group();
    let applying = checks.for_group(group);
    if applying.is_empty() {
        return Ok(());
    }
    ctx.status(
        &tested.id,
        group,
        format!("running {} machine check(s)", applying.len()),
    );
    // All created first, then waited for together, as flyctl does.
    let with_image = with_image(ctx, tested);
    let mut created = Vec::new();
    for check in applying {
        let body = test_machine_request(ctx, checks, check, &with_image);
        let machine = ctx
            .create_machine(body, Purpose::ForTheDeploy)
            .await
            .map_err(|source| {
                RolloutError::api("creating a machine check's test machine for", &tested.id, source)
            })?;
        ctx.status(&machine.id, TEST_MACHINE_GROUP, format!("testing {}", tested.id));
        created.push((check, machine.id));
    }
    let results =
        futures::future::join_all(created.iter().map(|(check, id)| {
            one_shot::watched(ctx, id, "test machine", finish(ctx, check, id, &tested.id))
        }))
        .await;
    // The first failing check, in fly.toml's order.
    results.into_iter().collect()
}

/// Wait for test machine `id` of `check` to run, and judge its exit code.
async fn finish(ctx: &Ctx, check: &MachineCheck, id: &str, tested: &str) -> Result<(), RolloutError> {
    let command = shell_words::join(&check.command);
    // flyctl waits for `started` and then `destroyed`, each within the deploy's wait timeout.
    let exit_code = match one_shot::run_to_exit(ctx, id, ctx.spec.wait_timeout).await? {
        Ended::Exited(code) => code,
        Ended::TimedOut => {
            return Err(RolloutError::MachineCheckTimeout {
                command,
                machine: tested.to_string(),
                test_machine: id.to_string(),
                timeout: ctx.spec.wait_timeout,
            });
        }
        Ended::NoExitEvent => {
            return Err(RolloutError::MachineCheckUnknownExit {
                command,
                machine: tested.to_string(),
                test_machine: id.to_string(),
            });
        }
    };
    if exit_code != 0 {
        ctx.done(
            id,
            TEST_MACHINE_GROUP,
            format!("exited with code {exit_code}"),
            false,
        );
        return Err(RolloutError::MachineCheckFailed {
            command,
            machine: tested.to_string(),
            test_machine: id.to_string(),
            exit_code,
            // `one_shot::watched` puts them here when it can read the app's logs.
            logs: format!("its logs: `fly logs -i {id}`"),
        });
    }
    ctx.done(
        id,
        TEST_MACHINE_GROUP,
        format!("machine check passed on {tested}"),
        true,
    );
    Ok(())
}
