//! What can go wrong during a rollout, each naming the machine (or group) involved and the fix.

use crate::fly::api::ApiError;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("{action} machine {machine}")]
    Api {
        action: &'static str,
        machine: String,
        #[source]
        source: Box<ApiError>,
    },
    #[error("{action} for app {app}")]
    AppApi {
        action: &'static str,
        app: String,
        #[source]
        source: Box<ApiError>,
    },
    #[error(
        "machine {machine} did not reach state {state} within {}; raise --wait-timeout \
         ([deploy] wait_timeout in fly.toml) if it needs longer to boot",
        secs(*timeout)
    )]
    WaitTimeout {
        machine: String,
        state: &'static str,
        timeout: Duration,
    },
    #[error(
        "machine {machine} is {state} instead of running (last event: {last_event}); see \
         `fly logs -i {machine}`"
    )]
    FailedToStart {
        machine: String,
        state: String,
        last_event: String,
    },
    #[error(
        "machine {machine}: health checks did not all pass within {} ({passing}/{expected} \
         passing; {failing}); see `fly logs -i {machine}`",
        secs(*timeout)
    )]
    ChecksFailing {
        machine: String,
        timeout: Duration,
        passing: usize,
        expected: usize,
        failing: String,
    },
    #[error(
        "machine {machine} is crash looping: its main process exited with code {exit_code} and \
         was restarted {restarts} times{}; {}",
        if *oom_killed { " (killed for running out of memory)" } else { "" },
        if logs.is_empty() { format!("see `fly logs -i {machine}`") } else { logs.clone() }
    )]
    CrashLoop {
        machine: String,
        exit_code: i64,
        restarts: i64,
        oom_killed: bool,
        /// When the machine last changed (its `updated_at`): its logs since then are this run's.
        since: String,
        /// What its logs said since then, or why they could not be read ("" before they were
        /// asked for).
        logs: String,
    },
    #[error(
        "machine {machine} is leased by {owner} (expires {expires}); waited {} for it. Another \
         deploy is probably running; if it was interrupted, wait for the lease to expire or clear it \
         with `fly machine leases clear {machine}`",
        secs(*waited)
    )]
    LeaseHeld {
        machine: String,
        owner: String,
        expires: String,
        waited: Duration,
    },
    #[error(
        "machine {machine} was updated after this deploy read it (its version is now {leased}, \
         was {listed}): another deploy or a `fly` command changed it, perhaps the one whose lease \
         this deploy waited for. No machine was changed; run the deploy again to start from the \
         app as it is now"
    )]
    ChangedBeforeLease {
        machine: String,
        listed: String,
        leased: String,
    },
    #[error(
        "release_command `{command}` exited with code {exit_code} on machine {machine}; no app \
         machine was changed; {logs}"
    )]
    ReleaseCommandFailed {
        command: String,
        machine: String,
        exit_code: i64,
        /// The machine's last log lines, or where to find them.
        logs: String,
    },
    #[error(
        "release_command `{command}` on machine {machine} did not finish within {}; raise \
         [deploy] release_command_timeout (or --release-command-timeout)",
        secs(*timeout)
    )]
    ReleaseCommandTimeout {
        command: String,
        machine: String,
        timeout: Duration,
    },
    #[error(
        "release_command `{command}` on machine {machine} finished without an exit event, so \
         its exit code is unknown; the deploy stops to be safe"
    )]
    ReleaseCommandUnknownExit { command: String, machine: String },
    #[error(
        "machine check `{command}` failed on machine {machine}: its test machine {test_machine} \
         exited with code {exit_code}; {logs}"
    )]
    MachineCheckFailed {
        command: String,
        /// The machine under test.
        machine: String,
        test_machine: String,
        exit_code: i64,
        /// The test machine's last log lines, or where to find them.
        logs: String,
    },
    #[error(
        "machine check `{command}` on machine {machine}: its test machine {test_machine} did not \
         finish within {}; raise --wait-timeout ([deploy] wait_timeout in fly.toml) if it needs \
         longer",
        secs(*timeout)
    )]
    MachineCheckTimeout {
        command: String,
        machine: String,
        test_machine: String,
        timeout: Duration,
    },
    #[error(
        "machine check `{command}` on machine {machine}: its test machine {test_machine} finished \
         without an exit event, so its exit code is unknown; the deploy stops to be safe"
    )]
    MachineCheckUnknownExit {
        command: String,
        machine: String,
        test_machine: String,
    },
    #[error("release_command `{command}` cannot be split into arguments: {reason}")]
    ReleaseCommandInvalid { command: String, reason: String },
    #[error(
        "machine {machine} cannot be updated on its host ({reason}), and it cannot be replaced by \
         a new machine elsewhere because its volume {volume} lives on that host; deploy again \
         later, or fork the volume to another host (`fly volumes fork {volume}`) and move the \
         machine to the fork"
    )]
    HostUnavailableWithVolume {
        machine: String,
        volume: String,
        reason: String,
    },
    #[error(
        "machine {machine} needs an unattached volume {volume:?} in {region} to be replaced by, \
         and there is none left (it was there when the deploy began): create one with `fly \
         volume create {volume} --region {region}` and deploy again"
    )]
    VolumeGone {
        machine: String,
        volume: String,
        region: String,
    },
    #[error(
        "the bluegreen strategy needs at least one health check, and no machine has one: add \
         [checks] or service checks to fly.toml, or use --strategy rolling"
    )]
    BluegreenWithoutChecks,
}

impl RolloutError {
    /// A Machines API call about `machine` failed while `action`.
    pub(super) fn api(action: &'static str, machine: &str, source: crate::fly::api::ApiError) -> Self {
        RolloutError::Api {
            action,
            machine: machine.to_string(),
            source: source.into(),
        }
    }

    /// Where a one-shot machine's failure shows that machine's logs (`one_shot::watched`).
    pub(super) fn shown_logs(&mut self) -> Option<&mut String> {
        match self {
            RolloutError::ReleaseCommandFailed { logs, .. }
            | RolloutError::MachineCheckFailed { logs, .. } => Some(logs),
            _ => None,
        }
    }

    /// A one-shot machine that ended this way may still be pulling or running.
    pub(super) fn left_running(&self) -> bool {
        matches!(
            self,
            RolloutError::WaitTimeout { .. }
                | RolloutError::ReleaseCommandTimeout { .. }
                | RolloutError::MachineCheckTimeout { .. }
        )
    }
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}
