//! nixfly's gzip layers are several gzip members one after another (one per 1 MiB block, see
//! src/blob.rs). Docker, containerd and skopeo read layers with Go's `compress/gzip`; this checks
//! that it, skopeo itself, and a containerd daemon (pull and unpack) read every pushed layer back
//! to its diff_id.

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

/// Push an image of [`multi_member_layers`] to `members:v1`: its pushed reference (by digest)
/// and what the fixture writer wrote.
fn push_multi_member_image(registry: &Registry, t: &TestDir) -> (String, images::Written) {
    push_image_to(registry, t, "members", &[])
}

/// Push an image of [`multi_member_layers`] to `<repo>:v1` with `extra` flags.
fn push_image_to(registry: &Registry, t: &TestDir, repo: &str, extra: &[&str]) -> (String, images::Written) {
    let tar = t.join("image.tar");
    let written = images::write_stream_layered(
        std::fs::File::create(&tar).unwrap(),
        &multi_member_layers(),
        Fault::None,
    )
    .unwrap();
    let out = push(t, registry, tar.to_str().unwrap(), repo, "v1", extra);
    (pushed_reference(&out, &registry.host(), repo), written)
}

#[test]
fn go_compress_gzip_and_skopeo_read_multi_member_layers() {
    let registry = Registry::start(AuthMode::None);
    let t = TestDir::new();
    let (reference, written) = push_multi_member_image(&registry, &t);

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

/// A containerd daemon of its own (root, state and socket in a temp dir; no CRI), for pulls.
struct Containerd {
    dir: TestDir,
    daemon: std::process::Child,
}

impl Containerd {
    fn start() -> Containerd {
        // SAFETY: getuid has no preconditions.
        assert_eq!(
            unsafe { libc::getuid() },
            0,
            "containerd unpacks layers as root: run the suite as root (scripts/test does on CI)"
        );
        let dir = TestDir::new();
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n",
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                sock = dir.join("sock").display(),
            ),
        )
        .unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(std::fs::File::create(dir.join("log")).unwrap())
            .stderr(std::fs::File::create(dir.join("log.err")).unwrap())
            .spawn()
            .expect("containerd is installed (scripts/test installs it)");
        let containerd = Containerd { dir, daemon };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !containerd.ctr(&["version"]).status.success() {
            assert!(
                std::time::Instant::now() < deadline,
                "containerd did not start: {}",
                std::fs::read_to_string(containerd.dir.join("log.err")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        containerd
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        run(Command::new("ctr")
            .arg("--address")
            .arg(self.dir.join("sock"))
            .args(args))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// The chain IDs of the OCI image spec (config.md): the first diff_id, then
/// sha256(parent chain ID + " " + diff_id) for each next layer. Snapshotters key layers by them.
fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::new();
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => format!(
                "sha256:{}",
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(format!(
                    "{parent} {diff_id}"
                )))
            ),
        };
        chain.push(next);
    }
    chain
}

/// containerd (what Fly's hosts pull with) pulls a pushed image and unpacks every multi-member
/// layer; its unpacker checks each layer's uncompressed digest against the config's diff_id
/// ("wrong diff id calculated on extraction" otherwise), and keys the native snapshots by the
/// chain IDs, computed here from the fixture writer's diff_ids.
#[test]
fn containerd_pulls_and_unpacks_multi_member_layers() {
    let registry = Registry::start(AuthMode::None);
    let t = TestDir::new();
    let (_, written) = push_multi_member_image(&registry, &t);
    assert_containerd_unpacks(&registry, "members", &written);
}

/// The same for the OCI manifest with zstd layers that `--format oci --compression zstd` (or
/// fly.toml's `[build] compression = "zstd"`) pushes: containerd decompresses them and finds
/// the config's diff_ids.
#[test]
fn containerd_pulls_and_unpacks_zstd_layers() {
    let registry = Registry::start(AuthMode::None);
    let t = TestDir::new();
    let (_, written) = push_image_to(
        &registry,
        &t,
        "zstd",
        &["--format", "oci", "--compression", "zstd"],
    );
    let manifest = registry.skopeo_manifest(&format!("{}/zstd:v1", registry.host()));
    for layer in manifest["layers"].as_array().unwrap() {
        assert_eq!(layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+zstd");
    }
    assert_containerd_unpacks(&registry, "zstd", &written);
}

/// containerd pulls `<repo>:v1` into the native snapshotter, which keys each unpacked layer by
/// its chain ID.
fn assert_containerd_unpacks(registry: &Registry, repo: &str, written: &images::Written) {
    let containerd = Containerd::start();
    let image = format!("{}/{repo}:v1", registry.host());
    let pulled = containerd.ctr(&[
        "images",
        "pull",
        "--plain-http",
        "--snapshotter",
        "native",
        &image,
    ]);
    support::assert_success(&pulled);
    let snapshots = containerd.ctr(&["snapshots", "--snapshotter", "native", "ls"]);
    support::assert_success(&snapshots);
    let keys: Vec<String> = String::from_utf8(snapshots.stdout)
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next().map(String::from))
        .collect();
    for chain_id in chain_ids(&written.diff_ids) {
        assert!(keys.contains(&chain_id), "no snapshot {chain_id} in {keys:?}");
    }
}
