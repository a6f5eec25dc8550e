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
