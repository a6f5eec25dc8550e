//! nixfly's gzip layers are several gzip members one after another (one per 1 MiB block, see
//! src/blob.rs). Docker, containerd and skopeo read layers with Go's `compress/gzip`; this checks
//! that it, and skopeo itself, decompress every pushed layer back to its diff_id.

use crate::support;

use std::process::Command;
use support::images::{self, Fault, Layer};
use support::readback::{push, pushed_reference};
use support::registry::{AuthMode, Registry};
use support::{TestDir, run};

/// Layers of a few MiB, so that each blob has several members.
fn multi_member_layers() -> Vec<Layer> {
    vec![
        Layer::of(&["/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/bin/bash"]),
        Layer::of(&["/usr/bin/tar", "/usr/share/common-licenses/GPL-3"]),
    ]
}

/// Members in a gzip blob: count the member headers `gzip -l`-style tools cannot, by walking it.
fn gzip_members(blob: &[u8]) -> usize {
    let mut decoder = flate2::bufread::GzDecoder::new(blob);
    let mut members = 0;
    loop {
        std::io::copy(&mut decoder, &mut std::io::sink()).unwrap();
        members += 1;
        let rest = decoder.into_inner();
        if rest.is_empty() {
            return members;
        }
        decoder = flate2::bufread::GzDecoder::new(rest);
    }
}

#[test]
fn go_compress_gzip_and_skopeo_read_multi_member_layers() {
    let registry = Registry::start(AuthMode::None);
    let t = TestDir::new();
    let tar = t.join("image.tar");
    let written = images::write_stream_layered(
        std::fs::File::create(&tar).unwrap(),
        &multi_member_layers(),
        Fault::None,
    )
    .unwrap();
    let out = push(&t, &registry, tar.to_str().unwrap(), "members", "v1", &[]);
    let reference = pushed_reference(&out, &registry.host(), "members");

    // The blobs as stored, through skopeo (no decompression: `dir:` keeps them as they are).
    let dir = t.join("copied");
    let copied = run(Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("dir:{}", dir.display()))
        .env("HOME", t.path()));
    support::assert_success(&copied);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let blobs: Vec<_> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|layer| dir.join(&layer["digest"].as_str().unwrap()["sha256:".len()..]))
        .collect();
    let first = std::fs::read(&blobs[0]).unwrap();
    assert!(
        gzip_members(&first) >= 3,
        "the first layer ({} bytes) should span several members",
        first.len()
    );

    // Go's reader, as Docker and containerd use it.
    let go = run(Command::new("go")
        .arg("run")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/go/gunzip_sha256.go"))
        .args(&blobs)
        .env("HOME", t.path())
        .env("GOCACHE", t.join("gocache"))
        .env("GOFLAGS", "-mod=mod")
        .env("GO111MODULE", "off"));
    support::assert_success(&go);
    let go_diff_ids: Vec<String> = String::from_utf8(go.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        go_diff_ids, written.diff_ids,
        "Go's compress/gzip reads every member"
    );

    // skopeo decompresses layers (and checks them against the config) to write a docker-archive.
    let archive = t.join("back.tar");
    let exported = run(Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("docker-archive:{}", archive.display()))
        .env("HOME", t.path()));
    support::assert_success(&exported);
    let mut entries = tar::Archive::new(std::fs::File::open(&archive).unwrap());
    let mut layer_digests = Vec::new();
    for entry in entries.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        // skopeo also writes legacy `<id>/layer.tar` links to the same files.
        if name.ends_with(".tar") && entry.header().entry_type().is_file() {
            let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
            std::io::copy(&mut entry, &mut hasher).unwrap();
            layer_digests.push(format!("sha256:{}", hex::encode(sha2::Digest::finalize(hasher))));
        }
    }
    layer_digests.sort();
    let mut expected = written.diff_ids.clone();
    expected.sort();
    assert_eq!(
        layer_digests, expected,
        "skopeo decompressed every layer to its diff_id"
    );
}
