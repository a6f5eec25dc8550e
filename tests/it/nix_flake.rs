//! The flake, evaluated and built by Nix against the nixpkgs stand-in (offline).

use crate::support;

use support::nix::Nix;
use support::{assert_success, run};

#[test]
fn flake_check_passes() {
    let Some(nix) = Nix::get() else { return };
    let out = run(nix
        .command(&["flake", "check"])
        .args(["--print-build-logs", &nix.checkout])
        .args(nix.override_input("nixpkgs")));
    assert_success(&out);
}

#[test]
fn generic_deploy_app_runs_nixfly_deploy() {
    let Some(nix) = Nix::get() else { return };
    let out = run(nix
        .command(&["run"])
        .arg(format!("{}#deploy", nix.checkout))
        .args(nix.override_input("nixpkgs"))
        .args(["--", "--help"]));
    assert_success(&out);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("Usage: nixfly deploy") && help.contains("--settings"),
        "apps.deploy did not run `nixfly deploy`:\n{help}"
    );
}

/// mkFlyDeploy called from an expression, with the stand-in as `pkgs`; returns nix's output.
fn eval_mk_fly_deploy(nix: &Nix, attrs: &str) -> std::process::Output {
    let root = env!("CARGO_MANIFEST_DIR");
    let expr = format!(
        r#"let
             pkgs = import {root}/nix/tests/nixpkgs-standin {{ }};
             nixfly = import {root}/nix/lib;
             app = pkgs.writeShellApplication {{ name = "web"; text = "echo hi"; }};
           in (nixfly.mkFlyDeploy ({{ inherit pkgs; app = "demo"; package = app; }} // {attrs})).drvPath"#
    );
    run(nix.command(&["eval"]).args(["--raw", "--expr", &expr]))
}

#[test]
fn correct_attributes_evaluate() {
    let Some(nix) = Nix::get() else { return };
    let out = eval_mk_fly_deploy(
        nix,
        r#"{ tag = "v1"; registry = "registry.example/demo"; strategy = "rolling"; maxUnavailable = 1.5;
             waitTimeout = "5m"; skipRelease = true; extraFlags = [ "-v" ]; }"#,
    );
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).ends_with(".drv"));
}

#[test]
fn wrong_attribute_name_or_type_fails_at_evaluation_naming_it() {
    let Some(nix) = Nix::get() else { return };
    let cases = [
        (r#"{ tga = "v1"; }"#, "unknown attribute `tga`"),
        ("{ tag = 3; }", "attribute `tag` must be null or a string"),
        (r#"{ tag = "-v1"; }"#, "attribute `tag` must be null or a string"),
        (
            r#"{ extraFlags = "-v"; }"#,
            "attribute `extraFlags` must be a list of strings",
        ),
        (
            "{ maxLayers = 1; }",
            "attribute `maxLayers` must be an integer between 2 and 125",
        ),
        (
            r#"{ config.Entrypoint = [ "/bin/sh" ]; }"#,
            "attribute `config` must be",
        ),
        (
            r#"{ apiToken = "fm2_secret"; }"#,
            "`apiToken` is not accepted: credentials never go into the Nix store",
        ),
        (
            "{ image = ./.; }",
            "`image` is a ready image, so `package` cannot be used with it",
        ),
        ("{ package = null; }", "give `image` (a ready image) or `package`"),
        ("{ app = null; }", "attribute `app` must be the Fly app name"),
        (
            r#"{ strategy = "sideways"; }"#,
            "attribute `strategy` must be null or one of rolling, immediate",
        ),
        (
            "{ waitTimeout = 90; }",
            "attribute `waitTimeout` must be null or a duration",
        ),
        (
            r#"{ waitTimeout = "300"; }"#,
            "attribute `waitTimeout` must be null or a duration",
        ),
        (
            "{ maxUnavailable = 0; }",
            "attribute `maxUnavailable` must be null or a number above 0",
        ),
        (r#"{ rollback = "no"; }"#, "attribute `rollback` must be a bool"),
    ];
    for (attrs, message) in cases {
        let out = eval_mk_fly_deploy(nix, attrs);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{attrs} evaluated, expected an error");
        assert!(
            stderr.contains(message),
            "{attrs}: expected {message:?} in:\n{stderr}"
        );
        assert!(
            !stderr.contains("fm2_secret"),
            "the rejected token value was printed:\n{stderr}"
        );
    }
}
