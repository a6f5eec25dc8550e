//! Blue-green: a green machine beside every blue one, out of service until all greens are
//! started and healthy; then greens are uncordoned, blues cordoned and destroyed. A failure
//! before the switch destroys the greens and leaves the blues serving, untouched.

use super::error::RolloutError;
use super::update::Ctx;
use crate::fly::types::{META_BLUEGREEN_TAG, Machine};
use futures::StreamExt;
use serde_json::{Value, json};

/// Greens created at once.
const CREATE_CONCURRENCY: usize = 8;

pub async fn run(ctx: &Ctx, group: &str, blues: &[Machine]) -> Result<(), RolloutError> {
    let tag = ulid::Ulid::new().to_string();
    let mut created = futures::stream::iter(blues)
        .map(|blue| create_green(ctx, group, blue, &tag))
        .buffer_unordered(CREATE_CONCURRENCY);
    let mut greens = Vec::new();
    let mut failure = None;
    while let Some(result) = created.next().await {
        match result {
            Ok(green) => greens.push(green),
            Err((green, err)) => {
                greens.extend(green);
                failure.get_or_insert(err);
            }
        }
    }
    drop(created);
    if let Some(err) = failure {
        for green in &greens {
            if let Err(cleanup) = ctx.destroy(&green.id, group).await {
                ctx.reporter.warn(format!("{cleanup:#}"));
            }
            ctx.done(&green.id, group, "green destroyed", false);
        }
        return Err(err);
    }
    ctx.mark_changing();
    for green in &greens {
        machine_action(ctx, &green.id, "uncordon").await?;
        ctx.done(&green.id, group, "green serving", true);
    }
    for blue in blues {
        if !blue.should_skip_launch() {
            machine_action(ctx, &blue.id, "cordon").await?;
        }
        ctx.destroy(&blue.id, group).await?;
        ctx.done(&blue.id, group, "blue destroyed", true);
    }
    Ok(())
}

async fn create_green(
    ctx: &Ctx,
    group: &str,
    blue: &Machine,
    tag: &str,
) -> Result<Machine, (Option<Machine>, RolloutError)> {
    let mut config = ctx.change.apply(&blue.config);
    config["metadata"][META_BLUEGREEN_TAG] = Value::String(tag.to_string());
    let launch = !blue.should_skip_launch();
    let mut body = json!({
        "config": config,
        "skip_launch": !launch,
        "skip_service_registration": true,
    });
    if let Some(region) = &blue.region {
        body["region"] = Value::String(region.clone());
    }
    ctx.status(&blue.id, group, "creating green machine");
    ctx.create_and_check(body, group, launch).await
}

async fn machine_action(ctx: &Ctx, machine: &str, action: &'static str) -> Result<(), RolloutError> {
    let nonce = ctx.leases.nonce(machine);
    ctx.api
        .machine_action(machine, action, nonce.as_deref())
        .await
        .map_err(|source| RolloutError::Api {
            action,
            machine: machine.to_string(),
            source: source.into(),
        })
}
