//! The fixture writers produce archives shaped as dockerTools makes them; checked with GNU tar
//! and by hashing, independently of nixfly.

use crate::support;

use sha2::{Digest, Sha256};
use std::process::Command;
use support::images::{self, Fault};

fn tar_list(path: &std::path::Path) -> Vec<String> {
    let out = Command::new("tar")
        .arg("-tf")
        .arg(path)
        .output()
        .expect("run tar");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn stream_layered_archive_has_nix_entry_order_and_content_named_layers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.tar");
    let written = images::write_stream_layered(
        std::fs::File::create(&path).unwrap(),
        &images::small_layers(),
        Fault::None,
    )
    .unwrap();
    let names = tar_list(&path);
    assert_eq!(names.len(), 5, "{names:?}");
    assert_eq!(names.last().unwrap(), "manifest.json");
    assert_eq!(names[3], format!("{}.json", &written.config_digest[7..]));
    let mut archive = tar::Archive::new(std::fs::File::open(&path).unwrap());
    for (entry, diff_id) in archive.entries().unwrap().zip(&written.diff_ids) {
        let mut entry = entry.unwrap();
        assert_eq!(
            entry.path().unwrap().to_str().unwrap(),
            format!("{}/layer.tar", &diff_id[7..])
        );
        let mut hasher = Sha256::new();
        std::io::copy(&mut entry, &mut hasher).unwrap();
        assert_eq!(format!("sha256:{}", hex::encode(hasher.finalize())), *diff_id);
    }
    // Layer tars start with /nix and /nix/store and hold absolute store paths.
    let layer = dir.path().join("layer.tar");
    let extracted = Command::new("tar")
        .args(["-xOf"])
        .arg(&path)
        .arg(format!("{}/layer.tar", &written.diff_ids[0][7..]))
        .output()
        .unwrap();
    std::fs::write(&layer, extracted.stdout).unwrap();
    let inner = tar_list(&layer);
    assert_eq!(&inner[..2], ["/nix", "/nix/store"], "{:?}", &inner[..4]);
    assert!(
        inner[2].starts_with("/nix/store/") && inner[2].ends_with("-tar"),
        "{}",
        inner[2]
    );
}

#[test]
fn build_image_archive_is_sorted_with_layer_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.tar");
    let written =
        images::write_build_image(std::fs::File::create(&path).unwrap(), &images::small_layers()[0]).unwrap();
    let names = tar_list(&path);
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert!(names.iter().any(|n| n.ends_with("/VERSION")));
    assert!(names.contains(&"repositories".to_string()));
    assert!(
        !names.iter().any(|n| n.starts_with(&written.diff_ids[0][7..])),
        "layer dir is not the diff_id"
    );
}

/// The outer archive and its JSON are what stream_layered_image.py's own libraries write: Python's
/// `tarfile` (`mode="w|"`, `TarInfo(name)` with the size and mtime 1, as its `add_bytes` and
/// layer entries do) rebuilds the whole archive from the fixture's entries byte for byte, record
/// padding included, and `json.dumps(indent=4)` of the config and manifest, read back with their
/// key order kept, gives their bytes again, in the order `main()` builds them.
#[test]
fn stream_layered_archive_is_what_pythons_tarfile_and_json_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.tar");
    images::write_stream_layered(
        std::fs::File::create(&path).unwrap(),
        &images::small_layers(),
        Fault::None,
    )
    .unwrap();
    let script = r#"
import io, json, sys, tarfile
data = open(sys.argv[1], "rb").read()
out = io.BytesIO()
with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as src, tarfile.open(fileobj=out, mode="w|") as dst:
    for member in src:
        body = src.extractfile(member).read()
        info = tarfile.TarInfo(member.name)
        info.size, info.mtime = len(body), 1
        dst.addfile(info, io.BytesIO(body))
        if member.name.endswith(".json"):
            value = json.loads(body, object_pairs_hook=lambda pairs: dict(pairs))
            assert json.dumps(value, indent=4).encode() == body, member.name
            if member.name != "manifest.json":
                assert list(value) == ["created", "architecture", "os", "config", "rootfs", "history"], list(value)
                assert all(h["comment"].startswith("store paths: ['/nix/store/") for h in value["history"])
            else:
                assert list(value[0]) == ["Config", "RepoTags", "Layers"], list(value[0])
assert out.getvalue() == data, (len(out.getvalue()), len(data))
print(len(data))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .expect("run python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let size: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(size % 10240, 0, "a whole number of tar records");
}
