//! Rolling: within a group, the running machines in id order, the first alone, then a pool of
//! `max_unavailable`; beside them, at the same time, the stopped machines in their own pool
//! (they take no traffic). The first failure stops the group.

use super::error::RolloutError;
use super::update::Ctx;
use super::waves::{Pool, rolling_order};
use crate::fly::types::Machine;
use futures::StreamExt;

pub async fn run(ctx: &Ctx, machines: &[Machine]) -> Result<(), RolloutError> {
    let order = rolling_order(machines, ctx.spec.max_unavailable);
    // Returning the first error drops the other pool: machines still in flight stop being
    // waited for, and the rollback (which covers every journaled machine) puts them back. A
    // create or destroy already sent is still read to its answer (`Ctx::in_flight`).
    futures::future::try_join(run_pool(ctx, order.running), run_pool(ctx, order.stopped)).await?;
    Ok(())
}

async fn run_pool(ctx: &Ctx, pool: Pool<'_>) -> Result<(), RolloutError> {
    if let Some(first) = pool.first {
        ctx.deploy_machine(first, true).await?;
    }
    let mut updates = futures::stream::iter(pool.rest)
        .map(|machine| ctx.deploy_machine(machine, true))
        .buffer_unordered(pool.size);
    while let Some(result) = updates.next().await {
        result?;
    }
    Ok(())
}
