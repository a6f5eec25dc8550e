//! Rolling: machines of a group in id order; the first running machine alone, then a pool of
//! `max_unavailable` machines at a time. The first failure stops the group.

use super::error::RolloutError;
use super::plan::rolling_order;
use super::update::Ctx;
use crate::fly::types::Machine;
use futures::StreamExt;

pub async fn run(ctx: &Ctx, machines: &[Machine]) -> Result<(), RolloutError> {
    let order = rolling_order(machines, ctx.spec.max_unavailable);
    if let Some(first) = order.first {
        ctx.deploy_machine(first, true).await?;
    }
    let mut pool = futures::stream::iter(order.rest)
        .map(|machine| ctx.deploy_machine(machine, true))
        .buffer_unordered(order.pool);
    while let Some(result) = pool.next().await {
        // Returning drops the pool: machines still in flight stop being waited for, and the
        // rollback (which covers every journaled machine) puts them back.
        result?;
    }
    Ok(())
}
