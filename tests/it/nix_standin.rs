//! The nixpkgs stand-in's scripts against nixpkgs' own answers: the Nix tests are only as real
//! as the images the stand-in builds.

use crate::support::TestDir;
use serde_json::Value;
use std::process::Command;

/// Layering: the stand-in's `docker/auto_layer.py` gives the layers nixpkgs' `auto-layer.py`
/// (streamLayeredImage's default layering) gave on 42 random store graphs, recorded in
/// `tests/fixtures/auto-layer/cases.json` by its `generate.py`; 10 of them come out otherwise
/// under another hash seed, so the PYTHONHASHSEED=0 nixpkgs runs it with matters too.
#[test]
fn auto_layer_matches_nixpkgs() {
    let root = env!("CARGO_MANIFEST_DIR");
    let fixture = format!("{root}/tests/fixtures/auto-layer/cases.json");
    let cases: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    assert_eq!(cases.len(), 42);
    let t = TestDir::new();
    let mut multi_path_layers = 0;
    for (i, case) in cases.iter().enumerate() {
        let attrs = t.join(&format!("case-{i}.json"));
        std::fs::write(&attrs, case.to_string()).unwrap();
        let out = Command::new("python3")
            .arg(format!("{root}/nix/tests/nixpkgs-standin/docker/auto_layer.py"))
            .arg(&attrs)
            .env("PYTHONHASHSEED", "0")
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "case {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let layers: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(layers, case["expected"], "case {i}");
        let layers = layers.as_array().unwrap();
        multi_path_layers += layers.iter().filter(|l| l.as_array().unwrap().len() > 1).count();
    }
    assert!(multi_path_layers > 40, "{multi_path_layers}");
}

/// The customisation layer links `contents` as nixpkgs' symlinkJoin does (`lndir -silent` of
/// each in order): the first content to have a name keeps it, and a symlink is copied with
/// its own target, not linked to.
#[test]
fn contents_are_joined_as_symlink_join_does() {
    let Some(nix) = crate::support::nix::Nix::get() else {
        return;
    };
    let root = env!("CARGO_MANIFEST_DIR");
    let expr = format!(
        r#"let
             pkgs = import {root}/nix/tests/nixpkgs-standin {{ }};
             first = pkgs.runCommand "first" {{ }} ''
               mkdir -p $out/bin $out/share/doc
               echo first > $out/bin/tool
               ln -s tool $out/bin/alias
               echo x > $out/share/doc/x
             '';
             second = pkgs.runCommand "second" {{ }} ''
               mkdir -p $out/bin $out/share/doc
               echo second > $out/bin/tool
               echo other > $out/bin/other
               echo y > $out/share/doc/y
             '';
           in (pkgs.dockerTools.streamLayeredImage {{ name = "joined"; contents = [ first second ]; }}).conf"#
    );
    let t = TestDir::new();
    let out = crate::support::run(
        nix.command(&["build"])
            .args(["--expr", &expr, "--out-link"])
            .arg(t.join("conf")),
    );
    crate::support::assert_success(&out);
    let conf: Value = serde_json::from_slice(&std::fs::read(t.join("conf")).unwrap()).unwrap();
    let layer = format!("{}/layer.tar", conf["customisation_layer"].as_str().unwrap());
    let out = Command::new("tar").args(["-tvf", &layer]).output().unwrap();
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout);
    let link = |name: &str| {
        listing
            .lines()
            .find_map(|l| {
                l.split_once(&format!(" ./{name} -> "))
                    .map(|(_, to)| to.to_string())
            })
            .unwrap_or_else(|| panic!("no link {name} in:\n{listing}"))
    };
    assert!(link("bin/tool").ends_with("-first/bin/tool"), "{listing}");
    assert_eq!(link("bin/alias"), "tool", "{listing}");
    assert!(link("bin/other").ends_with("-second/bin/other"), "{listing}");
    assert!(link("share/doc/x").ends_with("-first/share/doc/x"), "{listing}");
    assert!(link("share/doc/y").ends_with("-second/share/doc/y"), "{listing}");
}

/// nixpkgs' `distribution` installs the registry as `bin/registry` (its mainProgram), not as
/// Debian's `docker-registry`.
#[test]
fn distribution_installs_the_registry_as_registry() {
    let Some(nix) = crate::support::nix::Nix::get() else {
        return;
    };
    let root = env!("CARGO_MANIFEST_DIR");
    let t = TestDir::new();
    let out = crate::support::run(
        nix.command(&["build"])
            .args([
                "--expr",
                &format!("(import {root}/nix/tests/nixpkgs-standin {{ }}).distribution"),
                "--out-link",
            ])
            .arg(t.join("distribution")),
    );
    crate::support::assert_success(&out);
    let bin: Vec<String> = std::fs::read_dir(t.join("distribution/bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(bin, ["registry"]);
}
