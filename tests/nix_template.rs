//! The template, as a user gets it: `nix flake init -t`, checked against this checkout
//! (`--override-input nixfly`) and the nixpkgs stand-in.

mod support;

use support::nix::Nix;
use support::{TestDir, assert_success, run};

/// A fresh copy of the template in a temp dir.
fn init_template(nix: &Nix) -> TestDir {
    let t = TestDir::new();
    let out = run(nix
        .command(&["flake", "init"])
        .args(["-t", &nix.checkout])
        .current_dir(t.path()));
    assert_success(&out);
    for file in [
        "flake.nix",
        "fly.toml",
        "Cargo.toml",
        "Cargo.lock",
        "src/main.rs",
        "README.md",
    ] {
        assert!(t.join(file).exists(), "the template has no {file}");
    }
    t
}

/// `nix <subcommand> .#deploy` in the template, with both inputs overridden.
fn in_template(nix: &Nix, t: &TestDir, subcommand: &[&str]) -> std::process::Command {
    let mut cmd = nix.command(subcommand);
    cmd.arg(".#deploy")
        .args(nix.override_input("nixpkgs"))
        .args(["--override-input", "nixfly", &nix.checkout])
        .current_dir(t.path());
    cmd
}

#[test]
fn template_deploy_builds_and_its_settings_are_valid() {
    let Some(nix) = Nix::get() else { return };
    let t = init_template(nix);
    let out = run(in_template(nix, &t, &["build"]).args(["--out-link", "deploy"]));
    assert_success(&out);
    let wrapper = t.join("deploy/bin/deploy-hello-fly");
    let script = std::fs::read_to_string(&wrapper).expect("the deploy wrapper");
    let settings = script
        .split_whitespace()
        .skip_while(|w| *w != "'--settings'")
        .nth(1)
        .expect("the wrapper passes --settings")
        .trim_matches('\'');
    let out = run(t.nixfly().args(["settings", "check", settings]));
    assert_success(&out);
    let text = std::fs::read_to_string(settings).expect("settings file");
    let json: serde_json::Value = serde_json::from_str(&text).expect("settings JSON");
    assert_eq!(json["app"], "hello-fly");
    let fly_toml = json["config"]
        .as_str()
        .expect("config is the template's fly.toml");
    assert_eq!(
        std::fs::read_to_string(fly_toml).expect("fly.toml in the store"),
        std::fs::read_to_string(t.join("fly.toml")).expect("the template's fly.toml")
    );
}
