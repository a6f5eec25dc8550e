//! Bad input to `nixfly push`: each case ends with a clear error naming the problem, a
//! non-zero exit, nothing on stdout, and the tag still pointing at the image it had before.

use crate::support;

use std::path::{Path, PathBuf};
use support::TestDir;
use support::images::{self, Fault};
use support::readback::{push, pushed_reference};
use support::registry::{AuthMode, Registry};

/// A registry whose `app:stable` holds a good image; returns it and that manifest's digest.
fn registry_with_stable_tag(t: &TestDir) -> (Registry, serde_json::Value) {
    let registry = Registry::start(AuthMode::htpasswd());
    let good = t.join("good.tar");
    images::write_stream_layered(
        std::fs::File::create(&good).unwrap(),
        &images::small_layers()[..1],
        Fault::None,
    )
    .unwrap();
    let out = push(t, &registry, good.to_str().unwrap(), "app", "stable", &[]);
    pushed_reference(&out, &registry.host(), "app");
    let manifest = registry.skopeo_manifest(&format!("{}/app:stable", registry.host()));
    (registry, manifest)
}

/// Push `source` to `app:stable` and expect a failure whose stderr contains every `needle`.
#[track_caller]
fn assert_refused(source: &Path, needles: &[&str]) {
    let t = TestDir::new();
    let (registry, before) = registry_with_stable_tag(&t);
    let out = push(&t, &registry, source.to_str().unwrap(), "app", "stable", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the push succeeded:\n{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.lines().any(|l| l.starts_with("error: ")),
        "no error line: {stderr}"
    );
    for needle in needles {
        assert!(stderr.contains(needle), "stderr lacks {needle:?}:\n{stderr}");
    }
    let after = registry.skopeo_manifest(&format!("{}/app:stable", registry.host()));
    assert_eq!(before, after, "the tag moved");
}

/// The small image with `fault`, uncompressed, and gzip-compressed next to it.
fn broken(dir: &Path, fault: Fault) -> (PathBuf, PathBuf) {
    let tar = dir.join(format!("{fault:?}.tar"));
    images::write_stream_layered(
        std::fs::File::create(&tar).unwrap(),
        &images::small_layers(),
        fault,
    )
    .unwrap();
    let gz = dir.join(format!("{fault:?}.tar.gz"));
    images::gzip_file(&tar, &gz).unwrap();
    (tar, gz)
}

fn cut(from: &Path, to: &Path, fraction: f64) {
    let bytes = std::fs::read(from).unwrap();
    std::fs::write(to, &bytes[..(bytes.len() as f64 * fraction) as usize]).unwrap();
}

#[test]
fn a_file_that_is_not_an_archive() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "just some text, not an image\n").unwrap();
    assert_refused(&text, &["notes.txt is not an image", "--source-kind"]);
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    assert_refused(&empty, &["empty is not an image"]);
}

#[test]
fn truncated_and_corrupt_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let (_, gz) = broken(dir.path(), Fault::None);
    let truncated = dir.path().join("truncated.tar.gz");
    cut(&gz, &truncated, 0.6);
    assert_refused(
        &truncated,
        &["truncated.tar.gz", "gzip data is corrupt or truncated"],
    );
    let corrupt = dir.path().join("damaged.tar.gz");
    let mut bytes = std::fs::read(&gz).unwrap();
    let middle = bytes.len() / 2;
    for byte in &mut bytes[middle..middle + 64] {
        *byte ^= 0xa5;
    }
    std::fs::write(&corrupt, bytes).unwrap();
    // Garbage from the inflater may first break a tar header; either way the error says so.
    assert_refused(&corrupt, &["damaged.tar.gz", "corrupt"]);
}

#[test]
fn truncated_tar() {
    let dir = tempfile::tempdir().unwrap();
    let (tar, _) = broken(dir.path(), Fault::None);
    let truncated = dir.path().join("truncated.tar");
    cut(&tar, &truncated, 0.5);
    assert_refused(&truncated, &["truncated.tar", "truncated"]);
}

#[test]
fn missing_or_malformed_manifest() {
    let dir = tempfile::tempdir().unwrap();
    for source in [
        broken(dir.path(), Fault::NoManifest).0,
        broken(dir.path(), Fault::NoManifest).1,
    ] {
        assert_refused(&source, &["has no manifest.json"]);
    }
    for source in [
        broken(dir.path(), Fault::BadManifest).0,
        broken(dir.path(), Fault::BadManifest).1,
    ] {
        assert_refused(&source, &["manifest.json is malformed"]);
    }
}

#[test]
fn layer_content_not_matching_its_digest() {
    let dir = tempfile::tempdir().unwrap();
    // Indexed (.tar) and streamed (.tar.gz) paths both hash what they read.
    let (tar, gz) = broken(dir.path(), Fault::LayerContent(1));
    for source in [tar, gz] {
        assert_refused(
            &source,
            &["has sha256", "but is declared as", "the image is corrupt"],
        );
    }
    let (tar, gz) = broken(dir.path(), Fault::ConfigDiffId(2));
    for source in [tar, gz] {
        assert_refused(
            &source,
            &["but is declared as sha256:0000000000", "the image is corrupt"],
        );
    }
}

#[test]
fn entry_names_escaping_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    for fault in [Fault::DotDotEntry, Fault::AbsoluteEntry] {
        let (tar, gz) = broken(dir.path(), fault);
        for source in [tar, gz] {
            assert_refused(&source, &["unsafe entry name", "refusing the archive"]);
        }
    }
}

#[test]
fn stream_script_exiting_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (tar, _) = broken(dir.path(), Fault::None);
    let script = dir.path().join("stream-broken");
    images::write_stream_script(&script, &tar, 3).unwrap();
    assert_refused(
        &script,
        &[
            "stream script",
            "stream-broken exited with code 3",
            "error: cannot read /nix/store/xyz",
        ],
    );
}

/// A registry nothing listens for: the push stops at its first request, before any layer is
/// read, with one error naming the registry, instead of warning that nothing can be reused
/// and failing later.
#[test]
fn a_registry_that_cannot_be_reached() {
    let t = TestDir::new();
    let source = t.join("image.tar");
    images::write_stream_layered(
        std::fs::File::create(&source).unwrap(),
        &images::small_layers()[..1],
        Fault::None,
    )
    .unwrap();
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = format!("127.0.0.1:{port}");
    let mut cmd = t.nixfly();
    cmd.args([
        "push",
        source.to_str().unwrap(),
        "--to",
        &format!("{host}/app"),
        "--tag",
        "t",
    ])
    .env("NIXFLY_OUTPUT", "json");
    let out = support::run(&mut cmd);
    // JSON mode: every event, the error included, is a line on stdout.
    let events = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{events}");
    assert!(
        events.contains(&format!("cannot reach the registry; is {host} up?")),
        "{events}"
    );
    assert!(!events.contains("not reusing layers"), "{events}");
    assert!(
        !events.contains("\"event\":\"layer"),
        "a layer was read: {events}"
    );
}
