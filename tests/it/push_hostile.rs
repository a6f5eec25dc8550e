//! Issue 13: hostile inputs. An OCI layout whose files are symlinks to devices or to files
//! outside it, or whose blobs disagree with their descriptors, is refused before a byte is
//! uploaded, and the tag stays as it was.

use crate::support;

use std::path::{Path, PathBuf};
use support::TestDir;
use support::images;
use support::proxy::FaultProxy;
use support::readback::{assert_same_image, push, push_via, pushed_reference};
use support::registry::{AuthMode, Registry};

/// `blobs/sha256/<hex>` of the layout's manifest, config and first layer.
fn layout_files(layout: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let blob = |digest: &str| layout.join("blobs/sha256").join(&digest["sha256:".len()..]);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_path = blob(index["manifests"][0]["digest"].as_str().unwrap());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    (
        manifest_path,
        blob(manifest["config"]["digest"].as_str().unwrap()),
        blob(manifest["layers"][0]["digest"].as_str().unwrap()),
    )
}

fn replace_with_symlink(path: &Path, target: &Path) {
    std::fs::remove_file(path).unwrap();
    std::os::unix::fs::symlink(target, path).unwrap();
}

#[test]
fn issue_13_hostile_oci_layouts_are_refused_before_any_upload() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let good = t.join("good");
    images::write_oci_layout(&good, &images::small_layers(), false).unwrap();
    let out = push(
        &t,
        &registry,
        good.to_str().unwrap(),
        "app",
        "stable",
        &["--format", "oci"],
    );
    pushed_reference(&out, &registry.host(), "app");
    let before = registry.skopeo_manifest(&format!("{}/app:stable", registry.host()));
    let outside = t.join("secret.txt");

    type Spoil = fn(&Path, &Path);
    let cases: [(&str, Spoil, &str); 6] = [
        (
            "layer-dev-zero",
            |l, _| replace_with_symlink(&layout_files(l).2, Path::new("/dev/zero")),
            "outside the layout",
        ),
        (
            "layer-outside",
            |l, outside| {
                let layer = layout_files(l).2;
                // Same size as the descriptor says: only the symlink check can stop it.
                std::fs::copy(&layer, outside).unwrap();
                replace_with_symlink(&layer, outside);
            },
            "outside the layout",
        ),
        (
            "config-dev-zero",
            |l, _| replace_with_symlink(&layout_files(l).1, Path::new("/dev/zero")),
            "outside the layout",
        ),
        (
            "index-dev-zero",
            |l, _| replace_with_symlink(&l.join("index.json"), Path::new("/dev/zero")),
            "outside the layout",
        ),
        (
            "layer-longer",
            |l, _| {
                use std::io::Write;
                let layer = layout_files(l).2;
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(layer)
                    .unwrap()
                    .write_all(b"extra")
                    .unwrap();
            },
            "but its descriptor says",
        ),
        (
            "layer-fifo",
            |l, _| {
                let layer = layout_files(l).2;
                std::fs::remove_file(&layer).unwrap();
                let status = std::process::Command::new("mkfifo").arg(&layer).status().unwrap();
                assert!(status.success());
            },
            "not a regular file",
        ),
    ];
    for (name, spoil, expected) in cases {
        let layout = t.join(name);
        images::write_oci_layout(&layout, &images::small_layers(), false).unwrap();
        spoil(&layout, &outside);
        let proxy = FaultProxy::start(registry.addr, Vec::new());
        let started = std::time::Instant::now();
        let out = push_via(
            &t,
            &registry,
            &proxy.host(),
            layout.to_str().unwrap(),
            "app",
            "stable",
            &["--format", "oci"],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(
            started.elapsed().as_secs() < 30,
            "{name} took {:?}",
            started.elapsed()
        );
        let uploads: Vec<String> = proxy
            .requests()
            .into_iter()
            .filter(|r| r.starts_with("PATCH") || r.starts_with("PUT"))
            .collect();
        assert!(uploads.is_empty(), "{name}: uploaded {uploads:?}");
        assert_eq!(
            registry.skopeo_manifest(&format!("{}/app:stable", registry.host())),
            before,
            "{name}"
        );
    }
}

#[test]
fn issue_13_symlinks_inside_the_layout_are_followed() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let layout = t.join("layout");
    let written = images::write_oci_layout(&layout, &images::small_layers(), false).unwrap();
    let layer = layout_files(&layout).2;
    let moved = layout.join("elsewhere");
    std::fs::rename(&layer, &moved).unwrap();
    std::os::unix::fs::symlink("../../elsewhere", &layer).unwrap();
    let out = push(
        &t,
        &registry,
        layout.to_str().unwrap(),
        "app",
        "v1",
        &["--format", "oci"],
    );
    let reference = pushed_reference(&out, &registry.host(), "app");
    assert_same_image(&registry, &reference, &written);
}
