//! The flake, evaluated and built by Nix against the nixpkgs stand-in (offline).

use crate::support;

use support::fly_api::{FlyApi, MachineSpec};
use support::nix::Nix;
use support::registry::{AuthMode, Registry};
use support::rollout::assert_runs_pushed;
use support::{TestDir, assert_success, run};

/// `nix flake check` builds every check, the unit tests among them: the `unit-tests` check's
/// build log (Nix keeps it, whether built now or earlier) shows them passing, while the
/// package's shows no test run.
#[test]
fn flake_check_passes() {
    let Some(nix) = Nix::get() else { return };
    let out = run(nix
        .command(&["flake", "check"])
        .args(["--print-build-logs", &nix.checkout])
        .args(nix.override_input("nixpkgs")));
    assert_success(&out);

    let log = |attr: &str| {
        let out = run(nix
            .command(&["eval", "--raw"])
            .arg(format!("{}#{attr}.drvPath", nix.checkout))
            .args(nix.override_input("nixpkgs")));
        assert_success(&out);
        let drv = String::from_utf8(out.stdout).unwrap();
        let out = run(nix.command(&["log"]).arg(&drv));
        assert_success(&out);
        strip_terminal_codes(&String::from_utf8_lossy(&out.stdout))
    };
    let tests = log("checks.x86_64-linux.unit-tests");
    let passed: Vec<u32> = tests
        .lines()
        .filter_map(|line| line.strip_prefix("test result: ok. "))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .collect();
    assert!(
        passed.iter().sum::<u32>() > 200 && !tests.contains("FAILED"),
        "the unit-tests check ran {passed:?} tests:\n{tests}"
    );
    let package = log("packages.x86_64-linux.nixfly");
    assert!(
        !package.contains("test result"),
        "the package ran tests:\n{package}"
    );
}

/// `text` without the colour codes libtest writes when it takes the build's output for a
/// terminal: CSI sequences (ESC [ ... letter) and charset selections (ESC ( B).
fn strip_terminal_codes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('[') => {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            Some('(') => {
                chars.next();
            }
            _ => {}
        }
    }
    out
}

/// `nix flake check` on a Mac (aarch64-darwin), with a Linux builder for the image: the
/// stand-in plays that machine for every package set (`NIXFLY_STANDIN_MACHINE`), so the
/// x86_64-linux image's scripts run only in x86_64-linux builds, and Nix takes this machine for
/// an aarch64-darwin one. The checks used to run the image's stream script in a build of the
/// Mac, where it cannot execute, and to expect it in the deploy script, which runs the Mac's
/// python3 on it instead.
#[test]
fn flake_check_passes_on_a_mac() {
    let Some(nix) = Nix::get() else { return };
    let out = run(nix
        .command(&["flake", "check"])
        .args(["--option", "system", "aarch64-darwin"])
        .args(["--print-build-logs", &nix.checkout])
        .args(nix.override_input("nixpkgs"))
        .env("NIXFLY_STANDIN_MACHINE", "aarch64-darwin"));
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
             nixfly = import {root}/nix/lib {{ }};
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

/// `config.Env` is in the Nix store and the registry: a name that looks like a secret's (the
/// rule fly.toml's [env] gets, after flyctl's) is warned about at evaluation, others are not.
#[test]
fn secret_looking_image_env_is_warned_about_at_evaluation() {
    let Some(nix) = Nix::get() else { return };
    let out = eval_mk_fly_deploy(
        nix,
        r#"{ config.Env = [ "PORT=8080" "STRIPE_SECRET_KEY=sk_live" "AWS_ACCESS_KEY_ID=AKIA" ]; waitTimeout = "10µs"; }"#,
    );
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("config.Env sets STRIPE_SECRET_KEY, which may hold a sensitive value")
            && stderr.contains("fly secrets set"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("PORT") && !stderr.contains("AWS_ACCESS_KEY_ID"),
        "{stderr}"
    );

    let out = eval_mk_fly_deploy(nix, r#"{ config.Env = [ "PORT=8080" ]; }"#);
    assert_success(&out);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("sensitive"));
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
            r#"{ waitTimeout = "0s"; }"#,
            "attribute `waitTimeout` must be null or a duration above 0",
        ),
        (
            "{ maxUnavailable = 0; }",
            "attribute `maxUnavailable` must be null or a number above 0",
        ),
        (r#"{ rollback = "no"; }"#, "attribute `rollback` must be a bool"),
        (
            r#"{ extraFlags = [ "-v" "--access-token" "fm2_secret" ]; }"#,
            "`extraFlags` holds the credential flag `--access-token`: credentials never go into the Nix store",
        ),
        (
            r#"{ extraFlags = [ "-tfm2_secret" ]; }"#,
            "`extraFlags` holds the credential flag `-t`",
        ),
        (
            r#"{ extraFlags = [ "--creds=user:fm2_secret" ]; }"#,
            "`extraFlags` holds the credential flag `--creds`",
        ),
        (
            r#"{ extraFlags = [ "--label=fm2_secret" ]; }"#,
            "`extraFlags` holds what looks like a Fly token",
        ),
        // fly-go's other macaroon prefixes (tokens/tokens.go), and its OAuth one.
        (
            r#"{ extraFlags = [ "--label=fm1r_secret" ]; }"#,
            "`extraFlags` holds what looks like a Fly token",
        ),
        (
            r#"{ extraFlags = [ "--label=fm1a_secret" ]; }"#,
            "`extraFlags` holds what looks like a Fly token",
        ),
        (
            r#"{ extraFlags = [ "--label=fo1_secret" ]; }"#,
            "`extraFlags` holds what looks like a Fly token",
        ),
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

/// mkFlyDeploy on a host that is not x86_64-linux, with the stand-in for both package sets;
/// `attrs` is added to the call. Returns nix's output of `--json` evaluation of `what`.
fn eval_on_host(nix: &Nix, host: &str, attrs: &str, what: &str) -> std::process::Output {
    let root = env!("CARGO_MANIFEST_DIR");
    let expr = format!(
        r#"let
             standin = import {root}/nix/tests/nixpkgs-standin;
             pkgs = standin {{ system = "{host}"; }};
             imagePkgs = standin {{ system = "x86_64-linux"; }};
             nixfly = import {root}/nix/lib {{ }};
             server = imagePkgs.writeShellApplication {{ name = "web"; text = "echo hi"; }};
             deploy = nixfly.mkFlyDeploy ({{ inherit pkgs; app = "demo"; package = server; }} // {attrs});
           in {what}"#
    );
    run(nix.command(&["eval"]).args(["--json", "--expr", &expr]))
}

/// Issue 11: Fly runs x86_64-linux, so the image is built for it whatever machine runs
/// `nix run`; the deploy script and nixfly are that machine's.
#[test]
fn regression_issue_11_the_image_is_x86_64_linux_on_every_host() {
    let Some(nix) = Nix::get() else { return };
    for host in ["aarch64-linux", "x86_64-darwin", "aarch64-darwin"] {
        let out = eval_on_host(
            nix,
            host,
            "{ inherit imagePkgs; }",
            "[ deploy.system deploy.nixfly.system deploy.image.system ]",
        );
        assert_success(&out);
        let systems: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(systems, [host, host, "x86_64-linux"], "on {host}");
    }

    // A package cross-built for x86_64-linux (pkgsCross.gnu64) has the building machine as
    // its `system`; its stdenv's host platform is what counts.
    let cross = r#"{ inherit imagePkgs; package = pkgs.writeShellApplication { name = "web"; text = "echo hi"; } // { stdenv.hostPlatform.system = "x86_64-linux"; }; }"#;
    let out = eval_on_host(nix, "aarch64-linux", cross, "deploy.image.system");
    assert_success(&out);

    let cases = [
        (
            "{ }",
            "Fly Machines run x86_64-linux images, and `pkgs` is for aarch64-linux: pass `imagePkgs = nixpkgs.legacyPackages.x86_64-linux;`",
        ),
        (
            r#"{ inherit imagePkgs; package = pkgs.writeShellApplication { name = "web"; text = "echo hi"; }; }"#,
            "web is built for aarch64-linux, but Fly runs x86_64-linux images: build `package` and `contents` with `imagePkgs`",
        ),
        (
            "{ imagePkgs = pkgs; }",
            "attribute `imagePkgs` must be null or the x86_64-linux nixpkgs package set",
        ),
    ];
    for (attrs, message) in cases {
        let out = eval_on_host(nix, "aarch64-linux", attrs, "deploy.drvPath");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{attrs} evaluated, expected an error");
        assert!(
            stderr.contains(message),
            "{attrs}: expected {message:?} in:\n{stderr}"
        );
    }
}

/// A nixpkgs whose streamLayeredImage has no `passthru.conf` (before nixpkgs PR #308822) gets
/// an error that names the nixpkgs it needs, not a missing-attribute trace.
#[test]
fn a_stream_image_without_conf_names_the_nixpkgs_a_plan_needs() {
    let Some(nix) = Nix::get() else { return };
    let root = env!("CARGO_MANIFEST_DIR");
    let expr = format!(
        r#"let
             pkgs = import {root}/nix/tests/nixpkgs-standin {{ }};
             lib = import {root}/nix/lib {{ }};
             # What streamLayeredImage returned before it exposed its conf.
             old = removeAttrs (pkgs.dockerTools.streamLayeredImage {{ name = "old"; }}) [ "conf" "passthru" ];
           in (lib.mkLayerPlan {{ inherit pkgs; nixfly = pkgs.writeText "n" ""; image = old; }}).drvPath"#
    );
    let out = run(nix.command(&["eval"]).args(["--raw", "--expr", &expr]));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("from nixpkgs 24.11 or newer") && stderr.contains("layering = \"stream\""),
        "{stderr}"
    );
}

/// `nix build` of `deploy<select>`, deploy being mkFlyDeploy called as on a Mac
/// (aarch64-darwin): the stand-in plays that machine (`machine`, nix/tests/nixpkgs-standin), so
/// the x86_64-linux image package set's scripts refuse to run as they would there. Returns the
/// out-link `t/<link>`.
fn build_on_a_mac(nix: &Nix, t: &TestDir, select: &str, link: &str) -> std::path::PathBuf {
    let root = env!("CARGO_MANIFEST_DIR");
    let expr = format!(
        r#"let
             standin = import {root}/nix/tests/nixpkgs-standin;
             machine = "aarch64-darwin";
             pkgs = standin {{ system = machine; inherit machine; }};
             imagePkgs = standin {{ system = "x86_64-linux"; inherit machine; }};
             nixfly = import {root}/nix/lib {{ }};
             server = imagePkgs.writeShellApplication {{ name = "web"; text = "echo hi"; }};
             deploy = nixfly.mkFlyDeploy {{
               inherit pkgs imagePkgs; app = "demo"; package = server;
               flyToml = {root}/nix/tests/fly-example.toml;
             }};
           in deploy{select}"#
    );
    let link = t.join(link);
    let out = run(nix
        .command(&["build"])
        .args(["--expr", &expr, "--out-link"])
        .arg(&link));
    assert_success(&out);
    link
}

/// A deploy from a Mac or an aarch64-linux machine: the image's streamLayeredImage script is
/// x86_64-linux (its bash and python3), which that machine cannot execute. The deploy script
/// runs the image's stream script with the machine's own python3 instead, and pushes and rolls
/// out the image Nix built.
#[test]
fn a_deploy_from_another_system_streams_the_image_with_that_systems_python() {
    let Some(nix) = Nix::get() else { return };
    let t = TestDir::new();

    // What nixpkgs' stream script does on such a machine.
    let raw = build_on_a_mac(nix, &t, ".image", "image");
    let out = run(&mut std::process::Command::new(&raw));
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Exec format error"),
        "{out:?}"
    );

    let deploy = build_on_a_mac(nix, &t, "", "deploy");
    let registry = Registry::start(AuthMode::htpasswd());
    let fly = FlyApi::start();
    fly.add_app("demo");
    let machines = fly.add_machines("demo", &MachineSpec::new("app").count(1).checks(1));
    let mut cmd = std::process::Command::new(deploy.join("bin/deploy-demo"));
    cmd.args(["--to", &format!("{}/demo", registry.host()), "--output", "plain"])
        .env("NIXFLY_REGISTRY_CREDS", registry.creds())
        .env("HOME", t.join("home"))
        .env("XDG_CACHE_HOME", t.join("cache"));
    let out = run(fly.configure(&mut cmd));
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reference = stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(&registry.host()) && l.contains("@sha256:"))
        .unwrap_or_else(|| panic!("no pushed reference on stdout:\n{stdout}"))
        .to_string();
    assert_runs_pushed(fly.machine(&machines[0]).image(), &reference);
    let config = registry.skopeo_config(&reference);
    assert_eq!(config["architecture"], "amd64", "{config}");
    let entrypoint = config["config"]["Entrypoint"][0].as_str().unwrap_or_default();
    assert!(entrypoint.ends_with("-web/bin/web"), "{config}");
}

/// A ready stream image from a nixpkgs whose streamLayeredImage does not expose its Python
/// script and conf cannot be streamed from another system: evaluation says so and what to do.
#[test]
fn a_foreign_stream_image_without_its_script_names_the_nixpkgs_it_needs() {
    let Some(nix) = Nix::get() else { return };
    let root = env!("CARGO_MANIFEST_DIR");
    let expr = format!(
        r#"let
             standin = import {root}/nix/tests/nixpkgs-standin;
             pkgs = standin {{ system = "aarch64-darwin"; }};
             imagePkgs = standin {{ system = "x86_64-linux"; }};
             nixfly = import {root}/nix/lib {{ }};
             # What streamLayeredImage returned before nixpkgs PR #308822.
             old = removeAttrs (imagePkgs.dockerTools.streamLayeredImage {{ name = "old"; }})
               [ "conf" "streamScript" "passthru" ];
           in (nixfly.mkFlyDeploy {{ inherit pkgs imagePkgs; app = "demo"; image = old; }}).drvPath"#
    );
    let out = run(nix.command(&["eval"]).args(["--raw", "--expr", &expr]));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is built for x86_64-linux and cannot run on aarch64-darwin")
            && stderr.contains("no passthru.streamScript and passthru.conf"),
        "{stderr}"
    );
}

/// Since nixpkgs PR #509625 a buildLayeredImage tarball carries its stream's passthru,
/// `isExe = true` among it. On a Mac it is still pushed as the tarball Nix built, not streamed
/// again from its store paths as a stream image of another system is.
#[test]
fn a_tarball_image_from_another_system_is_pushed_as_the_tarball() {
    let Some(nix) = Nix::get() else { return };
    let out = eval_on_host(
        nix,
        "aarch64-darwin",
        "{ inherit imagePkgs; }",
        r#"let
             image = { name = "web"; contents = [ server ]; };
             tarball = imagePkgs.dockerTools.buildLayeredImage image;
             stream = imagePkgs.dockerTools.streamLayeredImage image;
             source = image: (nixfly.mkFlyDeploy { inherit pkgs imagePkgs image; app = "demo"; }).source.name;
           in [ tarball.isExe (source tarball) (source stream) ]"#,
    );
    assert_success(&out);
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        got,
        serde_json::json!([true, "web.tar.gz", "demo-stream-on-aarch64-darwin"])
    );
}

/// nixpkgs' writeShellApplication fails the build on any shellcheck finding, and a
/// single-quoted `$`, backquote or trailing backslash is one. extraFlags holding them still
/// build (through the stand-in, which runs shellcheck as nixpkgs does) and reach nixfly as
/// written.
#[test]
fn extra_flags_with_shell_characters_pass_shellcheck_and_reach_nixfly_as_written() {
    let Some(nix) = Nix::get() else { return };
    let root = env!("CARGO_MANIFEST_DIR");
    let flags = ["--label=$HOME", "--label=`id`", "--label=a\\", "--label=it's"];
    let nix_list: Vec<String> = flags
        .iter()
        .map(|f| serde_json::to_string(f).unwrap().replace('$', "\\$"))
        .collect();
    let expr = format!(
        r#"let
             pkgs = import {root}/nix/tests/nixpkgs-standin {{ }};
             lib = import {root}/nix/lib {{ }};
             server = pkgs.writeShellApplication {{ name = "web"; text = "echo hi"; }};
             # Stands for nixfly: prints its arguments.
             nixfly = pkgs.runCommand "print-args" {{ }} ''
               mkdir -p $out/bin
               printf '#!/bin/bash\nprintf "%%s\\n" "$@"\n' > $out/bin/nixfly
               chmod +x $out/bin/nixfly
             '';
           in lib.mkFlyDeploy {{
             inherit pkgs nixfly; app = "demo"; package = server;
             extraFlags = [ {} ];
           }}"#,
        nix_list.join(" ")
    );
    let t = TestDir::new();
    let out = run(nix
        .command(&["build"])
        .args(["--print-build-logs", "--expr", &expr, "--out-link"])
        .arg(t.join("deploy")));
    assert_success(&out);
    let out = run(&mut std::process::Command::new(t.join("deploy/bin/deploy-demo")));
    assert_success(&out);
    let args = String::from_utf8_lossy(&out.stdout);
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(args[0], "deploy");
    assert_eq!(&args[4..], flags, "{args:?}");
}

/// nixfly's unit tests run in the flake's `unit-tests` check and some use loopback sockets,
/// which darwin's sandbox refuses unless the derivation asks for local networking (nixpkgs
/// passes `__darwinAllowLocalNetworking` to the derivation on darwin only). The package a
/// deploy runs is built without its tests, so it asks for nothing.
#[test]
fn the_unit_tests_ask_darwin_sandboxes_for_local_networking_and_the_package_runs_none() {
    let Some(nix) = Nix::get() else { return };
    let root = env!("CARGO_MANIFEST_DIR");
    for (host, darwin) in [
        ("aarch64-darwin", true),
        ("x86_64-darwin", true),
        ("aarch64-linux", false),
    ] {
        let expr = format!(
            r#"let
                 pkgs = import {root}/nix/tests/nixpkgs-standin {{ system = "{host}"; }};
                 package = pkgs.callPackage {root}/nix/package.nix {{ }};
                 tests = pkgs.callPackage {root}/nix/package.nix {{ runUnitTests = true; }};
                 flag = drv: drv.__darwinAllowLocalNetworking or false;
                 # true in nixpkgs' attributes, "1" in the builder's environment (the stand-in's).
                 checks = drv: drv.doCheck == true || drv.doCheck == "1";
               in {{
                 package = [ (flag package) (checks package) ];
                 tests = [ (flag tests) (checks tests) ];
               }}"#
        );
        let out = run(nix.command(&["eval"]).args(["--json", "--expr", &expr]));
        assert_success(&out);
        let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(value["package"], serde_json::json!([false, false]), "on {host}");
        assert_eq!(value["tests"], serde_json::json!([darwin, true]), "on {host}");
    }
}
