//! `nixfly push` of a layer plan to the real registry (distribution 2.8), read back with
//! skopeo: unchanged layers are neither read nor uploaded, a changed layer is the only upload,
//! and a store path that no longer matches its plan is an error that leaves the tag alone.

use crate::support;

use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use support::readback::{layer_outcomes, push, pushed_reference, read_back};
use support::registry::{AuthMode, Registry};
use support::{TestDir, assert_success, run};

/// "Store paths" at real locations under `store` (a plan names them by their real path), and
/// a plan of one layer each plus a customisation layer, built with `nixfly layer`.
struct Planned {
    plan: PathBuf,
    json: Value,
}

fn store_paths(store: &Path) -> Vec<PathBuf> {
    let paths = ["aaaa-runtime", "bbbb-libs", "cccc-app"].map(|name| store.join(name));
    for (index, path) in paths.iter().enumerate() {
        if path.exists() {
            continue;
        }
        fs::create_dir_all(path.join("lib")).unwrap();
        let content: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i.wrapping_mul(2_654_435_761) >> (index * 3)).to_le_bytes())
            .collect();
        fs::write(path.join("lib/data.bin"), content).unwrap();
        fs::write(path.join("README"), format!("store path {index}\n")).unwrap();
    }
    paths.to_vec()
}

fn layer_record(t: &TestDir, work: &Path, name: &str, args: &[&str]) -> PathBuf {
    let out = work.join(format!("{name}.json"));
    let output = run(t
        .nixfly()
        .args(["layer", "build"])
        .args(args)
        .arg("--out")
        .arg(&out));
    assert_success(&output);
    out
}

fn make_plan(t: &TestDir, work: &Path, store: &Path) -> Planned {
    fs::create_dir_all(work).unwrap();
    let paths = store_paths(store);
    let mut records = Vec::new();
    for path in &paths {
        let list = work.join(format!("{}.paths", path.file_name().unwrap().to_str().unwrap()));
        fs::write(&list, format!("{}\n", path.display())).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        records.push(layer_record(
            t,
            work,
            name,
            &["--paths-from", list.to_str().unwrap()],
        ));
    }
    let custom = store.join("dddd-customisation-layer");
    if !custom.exists() {
        fs::create_dir_all(&custom).unwrap();
        support::customisation_tar(&custom.join("layer.tar"), store, "cccc-app/README");
    }
    let custom_tar = custom.join("layer.tar");
    records.push(layer_record(
        t,
        work,
        "custom",
        &["--tar", custom_tar.to_str().unwrap()],
    ));
    let conf = serde_json::json!({
        "architecture": "amd64",
        "config": {"Cmd": [format!("{}/bin/app", paths[2].display())]},
        "created": "1970-01-01T00:00:01+00:00",
        "store_layers": paths.iter().map(|p| vec![p.display().to_string()]).collect::<Vec<_>>(),
        "customisation_layer": custom.display().to_string(),
        "from_image": null,
    });
    let conf_path = work.join("conf.json");
    fs::write(&conf_path, conf.to_string()).unwrap();
    let plan = work.join("plan.json");
    let mut cmd = t.nixfly();
    cmd.args(["layer", "plan", "--conf"]).arg(&conf_path);
    for record in &records {
        cmd.arg("--layer").arg(record);
    }
    assert_success(&run(cmd.arg("--out").arg(&plan)));
    let json = serde_json::from_slice(&fs::read(&plan).unwrap()).unwrap();
    Planned { plan, json }
}

fn recorded(plan: &Value, field: &str) -> Vec<String> {
    plan["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l[field].as_str().unwrap().to_string())
        .collect()
}

/// Digests of every blob the registry stores (layers, configs and manifests), sorted.
fn blob_digests(registry: &Registry) -> Vec<String> {
    let root = registry.storage_dir().join("docker/registry/v2/blobs/sha256");
    let mut digests: Vec<String> = fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flat_map(|prefix| fs::read_dir(prefix.unwrap().path()).unwrap())
        .map(|blob| format!("sha256:{}", blob.unwrap().file_name().to_str().unwrap()))
        .collect();
    digests.sort();
    digests
}

/// The digest of the manifest a tag points at, from skopeo.
fn registry_manifest_digest(registry: &Registry, tag: &str) -> String {
    let out = std::process::Command::new("skopeo")
        .arg("inspect")
        .args(registry.skopeo_args())
        .arg(format!("docker://{}/{tag}", registry.host()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let inspected: Value = serde_json::from_slice(&out.stdout).unwrap();
    inspected["Digest"].as_str().unwrap().to_string()
}

#[test]
fn a_plan_pushes_and_reads_back_as_recorded() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let planned = make_plan(&t, &t.join("build"), &t.join("store"));
    let out = push(&t, &registry, planned.plan.to_str().unwrap(), "app", "v1", &[]);
    let reference = pushed_reference(&out, &registry.host(), "app");
    let back = read_back(&registry, &reference);
    assert_eq!(back.config, planned.json["config"].as_str().unwrap().as_bytes());
    assert_eq!(back.diff_ids, recorded(&planned.json, "diff_id"));
    let digests: Vec<String> = back.manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        digests,
        recorded(&planned.json, "digest"),
        "the blobs are the ones the plan recorded"
    );
}

#[test]
fn an_unchanged_plan_from_an_empty_cache_reads_and_uploads_nothing() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let store = t.join("store");
    let planned = make_plan(&t, &t.join("build"), &store);
    let first = push(&t, &registry, planned.plan.to_str().unwrap(), "app", "v1", &[]);
    pushed_reference(&first, &registry.host(), "app");
    let stored = registry.blob_bytes();
    // blob_bytes reads the registry's storage: a wrong path would make every "nothing was
    // uploaded" check (here and in deploy.rs, push_arch.rs) pass by reading nothing.
    assert!(
        stored > 0,
        "no blob found in {}",
        registry.storage_dir().display()
    );

    // A fresh runner: no cache, and the layers' store paths are not even there.
    fs::rename(&store, t.join("store-moved-away")).unwrap();
    let fresh = TestDir::new();
    let again = push(
        &fresh,
        &registry,
        planned.plan.to_str().unwrap(),
        "app",
        "v2",
        &["--output", "json"],
    );
    assert_success(&again);
    assert_eq!(layer_outcomes(&again), vec!["skipped"; 4]);
    assert_eq!(registry.blob_bytes(), stored, "nothing was uploaded");
    assert_eq!(
        registry.skopeo_manifest(&format!("{}/app:v2", registry.host())),
        registry.skopeo_manifest(&format!("{}/app:v1", registry.host())),
    );
}

#[test]
fn one_changed_layer_is_the_only_upload() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let store = t.join("store");
    let before = make_plan(&t, &t.join("build-1"), &store);
    pushed_reference(
        &push(&t, &registry, before.plan.to_str().unwrap(), "app", "v1", &[]),
        &registry.host(),
        "app",
    );
    let stored = blob_digests(&registry);

    fs::write(store.join("bbbb-libs/README"), "a one-line change\n").unwrap();
    let after = make_plan(&t, &t.join("build-2"), &store);
    let fresh = TestDir::new();
    let out = push(
        &fresh,
        &registry,
        after.plan.to_str().unwrap(),
        "app",
        "v2",
        &["--output", "json"],
    );
    assert_success(&out);
    assert_eq!(
        layer_outcomes(&out),
        ["skipped", "uploaded", "skipped", "skipped"]
    );
    let changed = &after.json["layers"][1];
    assert_ne!(changed["digest"], before.json["layers"][1]["digest"]);
    let back = read_back(&registry, &format!("{}/app:v2", registry.host()));
    assert_eq!(back.diff_ids, recorded(&after.json, "diff_id"));
    let new: Vec<String> = blob_digests(&registry)
        .into_iter()
        .filter(|d| !stored.contains(d))
        .collect();
    let mut expected = vec![
        changed["digest"].as_str().unwrap().to_string(),
        back.manifest["config"]["digest"].as_str().unwrap().to_string(),
        registry_manifest_digest(&registry, "app:v2"),
    ];
    expected.sort();
    assert_eq!(
        new, expected,
        "exactly the changed layer, the new config and the manifest were stored"
    );
}

#[test]
fn a_store_path_changed_after_planning_fails_and_leaves_the_tag() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let store = t.join("store");
    let good = make_plan(&t, &t.join("build-1"), &store);
    let reference = pushed_reference(
        &push(&t, &registry, good.plan.to_str().unwrap(), "app", "v1", &[]),
        &registry.host(),
        "app",
    );
    let manifest = registry.skopeo_manifest(&reference);

    // A new plan whose changed layer is not in the registry yet; then its store path changes.
    fs::write(store.join("cccc-app/README"), "version 2\n").unwrap();
    let next = make_plan(&t, &t.join("build-2"), &store);
    fs::write(
        store.join("cccc-app/README"),
        "tampered after the plan was built\n",
    )
    .unwrap();
    let out = push(
        &TestDir::new(),
        &registry,
        next.plan.to_str().unwrap(),
        "app",
        "v1",
        &[],
    );
    assert!(
        !out.status.success(),
        "a push of a plan that no longer matches its store paths succeeded"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cccc-app"),
        "the error names the store path:\n{stderr}"
    );
    assert!(stderr.contains("rebuild the plan"), "{stderr}");
    assert_eq!(out.stdout, b"");
    assert_eq!(
        registry.skopeo_manifest(&format!("{}/app:v1", registry.host())),
        manifest,
        "the tag still points at the image pushed before"
    );
}
