//! `nixfly push` from every source kind to the real registry (distribution 2.8), read back
//! with skopeo and compared with the fixture: config byte for byte, diff_ids by hashing the
//! decompressed layers.

use crate::support;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;
use support::images::{self, Fault, Written};
use support::readback::{assert_media_types, assert_same_image, layer_outcomes, push, pushed_reference};
use support::registry::{AuthMode, Registry};
use support::{TestDir, assert_success};

/// The small image as an uncompressed streamLayeredImage archive at `t/<name>`.
fn stream_archive(t: &TestDir, name: &str) -> (std::path::PathBuf, Written) {
    let path = t.join(name);
    let written = images::write_stream_layered(
        std::fs::File::create(&path).unwrap(),
        &images::small_layers(),
        Fault::None,
    )
    .unwrap();
    (path, written)
}

#[test]
fn archives_of_every_compression_push_and_read_back() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let (tar, written) = stream_archive(&t, "image.tar");
    let gz = t.join("image.tar.gz");
    images::gzip_file(&tar, &gz).unwrap();
    // Content decides, not the name: a zstd archive called .tar.gz is still read.
    let zst = t.join("misnamed.tar.gz");
    images::zstd_file(&tar, &zst).unwrap();
    for (source, repo) in [(&tar, "plain"), (&gz, "gzip"), (&zst, "zstd")] {
        let out = push(&t, &registry, source.to_str().unwrap(), repo, "v1", &[]);
        let reference = pushed_reference(&out, &registry.host(), repo);
        let back = assert_same_image(&registry, &reference, &written);
        assert_eq!(
            back.manifest["mediaType"],
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        assert_eq!(
            registry.skopeo_manifest(&format!("{}/{repo}:v1", registry.host())),
            back.manifest,
            "the tag points at the pushed manifest"
        );
    }
}

/// `docker save` with containerd's image store (the default of Docker 29 and of Docker Desktop
/// since 4.34) writes each layer as its compressed blob, while the config keeps the tars'
/// diff_ids (containerd `core/images/archive/exporter.go`). skopeo reads such layers
/// decompressed (containers/image `docker/internal/tarfile/src.go`); so does nixfly, from the
/// file, from a .tar.gz of it and from a stream script. The diff_ids come from the fixture
/// writer, the image back from the registry through skopeo. nixfly refused it before ("the
/// image is corrupt"), after uploading a gzip of the gzip from a stream.
#[test]
fn an_archive_with_compressed_layer_entries_pushes_and_reads_back() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let (tar, written) = stream_archive(&t, "image.tar");
    let saved = t.join("containerd-save.tar");
    compress_layer_entries(&tar, &saved);
    let gz = t.join("containerd-save.tar.gz");
    images::gzip_file(&saved, &gz).unwrap();
    let script = t.join("stream-containerd-save");
    images::write_stream_script(&script, &saved, 0).unwrap();
    for (source, repo) in [(&saved, "indexed"), (&gz, "gzip"), (&script, "script")] {
        let out = push(&t, &registry, source.to_str().unwrap(), repo, "v1", &[]);
        let reference = pushed_reference(&out, &registry.host(), repo);
        assert_same_image(&registry, &reference, &written);
    }
}

/// The same archive as Docker 29 really names it: every blob (config and compressed layers) at
/// `blobs/sha256/<its digest>`, which manifest.json lists (containerd
/// `core/images/archive/exporter.go` writes the OCI layout and the docker manifest side by
/// side). Such a layer goes up as stored when the manifest format can carry its compression, as
/// skopeo copies it: the registry then holds the very blobs the test wrote (their digests
/// computed here, with `images::sha256_hex`), not nixfly's recompression. A zstd one in a
/// Docker v2s2 manifest is recompressed to gzip. A fresh runner's re-push reads nothing, and an entry whose bytes are
/// not the digest it is named by is refused without moving the tag.
#[test]
fn a_containerd_store_save_pushes_its_compressed_layers_as_stored() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let (tar, written) = stream_archive(&t, "image.tar");
    let saved = t.join("docker-save.tar");
    let stored = containerd_save(&tar, &saved);
    let layer_digests = |back: &support::readback::ReadBack| -> Vec<(String, String)> {
        back.manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["digest"].as_str().unwrap().to_string(),
                    l["mediaType"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };

    let out = push(
        &t,
        &registry,
        saved.to_str().unwrap(),
        "docker",
        "v1",
        &["--output", "json"],
    );
    let reference = support::readback::pushed_json_reference(&out);
    let back = assert_same_image(&registry, &reference, &written);
    for ((digest, media_type), (entry_digest, zstd)) in layer_digests(&back).iter().zip(&stored) {
        assert_eq!(media_type, "application/vnd.docker.image.rootfs.diff.tar.gzip");
        if *zstd {
            assert_ne!(
                digest, entry_digest,
                "a zstd blob cannot go into a Docker v2s2 manifest"
            );
        } else {
            assert_eq!(digest, entry_digest, "the gzip blob went up as stored");
        }
    }

    // From another runner: this one's cache knows the gzip made of the zstd layer above,
    // which the registry would rightly be asked to mount instead.
    let out = push(
        &TestDir::new(),
        &registry,
        saved.to_str().unwrap(),
        "oci",
        "v1",
        &["--format", "oci"],
    );
    let back = assert_same_image(
        &registry,
        &pushed_reference(&out, &registry.host(), "oci"),
        &written,
    );
    for ((digest, media_type), (entry_digest, zstd)) in layer_digests(&back).iter().zip(&stored) {
        assert_eq!(digest, entry_digest, "every blob went up as stored");
        let expected = if *zstd { "tar+zstd" } else { "tar+gzip" };
        assert!(media_type.ends_with(expected), "{media_type}");
        // The registry holds the test's bytes under that digest.
        let data = std::fs::read(registry.blob_data(digest)).unwrap();
        assert_eq!(format!("sha256:{}", images::sha256_hex(&data)), *entry_digest);
    }

    // A fresh runner (an empty cache) pushing the same archive to the same tag reads no layer.
    let runner = TestDir::new();
    let again = push(
        &runner,
        &registry,
        saved.to_str().unwrap(),
        "oci",
        "v1",
        &["--format", "oci", "--output", "json"],
    );
    support::readback::pushed_json_reference(&again);
    assert_eq!(layer_outcomes(&again), vec!["skipped"; stored.len()]);
    assert_eq!(
        support::readback::events(&again, "layer_progress").len(),
        0,
        "no layer was read"
    );

    // The first gzip entry's bytes changed in place (same size, so the index still reads):
    // the upload's digest check refuses it and no tag is made.
    let spoiled = t.join("spoiled.tar");
    std::fs::copy(&saved, &spoiled).unwrap();
    let (first_gzip, _) = stored.iter().find(|(_, zstd)| !zstd).unwrap();
    flip_last_byte_of_entry(
        &spoiled,
        &format!("blobs/sha256/{}", &first_gzip["sha256:".len()..]),
    );
    let runner = TestDir::new();
    let out = push(&runner, &registry, spoiled.to_str().unwrap(), "fresh", "v1", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("but {first_gzip} was expected")),
        "{stderr}"
    );
    assert!(registry.skopeo_inspect_fails(&format!("{}/fresh:v1", registry.host())));
}

/// `src` rewritten as containerd's exporter writes a `docker save`: config and layers at
/// `blobs/sha256/<digest>` (layers compressed, gzip and zstd by turns), manifest.json naming
/// them, an `oci-layout` and an `index.json`. Returns each layer's blob digest and whether it
/// is zstd, in manifest order.
fn containerd_save(src: &std::path::Path, dst: &std::path::Path) -> Vec<(String, bool)> {
    let digest = |data: &[u8]| format!("sha256:{}", images::sha256_hex(data));
    let mut archive = tar::Archive::new(std::fs::File::open(src).unwrap());
    let mut files = std::collections::HashMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        files.insert(path, data);
    }
    let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let config = &files[manifest[0]["Config"].as_str().unwrap()];
    let mut blobs = vec![(digest(config), config.clone())];
    let mut stored = Vec::new();
    for (i, layer) in manifest[0]["Layers"].as_array().unwrap().iter().enumerate() {
        let tar = &files[layer.as_str().unwrap()];
        let zstd = i % 2 == 1;
        let data = if zstd {
            zstd::stream::encode_all(&tar[..], 3).unwrap()
        } else {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(tar).unwrap();
            gz.finish().unwrap()
        };
        stored.push((digest(&data), zstd));
        blobs.push((digest(&data), data));
    }
    let name = |digest: &str| format!("blobs/sha256/{}", &digest["sha256:".len()..]);
    let docker_manifest = serde_json::json!([{
        "Config": name(&blobs[0].0),
        "RepoTags": ["app:latest"],
        "Layers": stored.iter().map(|(d, _)| name(d)).collect::<Vec<_>>(),
    }]);
    let mut builder = tar::Builder::new(std::fs::File::create(dst).unwrap());
    let mut append = |path: &str, data: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_path(path).unwrap();
        header.set_size(data.len() as u64);
        header.set_mode(0o444);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    };
    for (digest, data) in &blobs {
        append(&name(digest), data);
    }
    append("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    append("index.json", br#"{"schemaVersion":2,"manifests":[]}"#);
    append("manifest.json", docker_manifest.to_string().as_bytes());
    builder.finish().unwrap();
    assert!(stored.len() >= 2, "both compressions are wanted");
    stored
}

/// Flip the last byte of `entry`'s data in the uncompressed tar at `path`, in place.
fn flip_last_byte_of_entry(path: &std::path::Path, entry: &str) {
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    let (offset, size) = archive
        .entries_with_seek()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path().unwrap().to_str() == Some(entry))
        .map(|e| (e.raw_file_position(), e.size()))
        .expect("the entry");
    let mut data = std::fs::read(path).unwrap();
    data[(offset + size - 1) as usize] ^= 0xff;
    std::fs::write(path, data).unwrap();
}

/// `src` with each layer entry (the ones manifest.json lists) replaced by its compressed
/// blob: gzip and zstd by turns.
fn compress_layer_entries(src: &std::path::Path, dst: &std::path::Path) {
    let mut archive = tar::Archive::new(std::fs::File::open(src).unwrap());
    let mut entries = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let header = entry.header().clone();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        entries.push((header, data));
    }
    let manifest = entries
        .iter()
        .find(|(h, _)| h.path().unwrap().to_str() == Some("manifest.json"))
        .map(|(_, d)| serde_json::from_slice::<serde_json::Value>(d).unwrap())
        .expect("manifest.json");
    let layers: Vec<String> = manifest[0]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    let mut builder = tar::Builder::new(std::fs::File::create(dst).unwrap());
    let mut turn = 0;
    for (mut header, data) in entries {
        let path = header.path().unwrap().to_string_lossy().into_owned();
        let data = if header.entry_type().is_file() && layers.contains(&path) {
            turn += 1;
            if turn % 2 == 1 {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                gz.write_all(&data).unwrap();
                gz.finish().unwrap()
            } else {
                zstd::stream::encode_all(&data[..], 3).unwrap()
            }
        } else {
            data
        };
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, &data[..]).unwrap();
    }
    builder.finish().unwrap();
    assert!(
        turn >= 2,
        "the image has {turn} layer(s): both compressions are wanted"
    );
}

#[test]
fn build_image_archive_pushes_its_single_layer() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let tar = t.join("build.tar");
    let written =
        images::write_build_image(std::fs::File::create(&tar).unwrap(), &images::small_layers()[1]).unwrap();
    let gz = t.join("build.tar.gz");
    images::gzip_file(&tar, &gz).unwrap();
    let out = push(&t, &registry, gz.to_str().unwrap(), "built", "v1", &[]);
    let reference = pushed_reference(&out, &registry.host(), "built");
    assert_same_image(&registry, &reference, &written);
}

#[test]
fn stream_script_and_stdin_push_and_read_back() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let (tar, written) = stream_archive(&t, "image.tar");
    let script = t.join("stream-hello");
    images::write_stream_script(&script, &tar, 0).unwrap();
    let out = push(&t, &registry, script.to_str().unwrap(), "script", "v1", &["-v"]);
    let reference = pushed_reference(&out, &registry.host(), "script");
    assert_same_image(&registry, &reference, &written);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Creating layer 1 from paths"),
        "-v shows the script's stderr:\n{stderr}"
    );

    let gz = t.join("image.tar.gz");
    images::gzip_file(&tar, &gz).unwrap();
    let mut cmd = t.nixfly();
    cmd.args([
        "push",
        "-",
        "--to",
        &format!("{}/stdin", registry.host()),
        "--tag",
        "v1",
    ])
    .args(["--creds", &registry.creds()])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let bytes = std::fs::read(&gz).unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&bytes));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let reference = pushed_reference(&out, &registry.host(), "stdin");
    assert_same_image(&registry, &reference, &written);
}

/// A stream script is not held up while nixfly asks the registry what it has: its output is
/// read ahead meanwhile (`src/image/read_ahead.rs`), so its generation overlaps the lookups.
/// Here the target tag's manifest answers 5 s late, and the script, whose 7 MB do not fit
/// in the pipe, is done long before: without the read-ahead it would wait on a full pipe
/// until the answer came.
#[test]
fn a_stream_script_goes_on_while_the_registry_is_asked_what_it_has() {
    use support::proxy::{Fault as ProxyFault, FaultProxy, Rule};
    use support::readback::push_via;
    let registry = Registry::start(AuthMode::htpasswd());
    let proxy = FaultProxy::start(
        registry.addr,
        vec![Rule::new(
            "GET",
            "/manifests/",
            1,
            ProxyFault::Delay(Duration::from_secs(5)),
        )],
    );
    let t = TestDir::new();
    let (script, written) = support::slow_to_drain_script(&t, "");
    let began = support::unix_now();
    let out = push_via(
        &t,
        &registry,
        &proxy.host(),
        script.to_str().unwrap(),
        "ahead",
        "v1",
        &[],
    );
    let reference = pushed_reference(&out, &proxy.host(), "ahead");
    assert_eq!(proxy.fired().len(), 1, "{:?}", proxy.requests());
    let finished = support::script_finished_after(&t, began);
    assert!(
        finished < 3.0,
        "the script finished {finished:.1} s after the push began: it waited for the lookups"
    );
    assert_same_image(&registry, &proxy.direct(&reference), &written);
}

#[test]
fn oci_layout_pushes_its_stored_blobs_unchanged() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let layout = t.join("layout");
    let written = images::write_oci_layout(&layout, &images::small_layers(), false).unwrap();
    let out = push(
        &t,
        &registry,
        layout.to_str().unwrap(),
        "layout",
        "v1",
        &["--format", "oci"],
    );
    let reference = pushed_reference(&out, &registry.host(), "layout");
    let back = assert_same_image(&registry, &reference, &written);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_hex = &index["manifests"][0]["digest"].as_str().unwrap()[7..];
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(manifest_hex)).unwrap())
            .unwrap();
    // Not recompressed: the layer digests are the layout's own.
    assert_eq!(back.manifest["layers"], stored["layers"]);
}

/// A layout whose index.json points at an image index, as buildx (`--output type=oci`) and
/// Docker's containerd store write them: the linux/amd64 manifest beside an attestation
/// manifest (`unknown/unknown`), listed twice under two names. The amd64 image is pushed, as
/// skopeo and containerd pick it; an index without linux/amd64 is refused, naming what it has.
#[test]
fn an_oci_layout_with_an_image_index_pushes_its_linux_amd64_image() {
    use sha2::Digest as _;
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let layout = t.join("layout");
    let written = images::write_oci_layout(&layout, &images::small_layers(), false).unwrap();
    let index_path = layout.join("index.json");
    let top: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let image = top["manifests"][0].clone();
    let put_blob = |bytes: &[u8]| {
        let hex = hex::encode(sha2::Sha256::digest(bytes));
        std::fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let attestation = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", "size": 2},
        "layers": []
    }))
    .unwrap();
    let (attestation_digest, attestation_size) = put_blob(&attestation);
    let nested = |platforms: &[(&str, &str)]| {
        let mut manifests = Vec::new();
        for (os, arch) in platforms {
            let mut entry = if *os == "unknown" {
                serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                   "digest": attestation_digest, "size": attestation_size})
            } else {
                image.clone()
            };
            entry["platform"] = serde_json::json!({"os": os, "architecture": arch});
            manifests.push(entry);
        }
        let bytes = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests
        }))
        .unwrap();
        let (digest, size) = put_blob(&bytes);
        let entry = |name: &str| {
            serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json",
                               "digest": digest, "size": size,
                               "annotations": {"org.opencontainers.image.ref.name": name}})
        };
        let top = serde_json::json!({"schemaVersion": 2, "manifests": [entry("latest"), entry("v1")]});
        std::fs::write(&index_path, serde_json::to_vec(&top).unwrap()).unwrap();
    };

    nested(&[("unknown", "unknown"), ("linux", "amd64")]);
    let out = push(
        &t,
        &registry,
        layout.to_str().unwrap(),
        "layout",
        "v1",
        &["--format", "oci"],
    );
    let reference = pushed_reference(&out, &registry.host(), "layout");
    assert_same_image(&registry, &reference, &written);

    nested(&[("linux", "arm64"), ("unknown", "unknown")]);
    let out = support::run(
        t.nixfly()
            .args(["push", layout.to_str().unwrap(), "--to"])
            .arg(format!("{}/other", registry.host()))
            .args(["--creds", &registry.creds()]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no linux/amd64 manifest") && stderr.contains("linux/arm64, unknown/unknown"),
        "{stderr}"
    );
}

/// A layout holding two images (`skopeo copy` of two images into one `oci:DIR:NAME` each) is
/// refused, the error names both and the command that copies one into a layout of its own;
/// that command, run with skopeo, gives a layout nixfly pushes.
#[test]
fn an_oci_layout_with_two_images_names_them_and_how_to_pick_one() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let layout = t.join("layout");
    let first = images::write_oci_layout(&layout, &images::small_layers(), false).unwrap();
    let other = t.join("other");
    images::write_oci_layout(&other, &images::small_layers()[..1], false).unwrap();
    // The second image's blobs and manifest into the first layout, listed under another name.
    for entry in std::fs::read_dir(other.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), layout.join("blobs/sha256").join(entry.file_name())).unwrap();
    }
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let theirs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(other.join("index.json")).unwrap()).unwrap();
    let named = |entry: &serde_json::Value, name: &str| {
        let mut entry = entry.clone();
        entry["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": name});
        entry
    };
    let ours = index["manifests"][0].clone();
    index["manifests"] = serde_json::json!([
        named(&ours, "app"),
        named(&theirs["manifests"][0], "tools"),
        named(&ours, "latest")
    ]);
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();

    let out = support::run(
        t.nixfly()
            .args(["push", layout.to_str().unwrap(), "--to"])
            .arg(format!("{}/app", registry.host()))
            .args(["--creds", &registry.creds()]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("2 different manifests (\"app\", \"tools\", \"latest\")"),
        "{stderr}"
    );
    let hint = format!("skopeo copy oci:{}:NAME oci:NEW_DIR", layout.display());
    assert!(stderr.contains(&hint), "{stderr}");

    // The hint, as skopeo runs it.
    let picked = t.join("picked");
    let copied = std::process::Command::new("skopeo")
        .args(["copy", &format!("oci:{}:app", layout.display())])
        .arg(format!("oci:{}", picked.display()))
        .output()
        .unwrap();
    assert!(
        copied.status.success(),
        "{}",
        String::from_utf8_lossy(&copied.stderr)
    );
    let out = push(
        &t,
        &registry,
        picked.to_str().unwrap(),
        "app",
        "v1",
        &["--format", "oci"],
    );
    let reference = pushed_reference(&out, &registry.host(), "app");
    assert_same_image(&registry, &reference, &first);
}

#[test]
fn warm_repush_neither_compresses_nor_uploads_and_other_repositories_mount() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let (tar, written) = stream_archive(&t, "image.tar");
    let gz = t.join("image.tar.gz");
    images::gzip_file(&tar, &gz).unwrap();
    let json = ["--output", "json"];

    let first = push(&t, &registry, gz.to_str().unwrap(), "app", "v1", &json);
    assert_success(&first);
    assert_eq!(layer_outcomes(&first), ["uploaded"; 3]);
    let bytes_after_first = registry.blob_bytes();

    for source in [&gz, &tar] {
        let again = push(&t, &registry, source.to_str().unwrap(), "app", "v2", &json);
        assert_success(&again);
        assert_eq!(
            layer_outcomes(&again),
            ["skipped"; 3],
            "{}",
            String::from_utf8_lossy(&again.stderr)
        );
    }
    assert_eq!(
        registry.blob_bytes(),
        bytes_after_first,
        "a warm push stored new blobs"
    );

    let other = push(&t, &registry, tar.to_str().unwrap(), "other", "v1", &json);
    assert_eq!(layer_outcomes(&other), ["mounted"; 3]);
    let reference = String::from_utf8_lossy(&other.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"] == "pushed")
        .map(|e| e["reference"].as_str().unwrap().to_string())
        .expect("a pushed event");
    assert_same_image(&registry, &reference, &written);
}

#[test]
fn token_auth_with_oci_zstd_reads_back() {
    let registry = Registry::start(AuthMode::token(Duration::from_secs(300)));
    let t = TestDir::new();
    let (tar, written) = stream_archive(&t, "image.tar");
    let out = push(
        &t,
        &registry,
        tar.to_str().unwrap(),
        "zstd/app",
        "v1",
        &["--format", "oci", "--compression", "zstd"],
    );
    let reference = pushed_reference(&out, &registry.host(), "zstd/app");
    assert_media_types(&assert_same_image(&registry, &reference, &written), true, true);
}

#[test]
fn default_tag_is_a_deployment_ulid() {
    let registry = Registry::start(AuthMode::None);
    let t = TestDir::new();
    let (tar, _) = stream_archive(&t, "image.tar");
    let out = support::run(t.nixfly().args([
        "push",
        tar.to_str().unwrap(),
        "--to",
        &format!("{}/app", registry.host()),
        "--output",
        "json",
    ]));
    assert_success(&out);
    let pushed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"] == "pushed")
        .expect("a pushed event");
    let tag = pushed["tag"].as_str().unwrap();
    let ulid = tag.strip_prefix("deployment-").expect("deployment- tag");
    assert_eq!(ulid.len(), 26, "{tag}");
    assert!(!registry.skopeo_inspect_fails(&format!("{}/app:{tag}", registry.host())));
}

#[test]
fn zstd_oci_layout_is_recompressed_for_a_docker_manifest() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let layout = t.join("layout");
    let written = images::write_oci_layout(&layout, &images::small_layers(), true).unwrap();
    let out = push(&t, &registry, layout.to_str().unwrap(), "layout", "v1", &[]);
    let reference = pushed_reference(&out, &registry.host(), "layout");
    assert_media_types(&assert_same_image(&registry, &reference, &written), false, false);
}

/// A streamLayeredImage over a base image (`fromImage`) streams the base layers first, under
/// the names the base archive gives them: skopeo's `<hex>.tar`, as dockerTools.pullImage
/// leaves a base image, beside legacy `<id>/layer.tar` symlinks that the stream does not
/// carry. The stream is the stand-in's, which `nix_standin::stream_script_matches_nixpkgs`
/// holds to nixpkgs' own stream_layered_image.py (case `from-image` of
/// tests/fixtures/stream-image). Pushed as a file and as a stream script, skopeo reads back
/// the config and diff_ids nixpkgs' script streamed.
#[test]
fn a_stream_over_a_base_image_pushes_the_base_layers_too() {
    let root = env!("CARGO_MANIFEST_DIR");
    let fixtures = format!("{root}/tests/fixtures/stream-image");
    let recorded: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(format!("{fixtures}/cases.json")).unwrap()).unwrap();
    let case = recorded.iter().find(|c| c["name"] == "from-image").unwrap();
    let entries = case["entries"].as_array().unwrap();
    let diff_ids: Vec<&str> = entries.iter().filter_map(|e| e["diff_id"].as_str()).collect();
    assert_eq!(
        diff_ids.len(),
        4,
        "two base layers, a store layer, the customisation layer"
    );
    assert!(
        entries[0]["name"].as_str().unwrap().ends_with(".tar"),
        "{}",
        entries[0]["name"]
    );
    let config = entries[entries.len() - 2]["text"].as_str().unwrap();

    let t = TestDir::new();
    let archive = t.join("from-image.tar");
    let out = std::process::Command::new("python3")
        .arg(format!("{fixtures}/generate.py"))
        .arg("--stream")
        .arg(format!("{root}/nix/tests/nixpkgs-standin/docker/stream.py"))
        .arg("from-image")
        .arg(&archive)
        .output()
        .expect("python3");
    assert_success(&out);
    let script = t.join("stream-image");
    std::fs::write(&script, format!("#!/bin/sh\nexec cat '{}'\n", archive.display())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    let registry = Registry::start(AuthMode::htpasswd());
    for (source, repo) in [(&archive, "file"), (&script, "script")] {
        let out = push(&t, &registry, source.to_str().unwrap(), repo, "v1", &[]);
        let reference = pushed_reference(&out, &registry.host(), repo);
        let back = support::readback::read_back(&registry, &reference);
        assert_eq!(back.diff_ids, diff_ids, "{repo}");
        assert!(
            back.config == config.as_bytes(),
            "{repo}: the config is not nixpkgs'"
        );
    }
}

/// `NIXFLY_NO_CACHE` takes what such variables usually hold: `1` keeps the push out of the
/// local cache, `0` does not, as `true` and `false` do.
#[test]
fn no_cache_from_the_environment_takes_1_and_0() {
    let registry = Registry::start(AuthMode::htpasswd());
    for (value, cached) in [("1", false), ("0", true), ("true", false), ("false", true)] {
        let t = TestDir::new();
        let (archive, _) = stream_archive(&t, "image.tar");
        let mut cmd = t.nixfly();
        cmd.env("NIXFLY_NO_CACHE", value)
            .arg("push")
            .arg(&archive)
            .args(["--to", &format!("{}/cache-{value}", registry.host())])
            .args(["--tag", "v1", "--creds", &registry.creds()]);
        assert_success(&support::run(&mut cmd));
        let cache = t.join("cache/nixfly");
        let written = std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0) > 0;
        assert_eq!(
            written,
            cached,
            "NIXFLY_NO_CACHE={value}: cache at {}",
            cache.display()
        );
    }
}
