//! Machines that run one command and go: the release command's and the machine checks' test
//! machines, which flyctl runs alike (`machines_releasecommand.go`, `machinebasedtest.go`).
//! Each is waited for until started (a 404 then is one that already ran and was destroyed, as
//! flyctl allows) and then destroyed, judged by the exit code of its last run, and its logs are
//! followed from the app's logs so that a failure can show them.

use super::error::RolloutError;
use super::health::wait_for_state;
use super::logs::LogFollower;
use super::update::Ctx;
use crate::fly::types::Machine;
use std::time::{Duration, Instant};

/// How a one-shot machine's run ended.
pub(super) enum Ended {
    Exited(i64),
    /// Destroyed without an exit event: its exit code is unknown.
    NoExitEvent,
    /// Not destroyed within the time allowed: still pulling or running.
    TimedOut,
}

/// Wait for machine `id` to start (within the deploy's wait timeout) and then to be destroyed
/// (within `timeout`), and read how its run ended.
pub(super) async fn run_to_exit(ctx: &Ctx, id: &str, timeout: Duration) -> Result<Ended, RolloutError> {
    // A quick command may have finished and been destroyed already: 404 is fine here.
    match wait_for_state(&ctx.api, id, "started", None, ctx.spec.wait_timeout).await {
        Err(RolloutError::Api { source, .. }) if source.status() == Some(404) => {}
        other => other?,
    }
    let deadline = Instant::now() + timeout;
    loop {
        // A 404 while waiting for `destroyed` is that state (`wait_for_state`).
        let left = deadline.saturating_duration_since(Instant::now());
        match wait_for_state(&ctx.api, id, "destroyed", None, left).await {
            Ok(()) => {}
            Err(RolloutError::WaitTimeout { .. }) => return Ok(Ended::TimedOut),
            Err(err) => return Err(err),
        }
        let machine = read_back(ctx, id).await?;
        if let Some(code) = exit_of_last_run(&machine) {
            return Ok(Ended::Exited(code));
        }
        if machine.state == "destroyed" {
            return Ok(Ended::NoExitEvent);
        }
        // Both 404s were the API not showing the new machine yet, not its end: it is still
        // starting or running, and is waited for again now that the API shows it.
        tokio::time::sleep(READ_BACK_RETRY).await;
    }
}

/// How long a one-shot machine that has run may stay out of the API's sight.
const READ_BACK_PATIENCE: Duration = Duration::from_secs(30);
const READ_BACK_RETRY: Duration = Duration::from_millis(250);

/// The machine as the API shows it. Fly keeps a destroyed machine readable (flyctl reads the
/// exit event of its destroyed release_command and test machines:
/// `internal/machine/leasable_machine.go`, `WaitForEventType`), so a 404 here is a machine the
/// API does not show yet: reads lag behind a create (what flyctl's `WithJustCreated` waits
/// out), and the waits above take a 404 for a machine that has run and gone. flyctl fails on
/// that 404 at once; nixfly asks again for a while.
async fn read_back(ctx: &Ctx, id: &str) -> Result<Machine, RolloutError> {
    let deadline = Instant::now() + READ_BACK_PATIENCE;
    loop {
        match ctx.api.get_machine(id).await {
            Err(err) if err.status() == Some(404) && Instant::now() < deadline => {
                tokio::time::sleep(READ_BACK_RETRY).await;
            }
            other => {
                return other.map_err(|source| RolloutError::api("reading the exit code of", id, source));
            }
        }
    }
}

/// The exit code of the run after the latest `start` (events are newest first). An exit
/// event carries no output (fly-go `MachineExitEvent`): that is in the app's logs.
pub(super) fn exit_of_last_run(machine: &Machine) -> Option<i64> {
    let exit = machine
        .events
        .iter()
        .take_while(|e| e.kind != "start")
        .find(|e| e.kind == "exit")?;
    Some(exit.exit_info()?.exit_code)
}

/// Run `body` on one-shot machine `id` (`label` names it in messages) with its logs followed
/// when the app's logs can be read. A failure that shows logs gets the last lines; with -v a
/// success waits for its last lines, which show as they come, as flyctl's --verbose waits
/// for them whatever the exit code (`waitForLogs`). One still running when its time ran out is
/// destroyed rather than left behind.
pub(super) async fn watched(
    ctx: &Ctx,
    id: &str,
    label: &'static str,
    body: impl std::future::Future<Output = Result<(), RolloutError>>,
) -> Result<(), RolloutError> {
    let logs = ctx.platform.clone().map(|platform| {
        LogFollower::start(
            platform,
            ctx.spec.app.clone(),
            id.to_string(),
            label,
            ctx.reporter.clone(),
        )
    });
    let mut result = body.await;
    let verbose_success = result.is_ok() && ctx.reporter.verbose() > 0;
    match (result.as_mut().err().and_then(RolloutError::shown_logs), logs) {
        (Some(shown), Some(logs)) => *shown = logs.finish(id).await,
        (None, Some(logs)) if verbose_success => {
            logs.finish(id).await;
        }
        (_, Some(logs)) => logs.stop(),
        (_, None) => {}
    }
    if result.as_ref().is_err_and(RolloutError::left_running)
        && let Err(err) = ctx.api.destroy_machine(id, None).await
    {
        ctx.reporter.warn(format!(
            "cannot destroy {label} {id} ({err}); destroy it with `fly machine destroy --force {id}`"
        ));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exit_code_comes_from_the_run_after_the_latest_start() {
        let machine: Machine = serde_json::from_value(json!({"id": "r1", "events": [
            {"type": "destroy"},
            {"type": "exit", "request": {"exit_event": {"exit_code": 3}}},
            {"type": "start"},
            {"type": "exit", "request": {"exit_event": {"exit_code": 0}}},
            {"type": "start"}
        ]}))
        .unwrap();
        assert_eq!(exit_of_last_run(&machine), Some(3));
        let never_exited: Machine =
            serde_json::from_value(json!({"id": "r1", "events": [{"type": "start"}]})).unwrap();
        assert_eq!(exit_of_last_run(&never_exited), None);
    }
}
