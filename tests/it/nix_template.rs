//! The template, as a user gets it: `nix flake init -t`, checked against this checkout
//! (`--override-input nixfly`) and the nixpkgs stand-in.

use crate::support;

use support::fly_api::{FlyApi, MachineSpec};
use support::nix::Nix;
use support::registry::{AuthMode, Registry};
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
    let t = init_template(nix);
    let registry = Registry::start(AuthMode::htpasswd());
    let fly = FlyApi::start();
    fly.add_app(APP);
    let machines = fly.add_machines(APP, &MachineSpec::new("app").count(2).checks(1));

    let mut deploy = in_template(nix, &t, &["run"]);
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
    for id in &machines {
        assert_eq!(fly.machine(id).image(), reference, "machine {id}");
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
}
