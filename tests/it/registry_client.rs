//! The registry client against the real registry (distribution 2.8), driven through the
//! hidden `nixfly registry` commands: both auth modes, faults injected by a proxy, credential
//! hygiene, redirects. Every pushed image is read back with skopeo.

use crate::support;

use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};
use support::proxy::{Fault, FaultProxy, RecordingServer, Rule};
use support::registry::{AuthMode, Registry};
use support::{TestDir, assert_success, run};

const V2S2: &str = "application/vnd.docker.distribution.manifest.v2+json";

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Incompressible deterministic bytes (a SHA-256 counter stream).
fn noise(seed: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(&Sha256::digest(format!("{seed}-{i}")));
        i += 1;
    }
    out.truncate(len);
    out
}

/// A one-layer image written to files: gzip layer, config, v2s2 manifest.
struct Image {
    layer: PathBuf,
    layer_digest: String,
    diff_id: String,
    config: PathBuf,
    config_digest: String,
    manifest: PathBuf,
}

impl Image {
    fn new(t: &TestDir, name: &str, payload: usize) -> Image {
        let mut tar = tar::Builder::new(Vec::new());
        let content = noise(name, payload);
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1);
        tar.append_data(&mut header, format!("{name}.bin"), &content[..])
            .unwrap();
        let tar = tar.into_inner().unwrap();
        let diff_id = sha256(&tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let layer_bytes = gz.finish().unwrap();
        let layer_digest = sha256(&layer_bytes);
        let config_bytes = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["/hello"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }))
        .unwrap();
        let config_digest = sha256(&config_bytes);
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": V2S2,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                       "size": config_bytes.len(), "digest": config_digest},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                        "size": layer_bytes.len(), "digest": layer_digest}],
        });
        let write = |suffix: &str, data: &[u8]| {
            let path = t.join(&format!("{name}.{suffix}"));
            std::fs::write(&path, data).unwrap();
            path
        };
        Image {
            layer: write("layer.tar.gz", &layer_bytes),
            layer_digest,
            diff_id,
            config: write("config.json", &config_bytes),
            config_digest,
            manifest: write("manifest.json", &serde_json::to_vec(&manifest).unwrap()),
        }
    }
}

/// `nixfly [-vv] registry [--creds ...] <args>` against `host`.
fn nixfly_registry(t: &TestDir, creds: Option<&str>, extra: &[&str], args: &[&str]) -> Output {
    let mut cmd = t.nixfly();
    cmd.args(["-vv", "--output", "plain", "registry"]);
    if let Some(creds) = creds {
        cmd.args(["--creds", creds]);
    }
    cmd.args(extra).args(args);
    run(&mut cmd)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Push `image` to `host/repo:tag` step by step (layer streamed, config, manifest); returns the
/// pushed reference and everything printed on stderr.
fn push_image(
    t: &TestDir,
    host: &str,
    creds: Option<&str>,
    extra: &[&str],
    repo_tag: &str,
    image: &Image,
) -> (String, String) {
    let target = format!("{host}/{repo_tag}");
    let mut logs = String::new();
    let layer = nixfly_registry(
        t,
        creds,
        extra,
        &[
            "push-blob",
            &target,
            image.layer.to_str().unwrap(),
            "--expected",
            &image.layer_digest,
        ],
    );
    assert_success(&layer);
    logs += &stderr(&layer);
    assert!(
        stdout(&layer).starts_with(&image.layer_digest),
        "{}",
        stdout(&layer)
    );
    let config = nixfly_registry(
        t,
        creds,
        extra,
        &["push-bytes", &target, image.config.to_str().unwrap()],
    );
    assert_success(&config);
    logs += &stderr(&config);
    assert!(stdout(&config).starts_with(&image.config_digest));
    let manifest = nixfly_registry(
        t,
        creds,
        extra,
        &[
            "put-manifest",
            &target,
            image.manifest.to_str().unwrap(),
            "--media-type",
            V2S2,
        ],
    );
    assert_success(&manifest);
    logs += &stderr(&manifest);
    let reference = stdout(&manifest);
    let manifest_digest = sha256(&std::fs::read(&image.manifest).unwrap());
    assert_eq!(
        reference,
        format!("{target}@{manifest_digest}").replace(&format!(":{}", tag_of(repo_tag)), "")
    );
    (reference, logs)
}

fn tag_of(repo_tag: &str) -> &str {
    repo_tag.rsplit_once(':').map_or("latest", |(_, tag)| tag)
}

/// skopeo (an independent client) reads the image back: config digest and diff_ids match.
fn verify_with_skopeo(registry: &Registry, reference: &str, image: &Image) {
    let manifest = registry.skopeo_manifest(reference);
    assert_eq!(manifest["config"]["digest"], image.config_digest.as_str());
    assert_eq!(manifest["layers"][0]["digest"], image.layer_digest.as_str());
    let config = registry.skopeo_config(reference);
    assert_eq!(config["rootfs"]["diff_ids"][0], image.diff_id.as_str());
}

fn assert_no_secret(text: &str, secrets: &[String]) {
    for secret in secrets {
        assert!(
            !text.contains(secret.as_str()),
            "a credential leaked into the output:\n{text}"
        );
    }
}

fn basic_secrets(creds: &str) -> Vec<String> {
    use base64::Engine;
    let password = creds.split_once(':').unwrap().1.to_string();
    vec![password, base64::engine::general_purpose::STANDARD.encode(creds)]
}

#[test]
fn htpasswd_push_reads_back_with_skopeo_and_never_prints_the_password() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let image = Image::new(&t, "basic", 300_000);
    let creds = registry.creds();
    let (reference, logs) = push_image(&t, &registry.host(), Some(&creds), &[], "team/app:v1", &image);
    verify_with_skopeo(&registry, &format!("{}/team/app:v1", registry.host()), &image);
    verify_with_skopeo(&registry, &reference, &image);
    assert!(logs.contains("HTTP PATCH"), "-vv logs requests:\n{logs}");
    assert!(
        logs.contains("authorization: Basic <credentials hidden>"),
        "{logs}"
    );
    assert_no_secret(&logs, &basic_secrets(&creds));

    let exists = nixfly_registry(
        &t,
        Some(&creds),
        &[],
        &[
            "exists",
            &format!("{}/team/app", registry.host()),
            &image.layer_digest,
        ],
    );
    assert_success(&exists);
    assert_eq!(
        stdout(&exists),
        std::fs::metadata(&image.layer).unwrap().len().to_string()
    );
    let absent = nixfly_registry(
        &t,
        Some(&creds),
        &[],
        &[
            "exists",
            &format!("{}/team/app", registry.host()),
            &sha256(b"nope"),
        ],
    );
    assert_eq!(stdout(&absent), "absent");
    let got = nixfly_registry(
        &t,
        Some(&creds),
        &[],
        &["get-manifest", &format!("{}/team/app:v1", registry.host())],
    );
    assert_eq!(
        stdout(&got),
        format!("{} {V2S2}", reference.rsplit_once('@').unwrap().1)
    );
}

#[test]
fn rejected_or_missing_credentials_are_clear_errors_without_the_secret() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let image = Image::new(&t, "denied", 1000);
    let target = format!("{}/app:v1", registry.host());
    let wrong = "nixfly-user:wrong-password-xyz-123";
    let out = nixfly_registry(
        &t,
        Some(wrong),
        &[],
        &["push-blob", &target, image.layer.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("401") && err.contains("--creds"), "{err}");
    assert!(
        err.contains(&registry.host()) && err.contains("app"),
        "names registry and repository: {err}"
    );
    assert_no_secret(&err, &basic_secrets(wrong));
    let out = nixfly_registry(
        &t,
        None,
        &[],
        &["push-blob", &target, image.layer.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no credentials for"), "{}", stderr(&out));
    assert!(registry.skopeo_inspect_fails(&target));
}

#[test]
fn token_auth_push_reuses_tokens_and_never_prints_them() {
    let registry = Registry::start(AuthMode::token(Duration::from_secs(300)));
    let t = TestDir::new();
    let image = Image::new(&t, "token", 200_000);
    let creds = registry.creds();
    let (reference, logs) = push_image(&t, &registry.host(), Some(&creds), &[], "app:v1", &image);
    verify_with_skopeo(&registry, &reference, &image);
    let ts = registry.token_server.as_ref().unwrap();
    let scopes = ts.requests.lock().unwrap().clone();
    assert!(
        scopes.iter().any(|s| s == "repository:app:pull,push"),
        "{scopes:?}"
    );
    // Three processes; each probes once and then reuses one token for all its requests
    // (skopeo's reads add their own).
    let skopeo_requests = scopes.iter().filter(|s| s.ends_with(":pull")).count();
    assert!(
        scopes.len() - skopeo_requests <= 6,
        "tokens are reused: {scopes:?}"
    );
    let mut secrets = basic_secrets(&creds);
    secrets.extend(ts.tokens.lock().unwrap().iter().cloned());
    assert_no_secret(&logs, &secrets);
    assert!(
        logs.contains("authorization: Bearer <credentials hidden>"),
        "{logs}"
    );
}

/// A push that outlives its token: a 429 with `Retry-After: 3` on the first blob commit
/// holds the push for longer than the 2 s tokens live. Returns the `PUT .../blobs/uploads/`
/// requests the registry saw and how many tokens were issued.
fn push_across_token_expiry(auth: AuthMode) -> (usize, usize) {
    let registry = Registry::start(auth);
    let proxy = FaultProxy::start(
        registry.addr,
        vec![Rule::new(
            "PUT",
            "/blobs/uploads/",
            1,
            Fault::status(429, &[("Retry-After", "3")]),
        )],
    );
    let t = TestDir::new();
    let image = Image::new(&t, "expiry", 100_000);
    let started = Instant::now();
    let (reference, _) = push_image(&t, &proxy.host(), Some(&registry.creds()), &[], "app:v1", &image);
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "Retry-After was honoured"
    );
    assert_eq!(proxy.fired().len(), 1);
    verify_with_skopeo(&registry, &proxy.direct(&reference), &image);
    let puts = proxy
        .requests()
        .iter()
        .filter(|r| r.starts_with("PUT") && r.contains("/blobs/uploads/"))
        .count();
    let issued = registry
        .token_server
        .as_ref()
        .unwrap()
        .issued
        .load(std::sync::atomic::Ordering::Relaxed);
    (puts, issued)
}

#[test]
fn a_token_about_to_expire_is_renewed_before_use() {
    let (puts, _) = push_across_token_expiry(AuthMode::token(Duration::from_secs(2)));
    // Layer commit (429), its retry with a fresh token, config: no request was rejected.
    assert_eq!(puts, 3);
}

#[test]
fn a_token_the_registry_expired_early_is_replaced_after_its_401() {
    let (puts, _) = push_across_token_expiry(AuthMode::Token {
        lifetime: Duration::from_secs(2),
        advertised: Duration::from_secs(300),
        one_repository: false,
    });
    // As above plus the retry the registry refused with 401 (expired token).
    assert_eq!(puts, 4);
}

#[test]
fn a_401_mid_upload_makes_the_client_authenticate_again_and_resume() {
    let registry = Registry::start(AuthMode::token(Duration::from_secs(300)));
    let ts = registry.token_server.as_ref().unwrap();
    let challenge = format!(
        r#"Bearer realm="http://{}/token",service="nixfly-test-registry",scope="repository:app:pull,push",error="invalid_token""#,
        ts.addr
    );
    let proxy = FaultProxy::start(
        registry.addr,
        vec![Rule::new(
            "PATCH",
            "/blobs/uploads/",
            1,
            Fault::status(401, &[("WWW-Authenticate", &challenge)]),
        )],
    );
    let t = TestDir::new();
    let image = Image::new(&t, "reauth", 400_000);
    let before = ts.requests.lock().unwrap().len();
    let (reference, _) = push_image(&t, &proxy.host(), Some(&registry.creds()), &[], "app:v1", &image);
    assert_eq!(
        proxy.fired(),
        vec![
            proxy
                .requests()
                .iter()
                .find(|r| r.starts_with("PATCH"))
                .unwrap()
                .clone()
        ]
    );
    // One token per process (push-blob, push-bytes, put-manifest), plus one after the 401.
    let scopes = ts.requests.lock().unwrap()[before..].to_vec();
    assert_eq!(scopes, vec!["repository:app:pull,push"; 4]);
    verify_with_skopeo(&registry, &proxy.direct(&reference), &image);
}

#[test]
fn a_connection_cut_mid_upload_is_recovered_without_resending_from_the_caller() {
    let registry = Registry::start(AuthMode::htpasswd());
    let proxy = FaultProxy::start(
        registry.addr,
        vec![Rule::new("PATCH", "/blobs/uploads/", 1, Fault::CutAfter(700_000))],
    );
    let t = TestDir::new();
    let image = Image::new(&t, "cut", 2_000_000);
    let (reference, logs) = push_image(&t, &proxy.host(), Some(&registry.creds()), &[], "app:v1", &image);
    assert_eq!(proxy.fired().len(), 1, "{:?}", proxy.requests());
    assert!(logs.contains("resuming"), "{logs}");
    verify_with_skopeo(&registry, &proxy.direct(&reference), &image);
}

#[test]
fn answers_503_and_429_are_retried_on_every_kind_of_request() {
    let registry = Registry::start(AuthMode::htpasswd());
    let proxy = FaultProxy::start(
        registry.addr,
        vec![
            Rule::new("POST", "/blobs/uploads/", 1, Fault::status(503, &[])),
            Rule::new("PATCH", "/blobs/uploads/", 1, Fault::status(503, &[])),
            Rule::new(
                "PUT",
                "/blobs/uploads/",
                2,
                Fault::status(429, &[("Retry-After", "1")]),
            ),
            Rule::new("PUT", "/manifests/", 1, Fault::status(502, &[])),
            Rule::new("HEAD", "/blobs/", 1, Fault::status(504, &[])),
        ],
    );
    let t = TestDir::new();
    let image = Image::new(&t, "retry", 500_000);
    let (reference, _) = push_image(&t, &proxy.host(), Some(&registry.creds()), &[], "app:v1", &image);
    let exists = nixfly_registry(
        &t,
        Some(&registry.creds()),
        &[],
        &["exists", &format!("{}/app", proxy.host()), &image.config_digest],
    );
    assert_success(&exists);
    assert_eq!(proxy.fired().len(), 5, "{:?}", proxy.fired());
    verify_with_skopeo(&registry, &proxy.direct(&reference), &image);
}

#[test]
fn losing_more_than_the_window_is_a_clear_error_and_leaves_the_tag_alone() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let creds = registry.creds();
    let old = Image::new(&t, "old", 1000);
    let (old_ref, _) = push_image(&t, &registry.host(), Some(&creds), &[], "app:stable", &old);
    let proxy = FaultProxy::start(
        registry.addr,
        vec![Rule::new("PATCH", "/blobs/uploads/", 1, Fault::CutAfter(900_000))],
    );
    let new = Image::new(&t, "new", 1_500_000);
    let out = nixfly_registry(
        &t,
        Some(&creds),
        &["--upload-window", "262144"],
        &[
            "push-blob",
            &format!("{}/app:stable", proxy.host()),
            new.layer.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("lost the upload") && err.contains("generated again"),
        "{err}"
    );
    assert!(err.contains(&format!("{}/app", proxy.host())), "{err}");
    let exists = nixfly_registry(
        &t,
        Some(&creds),
        &[],
        &["exists", &format!("{}/app", registry.host()), &new.layer_digest],
    );
    assert_eq!(stdout(&exists), "absent");
    let tag = registry.skopeo_manifest(&format!("{}/app:stable", registry.host()));
    assert_eq!(tag["config"]["digest"], old.config_digest.as_str());
    assert!(old_ref.ends_with(&sha256(&std::fs::read(&old.manifest).unwrap())));
}

#[test]
fn chunked_and_monolithic_modes_push_the_same_image() {
    let registry = Registry::start(AuthMode::None);
    let t = TestDir::new();
    let image = Image::new(&t, "modes", 700_000);
    for (mode, tag) in [("chunked", "chunked"), ("monolithic", "mono")] {
        let extra = ["--upload-mode", mode, "--chunk-size", "131072"];
        let (reference, logs) = push_image(
            &t,
            &registry.host(),
            None,
            &extra,
            &format!("app-{tag}:v1"),
            &image,
        );
        verify_with_skopeo(&registry, &reference, &image);
        if mode == "chunked" {
            assert!(logs.matches("HTTP PATCH").count() >= 10, "{logs}");
        }
    }
}

#[test]
fn a_cut_in_chunked_mode_restarts_within_the_window() {
    let registry = Registry::start(AuthMode::None);
    let proxy = FaultProxy::start(
        registry.addr,
        vec![Rule::new("PATCH", "/blobs/uploads/", 3, Fault::CutAfter(50_000))],
    );
    let t = TestDir::new();
    let image = Image::new(&t, "chunkcut", 600_000);
    let extra = ["--upload-mode", "chunked", "--chunk-size", "131072"];
    let (reference, _) = push_image(&t, &proxy.host(), None, &extra, "app:v1", &image);
    assert_eq!(proxy.fired().len(), 1);
    verify_with_skopeo(&registry, &proxy.direct(&reference), &image);
}

#[test]
fn cross_repository_mount_and_fallback_session() {
    let registry = Registry::start(AuthMode::token(Duration::from_secs(300)));
    let t = TestDir::new();
    let creds = registry.creds();
    let image = Image::new(&t, "mount", 10_000);
    push_image(&t, &registry.host(), Some(&creds), &[], "source:v1", &image);
    let host = registry.host();
    let out = nixfly_registry(
        &t,
        Some(&creds),
        &[],
        &[
            "mount",
            &format!("{host}/target"),
            &image.layer_digest,
            "--from",
            "source",
        ],
    );
    assert_success(&out);
    assert_eq!(stdout(&out), "mounted");
    let scopes = registry
        .token_server
        .as_ref()
        .unwrap()
        .requests
        .lock()
        .unwrap()
        .clone();
    assert!(
        scopes
            .iter()
            .any(|s| s.contains("repository:target:pull,push") && s.contains("repository:source:pull")),
        "{scopes:?}"
    );
    let exists = nixfly_registry(
        &t,
        Some(&creds),
        &[],
        &["exists", &format!("{host}/target"), &image.layer_digest],
    );
    assert_eq!(
        stdout(&exists),
        std::fs::metadata(&image.layer).unwrap().len().to_string()
    );
    let out = nixfly_registry(
        &t,
        Some(&creds),
        &[],
        &[
            "mount",
            &format!("{host}/target"),
            &sha256(b"unknown"),
            "--from",
            "source",
        ],
    );
    assert_success(&out);
    assert_eq!(stdout(&out), "not mounted");
}

#[test]
fn a_redirect_to_another_host_does_not_carry_authorization() {
    let storage = RecordingServer::start("127.0.0.2:0", |_| ("200 OK".into(), "0123456789".into()));
    let storage_addr = storage.addr;
    let registry = RecordingServer::start("127.0.0.1:0", move |head| {
        if head.to_ascii_lowercase().contains("\r\nauthorization: basic") {
            (
                format!("307 Temporary Redirect\r\nLocation: http://{storage_addr}/blob-data"),
                String::new(),
            )
        } else {
            (
                "401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"test\"".into(),
                String::new(),
            )
        }
    });
    let t = TestDir::new();
    let out = nixfly_registry(
        &t,
        Some("someone:a-long-password-123"),
        &[],
        &["exists", &format!("{}/app", registry.addr), &sha256(b"x")],
    );
    assert_success(&out);
    assert_eq!(stdout(&out), "10");
    let at_registry = registry.received();
    assert!(
        at_registry
            .iter()
            .any(|h| h.to_ascii_lowercase().contains("authorization: basic"))
    );
    let at_storage = storage.received();
    assert_eq!(at_storage.len(), 1, "{at_storage:?}");
    assert!(
        !at_storage[0].to_ascii_lowercase().contains("authorization"),
        "{}",
        at_storage[0]
    );
}

#[test]
fn the_fly_token_is_the_password_for_the_fly_registry() {
    let token = "fm2_lJPECAAAAAAAAMZ3nixflytesttoken0123456789";
    let registry = Registry::start(AuthMode::fly(token));
    let t = TestDir::new();
    let image = Image::new(&t, "fly", 1000);
    let host = registry.host();
    let push = |token: &str| {
        let mut cmd = t.nixfly();
        cmd.env("FLY_REGISTRY_HOST", &host)
            .env("FLY_API_TOKEN", format!("FlyV1 {token}"))
            .args([
                "-vv",
                "registry",
                "push-bytes",
                "app-name",
                image.config.to_str().unwrap(),
            ]);
        run(&mut cmd)
    };
    let out = push(token);
    assert_success(&out);
    assert!(stdout(&out).starts_with(&image.config_digest));
    assert_no_secret(&stderr(&out), &[token.to_string()]);
    let wrong = "fm2_lJPECAAAAAAAAMZ3wrongtoken9876543210";
    let out = push(wrong);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("fly tokens create deploy") && err.contains("FLY_API_TOKEN"),
        "{err}"
    );
    assert_no_secret(&err, &[wrong.to_string()]);
}

/// A token with macaroons and an OAuth token (a `fly auth login` session whose macaroons the
/// registry refuses, e.g. their discharges went stale): the OAuth token gets one chance, as
/// the Machines API gives it, and the push goes through. Neither secret is printed.
#[test]
fn a_refused_session_falls_back_to_its_oauth_token_at_the_fly_registry() {
    let macaroons = "fm2_lJPECAAAAAAAAMZ3stalemacaroon0123456789";
    let oauth = "fo1_nixflytestoauthtoken0123456789abcdef";
    let registry = Registry::start(AuthMode::fly(oauth));
    let t = TestDir::new();
    let image = Image::new(&t, "fly", 1000);
    let mut cmd = t.nixfly();
    cmd.env("FLY_REGISTRY_HOST", registry.host())
        .env("FLY_API_TOKEN", format!("FlyV1 {macaroons},{oauth}"))
        .args([
            "-vv",
            "registry",
            "push-bytes",
            "app-name",
            image.config.to_str().unwrap(),
        ]);
    let out = run(&mut cmd);
    assert_success(&out);
    assert!(stdout(&out).starts_with(&image.config_digest));
    assert_no_secret(&stderr(&out), &[macaroons.to_string(), oauth.to_string()]);
}

/// `registry push-bytes` of `image`'s config to `registry` as the Fly registry, with no Fly
/// token anywhere (neither variable nor config.yml): only docker's config.json can serve it.
fn push_without_fly_token(t: &TestDir, registry: &Registry, image: &Image) -> Output {
    let mut cmd = t.nixfly();
    cmd.env("FLY_REGISTRY_HOST", registry.host())
        .env("FLY_CONFIG_DIR", t.join("no-fly-config"))
        .env_remove("FLY_API_TOKEN")
        .env_remove("FLY_ACCESS_TOKEN")
        .args([
            "registry",
            "push-bytes",
            "app-name",
            image.config.to_str().unwrap(),
        ]);
    run(&mut cmd)
}

/// ~/.docker/config.json with `auth` saved for `registry`, as `docker login` writes it.
fn save_docker_auth(t: &TestDir, registry: &Registry, auth: &str) {
    let docker = t.join("home").join(".docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        serde_json::json!({ "auths": { registry.host(): { "auth": auth } } }).to_string(),
    )
    .unwrap();
}

/// No Fly token anywhere, but credentials saved for the Fly registry host in docker's
/// config.json (`docker login registry.fly.io -u x`, as CI login actions do): the push uses
/// them, as docker and skopeo would. Without them the error still asks for a Fly token.
#[test]
fn saved_credentials_serve_the_fly_registry_without_a_fly_token() {
    use base64::Engine as _;
    let token = "fm2_lJPECAAAAAAAAMZ3nixflysavedlogin0123456789";
    let registry = Registry::start(AuthMode::fly(token));
    let t = TestDir::new();
    let image = Image::new(&t, "fly", 1000);
    let out = push_without_fly_token(&t, &registry, &image);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the Fly registry takes the Fly token as its password"),
        "{}",
        stderr(&out)
    );
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("x:{token}"));
    save_docker_auth(&t, &registry, &auth);
    let out = push_without_fly_token(&t, &registry, &image);
    assert_success(&out);
    assert!(stdout(&out).starts_with(&image.config_digest));
    assert_no_secret(&stderr(&out), &[token.to_string()]);
}

/// `fly auth docker` on a machine without docker writes ~/.docker/config.json itself, its
/// `auth` in base64's URL-safe alphabet (flyctl `internal/command/auth/docker.go`,
/// `addFlyAuthToDockerConfig`). nixfly reads it, when the standard alphabet fails.
#[test]
fn a_config_json_written_by_fly_auth_docker_is_read() {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    let token = "fm2_lJPECAAAAAAAAMZ3nixfly+saved/login??>>0123456789";
    let registry = Registry::start(AuthMode::fly(token));
    let t = TestDir::new();
    let image = Image::new(&t, "fly", 1000);
    let auth = URL_SAFE.encode(format!("x:{token}"));
    assert_ne!(
        auth,
        STANDARD.encode(format!("x:{token}")),
        "a token whose encodings differ"
    );
    save_docker_auth(&t, &registry, &auth);
    let out = push_without_fly_token(&t, &registry, &image);
    assert_success(&out);
    assert!(stdout(&out).starts_with(&image.config_digest));
    assert_no_secret(&stderr(&out), &[token.to_string(), auth]);
}

/// A host that sends every request to a web page on another host, as `docker.io` does (its
/// API is `registry-1.docker.io`): the push fails saying so, nothing but blob reads follows the
/// redirect, and nothing is reported pushed. nixfly used to follow every redirect and took the
/// page's 200 for a stored manifest.
#[test]
fn a_host_that_redirects_the_api_to_a_web_page_is_refused() {
    let site = RecordingServer::start("127.0.0.2:0", |_| {
        (
            "200 OK\r\nContent-Type: text/html".into(),
            "<html>welcome</html>".into(),
        )
    });
    let site_addr = site.addr;
    let front = RecordingServer::start("127.0.0.1:0", move |head| {
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        (
            format!("301 Moved Permanently\r\nLocation: http://{site_addr}{path}"),
            String::new(),
        )
    });
    let t = TestDir::new();
    let source = t.join("image.tar");
    support::images::write_stream_layered(
        std::fs::File::create(&source).unwrap(),
        &support::images::small_layers()[..1],
        support::images::Fault::None,
    )
    .unwrap();
    let mut cmd = t.nixfly();
    cmd.args([
        "push",
        source.to_str().unwrap(),
        "--to",
        &format!("{}/someone/app:v1", front.addr),
    ]);
    let out = run(&mut cmd);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        stdout(&out).is_empty(),
        "nothing is reported pushed: {}",
        stdout(&out)
    );
    assert!(
        err.contains("another host: is") && err.contains("the registry's API host?"),
        "{err}"
    );
    for head in site.received() {
        let request = head.lines().next().unwrap_or_default().to_string();
        assert!(
            (request.starts_with("GET ") || request.starts_with("HEAD "))
                && request.contains("/blobs/sha256:"),
            "only blob reads may go to another host: {request}"
        );
    }
}

/// Docker Hub: `docker.io/nginx` is `library/nginx` on `registry-1.docker.io`, as Docker,
/// skopeo and go-containerregistry read it (`docker.io` answers with a web page).
#[test]
fn docker_hub_references_go_to_its_api_host() {
    let t = TestDir::new();
    let mut cmd = t.nixfly();
    // A proxy that refuses everything: the request line shows where nixfly went.
    cmd.env("HTTPS_PROXY", "http://127.0.0.1:9").args([
        "-vv",
        "registry",
        "exists",
        "docker.io/nginx",
        &sha256(b"x"),
    ]);
    let out = run(&mut cmd);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("https://registry-1.docker.io/v2/library/nginx/blobs/"),
        "{err}"
    );
}

/// A token service that fails for a moment (503 with `Retry-After`) is asked again, as
/// go-containerregistry asks through its retrying transport; it failed the push saying the
/// credentials were rejected. One that keeps failing is named as failing, not refusing.
#[test]
fn a_failing_token_service_is_asked_again() {
    let registry = Registry::start(AuthMode::token(Duration::from_secs(300)));
    let t = TestDir::new();
    let image = Image::new(&t, "token-503", 50_000);
    let creds = registry.creds();
    let ts = registry.token_server.as_ref().unwrap();
    ts.fail_next.store(2, std::sync::atomic::Ordering::SeqCst);
    let (reference, _) = push_image(&t, &registry.host(), Some(&creds), &[], "app:v1", &image);
    verify_with_skopeo(&registry, &reference, &image);
    assert_eq!(
        ts.fail_next.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "both failures were met"
    );

    ts.fail_next.store(100, std::sync::atomic::Ordering::SeqCst);
    let out = nixfly_registry(
        &t,
        Some(&creds),
        &[],
        &["exists", &format!("{}/app", registry.host()), &sha256(b"x")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("answered 503") && err.contains("not refusing the credentials"),
        "{err}"
    );
    ts.fail_next.store(0, std::sync::atomic::Ordering::SeqCst);
}
