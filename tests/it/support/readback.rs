//! Reading a pushed image back with skopeo (an independent client) and checking it against
//! the fixture it was pushed from: config byte for byte, and every layer's uncompressed sha256
//! against the config's diff_ids.

use super::images::Written;
use super::registry::{AuthMode, Registry};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::process::{Command, Output};

/// `nixfly push SOURCE --to <registry>/<repo> --tag <tag> --creds ...` plus `extra`.
pub fn push(
    t: &super::TestDir,
    registry: &Registry,
    source: &str,
    repo: &str,
    tag: &str,
    extra: &[&str],
) -> Output {
    push_via(t, registry, &registry.host(), source, repo, tag, extra)
}

/// `push`, but through `host` (a proxy in front of `registry`).
pub fn push_via(
    t: &super::TestDir,
    registry: &Registry,
    host: &str,
    source: &str,
    repo: &str,
    tag: &str,
    extra: &[&str],
) -> Output {
    let mut cmd = t.nixfly();
    cmd.args(["push", source, "--to", &format!("{host}/{repo}"), "--tag", tag]);
    if !matches!(registry.auth, AuthMode::None) {
        cmd.args(["--creds", &registry.creds()]);
    }
    cmd.args(extra);
    super::run(&mut cmd)
}

/// The single stdout line of a successful push: `host/repo@sha256:<hex>`.
#[track_caller]
pub fn pushed_reference(out: &Output, host: &str, repo: &str) -> String {
    super::assert_success(out);
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let prefix = format!("{host}/{repo}@sha256:");
    assert!(
        stdout.starts_with(&prefix) && stdout.ends_with('\n') && stdout.lines().count() == 1,
        "stdout is not exactly the pushed reference: {stdout:?}"
    );
    let hex = &stdout.trim_end()[prefix.len()..];
    assert!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "{stdout:?}"
    );
    stdout.trim_end().to_string()
}

/// What skopeo copied out of the registry.
pub struct ReadBack {
    pub manifest: serde_json::Value,
    pub config: Vec<u8>,
    /// sha256 of each layer blob after decompressing it, in manifest order.
    pub diff_ids: Vec<String>,
}

/// `skopeo copy docker://reference dir:...`, then decompress and hash every layer.
pub fn read_back(registry: &Registry, reference: &str) -> ReadBack {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--src-tls-verify=false"]);
    if !matches!(registry.auth, AuthMode::None) {
        cmd.arg(format!("--src-creds={}", registry.creds()));
    }
    let out = cmd
        .arg(format!("docker://{reference}"))
        .arg(format!("dir:{}", dir.path().display()))
        .env("HOME", dir.path())
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo copy {reference} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    let blob = |digest: &str| std::fs::read(dir.path().join(&digest["sha256:".len()..])).unwrap();
    let config = blob(manifest["config"]["digest"].as_str().unwrap());
    let diff_ids = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|layer| {
            let bytes = blob(layer["digest"].as_str().unwrap());
            let media_type = layer["mediaType"].as_str().unwrap();
            let mut plain = Vec::new();
            if media_type.ends_with("zstd") {
                zstd::stream::read::Decoder::new(&bytes[..])
                    .unwrap()
                    .read_to_end(&mut plain)
                    .unwrap();
            } else {
                flate2::read::MultiGzDecoder::new(&bytes[..])
                    .read_to_end(&mut plain)
                    .unwrap();
            }
            format!("sha256:{}", hex::encode(Sha256::digest(&plain)))
        })
        .collect();
    ReadBack {
        manifest,
        config,
        diff_ids,
    }
}

/// The image in the registry is the fixture: same config bytes and digest, same layers.
#[track_caller]
pub fn assert_same_image(registry: &Registry, reference: &str, written: &Written) -> ReadBack {
    let back = read_back(registry, reference);
    assert_eq!(back.manifest["config"]["digest"], written.config_digest.as_str());
    assert!(
        back.config == written.config,
        "the config was not pushed byte for byte"
    );
    assert_eq!(back.diff_ids, written.diff_ids);
    back
}

/// The manifest is OCI's (`oci`) or Docker's v2s2, its layers zstd or gzip (`zstd`), by their
/// media types.
#[track_caller]
pub fn assert_media_types(back: &ReadBack, oci: bool, zstd: bool) {
    let (manifest, layer) = match (oci, zstd) {
        (true, true) => (
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
        (true, false) => (
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
        (false, false) => (
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        ),
        (false, true) => panic!("Docker v2s2 has no zstd layers"),
    };
    assert_eq!(back.manifest["mediaType"], manifest);
    for each in back.manifest["layers"].as_array().unwrap() {
        assert_eq!(each["mediaType"], layer);
    }
}

/// The events named `name` from `--output json` stdout, where every line is one JSON event.
/// The `pushed` event's reference of a successful push with `--output json`.
#[track_caller]
pub fn pushed_json_reference(out: &Output) -> String {
    super::assert_success(out);
    let pushed = events(out, "pushed");
    assert_eq!(pushed.len(), 1);
    pushed[0]["reference"].as_str().unwrap().to_string()
}

pub fn events(out: &Output, name: &str) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("only JSON lines on stdout"))
        .filter(|event| event["event"] == name)
        .collect()
}

/// `layer_done` outcomes from `--output json` stdout, in layer order.
pub fn layer_outcomes(out: &Output) -> Vec<String> {
    let mut outcomes: Vec<(u64, String)> = events(out, "layer_done")
        .into_iter()
        .map(|event| {
            (
                event["index"].as_u64().unwrap(),
                event["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    outcomes.sort();
    outcomes.into_iter().map(|(_, outcome)| outcome).collect()
}
