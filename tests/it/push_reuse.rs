//! The registry is the cache (issue 12): a push from a fresh machine (empty nixfly cache) learns
//! from the images the registry already has which blob serves which diff_id, so an unchanged
//! image is neither read (indexed `.tar`) nor compressed (stream) nor uploaded. Checked through
//! the JSON events and the registry's own storage; skopeo reads the result back.

use crate::support;

use std::process::Output;
use support::TestDir;
use support::images::{self, Fault, Layer, Written};
use support::proxy::FaultProxy;
use support::readback::{assert_same_image, events, layer_outcomes, push, push_via, pushed_json_reference};
use support::registry::{AuthMode, Registry};

fn archive(t: &TestDir, name: &str, layers: &[Layer]) -> (std::path::PathBuf, Written) {
    let path = t.join(name);
    let written =
        images::write_stream_layered(std::fs::File::create(&path).unwrap(), layers, Fault::None).unwrap();
    (path, written)
}

/// Push from a new TestDir each time: a fresh runner with an empty cache.
fn fresh_push(
    registry: &Registry,
    source: &std::path::Path,
    repo: &str,
    tag: &str,
    extra: &[&str],
) -> Output {
    let runner = TestDir::new();
    let mut args = vec!["--output", "json"];
    args.extend_from_slice(extra);
    push(&runner, registry, source.to_str().unwrap(), repo, tag, &args)
}

#[test]
fn fresh_runner_reads_and_compresses_nothing_the_registry_has_issue_12() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let (tar, written) = archive(&t, "image.tar", &images::small_layers());
    let script = t.join("stream-image");
    images::write_stream_script(&script, &tar, 0).unwrap();
    let layers = written.diff_ids.len();

    let first = fresh_push(&registry, &tar, "app", "live", &[]);
    pushed_json_reference(&first);
    assert_eq!(layer_outcomes(&first), vec!["uploaded"; layers]);
    let stored = registry.blob_bytes();
    // blob_bytes reads the registry's storage: a wrong path would make every "nothing was
    // uploaded" check (here and in deploy.rs, push_arch.rs) pass by reading nothing.
    assert!(
        stored > 0,
        "no blob found in {}",
        registry.storage_dir().display()
    );

    // The .tar again, to the same tag, from another machine: every layer found through the
    // tag's current image; the archive's layers are never read (no progress at all).
    let again = fresh_push(&registry, &tar, "app", "live", &[]);
    let reference = pushed_json_reference(&again);
    assert_eq!(layer_outcomes(&again), vec!["skipped"; layers]);
    assert_eq!(
        events(&again, "layer_progress").len(),
        0,
        "no layer of the .tar was read"
    );

    // The stream script to a new tag, found through --reuse-from: layers only hashed as they
    // pass, none compressed or uploaded.
    let streamed = fresh_push(&registry, &script, "app", "next", &["--reuse-from", "app:live"]);
    pushed_json_reference(&streamed);
    assert_eq!(layer_outcomes(&streamed), vec!["skipped"; layers]);
    assert_eq!(registry.blob_bytes(), stored, "nothing was uploaded");
    assert_same_image(&registry, &reference, &written);

    // Without the hint, a new tag on a fresh runner has nothing to go by: the control.
    let control = fresh_push(&registry, &script, "app", "other", &[]);
    assert_eq!(layer_outcomes(&control), vec!["uploaded"; layers]);
}

/// The other sources of issue 12's two kinds: an OCI layout (indexed, like the `.tar`: no layer
/// opened) and a `.tar.gz`, as a file and on stdin (streams, like the script: layers hashed as
/// they pass, none compressed or uploaded).
#[test]
fn fresh_runner_oci_layout_tar_gz_and_stdin_read_or_compress_nothing_issue_12() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();

    let layout = t.join("layout");
    let from_layout = images::write_oci_layout(&layout, &images::small_layers(), false).unwrap();
    let oci = ["--format", "oci"];
    pushed_json_reference(&fresh_push(&registry, &layout, "layout", "live", &oci));
    let stored = registry.blob_bytes();
    let again = fresh_push(&registry, &layout, "layout", "live", &oci);
    let reference = pushed_json_reference(&again);
    assert_eq!(
        layer_outcomes(&again),
        vec!["skipped"; from_layout.diff_ids.len()]
    );
    assert!(
        events(&again, "layer_progress").is_empty(),
        "no layer of the OCI layout was read"
    );
    assert_eq!(registry.blob_bytes(), stored, "nothing was uploaded");
    assert_same_image(&registry, &reference, &from_layout);

    let (tar, written) = archive(&t, "image.tar", &images::small_layers());
    let layers = written.diff_ids.len();
    pushed_json_reference(&fresh_push(&registry, &tar, "app", "live", &[]));
    let stored = registry.blob_bytes();
    let gz = t.join("image.tar.gz");
    images::gzip_file(&tar, &gz).unwrap();
    let from_gz = fresh_push(&registry, &gz, "app", "live", &[]);
    let reference = pushed_json_reference(&from_gz);
    assert_eq!(layer_outcomes(&from_gz), vec!["skipped"; layers]);
    assert_same_image(&registry, &reference, &written);

    // stdin, to a new tag: found through --reuse-from.
    let runner = TestDir::new();
    let mut cmd = runner.nixfly();
    cmd.args(["push", "-", "--to", &format!("{}/app", registry.host())])
        .args(["--tag", "piped", "--reuse-from", "app:live", "--output", "json"])
        .args(["--creds", &registry.creds()])
        .stdin(std::fs::File::open(&gz).unwrap());
    let piped = cmd.output().unwrap();
    pushed_json_reference(&piped);
    assert_eq!(layer_outcomes(&piped), vec!["skipped"; layers]);
    assert_eq!(registry.blob_bytes(), stored, "nothing was uploaded");
}

#[test]
fn reuse_from_another_repository_mounts_and_one_changed_layer_is_uploaded() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let mut layers = images::small_layers();
    let (tar, _) = archive(&t, "v1.tar", &layers);
    pushed_json_reference(&fresh_push(&registry, &tar, "base", "v1", &[]));

    layers[2] = Layer::of(&["/etc/debian_version", "/usr/share/common-licenses/Apache-2.0"]);
    let (changed, written) = archive(&t, "v2.tar", &layers);
    let host_ref = format!("{}/base:v1", registry.host());
    let out = fresh_push(&registry, &changed, "app", "v2", &["--reuse-from", &host_ref]);
    let reference = pushed_json_reference(&out);
    assert_eq!(layer_outcomes(&out), ["mounted", "mounted", "uploaded"]);
    assert_same_image(&registry, &reference, &written);
}

#[test]
fn a_manifest_naming_a_lost_blob_falls_back_to_uploading() {
    let registry = Registry::start(AuthMode::None);
    let t = TestDir::new();
    let (tar, written) = archive(&t, "image.tar", &images::small_layers());
    let first = fresh_push(&registry, &tar, "app", "live", &[]);
    pushed_json_reference(&first);
    // The registry's manifest still names the first layer, but its data is gone: HEAD says 404.
    let manifest = registry.skopeo_manifest(&format!("{}/app:live", registry.host()));
    let data = registry.blob_data(manifest["layers"][0]["digest"].as_str().unwrap());
    std::fs::remove_file(&data).unwrap();

    let again = fresh_push(&registry, &tar, "app", "live", &[]);
    let reference = pushed_json_reference(&again);
    assert_eq!(layer_outcomes(&again), ["uploaded", "skipped", "skipped"]);
    assert!(data.exists(), "the lost blob is in the registry again");
    assert_same_image(&registry, &reference, &written);
}

/// distribution stores a manifest whose descriptor gives a layer the wrong size (it only checks
/// that the blob exists). Reusing that blob takes its size from the registry's HEAD, not from
/// the lying descriptor: the registry's own storage is the oracle for every size in the new
/// manifest, and skopeo reads the image back.
#[test]
fn a_manifest_lying_about_a_blobs_size_is_not_copied() {
    let registry = Registry::start(AuthMode::None);
    let t = TestDir::new();
    let (tar, written) = archive(&t, "image.tar", &images::small_layers());
    pushed_json_reference(&fresh_push(&registry, &tar, "app", "live", &[]));
    let mut manifest = registry.skopeo_manifest(&format!("{}/app:live", registry.host()));
    let true_size = manifest["layers"][1]["size"].as_u64().unwrap();
    manifest["layers"][1]["size"] = (true_size + 1000).into();
    let lying = t.join("lying.json");
    std::fs::write(&lying, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let put = t
        .nixfly()
        .args([
            "registry",
            "put-manifest",
            &format!("{}/app:liar", registry.host()),
        ])
        .arg(&lying)
        .args(["--media-type", manifest["mediaType"].as_str().unwrap()])
        .output()
        .unwrap();
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));

    let out = fresh_push(&registry, &tar, "app", "new", &["--reuse-from", "app:liar"]);
    let reference = pushed_json_reference(&out);
    assert_eq!(layer_outcomes(&out), vec!["skipped"; written.diff_ids.len()]);
    let warnings = events(&out, "warning");
    assert!(
        warnings.iter().any(|w| w["message"]
            .as_str()
            .unwrap()
            .contains(&format!("as {} bytes", true_size + 1000))),
        "{warnings:?}"
    );
    let pushed = registry.skopeo_manifest(&reference);
    for layer in pushed["layers"].as_array().unwrap() {
        let data = registry.blob_data(layer["digest"].as_str().unwrap());
        assert_eq!(
            layer["size"].as_u64(),
            Some(std::fs::metadata(&data).unwrap().len())
        );
    }
    assert_same_image(&registry, &reference, &written);

    // Mounted into another repository from the same lie: the same correction.
    let out = fresh_push(&registry, &tar, "other", "new", &["--reuse-from", "app:liar"]);
    let reference = pushed_json_reference(&out);
    assert_eq!(layer_outcomes(&out), vec!["mounted"; written.diff_ids.len()]);
    let pushed = registry.skopeo_manifest(&reference);
    assert_eq!(pushed["layers"][1]["size"].as_u64(), Some(true_size));
    assert_same_image(&registry, &reference, &written);
}

/// A stream layer the registry already has is not compressed, but it is still hashed, and a
/// layer whose bytes are not what its name and the config declare fails the push before the
/// tag moves, even though its hash finishes after the stream has moved on to later layers.
#[test]
fn a_stream_layer_the_registry_has_is_still_checked_against_the_config() {
    let registry = Registry::start(AuthMode::None);
    let t = TestDir::new();
    let (tar, _) = archive(&t, "image.tar", &images::small_layers());
    pushed_json_reference(&fresh_push(&registry, &tar, "app", "live", &[]));
    let stored = registry.blob_bytes();
    let live = registry.skopeo_manifest(&format!("{}/app:live", registry.host()));

    for layer in 0..images::small_layers().len() {
        let lying = t.join(&format!("lying-{layer}.tar"));
        images::write_stream_layered(
            std::fs::File::create(&lying).unwrap(),
            &images::small_layers(),
            Fault::LayerContent(layer),
        )
        .unwrap();
        let script = t.join(&format!("stream-lying-{layer}"));
        images::write_stream_script(&script, &lying, 0).unwrap();
        let out = fresh_push(&registry, &script, "app", "live", &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("but is declared as") && stderr.contains("the image is corrupt"),
            "{stderr}"
        );
        let done = events(&out, "layer_done");
        assert!(
            done.iter().all(|e| e["outcome"] == "skipped"),
            "every layer was found in the registry, none compressed: {done:?}"
        );
        assert_eq!(registry.blob_bytes(), stored, "nothing was uploaded");
        let after = registry.skopeo_manifest(&format!("{}/app:live", registry.host()));
        assert_eq!(after, live, "the tag moved");
    }
}

#[test]
fn reuse_from_another_registry_is_refused_before_any_request() {
    let registry = Registry::start(AuthMode::None);
    let t = TestDir::new();
    let (tar, _) = archive(&t, "image.tar", &images::small_layers());
    let out = fresh_push(
        &registry,
        &tar,
        "app",
        "v1",
        &["--reuse-from", "elsewhere.example/app:v1"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--reuse-from elsewhere.example/app:v1 is on elsewhere.example"),
        "{stderr}"
    );
}

/// Two layers of one image with the same content (a base's and the app's empty customisation
/// layers, say): the second is not compressed or uploaded again, from a `.tar` or a stream,
/// and the manifest still lists the blob twice, which skopeo reads back.
#[test]
fn a_layer_that_repeats_within_an_image_is_uploaded_once() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let small = images::small_layers();
    // Side by side, so that the stream reaches the repeat while the first is still uploading.
    let layers = [small[0].clone(), small[0].clone(), small[1].clone()];
    let (tar, written) = archive(&t, "image.tar", &layers);
    assert_eq!(written.diff_ids[0], written.diff_ids[1]);
    let script = t.join("stream-image");
    images::write_stream_script(&script, &tar, 0).unwrap();

    for (source, repo) in [(&tar, "indexed"), (&script, "stream")] {
        // Through a proxy that counts what reaches the registry: each blob is committed by one
        // `PUT .../blobs/uploads/...?digest=`, so a repeat uploaded again shows as a second PUT.
        let proxy = FaultProxy::start(registry.addr, Vec::new());
        let runner = TestDir::new();
        let out = push_via(
            &runner,
            &registry,
            &proxy.host(),
            source.to_str().unwrap(),
            repo,
            "live",
            &["--output", "json"],
        );
        let mut committed: Vec<String> = proxy
            .requests()
            .into_iter()
            .filter(|r| r.starts_with("PUT ") && r.contains("/blobs/uploads/"))
            .filter_map(|r| Some(r.split("digest=").nth(1)?.split('&').next()?.to_string()))
            .collect();
        let puts = committed.len();
        committed.sort();
        committed.dedup();
        assert_eq!(puts, committed.len(), "{repo}: a blob was uploaded twice");
        let reference = proxy.direct(&pushed_json_reference(&out));
        assert_eq!(
            layer_outcomes(&out),
            ["uploaded", "skipped", "uploaded"],
            "{repo}: the second layer is the first one again"
        );
        let back = assert_same_image(&registry, &reference, &written);
        assert_eq!(back.manifest["layers"][0], back.manifest["layers"][1], "{repo}");
    }
}
