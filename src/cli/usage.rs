//! A command line clap refuses, reported as every other error is: with no credential in it, and
//! in JSON mode as an `error` event on stdout.
//!
//! clap prints an unexpected argument whole. A Fly token as `fly tokens create` prints it holds
//! a space (`FlyV1 fm2_…`), so `-t FlyV1 fm2_…` unquoted gives `-t` the word `FlyV1` and leaves
//! the macaroons as an argument clap would then print into the CI log.

use crate::error::{self, EXIT_USAGE};
use crate::progress::{Event, OutputMode, Reporter};
use clap::error::ErrorKind;
use std::ffi::OsString;

/// Flags whose value is a credential.
const SECRET_FLAGS: [&str; 3] = ["-t", "--access-token", "--creds"];
/// Environment variables that hold credentials clap may echo back (a value it cannot parse).
const SECRET_VARS: [&str; 4] = [
    "FLY_ACCESS_TOKEN",
    "FLY_API_TOKEN",
    "FLY_AUTH_TOKEN",
    "NIXFLY_REGISTRY_CREDS",
];
/// Prefixes of Fly's token kinds (fly-go `tokens/tokens.go`: macaroons `fm1r_`, `fm1a_`,
/// `fm2_`; OAuth `fo1_`): a word that holds one is a token wherever it appears.
const TOKEN_PREFIXES: [&str; 4] = ["fm1r_", "fm1a_", "fm2_", "fo1_"];

/// Print clap's refusal of `args` and return the exit code: `--help` and `--version` as clap
/// prints them (exit 0), anything else redacted, exit [`EXIT_USAGE`].
pub fn usage_error(err: &clap::Error, args: &[OsString]) -> u8 {
    if !err.use_stderr() || err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        // Help and version, on stdout; or the help a bare `nixfly` gets, which holds no input.
        let _ = err.print();
        return u8::try_from(err.exit_code()).unwrap_or(EXIT_USAGE);
    }
    let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    register_secrets(&args, |var| std::env::var(var).ok());
    let text = err.render().to_string();
    let shown = error::redacted(text.trim_end());
    let mut message = shown.strip_prefix("error: ").unwrap_or(&shown).to_string();
    if shown != text.trim_end() && err.kind() == ErrorKind::UnknownArgument {
        message.push_str(
            "\n\nA Fly token holds a space (\"FlyV1 fm2_…\"): quote it, as in -t \"$FLY_API_TOKEN\", \
             or leave -t out and set FLY_API_TOKEN.",
        );
    }
    if json_output(&args, std::env::var("NIXFLY_OUTPUT").ok().as_deref()) {
        Reporter::new(OutputMode::Json, 0).emit(Event::Error {
            message: message.clone(),
            exit_code: EXIT_USAGE,
        });
    }
    eprintln!("error: {message}");
    EXIT_USAGE
}

/// Register as secrets the values of credential flags in `args`, every word that holds a Fly
/// token, and the credential environment variables.
fn register_secrets(args: &[String], env: impl Fn(&str) -> Option<String>) {
    let mut value_is_secret = false;
    for arg in args {
        if std::mem::take(&mut value_is_secret) {
            error::register_secret(arg);
        }
        if SECRET_FLAGS.contains(&arg.as_str()) {
            value_is_secret = true;
        } else if let Some((flag, value)) = arg.split_once('=')
            && SECRET_FLAGS.contains(&flag)
        {
            error::register_secret(value);
        } else if let Some(value) = arg.strip_prefix("-t")
            && !arg.starts_with("--")
        {
            error::register_secret(value);
        }
        for word in arg.split([' ', ',', '\t', '\n']) {
            if TOKEN_PREFIXES.iter().any(|p| word.contains(p)) {
                error::register_secret(word);
            }
        }
    }
    for var in SECRET_VARS {
        if let Some(value) = env(var) {
            error::register_secret(&value);
        }
    }
}

/// Whether the command line, or else `NIXFLY_OUTPUT`, asks for JSON output (the last
/// `--output` wins, as clap takes it).
fn json_output(args: &[String], env: Option<&str>) -> bool {
    let mut mode = env.map(str::to_string);
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--output" {
            mode = iter.next().cloned();
        } else if let Some(value) = arg.strip_prefix("--output=") {
            mode = Some(value.to_string());
        }
    }
    mode.as_deref() == Some("json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn credential_flags_tokens_and_variables_are_registered() {
        register_secrets(
            &strings(&[
                "nixfly",
                "deploy",
                "-t",
                "FlyV1",
                "fm2_unquotedmacaroon1,fm2_unquotedmacaroon2",
                "--creds=user:registrypassword",
                "-tattachedtokenvalue",
            ]),
            |var| (var == "FLY_API_TOKEN").then(|| "fo1_fromtheenvironment".to_string()),
        );
        let text = "fm2_unquotedmacaroon1 fm2_unquotedmacaroon2 user:registrypassword \
                    attachedtokenvalue fo1_fromtheenvironment deploy";
        let shown = error::redacted(text);
        for secret in [
            "fm2_unquoted",
            "registrypassword",
            "attachedtokenvalue",
            "fo1_fromthe",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.ends_with(" deploy"), "{shown}");
    }

    #[test]
    fn json_output_follows_the_last_flag_then_the_environment() {
        assert!(json_output(
            &strings(&["nixfly", "--output", "json", "push"]),
            None
        ));
        assert!(json_output(
            &strings(&["nixfly", "push", "--output=json"]),
            Some("plain")
        ));
        assert!(!json_output(
            &strings(&["nixfly", "--output", "plain"]),
            Some("json")
        ));
        assert!(json_output(&strings(&["nixfly", "push"]), Some("json")));
        assert!(!json_output(&strings(&["nixfly", "push"]), None));
    }
}
