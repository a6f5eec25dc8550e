//! `nixfly push` through a loopback proxy that injects faults between it and the real
//! registry: recoverable faults end in a complete, verified image; an unrecoverable one in a
//! clear error and an unchanged tag.

use crate::support;

use support::TestDir;
use support::images::{self, Fault as ImageFault, Layer};
use support::proxy::{Fault, FaultProxy, Rule};
use support::readback::{assert_same_image, push, push_via, pushed_reference};
use support::registry::{AuthMode, Registry};

/// An image whose first layer compresses to well over the cut point below.
fn image(t: &TestDir) -> (std::path::PathBuf, images::Written) {
    let path = t.join("image.tar.gz");
    let tar = t.join("image.tar");
    let layers = [
        Layer::of(&["/usr/bin/tar", "/usr/bin/gzip", "/usr/share/common-licenses"]),
        Layer::of(&["/etc/debian_version"]),
    ];
    let written =
        images::write_stream_layered(std::fs::File::create(&tar).unwrap(), &layers, ImageFault::None)
            .unwrap();
    images::gzip_file(&tar, &path).unwrap();
    (path, written)
}

#[test]
fn a_cut_upload_and_rate_limits_are_survived() {
    let registry = Registry::start(AuthMode::htpasswd());
    let proxy = FaultProxy::start(
        registry.addr,
        vec![
            Rule::new("PATCH", "/blobs/uploads/", 1, Fault::CutAfter(150_000)),
            Rule::new("HEAD", "/blobs/sha256:", 1, Fault::status(503, &[])),
            Rule::new(
                "PUT",
                "/manifests/",
                1,
                Fault::status(429, &[("Retry-After", "1")]),
            ),
        ],
    );
    let t = TestDir::new();
    let (source, written) = image(&t);
    let out = push_via(
        &t,
        &registry,
        &proxy.host(),
        source.to_str().unwrap(),
        "app",
        "v1",
        &["-v"],
    );
    let reference = pushed_reference(&out, &proxy.host(), "app");
    assert_eq!(proxy.fired().len(), 3, "faults fired: {:?}", proxy.fired());
    let direct = reference.replace(&proxy.host(), &registry.host());
    assert_same_image(&registry, &direct, &written);
}

#[test]
fn an_unrecoverable_refusal_is_a_clear_error_and_the_tag_stays() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let (source, _) = image(&t);
    let good = t.join("good.tar");
    images::write_stream_layered(
        std::fs::File::create(&good).unwrap(),
        &images::small_layers()[..1],
        ImageFault::None,
    )
    .unwrap();
    let out = push(&t, &registry, good.to_str().unwrap(), "app", "stable", &[]);
    pushed_reference(&out, &registry.host(), "app");
    let before = registry.skopeo_manifest(&format!("{}/app:stable", registry.host()));

    let proxy = FaultProxy::start(
        registry.addr,
        vec![Rule::new("PUT", "/manifests/", 1, Fault::status(403, &[]))],
    );
    let out = push_via(
        &t,
        &registry,
        &proxy.host(),
        source.to_str().unwrap(),
        "app",
        "stable",
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(stderr.contains("putting the manifest stable in"), "{stderr}");
    assert!(stderr.contains("403"), "{stderr}");
    assert_eq!(
        registry.skopeo_manifest(&format!("{}/app:stable", registry.host())),
        before
    );
}
