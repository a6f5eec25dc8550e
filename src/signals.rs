//! SIGINT and SIGTERM as events. A command installs them before it starts anything it must
//! undo, so that neither signal kills nixfly midway: the command stops its work, cleans up
//! (upload sessions cancelled, a stream script's process group killed, leases released,
//! release marked) and exits with `error::EXIT_INTERRUPTED`.
//!
//! Once installed, tokio's handler stays for the life of the process: a signal that arrives
//! while no [`Signals`] is alive (a deploy between its push and its rollout, or at a prompt)
//! would be swallowed. A watcher started with the first one keeps the default action for those
//! moments: it ends nixfly at once, with 130, when nobody else listens.

use crate::progress::Reporter;
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A command's hold on SIGINT and SIGTERM; while one is alive, the watcher leaves signals to it.
pub struct Signals(Listener);

struct Listener {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

/// [`Signals`] alive now.
static LISTENING: AtomicUsize = AtomicUsize::new(0);
static WATCHER: Once = Once::new();

impl Signals {
    /// Listen from now on; the first call also starts the watcher, which ends a command
    /// through `reporter` (so that JSON output still ends with its `error` event).
    pub fn install(reporter: &Reporter) -> anyhow::Result<Self> {
        let signals = Signals(Listener::new()?);
        LISTENING.fetch_add(1, Ordering::SeqCst);
        WATCHER.call_once(|| {
            let reporter = reporter.clone();
            if let Ok(mut watcher) = Listener::new() {
                tokio::spawn(async move {
                    loop {
                        let signal = watcher.recv().await;
                        if LISTENING.load(Ordering::SeqCst) == 0 {
                            let code = crate::error::EXIT_INTERRUPTED;
                            let err = anyhow::anyhow!("interrupted by {signal}; nothing was being changed");
                            reporter.fail(&err, code);
                            std::process::exit(code.into());
                        }
                    }
                });
            }
        });
        Ok(signals)
    }

    /// The next signal's name.
    pub async fn recv(&mut self) -> &'static str {
        self.0.recv().await
    }
}

impl Listener {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Listener {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        LISTENING.fetch_sub(1, Ordering::SeqCst);
    }
}
