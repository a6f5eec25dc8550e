//! The template, as a user gets it: `nix flake init -t`, checked against this checkout
//! (`--override-input nixfly`) and the nixpkgs stand-in.

use crate::support;

use support::fly_api::{FlyApi, MachineSpec};
use support::nix::Nix;
use support::registry::{AuthMode, Registry};
use support::rollout::assert_runs_pushed;
use support::{TestDir, assert_success, run};

/// The app name in the template's flake.nix and fly.toml.
const APP: &str = "hello-fly";

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
        ".gitignore",
    ] {
        assert!(t.join(file).exists(), "the template has no {file}");
    }
    t
}

/// `nix <subcommand> .#deploy` in the template, with both inputs overridden.
fn in_template(nix: &Nix, t: &TestDir, subcommand: &[&str]) -> std::process::Command {
    in_template_at(nix, t, subcommand, ".#deploy")
}

/// `nix <subcommand> <installable>` in the template; nixfly's own nixpkgs is the stand-in too.
fn in_template_at(nix: &Nix, t: &TestDir, subcommand: &[&str], installable: &str) -> std::process::Command {
    let mut cmd = nix.command(subcommand);
    cmd.arg(installable)
        .args(nix.override_input("nixpkgs"))
        .args(["--override-input", "nixfly", &nix.checkout])
        .args(nix.override_input("nixfly/nixpkgs"))
        .current_dir(t.path());
    cmd
}

/// Issue 11: `apps.deploy` exists for the four systems nix runs on, each described, and on
/// every one of them the image is built for x86_64-linux (Fly's platform) while the deploy
/// script and nixfly are built for the machine itself. (Building on aarch64 or darwin needs
/// an x86_64-linux builder, which cannot be tested here; evaluation can.)
#[test]
fn regression_issue_11_template_deploys_an_x86_64_image_from_every_system() {
    let Some(nix) = Nix::get() else { return };
    let t = init_template(nix);
    for system in ["x86_64-linux", "aarch64-linux", "x86_64-darwin", "aarch64-darwin"] {
        let out = run(
            in_template_at(nix, &t, &["eval", "--json"], &format!(".#apps.{system}.deploy")).args([
                "--apply",
                "app: { inherit (app) type program; description = app.meta.description; }",
            ]),
        );
        assert_success(&out);
        let app: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(app["type"], "app", "{system}: {app}");
        assert!(
            app["program"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/bin/deploy-{APP}")),
            "{system}: {app}"
        );
        assert!(!app["description"].as_str().unwrap().is_empty());

        let out = run(in_template_at(
            nix,
            &t,
            &["eval", "--json"],
            &format!(".#packages.{system}.deploy"),
        )
        .args(["--apply", "d: [ d.system d.nixfly.system d.image.system ]"]));
        assert_success(&out);
        let systems: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(systems, [system, system, "x86_64-linux"]);

        // The server (x86_64-linux) is the default package only where it runs.
        let out = run(
            in_template_at(nix, &t, &["eval", "--json"], &format!(".#packages.{system}"))
                .args(["--apply", "builtins.attrNames"]),
        );
        assert_success(&out);
        let names: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
        let expected: &[&str] = if system == "x86_64-linux" {
            &["default", "deploy", "server"]
        } else {
            &["deploy", "server"]
        };
        assert_eq!(names, expected, "{system}");
    }
    // What the image says about itself: amd64 even when the deploy runs on an arm64 Mac.
    let out = run(&mut in_template_at(
        nix,
        &t,
        &["build", "--out-link", "conf"],
        ".#packages.aarch64-darwin.deploy.image.conf",
    ));
    assert_success(&out);
    let conf: serde_json::Value = serde_json::from_slice(&std::fs::read(t.join("conf")).unwrap()).unwrap();
    assert_eq!(conf["architecture"], "amd64");
}

#[test]
fn template_deploy_builds_and_its_settings_are_valid() {
    let Some(nix) = Nix::get() else { return };
    let t = init_template(nix);
    let out = run(in_template(nix, &t, &["build"]).args(["--out-link", "deploy"]));
    assert_success(&out);
    let wrapper = t.join(&format!("deploy/bin/deploy-{APP}"));
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
    assert_eq!(json["app"], APP);
    let fly_toml = json["config"]
        .as_str()
        .expect("config is the template's fly.toml");
    assert_eq!(
        std::fs::read_to_string(fly_toml).expect("fly.toml in the store"),
        std::fs::read_to_string(t.join("fly.toml")).expect("the template's fly.toml")
    );
}

/// `nix flake init -t`, then `nix run .#deploy` is the whole story: the image Nix built is
/// pushed to the real registry (credentials from the environment, as a CI secret would be) and
/// rolled out on the Fly API double; skopeo reads the image back.
#[test]
fn template_nix_run_deploy_pushes_and_rolls_out() {
    let Some(nix) = Nix::get() else { return };
    deploy_end_to_end(nix, &init_template(nix));
}

/// The same with `layering = "plan"` added to the template's mkFlyDeploy call.
#[test]
fn template_nix_run_deploy_with_a_layer_plan() {
    let Some(nix) = Nix::get() else { return };
    let t = init_template(nix);
    let flake = std::fs::read_to_string(t.join("flake.nix")).unwrap();
    let call = "flyToml = ./fly.toml;";
    assert!(flake.contains(call), "{flake}");
    let planned = flake.replace(call, &format!("{call} layering = \"plan\";"));
    std::fs::write(t.join("flake.nix"), planned).unwrap();
    let wrapper = deploy_end_to_end(nix, &t);
    assert!(
        wrapper.contains("-layer-plan.json'"),
        "the deploy script does not push a plan:\n{wrapper}"
    );
}

/// Push and roll out the template's image; returns the deploy script it ran.
fn deploy_end_to_end(nix: &Nix, t: &TestDir) -> String {
    let registry = Registry::start(AuthMode::htpasswd());
    let fly = FlyApi::start();
    fly.add_app(APP);
    let machines = fly.add_machines(APP, &MachineSpec::new("app").count(2).checks(1));

    let mut deploy = in_template(nix, t, &["run"]);
    deploy
        .args([
            "--",
            "--to",
            &format!("{}/{APP}", registry.host()),
            "--output",
            "plain",
        ])
        .env("NIXFLY_REGISTRY_CREDS", registry.creds())
        .env("HOME", t.join("home"))
        .env("XDG_CACHE_HOME", t.join("cache"));
    let out = run(fly.configure(&mut deploy));
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let password = registry
        .creds()
        .split_once(':')
        .map(|(_, p)| p.to_string())
        .unwrap_or_default();
    assert!(
        !stdout.contains(&password) && !stderr.contains(&password),
        "the registry password was printed"
    );

    // The reference printed on stdout is what every machine now runs, by digest.
    let reference = stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(&registry.host()) && l.contains("@sha256:"))
        .unwrap_or_else(|| panic!("no pushed reference on stdout:\n{stdout}\n--- stderr\n{stderr}"))
        .to_string();
    // Each machine runs it, behind the template's health check: fly.toml's
    // [[http_service.checks]] as flyctl names a service's check (servicecheck-<index>-<type>-<port>).
    for id in &machines {
        assert_runs_pushed(fly.machine(id).image(), &reference);
        let machine = fly.machine_json(id);
        let services = &machine["config"]["services"];
        assert_eq!(services[0]["internal_port"], 8080, "{machine:#}");
        let checks = services[0]["checks"].as_array().cloned().unwrap_or_default();
        assert!(
            checks.len() == 1 && checks[0]["type"] == "http" && checks[0]["path"] == "/",
            "the template's health check is not on {id}: {machine:#}"
        );
    }

    // skopeo reads back what Nix built: the template's entrypoint and env, one layer per
    // store path plus the customisation layer.
    let config = registry.skopeo_config(&reference);
    let entrypoint = config["config"]["Entrypoint"][0].as_str().unwrap_or_default();
    assert!(
        entrypoint.starts_with("/nix/store/") && entrypoint.ends_with("/bin/hello-fly"),
        "Entrypoint {entrypoint:?} in {config}"
    );
    assert_eq!(config["config"]["Env"], serde_json::json!(["PORT=8080"]));
    let manifest = registry.skopeo_manifest(&reference);
    let layers = manifest["layers"].as_array().map_or(0, Vec::len);
    assert!(layers >= 2, "{manifest}");
    assert_eq!(
        Some(layers),
        config["rootfs"]["diff_ids"].as_array().map(Vec::len)
    );
    let out = run(in_template(nix, t, &["build"]).args(["--out-link", "deploy"]));
    assert_success(&out);
    std::fs::read_to_string(t.join(&format!("deploy/bin/deploy-{APP}"))).unwrap()
}
