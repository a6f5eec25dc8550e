//! Canary: one extra machine per group with the new config, kept out of DNS, started and
//! health-checked, then destroyed; only then does the group roll as usual.

use super::error::RolloutError;
use super::rolling;
use super::update::Ctx;
use crate::fly::appconfig::launch::clear_standby;
use crate::fly::types::{META_CANARY, Machine};
use serde_json::{Value, json};

pub async fn run(ctx: &Ctx, group: &str, machines: &[Machine]) -> Result<(), RolloutError> {
    // A running machine of the group, not a standby (flyctl builds its canary from fly.toml,
    // which has no standbys).
    let Some(template) = machines
        .iter()
        .find(|m| !m.should_skip_launch() && !m.is_standby())
        .or(machines.first())
    else {
        return Ok(());
    };
    let mut config = ctx.change.apply(&template.config);
    clear_standby(&mut config);
    config["metadata"][META_CANARY] = Value::String("true".into());
    config["dns"]["skip_registration"] = Value::Bool(true);
    let mut body = json!({"config": config, "skip_launch": false});
    // fly.toml's primary_region, as flyctl launches its canaries there (`launchInputForLaunch`);
    // without one, where the template runs.
    let region = ctx.spec.primary_region.as_ref().or(template.region.as_ref());
    if let Some(region) = region {
        body["region"] = Value::String(region.clone());
    }
    ctx.reporter.info(format!(
        "process group {group}: creating a canary machine in {}",
        region.map_or("the default region", String::as_str)
    ));
    let (canary, result) = match ctx.create_and_check(body, group, true).await {
        Ok(canary) => (Some(canary), Ok(())),
        Err((canary, err)) => (canary, Err(err)),
    };
    if let Some(canary) = canary {
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
        destroyed?;
    } else {
        result?;
    }
    rolling::run(ctx, machines).await
}
