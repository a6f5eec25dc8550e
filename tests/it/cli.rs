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
