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
