use crate::support;

use support::{TestDir, assert_success, run};

#[test]
fn help_lists_every_command() {
    let t = TestDir::new();
    let out = run(t.nixfly().arg("--help"));
    assert_success(&out);
    let help = String::from_utf8_lossy(&out.stdout);
    for command in ["push", "rollout", "deploy", "completions"] {
        assert!(
            help.contains(command),
            "--help does not mention {command}:\n{help}"
        );
    }
}

#[test]
fn completions_are_generated_for_bash() {
    let t = TestDir::new();
    let out = run(t.nixfly().args(["completions", "bash"]));
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("complete -F"));
}

/// Issue 9: deploy's ~35 flags are grouped by what they are about, and the old `--plan` stays
/// out of the help (it still works, as the deploy tests show).
#[test]
fn deploy_help_groups_flags_under_headings() {
    let t = TestDir::new();
    let out = run(t.nixfly().args(["deploy", "--help"]));
    assert_success(&out);
    let help = String::from_utf8_lossy(&out.stdout);
    let heading = |name: &str| {
        help.find(&format!("\n{name}:\n"))
            .unwrap_or_else(|| panic!("no {name} heading in:\n{help}"))
    };
    let flag = |name: &str| {
        help.find(&format!("--{name}"))
            .unwrap_or_else(|| panic!("no --{name} in:\n{help}"))
    };
    let sections = ["Fly app", "Image", "Registry", "Rollout", "Output"].map(heading);
    assert!(sections.windows(2).all(|w| w[0] < w[1]), "{help}");
    for (section, flags) in [
        (0, &["app", "access-token", "settings"][..]),
        (1, &["to", "tag", "compression", "jobs"]),
        (2, &["creds", "plain-http", "upload-mode"]),
        (3, &["dry-run", "strategy", "max-unavailable", "wait-timeout"]),
        (4, &["verbose", "output"]),
    ] {
        let end = sections.get(section + 1).copied().unwrap_or(help.len());
        for name in flags {
            let at = flag(name);
            assert!(
                (sections[section]..end).contains(&at),
                "--{name} is not under its heading:\n{help}"
            );
        }
    }
    assert!(!help.contains("--plan"), "{help}");
}

/// A Fly token pasted unquoted (`-t FlyV1 fm2_…`, as `fly tokens create` prints it) leaves its
/// macaroons as an argument clap refuses; its error must not carry them into the CI log, and
/// must say to quote the token. Exit 2, as for every command line nixfly cannot parse.
#[test]
fn an_unquoted_token_is_not_echoed_by_the_usage_error() {
    let t = TestDir::new();
    let macaroons = "fm2_lJPECAAAAAAAAAAAAZHWlYW5kYWNhcmVmdWxseXRva2Vu,fm2_c2Vjb25kcGFydG9mdGhldG9rZW4";
    let out = run(t.nixfly().args(["deploy", "./result", "-t", "FlyV1", macaroons]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for part in ["lJPECAAA", "c2Vjb25k"] {
        assert!(!stderr.contains(part), "the token is in the error:\n{stderr}");
    }
    assert!(stderr.contains("[REDACTED]"), "{stderr}");
    assert!(stderr.contains("quote it"), "{stderr}");
    assert!(out.stdout.is_empty());
}

/// With `--output json` (or NIXFLY_OUTPUT=json) a refused command line ends with the `error`
/// event on stdout, as any other failure does, with its exit code.
#[test]
fn a_usage_error_is_an_error_event_in_json_mode() {
    let t = TestDir::new();
    for cmd in [
        t.nixfly().args(["--output", "json", "push", "--bogus", "x"]),
        t.nixfly()
            .env("NIXFLY_OUTPUT", "json")
            .args(["push", "--jobs", "many", "x"]),
    ] {
        let out = run(cmd);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let event: serde_json::Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("not one JSON event ({e}):\n{stdout}"));
        assert_eq!(event["event"], "error", "{event}");
        assert_eq!(event["exit_code"], 2, "{event}");
        assert!(
            event["message"]
                .as_str()
                .is_some_and(|m| m.contains("--bogus") || m.contains("many")),
            "{event}"
        );
    }
    // Help and version still print on stdout and exit 0.
    let out = run(t.nixfly().args(["--output", "json", "--version"]));
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("nixfly "));
}
