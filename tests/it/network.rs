//! How nixfly meets the network, as Go tools (flyctl, skopeo) do. A registry served over TLS by
//! a CA of its own, as a self-hosted registry or a proxy that inspects TLS is: nixfly trusts it
//! through `SSL_CERT_FILE` and pushes over HTTP/1.1, as Docker and skopeo do, though the
//! registry offers HTTP/2; an untrusted certificate fails at once, with the fix, and tags
//! nothing. Proxies from the environment are used, except for loopback hosts.

use crate::support;

use std::time::{Duration, Instant};
use support::TestDir;
use support::fly_api::{FlyApi, MachineSpec};
use support::images::{self, Fault as ImageFault};
use support::proxy::RecordingServer;
use support::readback::{assert_same_image, push, pushed_reference};
use support::registry::{AuthMode, Registry};
use support::rollout::{APP, assert_no_violations, image, rollout_cmd};

/// A small image as nixpkgs' streamLayeredImage writes it, in `t`.
fn small_image(t: &TestDir) -> (std::path::PathBuf, images::Written) {
    let source = t.join("image.tar");
    let written = images::write_stream_layered(
        std::fs::File::create(&source).unwrap(),
        &images::small_layers(),
        ImageFault::None,
    )
    .unwrap();
    (source, written)
}

/// `run` fails within 10 s (an untrusted certificate is not retried), saying `what` and
/// naming SSL_CERT_FILE as the fix.
#[track_caller]
fn refused_at_once(run: impl FnOnce() -> std::process::Output, what: &str) {
    let began = Instant::now();
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(what) && err.contains("point SSL_CERT_FILE at a PEM file"),
        "{err}"
    );
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "an untrusted certificate is not retried: {:?}",
        began.elapsed()
    );
}

#[test]
fn a_registry_behind_a_private_ca_is_trusted_through_ssl_cert_file_and_pushed_over_http1() {
    let registry = Registry::start_tls(AuthMode::htpasswd());
    let t = TestDir::new();
    let (source, written) = small_image(&t);
    let source = source.to_str().unwrap();

    // Not trusted: the push stops on the first request, with the fix, and tags nothing.
    refused_at_once(
        || push(&t, &registry, source, "app", "v1", &["--output", "plain"]),
        "presents a TLS certificate this machine does not trust",
    );
    assert!(
        registry.access_log_protocols("").is_empty(),
        "no request got past the handshake"
    );
    assert!(registry.skopeo_inspect_fails(&format!("{}/app:v1", registry.host())));

    // SSL_CERT_FILE naming another CA's file: the hint names it.
    let other = Registry::start_tls(AuthMode::None);
    let mut cmd = t.nixfly();
    cmd.env("SSL_CERT_FILE", other.ca_file()).args([
        "push",
        source,
        "--to",
        &format!("{}/app", registry.host()),
        "--creds",
        &registry.creds(),
    ]);
    let out = support::run(&mut cmd);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "SSL_CERT_FILE is {}: check that it holds",
            other.ca_file().display()
        )),
        "{err}"
    );

    // Trusted through SSL_CERT_FILE: pushed, and skopeo, verifying the certificate against the
    // same CA, reads back the image as written.
    let mut cmd = t.nixfly();
    cmd.env("SSL_CERT_FILE", registry.ca_file()).args([
        "push",
        source,
        "--to",
        &format!("{}/app", registry.host()),
        "--tag",
        "v1",
        "--creds",
        &registry.creds(),
        "--output",
        "plain",
        "-v",
    ]);
    let out = support::run(&mut cmd);
    let reference = pushed_reference(&out, &registry.host(), "app");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("SSL_CERT_FILE={}", registry.ca_file().display())),
        "-v names the CA file in use: {err}"
    );
    assert_same_image(&registry, &reference, &written);
    assert_same_image(&registry, &format!("{}/app:v1", registry.host()), &written);

    // Every request nixfly sent went over HTTP/1.1, though the registry offers h2 (skopeo's
    // reads are HTTP/1.1 too: containers/image never offers h2).
    let protocols = registry.access_log_protocols("nixfly/");
    assert!(
        protocols.len() > written.diff_ids.len(),
        "the access log shows the push: {protocols:?}\n{}",
        registry.log()
    );
    assert!(protocols.iter().all(|p| p == "HTTP/1.1"), "{protocols:?}");
}

/// The Fly API behind a certificate this machine does not trust (a proxy that inspects TLS):
/// the first call fails at once, naming the fix, before anything is changed.
#[test]
fn an_untrusted_fly_api_certificate_names_the_fix_and_is_not_retried() {
    // Any TLS server with a certificate from a private CA will do: the registry is one.
    let server = Registry::start_tls(AuthMode::None);
    let t = TestDir::new();
    let url = format!("https://{}", server.host());
    let mut cmd = t.nixfly();
    cmd.env("FLY_FLAPS_BASE_URL", &url)
        .env("FLY_API_BASE_URL", &url)
        .env("FLY_API_TOKEN", "nixfly-test-token-not-a-secret")
        .args(["rollout", "--app", "demo", "--image", "registry.fly.io/demo:v1"]);
    refused_at_once(
        || support::run(&mut cmd),
        "the Fly API presents a TLS certificate this machine does not trust",
    );
    assert!(server.access_log_protocols("").is_empty());
}

/// The proxy variables every client honours, all pointing at `proxy`.
fn through(cmd: &mut std::process::Command, proxy: &RecordingServer) {
    let url = format!("http://{}", proxy.addr);
    for name in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env(name, &url);
    }
    cmd.env_remove("NO_PROXY").env_remove("no_proxy");
}

/// With every proxy variable set, a loopback registry and a loopback Fly API are reached
/// directly, as Go's proxy rules (`golang.org/x/net/http/httpproxy`, `useProxy`) reach them:
/// the README's sandbox works on a machine whose proxy cannot see its loopback. Another host
/// goes through the proxy (a CONNECT for HTTPS), unless NO_PROXY names it.
#[test]
fn proxies_carry_everything_but_loopback_hosts() {
    let proxy = RecordingServer::start("127.0.0.1:0", |_| ("502 Bad Gateway".into(), String::new()));
    let t = TestDir::new();
    let (source, written) = small_image(&t);
    let source = source.to_str().unwrap();

    // A loopback registry: pushed directly.
    let local = Registry::start(AuthMode::None);
    let mut cmd = t.nixfly();
    through(&mut cmd, &proxy);
    cmd.args(["push", source, "--to", &format!("{}/app:v1", local.host())]);
    let out = support::run(&mut cmd);
    let reference = pushed_reference(&out, &local.host(), "app");
    assert_same_image(&local, &reference, &written);

    // A loopback Fly API: rolled out directly.
    let fly = FlyApi::start();
    fly.add_app(APP);
    fly.add_machines(APP, &MachineSpec::new("app").count(1));
    let mut cmd = rollout_cmd(&fly, &t, &image(1));
    through(&mut cmd, &proxy);
    let out = support::run(&mut cmd);
    support::assert_success(&out);
    assert_no_violations(&fly);
    assert!(proxy.received().is_empty(), "{:?}", proxy.received());

    // Another host: through the proxy, which refuses the tunnel; NO_PROXY sends it direct.
    let remote = Registry::start_tls(AuthMode::None);
    let push_remote = |no_proxy: Option<String>| {
        let mut cmd = t.nixfly();
        through(&mut cmd, &proxy);
        if let Some(hosts) = no_proxy {
            cmd.env("NO_PROXY", hosts);
        }
        cmd.env("SSL_CERT_FILE", remote.ca_file()).args([
            "push",
            source,
            "--to",
            &format!("{}/app:v1", remote.host()),
        ]);
        support::run(&mut cmd)
    };
    let out = push_remote(None);
    assert!(!out.status.success());
    let tunnels = proxy.received();
    assert!(
        tunnels
            .iter()
            .any(|head| head.starts_with(&format!("CONNECT {} ", remote.host()))),
        "{tunnels:?}"
    );
    let out = push_remote(Some(format!("localhost,{}", remote.addr.ip())));
    let reference = pushed_reference(&out, &remote.host(), "app");
    assert_same_image(&remote, &reference, &written);
    assert_eq!(proxy.received().len(), tunnels.len(), "NO_PROXY went direct");
}
