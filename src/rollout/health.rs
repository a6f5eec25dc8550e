//! Waiting for a machine: a state through the API's `wait` call (at most 60 s a call, looped up
//! to the deploy's `wait_timeout`), then every health check passing, with the smoke check that
//! catches a main process restarting in a loop.

use super::error::RolloutError;
use crate::fly::api::{ApiError, MachinesApi};
use crate::fly::types::{CheckStatus, Machine};
use crate::progress::{Event, Reporter};
use std::time::{Duration, Instant};

/// Check polling starts fast (a healthy machine is done in one or two polls) and slows down
/// for machines that take their time.
const CHECK_POLL_FIRST: Duration = Duration::from_millis(100);
const CHECK_POLL_MAX: Duration = Duration::from_secs(1);

/// How often to ask again about a machine the API does not show yet.
const JUST_CREATED_RETRY: Duration = Duration::from_millis(250);
/// Backoff between waits that failed for a passing reason: 0.5 s doubling to 2 s, as flyctl's
/// `WaitForState` backs off (`internal/machine/leasable_machine.go`).
const WAIT_RETRY_FIRST: Duration = Duration::from_millis(500);
const WAIT_RETRY_MAX: Duration = Duration::from_secs(2);

/// Wait until the machine reaches `state`, looping the API's capped `wait` calls.
pub async fn wait_for_state(
    api: &MachinesApi,
    machine: &str,
    state: &'static str,
    version: Option<&str>,
    timeout: Duration,
) -> Result<(), RolloutError> {
    wait_until(api, machine, state, version, timeout, false)
        .await
        .map(drop)
}

/// `wait_for_state` for a machine created moments ago: the API may not show it yet and
/// answers 404 for a while, which is retried until the deadline (flyctl
/// `internal/machine/leasable_machine.go`, `WaitForState` with `WithJustCreated`).
pub async fn wait_for_new_machine(
    api: &MachinesApi,
    machine: &str,
    state: &'static str,
    version: Option<&str>,
    timeout: Duration,
) -> Result<(), RolloutError> {
    wait_for_new_machine_state(api, machine, state, version, timeout)
        .await
        .map(drop)
}

/// `wait_for_new_machine` for any of the comma-separated `states`, answering the one reached
/// when the API names it.
pub async fn wait_for_new_machine_state(
    api: &MachinesApi,
    machine: &str,
    states: &'static str,
    version: Option<&str>,
    timeout: Duration,
) -> Result<Option<String>, RolloutError> {
    wait_until(api, machine, states, version, timeout, true).await
}

async fn wait_until(
    api: &MachinesApi,
    machine: &str,
    state: &'static str,
    version: Option<&str>,
    timeout: Duration,
    just_created: bool,
) -> Result<Option<String>, RolloutError> {
    let deadline = Instant::now() + timeout;
    let mut backoff = WAIT_RETRY_FIRST;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RolloutError::WaitTimeout {
                machine: machine.to_string(),
                state,
                timeout,
            });
        }
        match api.wait(machine, state, version, left).await {
            Ok(reached) => return Ok(reached),
            // The API's own timeout: keep waiting until ours runs out, unless the machine has
            // given up (a machine in `failed` never reaches `started` by itself).
            Err(err) if err.status() == Some(408) => {
                if state.split(',').any(|s| s == "started")
                    && let Ok(current) = api.get_machine(machine).await
                    && current.state == "failed"
                {
                    return Err(failed_to_start(&current));
                }
            }
            // Gone is what waiting for `destroyed` wanted.
            Err(err) if err.status() == Some(404) && state == "destroyed" => return Ok(None),
            Err(err) if err.status() == Some(404) && just_created => {
                tokio::time::sleep(JUST_CREATED_RETRY.min(left)).await;
            }
            // flyctl's `WaitForState` waits through any other failure until its deadline; this
            // waits through the passing ones (`fly machine wait`'s `isRetryableWaitError`:
            // 429, 5xx, "currently replaced"; and a lost connection), once the request's own
            // retries are spent, and stops on a refusal that asking again will not change.
            Err(err) if wait_may_pass(&err) => {
                tokio::time::sleep(backoff.min(left)).await;
                backoff = (backoff * 2).min(WAIT_RETRY_MAX);
            }
            Err(source) => return Err(RolloutError::api("waiting for", machine, source)),
        }
    }
}

/// A wait that failed this way may work when asked again.
fn wait_may_pass(err: &ApiError) -> bool {
    match err.status() {
        Some(status) => {
            status == 429
                || status >= 500
                || err
                    .message()
                    .is_some_and(|m| m.to_lowercase().contains("currently replaced"))
        }
        None => matches!(err, ApiError::Transport { .. }),
    }
}

fn failed_to_start(machine: &Machine) -> RolloutError {
    RolloutError::FailedToStart {
        machine: machine.id.clone(),
        state: machine.state.clone(),
        last_event: machine
            .events
            .first()
            .map(|e| {
                format!("{} {}", e.kind, e.status.as_deref().unwrap_or(""))
                    .trim()
                    .to_string()
            })
            .unwrap_or_else(|| "none".into()),
    }
}

/// A machine whose main process exits non-zero and keeps being restarted is broken even if
/// its checks happen to pass between restarts.
pub fn smoke_check(machine: &Machine) -> Result<(), RolloutError> {
    match machine.latest_exit() {
        Some(exit) if exit.restarting && exit.restart_count > 1 && exit.exit_code != 0 => {
            Err(RolloutError::CrashLoop {
                machine: machine.id.clone(),
                exit_code: exit.exit_code,
                restarts: exit.restart_count,
                oom_killed: exit.oom_killed,
                since: machine.updated_at.clone().unwrap_or_default(),
                logs: String::new(),
            })
        }
        _ => Ok(()),
    }
}

/// Where a machine's checks stand: how many pass, out of how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tally {
    passing: usize,
    total: usize,
}

impl Tally {
    /// The results the platform reports, counted against the `expected` checks the machine's
    /// config defines (top-level and services', as flyctl counts them): a check not reported
    /// yet counts as not passing. flyctl compares with the reported results only
    /// (`internal/machine/leasable_machine.go`, `WaitForHealthchecksToPass`), so that one
    /// check passing while another has no result yet would do; nixfly waits for that one too.
    fn of(expected: usize, checks: &[CheckStatus]) -> Tally {
        Tally {
            passing: checks.iter().filter(|c| c.status == "passing").count(),
            total: expected.max(checks.len()),
        }
    }

    /// Every check passes, and there is at least one: no result at all is still waiting, not
    /// a vacuous pass (flyctl `WaitForHealthchecksToPass`, `Total == 0`).
    fn all_passing(self) -> bool {
        self.total > 0 && self.passing == self.total
    }
}

/// How long to watch a machine and what for, once it has started.
#[derive(Clone, Copy, Debug)]
pub struct HealthWait {
    /// Checks the machine's config defines (top-level and service checks).
    pub expected_checks: usize,
    /// How long they may take to pass.
    pub timeout: Duration,
    /// For a machine without checks: how long to watch it for a crash loop.
    pub smoke_window: Duration,
}

/// Poll the machine until as many checks as its config defines report `passing`, failing on a
/// crash loop or when the timeout runs out. A machine without checks is watched for the smoke
/// window instead.
pub async fn wait_healthy(
    api: &MachinesApi,
    reporter: &Reporter,
    machine_id: &str,
    group: &str,
    wait: HealthWait,
) -> Result<(), RolloutError> {
    let HealthWait {
        expected_checks: expected,
        timeout,
        smoke_window,
    } = wait;
    let deadline = Instant::now() + timeout;
    let smoke_until = Instant::now() + smoke_window.min(timeout);
    let mut last_shown = None;
    let mut poll = CHECK_POLL_FIRST;
    loop {
        let machine = api
            .get_machine(machine_id)
            .await
            .map_err(|source| RolloutError::api("reading the health of", machine_id, source))?;
        smoke_check(&machine)?;
        // A machine without checks that ran and exited 0 (a one-shot process group) is done,
        // not broken: flyctl's smoke check fails only a machine that keeps restarting
        // (`internal/machine/leasable_machine.go`, `WaitForSmokeChecksToPass`). Anything else
        // that stopped or failed did not come up.
        let finished_cleanly = machine.state == "stopped"
            && machine
                .latest_exit()
                .is_some_and(|exit| exit.exit_code == 0 && !exit.restarting);
        if expected == 0 && finished_cleanly {
            return Ok(());
        }
        if matches!(machine.state.as_str(), "failed" | "stopped") {
            return Err(failed_to_start(&machine));
        }
        if expected == 0 {
            // Nothing to poll for: watch the machine for the smoke window instead.
            if Instant::now() >= smoke_until {
                return Ok(());
            }
            tokio::time::sleep(poll.min(smoke_until.saturating_duration_since(Instant::now()))).await;
            poll = (poll * 2).min(CHECK_POLL_MAX);
            continue;
        }
        let tally = Tally::of(expected, &machine.checks);
        let Tally { passing, total } = tally;
        if last_shown != Some(passing) {
            last_shown = Some(passing);
            reporter.emit(Event::Machine {
                machine: machine_id.to_string(),
                group: group.to_string(),
                status: format!("checks {passing}/{total} passing"),
            });
        }
        if tally.all_passing() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let failing = machine
                .checks
                .iter()
                .filter(|c| c.status != "passing")
                .map(|c| {
                    let output = c.output.as_deref().unwrap_or("").trim();
                    if output.is_empty() {
                        format!("{} is {}", c.name, c.status)
                    } else {
                        format!("{} is {}: {output}", c.name, c.status)
                    }
                })
                .collect::<Vec<_>>();
            return Err(RolloutError::ChecksFailing {
                machine: machine_id.to_string(),
                timeout,
                passing,
                expected: total,
                failing: if failing.is_empty() {
                    "no check has reported yet".to_string()
                } else {
                    failing.join("; ")
                },
            });
        }
        tokio::time::sleep(poll.min(deadline.saturating_duration_since(Instant::now()))).await;
        poll = (poll * 2).min(CHECK_POLL_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn with_events(events: serde_json::Value) -> Machine {
        serde_json::from_value(json!({"id": "m1", "events": events})).unwrap()
    }

    fn checks(statuses: &[(&str, &str)]) -> Vec<CheckStatus> {
        statuses
            .iter()
            .map(|(name, status)| CheckStatus {
                name: name.to_string(),
                status: status.to_string(),
                output: None,
            })
            .collect()
    }

    /// flyctl `internal/machine/leasable_machine_test.go`: `_TotalZeroDoesNotPass` (no result
    /// yet is waiting, then a passing one passes), `_PassesWhenAllChecksPass`,
    /// `_TimesOutWhenChecksFail` (a critical check never passes), and
    /// `_ServiceChecksAreIncluded` (a service's check is a configured check, reported under
    /// flaps' own name). `_NoConfiguredChecks`: a config without checks expects none, and the
    /// machine is then watched for the smoke window instead (flyctl's `doSmokeChecks` polls it
    /// too). nixfly's own rule: a configured check with no result yet is not passing.
    #[test]
    fn checks_pass_once_reported_and_all_passing() {
        assert!(!Tally::of(1, &[]).all_passing());
        assert!(Tally::of(1, &checks(&[("alive", "passing")])).all_passing());
        assert!(!Tally::of(1, &checks(&[("alive", "critical")])).all_passing());
        assert!(!Tally::of(1, &checks(&[("alive", "warning")])).all_passing());

        let service_check = json!({"services": [{"protocol": "tcp", "internal_port": 8080,
            "checks": [{"type": "http"}]}]});
        let expected = crate::fly::types::config_check_count(&service_check);
        assert_eq!(expected, 1);
        let reported = checks(&[("servicecheck-00-http-8080", "passing")]);
        assert!(Tally::of(expected, &reported).all_passing());

        assert_eq!(crate::fly::types::config_check_count(&json!({})), 0);

        let tally = Tally::of(2, &checks(&[("alive", "passing")]));
        assert_eq!(tally, Tally { passing: 1, total: 2 });
        assert!(!tally.all_passing());
    }

    #[test]
    fn smoke_check_fails_only_on_repeated_non_zero_restarts() {
        let looping = with_events(json!([
            {"type": "exit", "request": {"exit_event": {"exit_code": 2, "restarting": true}, "restart_count": 2}}
        ]));
        let err = smoke_check(&looping).unwrap_err().to_string();
        assert!(err.contains("m1") && err.contains("code 2"), "{err}");

        for fine in [
            json!([{"type": "exit", "request": {"exit_event": {"exit_code": 2, "restarting": true}, "restart_count": 1}}]),
            json!([{"type": "exit", "request": {"exit_event": {"exit_code": 0, "restarting": true}, "restart_count": 5}}]),
            json!([{"type": "exit", "request": {"exit_event": {"exit_code": 1, "restarting": false}, "restart_count": 5}}]),
            json!([{"type": "start"}]),
        ] {
            assert!(smoke_check(&with_events(fine.clone())).is_ok(), "{fine}");
        }
    }
}
