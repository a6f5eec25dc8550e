//! Progress is a stream of events sent to one reporter chosen once at start-up: indicatif bars
//! on a terminal, plain lines otherwise, JSON lines with `--output json`. Humans read stderr;
//! machines read stdout.

mod bars;

use serde::{Deserialize, Serialize};
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};

/// How progress and results are shown (`--output`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputMode {
    /// Bars on a terminal, plain lines otherwise.
    Auto,
    /// One line per step on stderr, no bars.
    Plain,
    /// One JSON object per line on stdout (the final result included); nothing else on stdout.
    Json,
}

/// What became of one layer blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerOutcome {
    /// The registry already had it (cache or HEAD), or an earlier layer of the same image with
    /// the same content brought it: nothing compressed or sent.
    Skipped,
    /// Mounted from another repository of the same registry.
    Mounted,
    /// Compressed and uploaded.
    Uploaded,
}

/// One thing that happened. Serialised as `{"event": "<snake_case name>", ...}` for JSON lines
/// (documented in docs/API.md, "JSON output"); `Deserialize` reads such a line back, for
/// programs that consume them and for the test that holds the docs to this enum.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A step worth a line for a human.
    Info { message: String },
    /// Something the user should act on, but not fatal.
    Warning { message: String },
    /// Detail shown only with `-v` (child process output, HTTP requests).
    Debug { message: String },
    /// A layer is being looked at. `index` is its position in the image (0-based).
    LayerStarted {
        index: usize,
        diff_id: String,
        size: Option<u64>,
    },
    /// `bytes` more uncompressed bytes of the layer have been processed.
    LayerProgress { index: usize, bytes: u64 },
    /// The layer's blob is in the registry.
    LayerDone {
        index: usize,
        outcome: LayerOutcome,
        digest: String,
        size: u64,
    },
    /// The manifest is up: `reference` is `host/repo@sha256:...`.
    Pushed { reference: String, tag: Option<String> },
    /// A machine changed state during a rollout (`waiting for lease`, `updating`, `checks 2/3 passing`, ...).
    Machine {
        machine: String,
        group: String,
        status: String,
    },
    /// The command failed: the whole error chain, and the process's exit code. Only JSON
    /// output carries it as an event; humans get the `error:` line on stderr either way.
    Error { message: String, exit_code: u8 },
    /// A machine is finished: `ok` false means it failed or was rolled back.
    MachineDone {
        machine: String,
        group: String,
        status: String,
        ok: bool,
    },
}

/// The single reporter of this process. Cheap to clone; all clones print to the same place.
#[derive(Clone)]
pub struct Reporter {
    inner: Arc<Inner>,
}

struct Inner {
    verbose: u8,
    sink: Sink,
}

enum Sink {
    Bars(Mutex<bars::Bars>),
    Plain(Mutex<std::io::Stderr>),
    Json(Mutex<std::io::Stdout>),
}

impl Reporter {
    pub fn new(mode: OutputMode, verbose: u8) -> Self {
        let sink = match mode {
            OutputMode::Json => Sink::Json(Mutex::new(std::io::stdout())),
            OutputMode::Auto if std::io::stderr().is_terminal() => Sink::Bars(Mutex::new(bars::Bars::new())),
            OutputMode::Auto | OutputMode::Plain => Sink::Plain(Mutex::new(std::io::stderr())),
        };
        Reporter {
            inner: Arc::new(Inner { verbose, sink }),
        }
    }

    /// A reporter that prints plain lines, for tests and library use.
    #[cfg(test)]
    pub fn plain() -> Self {
        Self::new(OutputMode::Plain, 0)
    }

    pub fn verbose(&self) -> u8 {
        self.inner.verbose
    }

    pub fn is_json(&self) -> bool {
        matches!(self.inner.sink, Sink::Json(_))
    }

    pub fn emit(&self, event: Event) {
        if let Event::Debug { .. } = event
            && self.inner.verbose == 0
        {
            return;
        }
        let event = redact_event(event);
        match &self.inner.sink {
            Sink::Json(out) => {
                let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
                if let Ok(line) = serde_json::to_string(&event) {
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
            }
            Sink::Plain(err) => {
                if let Some(line) = plain_line(&event) {
                    let mut err = err.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = writeln!(err, "{line}");
                }
            }
            Sink::Bars(bars) => bars.lock().unwrap_or_else(|e| e.into_inner()).handle(&event),
        }
    }

    pub fn info(&self, message: impl Into<String>) {
        self.emit(Event::Info {
            message: message.into(),
        });
    }

    pub fn warn(&self, message: impl Into<String>) {
        self.emit(Event::Warning {
            message: message.into(),
        });
    }

    pub fn debug(&self, message: impl Into<String>) {
        self.emit(Event::Debug {
            message: message.into(),
        });
    }

    /// Print the command's result for machines: the plain value on stdout, or nothing extra in
    /// JSON mode (the result is one of the events there).
    pub fn result(&self, value: &str) {
        let print = || {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{value}");
            let _ = out.flush();
        };
        match &self.inner.sink {
            Sink::Json(_) => {}
            // On a terminal stdout shares the screen with the bars: printed above them, the
            // result survives their redraws and the final clear.
            Sink::Bars(bars) => bars.lock().unwrap_or_else(|e| e.into_inner()).above(print),
            Sink::Plain(_) => print(),
        }
    }

    /// End the command with `err`: clear the bars, then the `error:` line on stderr, and in
    /// JSON mode an `error` event on stdout too.
    pub fn fail(&self, err: &anyhow::Error, exit_code: u8) {
        self.finish();
        let message = crate::error::redacted(&format!("{err:#}"));
        if self.is_json() {
            self.emit(Event::Error {
                message: message.clone(),
                exit_code,
            });
        }
        eprintln!("error: {message}");
    }

    /// Clear any bars before the process prints its last lines.
    pub fn finish(&self) {
        if let Sink::Bars(bars) = &self.inner.sink {
            bars.lock().unwrap_or_else(|e| e.into_inner()).finish();
        }
    }
}

fn redact_event(event: Event) -> Event {
    match event {
        Event::Info { message } => Event::Info {
            message: crate::error::redacted(&message),
        },
        Event::Warning { message } => Event::Warning {
            message: crate::error::redacted(&message),
        },
        Event::Debug { message } => Event::Debug {
            message: crate::error::redacted(&message),
        },
        Event::Error { message, exit_code } => Event::Error {
            message: crate::error::redacted(&message),
            exit_code,
        },
        other => other,
    }
}

pub(crate) fn short_digest(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

pub(crate) fn human_bytes(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}

/// The line plain mode prints for an event, or `None` for events only bars show.
fn plain_line(event: &Event) -> Option<String> {
    Some(match event {
        Event::Info { message } => message.clone(),
        Event::Warning { message } => format!("warning: {message}"),
        Event::Debug { message } => format!("debug: {message}"),
        Event::LayerStarted { .. } | Event::LayerProgress { .. } | Event::Error { .. } => return None,
        Event::LayerDone {
            index,
            outcome,
            digest,
            size,
        } => {
            let what = match outcome {
                LayerOutcome::Skipped => "already in registry",
                LayerOutcome::Mounted => "mounted",
                LayerOutcome::Uploaded => "uploaded",
            };
            format!(
                "layer {index} {} {what} ({})",
                short_digest(digest),
                human_bytes(*size)
            )
        }
        Event::Pushed { reference, .. } => format!("pushed {reference}"),
        Event::Machine {
            machine,
            group,
            status,
        } => format!("machine {machine} [{group}] {status}"),
        Event::MachineDone {
            machine,
            group,
            status,
            ..
        } => format!("machine {machine} [{group}] {status}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_events_are_tagged_snake_case() {
        let line = serde_json::to_string(&Event::LayerDone {
            index: 2,
            outcome: LayerOutcome::Skipped,
            digest: "sha256:abc".into(),
            size: 10,
        })
        .unwrap();
        assert_eq!(
            line,
            r#"{"event":"layer_done","index":2,"outcome":"skipped","digest":"sha256:abc","size":10}"#
        );
    }

    #[test]
    fn plain_lines_name_the_layer_and_outcome() {
        let line = plain_line(&Event::LayerDone {
            index: 0,
            outcome: LayerOutcome::Uploaded,
            digest: "sha256:0123456789abcdef".into(),
            size: 2048,
        })
        .unwrap();
        assert_eq!(line, "layer 0 0123456789ab uploaded (2.00 KiB)");
    }
}
