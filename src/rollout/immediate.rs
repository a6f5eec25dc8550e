//! Immediate: every machine of every group at once (at most 8 requests in flight), no waiting for
//! starts or checks, as flyctl does it.

use super::error::RolloutError;
use super::update::Ctx;
use super::waves::IMMEDIATE_CONCURRENCY;
use crate::fly::types::Machine;
use futures::StreamExt;

pub async fn run<'a>(ctx: &Ctx, machines: impl Iterator<Item = &'a Machine>) -> Result<(), RolloutError> {
    let mut updates = futures::stream::iter(machines)
        .map(|machine| ctx.deploy_machine(machine, false))
        .buffer_unordered(IMMEDIATE_CONCURRENCY);
    let mut first_error = None;
    // Unlike rolling, nothing waits on health: let every update finish so that the fleet is not
    // left half-way just because one request failed.
    while let Some(result) = updates.next().await {
        if let Err(err) = result {
            first_error.get_or_insert(err);
        }
    }
    first_error.map_or(Ok(()), Err)
}
