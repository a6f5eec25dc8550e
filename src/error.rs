//! Exit codes and the last line of defence against leaking secrets in error text.

use std::sync::{Mutex, OnceLock};

/// Generic failure: bad input, network, registry or API error. Nothing was changed on Fly.
pub const EXIT_FAILURE: u8 = 1;
/// A rollout that failed after changing machines (rolled back, or left as is with
/// `--no-rollback`). The same code as any failure, as the rollout's specification asks; the
/// error says which machines were rolled back. Never 0.
pub const EXIT_ROLLED_BACK: u8 = EXIT_FAILURE;
/// A command line nixfly cannot parse (an unknown flag, a bad value, a missing argument), as
/// clap and most command-line tools exit. Nothing was done.
pub const EXIT_USAGE: u8 = 2;
/// Interrupted by SIGINT/SIGTERM after cleaning up (leases released, release marked interrupted).
pub const EXIT_INTERRUPTED: u8 = 130;

/// An error whose exit code is not the generic one. Attach with `anyhow::Error::from`
/// or `.context(...)`; `exit_code` finds it anywhere in the chain.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ExitCodeError {
    pub code: u8,
    pub message: String,
}

/// An error and its sources on one line, for warnings that do not end the command.
pub fn chain_text(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

pub fn exit_code(err: &anyhow::Error) -> u8 {
    // `chain()` yields context layers as opaque wrappers; `downcast_ref` sees through them.
    err.downcast_ref::<ExitCodeError>()
        .or_else(|| {
            err.chain()
                .find_map(|cause| cause.downcast_ref::<ExitCodeError>())
        })
        .map_or(EXIT_FAILURE, |e| e.code)
}

fn secrets() -> &'static Mutex<Vec<String>> {
    static SECRETS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    SECRETS.get_or_init(|| Mutex::new(Vec::new()))
}

/// Register a secret (token, password) so that `redacted` removes it from any text shown to
/// the user. Every place that reads a credential calls this before using it.
pub fn register_secret(secret: &str) {
    let secret = secret.trim();
    // Very short strings would redact ordinary words; real credentials are long.
    if secret.len() < 8 {
        return;
    }
    let mut list = secrets().lock().unwrap_or_else(|e| e.into_inner());
    for part in std::iter::once(secret).chain(secret.split(',')) {
        let part = part.trim();
        if part.len() >= 8 && !list.iter().any(|s| s == part) {
            list.push(part.to_string());
        }
    }
    // Longest first, so a whole token is replaced before any of its parts.
    list.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// `text` with every registered secret replaced by `[REDACTED]`.
pub fn redacted(text: &str) -> String {
    let list = secrets().lock().unwrap_or_else(|e| e.into_inner());
    let mut out = text.to_string();
    for secret in list.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "[REDACTED]");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_secrets_and_their_comma_parts_are_redacted() {
        register_secret("FlyV1 fm2_aaaaaaaaaaaa,fm2_bbbbbbbbbbbb");
        let text = "token fm2_bbbbbbbbbbbb was rejected; full FlyV1 fm2_aaaaaaaaaaaa,fm2_bbbbbbbbbbbb";
        let out = redacted(text);
        assert!(!out.contains("fm2_a"), "{out}");
        assert!(!out.contains("fm2_b"), "{out}");
        assert!(out.contains("[REDACTED]"));
    }

    #[test]
    fn exit_code_is_found_anywhere_in_the_chain() {
        let err = anyhow::Error::from(ExitCodeError {
            code: EXIT_INTERRUPTED,
            message: "rolled back".into(),
        })
        .context("deploying app demo");
        assert_eq!(exit_code(&err), EXIT_INTERRUPTED);
        assert_eq!(exit_code(&anyhow::anyhow!("plain")), EXIT_FAILURE);
        // Attached as context over a typed error, keeping that error's chain.
        let err = anyhow::Error::from(std::io::Error::other("root cause"))
            .context(ExitCodeError {
                code: EXIT_INTERRUPTED,
                message: "interrupted".into(),
            })
            .context("deploying app demo");
        assert_eq!(exit_code(&err), EXIT_INTERRUPTED);
    }
}
