//! Canary, as flyctl's `deployCanaryMachines` (`internal/command/deploy/
//! machines_deploymachinesapp.go`) runs it: after the release command and before any machine
//! changes, one extra machine per process group, all groups side by side, kept out of DNS,
//! started, health-checked and put through fly.toml's machine checks, then destroyed. Only
//! when every canary passed do new groups get their machines and the existing ones roll as
//! usual (machine checks again on each), so a canary that fails in one group
//! leaves every group as it was.

use super::error::RolloutError;
use super::groups::GroupError;
use super::update::{Ctx, Purpose};
use super::waves::{self, Fleet};
use crate::fly::appconfig::AppConfig;
use crate::fly::appconfig::launch::clear_standby;
use crate::fly::appconfig::machine::default_guest;
use crate::fly::types::{META_CANARY, Machine};
use futures::StreamExt;
use serde_json::{Value, json};

/// One group's canary, planned before the deploy starts.
#[derive(Clone, Debug)]
pub struct CanaryPlan {
    pub group: String,
    /// The canary's config before the deploy's change (image, env, release) is applied.
    config: Value,
    region: Option<String>,
    /// Where the config comes from, for the preview.
    source: String,
}

/// The canaries of a deploy with the canary strategy.
///
/// With a fly.toml, one per process group of fly.toml (flyctl's `md.ProcessNames()`), groups
/// without machines yet included, each built from fly.toml as flyctl's `spawnMachineInGroup`
/// builds it (`launchInputForLaunch`), in fly.toml's primary_region. Its guest is fly.toml's
/// `[[vm]]`, else that of the group's first machine whose size differs from flyctl's default
/// (`inferCanaryGuest`), else that default.
///
/// Without a fly.toml (flyctl would then read the app's whole config from its current release;
/// nixfly leaves machine config alone), one per group that has machines, built from a running
/// machine of the group that is not a standby.
pub fn plan(
    fly_toml: Option<&AppConfig>,
    fleet: &Fleet,
    primary_region: Option<&String>,
) -> Result<Vec<CanaryPlan>, GroupError> {
    let Some(app_config) = fly_toml else {
        return Ok(fleet
            .groups
            .iter()
            .filter_map(|(group, machines)| {
                let template = machines
                    .iter()
                    .find(|m| !m.should_skip_launch() && !m.is_standby())
                    .or(machines.first())?;
                Some(CanaryPlan {
                    group: group.clone(),
                    config: template.config.clone(),
                    region: primary_region.or(template.region.as_ref()).cloned(),
                    source: format!("machine {}'s config", template.id),
                })
            })
            .collect());
    };
    app_config
        .process_groups()
        .into_iter()
        .map(|group| {
            let machines = fleet.groups.get(&group).map_or(&[][..], Vec::as_slice);
            let config = app_config
                .new_machine_config(&group, infer_guest(machines))
                .map_err(|source| GroupError::Translate {
                    group: group.clone(),
                    source,
                })?;
            let region = primary_region
                .or_else(|| machines.first().and_then(|m| m.region.as_ref()))
                .cloned();
            Ok(CanaryPlan {
                group,
                config,
                region,
                source: "fly.toml".to_string(),
            })
        })
        .collect()
}

/// flyctl's `inferCanaryGuest`: the first machine of the group whose cpu kind, cpus or memory
/// differ from the default guest lends its guest; otherwise the default.
fn infer_guest(machines: &[Machine]) -> Value {
    let default = default_guest();
    let differs = |guest: &Value| {
        ["cpu_kind", "cpus", "memory_mb"]
            .iter()
            .any(|key| guest.get(*key) != default.get(*key))
    };
    machines
        .iter()
        .filter_map(|m| m.config.get("guest").filter(|g| g.is_object()))
        .find(|guest| differs(guest))
        .cloned()
        .unwrap_or(default)
}

/// The preview's lines for the canaries.
pub fn describe(plans: &[CanaryPlan]) -> Vec<String> {
    plans
        .iter()
        .map(|plan| {
            let guest = &plan.config["guest"];
            format!(
                "process group {}: a canary machine from {} in {} ({} cpu x{}, {} MB), started and \
                 checked before any machine changes, then destroyed",
                plan.group,
                plan.source,
                plan.region.as_deref().unwrap_or("the default region"),
                guest["cpu_kind"].as_str().unwrap_or("shared"),
                guest["cpus"],
                guest["memory_mb"],
            )
        })
        .collect()
}

/// Every group's canary side by side. Each is destroyed whatever happened to it or to the
/// others (flyctl leaves a canary that failed its checks; nixfly cleans it up). The first
/// failure is the error; further ones are warned about.
pub async fn run_all(ctx: &Ctx, plans: &[CanaryPlan]) -> Result<(), RolloutError> {
    let results: Vec<Result<(), RolloutError>> = futures::stream::iter(plans)
        .map(|plan| run_one(ctx, plan))
        .buffer_unordered(waves::GROUP_CONCURRENCY)
        .collect()
        .await;
    let mut errors = results.into_iter().filter_map(Result::err);
    let Some(first) = errors.next() else {
        return Ok(());
    };
    for other in errors {
        ctx.reporter.warn(format!("another canary failed too: {other}"));
    }
    Err(first)
}

async fn run_one(ctx: &Ctx, plan: &CanaryPlan) -> Result<(), RolloutError> {
    let group = plan.group.as_str();
    let mut config = ctx.change.apply(&plan.config);
    clear_standby(&mut config);
    config["metadata"][META_CANARY] = Value::String("true".into());
    // flyctl replaces the whole DNS config (`withDns(&fly.DNSConfig{SkipRegistration: true})`).
    config["dns"] = json!({"skip_registration": true});
    let mut body = json!({"config": config, "skip_launch": false});
    if let Some(region) = &plan.region {
        body["region"] = Value::String(region.clone());
    }
    ctx.reporter.info(format!(
        "process group {group}: creating a canary machine in {}",
        plan.region.as_deref().unwrap_or("the default region")
    ));
    let (canary, result) = match ctx
        .create_and_check(body, group, true, Purpose::ForTheDeploy, |_| ())
        .await
    {
        // Tested too once healthy, as flyctl's `deployCanaryMachines` runs `runTestMachines`
        // on each canary.
        Ok(canary) => {
            let tested = super::machine_checks::run(ctx, &canary).await;
            (Some(canary), tested)
        }
        Err((canary, err)) => (canary, Err(err)),
    };
    let Some(canary) = canary else {
        return result;
    };
    // The canary goes whatever happened: it only ever served as a test.
    let destroyed = ctx.destroy(&canary.id, group).await;
    let ok = result.is_ok() && destroyed.is_ok();
    ctx.done(
        &canary.id,
        group,
        if ok {
            "canary passed, destroyed"
        } else {
            "canary failed"
        },
        ok,
    );
    result?;
    destroyed
}
