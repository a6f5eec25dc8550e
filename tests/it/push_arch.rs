//! Issue 10, point 7: Fly Machines run linux/amd64, so an image whose config names another
//! architecture is refused: before any upload when the config comes first (an uncompressed
//! archive is indexed), before the manifest when it comes last (a stream), and the tag never
//! moves. `--allow-arch` pushes it anyway; skopeo reads back what was pushed.

use crate::support;

use support::images::{self, Fault};
use support::readback::{push, pushed_reference};
use support::registry::{AuthMode, Registry};
use support::{TestDir, assert_success};

fn arm64_archive(t: &TestDir, name: &str) -> std::path::PathBuf {
    let path = t.join(name);
    images::write_stream_layered(
        std::fs::File::create(&path).unwrap(),
        &images::small_layers(),
        Fault::Architecture("arm64"),
    )
    .unwrap();
    path
}

#[test]
fn an_arm64_image_is_refused_before_any_upload_unless_allowed() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let tar = arm64_archive(&t, "arm.tar");
    let out = push(&t, &registry, tar.to_str().unwrap(), "app", "v1", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    for needle in ["linux/arm64", "linux/amd64", "x86_64-linux", "--allow-arch"] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    assert_eq!(registry.blob_bytes(), 0, "nothing was uploaded");
    assert!(registry.skopeo_inspect_fails(&format!("{}/app:v1", registry.host())));

    let out = push(
        &t,
        &registry,
        tar.to_str().unwrap(),
        "app",
        "v1",
        &["--allow-arch"],
    );
    let reference = pushed_reference(&out, &registry.host(), "app");
    assert_eq!(registry.skopeo_config(&reference)["architecture"], "arm64");
}

#[test]
fn an_arm64_stream_is_refused_before_its_manifest_and_the_tag_stays() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let good = t.join("good.tar");
    images::write_stream_layered(
        std::fs::File::create(&good).unwrap(),
        &images::small_layers(),
        Fault::None,
    )
    .unwrap();
    let first = push(&t, &registry, good.to_str().unwrap(), "app", "live", &[]);
    let before = registry.skopeo_manifest(&pushed_reference(&first, &registry.host(), "app"));

    // gzip makes it a stream: the config arrives after the layers.
    let tar = arm64_archive(&t, "arm.tar");
    let gz = t.join("arm.tar.gz");
    images::gzip_file(&tar, &gz).unwrap();
    let out = push(&t, &registry, gz.to_str().unwrap(), "app", "live", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("linux/arm64") && err.contains("--allow-arch"),
        "{err}"
    );
    let tagged = registry.skopeo_manifest(&format!("{}/app:live", registry.host()));
    assert_eq!(tagged, before, "the tag still names the amd64 image");

    let help = support::run(TestDir::new().nixfly().args(["push", "--help"]));
    assert_success(&help);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--allow-arch") && help.contains("tag does not move"),
        "{help}"
    );
}
