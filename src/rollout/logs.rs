//! A machine's logs from api.fly.io's app logs (fly-go `GetAppLogs`), read the two ways flyctl
//! reads them in a deploy: followed for the release command, one page for a crash loop.

use crate::fly::api::ApiError;
use crate::fly::platform::PlatformApi;
use std::time::Duration;

/// The logs API refused this token: deploy tokens may not read logs (flyctl's warning in
/// `machines_releasecommand.go` `waitForLogs` and `doSmokeChecks`).
fn refused(err: &ApiError) -> bool {
    matches!(err.status(), Some(401 | 403))
}

fn refused_note(machine: &str) -> String {
    format!("this token may not read the app's logs (deploy tokens cannot): `fly logs -i {machine}`")
}

/// What a crash-looping machine logged since it last changed, as flyctl shows it when smoke
/// checks fail (`machines_deploymachinesapp.go`, `doSmokeChecks`: one page of `GetAppLogs` for
/// the machine, the lines at or after its `UpdatedAt`): its last lines, why they cannot be
/// read, or "" when there are none. Asked for at most 10 s, since the rollback waits for it.
pub async fn since_update(platform: Option<&PlatformApi>, app: &str, machine: &str, since: &str) -> String {
    const SHOWN: usize = 50;
    let page = match platform {
        Some(platform) => tokio::time::timeout(Duration::from_secs(10), platform.app_logs(app, machine, ""))
            .await
            .unwrap_or(None),
        None => None,
    };
    // Whole seconds: log lines carry fractions, `updated_at` does not.
    let second = |t: &str| t.get(..19).unwrap_or(t).to_string();
    match page {
        Some(Ok((entries, _))) => {
            let lines: Vec<String> = entries
                .into_iter()
                .filter(|e| second(&e.timestamp) >= second(since))
                .map(|e| e.message)
                .collect();
            let shown = &lines[lines.len().saturating_sub(SHOWN)..];
            if shown.is_empty() {
                return String::new();
            }
            format!(
                "its last {} log line(s) (all of them: `fly logs -i {machine}`):\n{}",
                shown.len(),
                shown.join("\n")
            )
        }
        Some(Err(err)) if refused(&err) => refused_note(machine),
        _ => String::new(),
    }
}

/// How many of the release command's last log lines a failure shows (flyctl's ring of 100).
const LOG_LINES: usize = 100;
/// How long a failure waits for the logs to catch up (flyctl `waitForLogs`: 20 s).
const LOG_WAIT: Duration = Duration::from_secs(20);
/// flyctl's polling pauses (`logs/polling.go`): 64 ms doubling up to 4 s after errors, 128 ms
/// while there is nothing new.
const LOG_POLL_MIN: Duration = Duration::from_millis(64);
const LOG_POLL_MAX: Duration = Duration::from_millis(64 << 6);

/// A one-shot machine's logs (the release command's, a machine check's test machine), polled
/// from the moment it exists as flyctl polls the release command's
/// when its NATS stream is unavailable (`machines_releasecommand.go`, `logs/polling.go`),
/// keeping the last `LOG_LINES`, until init says the command ended ("Main child exited
/// normally"). With `-v` every line is shown as it comes, as flyctl's `--verbose` shows them.
pub struct LogFollower {
    lines: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
    task: tokio::task::JoinHandle<Result<(), crate::fly::api::ApiError>>,
}

impl LogFollower {
    /// `label` names the machine in -v lines ("release_command machine").
    pub fn start(
        platform: crate::fly::platform::PlatformApi,
        app: String,
        machine: String,
        label: &'static str,
        reporter: crate::progress::Reporter,
    ) -> Self {
        let lines = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let kept = lines.clone();
        let task = tokio::spawn(async move {
            let (mut token, mut pause, mut errors) = (String::new(), LOG_POLL_MIN, 0);
            loop {
                if pause > LOG_POLL_MIN {
                    tokio::time::sleep(pause).await;
                }
                let Some(page) = platform.app_logs(&app, &machine, &token).await else {
                    return Ok(());
                };
                let (entries, next) = match page {
                    Ok(page) => page,
                    Err(err) => {
                        errors += 1;
                        if matches!(err.status(), Some(401 | 403 | 404)) || errors > 9 {
                            return Err(err);
                        }
                        pause = (pause * 2).min(LOG_POLL_MAX);
                        continue;
                    }
                };
                errors = 0;
                if entries.is_empty() {
                    pause = LOG_POLL_MIN * 2;
                    continue;
                }
                pause = Duration::ZERO;
                if !next.is_empty() {
                    token = next;
                }
                let mut lines = kept.lock().unwrap_or_else(|e| e.into_inner());
                for entry in entries {
                    if lines.len() == LOG_LINES {
                        lines.pop_front();
                    }
                    let line = format!("{} {}", entry.timestamp, entry.message);
                    reporter.debug(format!("{label} {machine}: {line}"));
                    lines.push_back(line);
                    if entry.message.contains("Main child exited normally") {
                        return Ok(());
                    }
                }
            }
        });
        LogFollower { lines, task }
    }

    pub fn stop(self) {
        self.task.abort();
    }

    /// What a failure shows of the logs: the last lines, once init's last word is in or
    /// `LOG_WAIT` has passed, or why there are none.
    pub async fn finish(self, machine: &str) -> String {
        let LogFollower { lines, mut task } = self;
        let ended = tokio::time::timeout(LOG_WAIT, &mut task).await;
        task.abort();
        let lines: Vec<String> = lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        let note = match ended {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(err))) if refused(&err) => Some(refused_note(machine)),
            Ok(Ok(Err(err))) => Some(format!(
                "reading its logs failed ({err}): `fly logs -i {machine}`"
            )),
            Ok(Err(_)) => Some(format!("reading its logs stopped: `fly logs -i {machine}`")),
            Err(_) => Some(format!(
                "its logs did not arrive within {}s: `fly logs -i {machine}`",
                LOG_WAIT.as_secs()
            )),
        };
        let mut shown = String::new();
        if !lines.is_empty() {
            shown = format!("its last {} log line(s):\n{}", lines.len(), lines.join("\n"));
        }
        match note {
            Some(note) if shown.is_empty() => note,
            Some(note) => format!("{shown}\n({note})"),
            None if shown.is_empty() => format!("it logged nothing: `fly logs -i {machine}`"),
            None => shown,
        }
    }
}
