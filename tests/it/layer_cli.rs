//! `nixfly layer build` and `nixfly layer plan`, the build-time commands mkLayerPlan runs.

use crate::support;

use serde_json::Value;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use support::{TestDir, assert_success, run};

const APP: &str = "/nix/store/1b9p07z77phvv2hf6gm9f28syp39f1ag-app-1.0";
const LIB: &str = "/nix/store/6n2m3ql0f2gkwrj5y7fcq3r9qj4j7m2a-libfoo-2.1";

/// A chroot store with two store paths under `root`, and a customisation layer with its
/// checksum file, as streamLayeredImage leaves them.
fn store(t: &TestDir) -> std::path::PathBuf {
    let root = t.join("root");
    let app = root.join(APP.trim_start_matches('/'));
    fs::create_dir_all(app.join("bin")).unwrap();
    fs::write(app.join("bin/app"), "#!/bin/sh\necho app\n".repeat(5000)).unwrap();
    fs::set_permissions(app.join("bin/app"), fs::Permissions::from_mode(0o555)).unwrap();
    let lib = root.join(LIB.trim_start_matches('/'));
    fs::create_dir_all(lib.join("lib")).unwrap();
    fs::write(lib.join("lib/libfoo.so.2"), vec![7u8; 600_000]).unwrap();
    symlink("libfoo.so.2", lib.join("lib/libfoo.so")).unwrap();
    root
}

fn build(t: &TestDir, root: &std::path::Path, paths: &[&str], jobs: &str, out: &str) -> Value {
    let list = t.join(&format!("{out}.paths"));
    fs::write(&list, paths.join("\n") + "\n").unwrap();
    let output = run(t
        .nixfly()
        .args(["layer", "build", "--paths-from"])
        .arg(&list)
        .arg("--root")
        .arg(root)
        .args(["--jobs", jobs, "--out", out]));
    assert_success(&output);
    serde_json::from_slice(&fs::read(t.join(out)).unwrap()).unwrap()
}

#[test]
fn layer_records_do_not_depend_on_thread_count() {
    let t = TestDir::new();
    let root = store(&t);
    let one = build(&t, &root, &[LIB, APP], "1", "one.json");
    let four = build(&t, &root, &[LIB, APP], "4", "four.json");
    assert_eq!(one, four);
    assert_eq!(one["source"]["type"], "store_paths");
    assert_eq!(one["source"]["paths"], serde_json::json!([LIB, APP]));
    assert_eq!(one["compression"]["algorithm"], "gzip");
    assert!(one["digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(one["compressed_size"].as_u64().unwrap() < one["size"].as_u64().unwrap());
    // The order of store paths is the layer's order, and it changes the tar.
    let swapped = build(&t, &root, &[APP, LIB], "2", "swapped.json");
    assert_ne!(swapped["diff_id"], one["diff_id"]);
}

#[test]
fn a_missing_store_path_fails_with_its_name() {
    let t = TestDir::new();
    let root = store(&t);
    let list = t.join("paths");
    fs::write(
        &list,
        format!("{APP}\n/nix/store/00000000000000000000000000000000-gone\n"),
    )
    .unwrap();
    let output = run(t
        .nixfly()
        .args(["layer", "build", "--paths-from"])
        .arg(&list)
        .arg("--root")
        .arg(&root)
        .args(["--out", "x.json"]));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("00000000000000000000000000000000-gone"),
        "{stderr}"
    );
    assert!(!t.join("x.json").exists());
}

#[test]
fn plan_joins_conf_and_layer_records() {
    let t = TestDir::new();
    let root = store(&t);
    let lib = build(&t, &root, &[LIB], "2", "lib.json");
    let app = build(&t, &root, &[APP], "2", "app.json");

    // A customisation layer: an existing tar plus the checksum streamLayeredImage wrote.
    let custom = t.join("customisation");
    fs::create_dir_all(&custom).unwrap();
    support::customisation_tar(&custom.join("layer.tar"), &root, "nix");
    let custom_layer = run(t
        .nixfly()
        .args(["layer", "build", "--tar"])
        .arg(custom.join("layer.tar"))
        .args(["--out", "custom.json"]));
    assert_success(&custom_layer);
    let custom_record: Value = serde_json::from_slice(&fs::read(t.join("custom.json")).unwrap()).unwrap();
    // The checksum as streamLayeredImage's customisation layer writes it, with sha256sum.
    let checksum = sha256sum(&custom.join("layer.tar"));
    assert_eq!(custom_record["diff_id"], format!("sha256:{checksum}"));
    fs::write(custom.join("checksum"), format!("{checksum}\n")).unwrap();

    let conf = serde_json::json!({
        "architecture": "amd64",
        "config": {"Cmd": [format!("{APP}/bin/app")], "Env": ["LANG=C.UTF-8"]},
        "created": "1970-01-01T00:00:01+00:00",
        "mtime": "1970-01-01T00:00:01+00:00",
        "uid": "0", "gid": "0", "uname": "root", "gname": "root",
        "store_layers": [[LIB], [APP]],
        "customisation_layer": custom.display().to_string(),
        "from_image": null,
        "repo_tag": "app:latest",
        "store_dir": "/nix/store",
    });
    fs::write(t.join("conf.json"), conf.to_string()).unwrap();
    let output = run(t.nixfly().args([
        "layer",
        "plan",
        "--conf",
        "conf.json",
        "--layer",
        "lib.json",
        "--layer",
        "app.json",
        "--layer",
        "custom.json",
        "--out",
        "plan.json",
    ]));
    assert_success(&output);
    let plan: Value = serde_json::from_slice(&fs::read(t.join("plan.json")).unwrap()).unwrap();
    assert_eq!(plan["kind"], "nixfly-layer-plan");
    assert_eq!(plan["version"], 1);
    assert_eq!(plan["layers"].as_array().unwrap().len(), 3);
    assert_eq!(plan["layers"][0], lib);
    let config: Value = serde_json::from_str(plan["config"].as_str().unwrap()).unwrap();
    assert_eq!(
        config["rootfs"]["diff_ids"],
        serde_json::json!([lib["diff_id"], app["diff_id"], custom_record["diff_id"]])
    );
    assert_eq!(config["config"]["Env"][0], "LANG=C.UTF-8");

    // Layers given in another order than the conf's store layers are refused.
    let output = run(t.nixfly().args([
        "layer",
        "plan",
        "--conf",
        "conf.json",
        "--layer",
        "app.json",
        "--layer",
        "lib.json",
        "--layer",
        "custom.json",
        "--out",
        "bad.json",
    ]));
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("store layer 0"));

    // A customisation layer whose checksum disagrees is refused.
    fs::write(custom.join("checksum"), "0".repeat(64)).unwrap();
    let output = run(t.nixfly().args([
        "layer",
        "plan",
        "--conf",
        "conf.json",
        "--layer",
        "lib.json",
        "--layer",
        "app.json",
        "--layer",
        "custom.json",
        "--out",
        "bad.json",
    ]));
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("checksum"));
}

#[test]
fn layer_commands_are_hidden_from_help() {
    let t = TestDir::new();
    let output = run(t.nixfly().arg("--help"));
    assert_success(&output);
    assert!(!String::from_utf8_lossy(&output.stdout).contains("layer"));
}

/// A layer plan is what nixpkgs' script streams: `nixfly layer build` and `nixfly layer plan`,
/// run with the flags mkLayerPlan.nix derives from each conf, give the layers the diff_ids
/// and the image the config text that nixpkgs' own `stream_layered_image.py` streamed of the
/// same confs over the same trees (`tests/fixtures/stream-image/cases.json`: hardlinks across
/// layers, long and non-ASCII names, uid/gid too large for ustar, a long user name, dates
/// with offsets and microseconds, a base image in skopeo's docker-archive layout whose Env
/// shares a name with the image's). `generate.py --layers` builds the trees and runs nixfly.
/// A plan whose tar or config differs from the stream script's makes an image whose pull
/// fails its diff_id check, or another image id than the one the stream script makes.
#[test]
fn layer_plans_match_nixpkgs() {
    let root = env!("CARGO_MANIFEST_DIR");
    let fixtures = format!("{root}/tests/fixtures/stream-image");
    let recorded: Vec<Value> =
        serde_json::from_str(&fs::read_to_string(format!("{fixtures}/cases.json")).unwrap()).unwrap();
    let out = std::process::Command::new("python3")
        .arg(format!("{fixtures}/generate.py"))
        .arg("--layers")
        .arg(env!("CARGO_BIN_EXE_nixfly"))
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plans: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plans.len(), recorded.len());
    assert_eq!(recorded.len(), 5);
    for (nixpkgs, plan) in recorded.into_iter().zip(&plans) {
        let case = nixpkgs["name"].as_str().unwrap();
        assert_eq!(plan["name"], case);
        let entries = nixpkgs["entries"].as_array().unwrap();
        // Every layer entry: `<hex>/layer.tar`, and a base image's under its own names.
        let diff_ids: Vec<&Value> = entries
            .iter()
            .filter(|e| e.get("diff_id").is_some())
            .map(|e| &e["diff_id"])
            .collect();
        let planned: Vec<&Value> = plan["diff_ids"].as_array().unwrap().iter().collect();
        assert_eq!(planned, diff_ids, "case {case}: the layers' diff_ids");
        // The config is the entry before manifest.json, which comes last.
        let config = &entries[entries.len() - 2];
        assert!(
            config["name"].as_str().unwrap().ends_with(".json"),
            "{}",
            config["name"]
        );
        assert_eq!(
            plan["config"].as_str().unwrap(),
            config["text"].as_str().unwrap(),
            "case {case}: the image config"
        );
    }
}

/// A docker-archive at `path` with one layer `l.tar` holding `layer`, whose config gives it
/// `diff_id`.
fn base_archive(path: &std::path::Path, layer: &[u8], diff_id: &str) {
    let config = serde_json::json!({
        "config": {"Env": ["FROM_BASE=1"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    })
    .to_string();
    let config_name = format!(
        "{}.json",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&config))
    );
    let manifest =
        serde_json::json!([{"Config": config_name, "RepoTags": ["base:1"], "Layers": ["l.tar"]}]).to_string();
    let mut archive = tar::Builder::new(fs::File::create(path).unwrap());
    for (name, body) in [
        ("l.tar", layer),
        (config_name.as_str(), config.as_bytes()),
        ("manifest.json", manifest.as_bytes()),
    ] {
        let mut header = tar::Header::new_ustar();
        header.set_size(body.len() as u64);
        header.set_mode(0o444);
        header.set_cksum();
        archive.append_data(&mut header, name, body).unwrap();
    }
    archive.finish().unwrap();
}

/// `nixfly layer base` records a base image's layers with the diff_ids its config gives them,
/// and refuses a layer that is not what its config says (nixpkgs' script would put the
/// config's diff_id in an image no runtime can unpack). `layer plan` wants those records when
/// the conf has a base image, and only then.
#[test]
fn base_layers_are_checked_against_their_config() {
    let t = TestDir::new();
    let layer = {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(5);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "etc/base", &b"base\n"[..])
            .unwrap();
        builder.into_inner().unwrap()
    };
    let diff_id = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&layer))
    );
    let good = t.join("good.tar");
    base_archive(&good, &layer, &diff_id);
    let damaged = t.join("damaged.tar");
    base_archive(&damaged, &layer, &format!("sha256:{}", "0".repeat(64)));
    // The same two gzip-compressed, as buildLayeredImage leaves a base by default.
    for archive in [&good, &damaged] {
        let out = std::process::Command::new("gzip")
            .arg("-k")
            .arg(archive)
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    for suffix in ["", ".gz"] {
        let good = std::path::PathBuf::from(format!("{}{suffix}", good.display()));
        let output = run(t
            .nixfly()
            .args(["layer", "base", "--image"])
            .arg(&good)
            .args(["--out", "base.json"]));
        assert_success(&output);
        let records: Value = serde_json::from_slice(&fs::read(t.join("base.json")).unwrap()).unwrap();
        assert_eq!(
            records[0]["source"],
            serde_json::json!({"type": "base_layer", "archive": good.display().to_string(), "member": "l.tar"})
        );
        assert_eq!(records[0]["diff_id"], diff_id);

        let damaged = std::path::PathBuf::from(format!("{}{suffix}", damaged.display()));
        let output = run(t
            .nixfly()
            .args(["layer", "base", "--image"])
            .arg(&damaged)
            .args(["--out", "damaged.json"]));
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("l.tar of the base image {}", damaged.display()))
                && stderr.contains(&diff_id)
                && stderr.contains("the base image is damaged"),
            "{suffix}: {stderr}"
        );
        assert!(!t.join("damaged.json").exists());
    }
    let good = t.join("good.tar");

    let conf = |from_image: Value| {
        serde_json::json!({
            "architecture": "amd64", "config": {}, "created": "1970-01-01T00:00:01+00:00",
            "store_layers": [], "customisation_layer": "/nix/store/x-customisation-layer",
            "from_image": from_image,
        })
        .to_string()
    };
    fs::write(
        t.join("with-base.json"),
        conf(Value::String(good.display().to_string())),
    )
    .unwrap();
    let output = run(t.nixfly().args([
        "layer",
        "plan",
        "--conf",
        "with-base.json",
        "--layer",
        "c.json",
        "--out",
        "p.json",
    ]));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--base-layers") && stderr.contains("nixfly layer base"),
        "{stderr}"
    );
    fs::write(t.join("without-base.json"), conf(Value::Null)).unwrap();
    let output = run(t.nixfly().args([
        "layer",
        "plan",
        "--conf",
        "without-base.json",
        "--base-layers",
        "base.json",
        "--layer",
        "c.json",
        "--out",
        "p.json",
    ]));
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no base image"));
}

/// A push of a plan over a compressed base (buildLayeredImage's default `.tar.gz`) reads the
/// base once into a temporary copy. With no room for that copy (here TMPDIR names no
/// directory) it still pushes the same image, reading each base layer by decompressing the
/// base again, and says so once, with the fix; with room, it says nothing. skopeo reads both
/// images back: every layer is what the config says.
#[test]
fn a_plan_over_a_compressed_base_pushes_without_room_for_its_copy_and_says_so() {
    use support::readback::{pushed_reference, read_back};
    use support::registry::{AuthMode, Registry};
    let t = TestDir::new();
    let layer = {
        let mut builder = tar::Builder::new(Vec::new());
        for name in ["etc/base", "etc/more"] {
            let body = format!("{name}\n").repeat(20_000);
            let mut header = tar::Header::new_ustar();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, body.as_bytes()).unwrap();
        }
        builder.into_inner().unwrap()
    };
    let base_diff_id = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&layer))
    );
    base_archive(&t.join("base.tar"), &layer, &base_diff_id);
    let gzip = std::process::Command::new("gzip")
        .arg(t.join("base.tar"))
        .status()
        .unwrap();
    assert!(gzip.success());
    let base = t.join("base.tar.gz");
    assert_success(&run(t
        .nixfly()
        .args(["layer", "base", "--image"])
        .arg(&base)
        .args(["--out", "base.json"])));

    let root = store(&t);
    let custom = t.join("customisation");
    fs::create_dir_all(&custom).unwrap();
    support::customisation_tar(&custom.join("layer.tar"), &root, "nix");
    assert_success(&run(t
        .nixfly()
        .args(["layer", "build", "--tar"])
        .arg(custom.join("layer.tar"))
        .args(["--out", "custom.json"])));
    let custom_record: Value = serde_json::from_slice(&fs::read(t.join("custom.json")).unwrap()).unwrap();
    let checksum = sha256sum(&custom.join("layer.tar"));
    let custom_diff_id = format!("sha256:{checksum}");
    assert_eq!(custom_record["diff_id"], custom_diff_id.as_str());
    fs::write(custom.join("checksum"), format!("{checksum}\n")).unwrap();
    let conf = serde_json::json!({
        "architecture": "amd64", "config": {"Cmd": ["/bin/app"]},
        "created": "1970-01-01T00:00:01+00:00", "store_layers": [],
        "customisation_layer": custom.display().to_string(),
        "from_image": base.display().to_string(),
    });
    fs::write(t.join("conf.json"), conf.to_string()).unwrap();
    assert_success(&run(t.nixfly().args([
        "layer",
        "plan",
        "--conf",
        "conf.json",
        "--base-layers",
        "base.json",
        "--layer",
        "custom.json",
        "--out",
        "plan.json",
    ])));

    // Records of the same base named by another path are refused, saying so.
    assert_success(&run(t.nixfly().args([
        "layer",
        "base",
        "--image",
        "base.tar.gz",
        "--out",
        "relative.json",
    ])));
    let output = run(t.nixfly().args([
        "layer",
        "plan",
        "--conf",
        "conf.json",
        "--base-layers",
        "relative.json",
        "--layer",
        "custom.json",
        "--out",
        "refused.json",
    ]));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "base layer record 0 was made from the base image base.tar.gz, but the conf's base \
             image is {}",
            base.display()
        )),
        "{stderr}"
    );

    let warning = "is decompressed again from its start for each of its layers";
    for (tmpdir, warned) in [(t.join("no-such-dir"), true), (t.join("tmp"), false)] {
        fs::create_dir_all(t.join("tmp")).unwrap();
        let registry = Registry::start(AuthMode::None);
        let out = run(t
            .nixfly()
            .env("TMPDIR", &tmpdir)
            .args(["push", "plan.json", "--no-cache", "--to"])
            .arg(format!("{}/app", registry.host()))
            .args(["--tag", "latest"]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let reference = pushed_reference(&out, &registry.host(), "app");
        assert_eq!(stderr.matches(warning).count(), usize::from(warned), "{stderr}");
        if warned {
            assert!(
                stderr.contains(&format!("base image {}", base.display()))
                    && stderr.contains(&format!("could not be written to {}", tmpdir.display()))
                    && stderr.contains("Point TMPDIR at a directory with room for it"),
                "{stderr}"
            );
        }
        assert_eq!(
            read_back(&registry, &reference).diff_ids,
            [base_diff_id.clone(), custom_diff_id.clone()]
        );
    }
}

/// The file's SHA-256 as coreutils' sha256sum prints it (what nixpkgs' customisation layer
/// writes into `checksum`): an oracle apart from nixfly's hasher.
fn sha256sum(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
