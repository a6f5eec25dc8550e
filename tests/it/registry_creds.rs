//! Registry credentials reach every command the same way (issue 9): `rollout --image
//! host/repo:tag` takes `--creds` and `NIXFLY_REGISTRY_CREDS` as `push` does, and Docker
//! credential helpers (`credHelpers`, `credsStore` in $DOCKER_CONFIG/config.json) are asked as
//! docker asks them: `docker-credential-<name> get`, the registry host on stdin.

use crate::deploy::stream_archive;
use crate::support;

use std::path::PathBuf;
use support::fly_api::{FlyApi, MachineSpec};
use support::readback::{assert_same_image, pushed_reference};
use support::registry::{AuthMode, PASSWORD, Registry, USER};
use support::rollout::{APP, assert_no_violations, rollout_cmd, stderr};
use support::{TestDir, run};

/// A credential helper `docker-credential-<name>` in `<t>/bin`, written as the protocol
/// describes it: `get` reads the server on stdin, answers `{"Username","Secret"}` for the one
/// host it knows and "credentials not found" (exit 1) for others. Every host asked is logged.
fn install_helper(t: &TestDir, name: &str, host: &str, user: &str, secret: &str) -> PathBuf {
    let bin = t.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = t.join(&format!("{name}.log"));
    let script = format!(
        r#"#!/bin/sh
[ "$1" = get ] || {{ echo "unsupported action $1" >&2; exit 2; }}
read -r server
echo "$server" >> '{log}'
if [ "$server" = '{host}' ]; then
  printf '{{"ServerURL":"%s","Username":"{user}","Secret":"{secret}"}}\n' "$server"
else
  echo "credentials not found in native keychain"
  exit 1
fi
"#,
        log = log.display()
    );
    let path = bin.join(format!("docker-credential-{name}"));
    support::images::write_executable(&path, &script).unwrap();
    log
}

fn write_docker_config(t: &TestDir, config: &serde_json::Value) {
    // TestDir::nixfly points DOCKER_CONFIG at home/.docker.
    let dir = t.join("home").join(".docker");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

/// `nixfly` that finds the helpers in `<t>/bin` first on PATH.
fn nixfly_with_helpers(t: &TestDir) -> std::process::Command {
    let path = format!(
        "{}:{}",
        t.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = t.nixfly();
    cmd.env("PATH", path);
    cmd
}

#[test]
fn rollout_of_a_tag_takes_creds_from_the_flag_and_the_environment() {
    let registry = Registry::start(AuthMode::htpasswd());
    let fly = FlyApi::start();
    fly.add_app(APP);
    let machines = fly.add_machines(APP, &MachineSpec::new("app").count(1));
    let t = TestDir::new();
    let (source, _) = stream_archive(&t);
    let repo = format!("{}/{APP}", registry.host());
    let pushed = run(t.nixfly().args([
        "push",
        &source,
        "--to",
        &repo,
        "--tag",
        "v3",
        "--creds",
        &registry.creds(),
    ]));
    let reference = pushed_reference(&pushed, &registry.host(), APP);
    let image = format!("{repo}:v3");

    // Without credentials the registry refuses, and the hint's advice is one rollout takes.
    let out = run(&mut rollout_cmd(&fly, &t, &image));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--creds USER:PASSWORD"), "{err}");
    assert!(fly.releases().is_empty());

    let out = run(rollout_cmd(&fly, &t, &image).args(["--creds", &registry.creds()]));
    support::assert_success(&out);
    assert_eq!(fly.machine(&machines[0]).image(), reference);

    // The tag resolves with the environment's credentials too; the machine already runs that
    // digest, so nothing is deployed and no second release is made.
    let out = run(rollout_cmd(&fly, &t, &image).env("NIXFLY_REGISTRY_CREDS", registry.creds()));
    support::assert_success(&out);
    assert!(
        stderr(&out).contains(&format!("is {reference}")),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("nothing to deploy"), "{}", stderr(&out));
    assert_eq!(fly.releases().len(), 1);
    assert!(!stderr(&out).contains(PASSWORD), "{}", stderr(&out));
    assert_no_violations(&fly);
}

#[test]
fn a_cred_helper_named_for_the_host_gives_the_push_its_credentials() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let (source, written) = stream_archive(&t);
    let log = install_helper(&t, "nixfly-test", &registry.host(), USER, PASSWORD);
    write_docker_config(
        &t,
        &serde_json::json!({ "credHelpers": { registry.host(): "nixfly-test" } }),
    );
    let mut cmd = nixfly_with_helpers(&t);
    let repo = format!("{}/{APP}", registry.host());
    let out = run(cmd.args(["push", &source, "--to", &repo, "--tag", "v1"]));
    let reference = pushed_reference(&out, &registry.host(), APP);
    assert_same_image(&registry, &reference, &written);
    let asked = std::fs::read_to_string(&log).unwrap();
    assert!(
        asked.lines().all(|host| host == registry.host()) && !asked.is_empty(),
        "{asked:?}"
    );
    assert!(!stderr(&out).contains(PASSWORD));
}

#[test]
fn the_creds_store_is_asked_when_no_helper_is_named_for_the_host() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let (source, _) = stream_archive(&t);
    install_helper(&t, "store", &registry.host(), USER, PASSWORD);
    write_docker_config(
        &t,
        &serde_json::json!({ "credsStore": "store", "credHelpers": { "other.example": "x" } }),
    );
    let mut cmd = nixfly_with_helpers(&t);
    let repo = format!("{}/{APP}", registry.host());
    let out = run(cmd.args(["push", &source, "--to", &repo, "--tag", "v1"]));
    pushed_reference(&out, &registry.host(), APP);

    // A store that holds nothing for the host means anonymous, and the registry's refusal
    // then names the store to fix.
    install_helper(&t, "store", "elsewhere.example", USER, PASSWORD);
    let mut cmd = nixfly_with_helpers(&t);
    let out = run(cmd.args(["push", &source, "--to", &repo, "--tag", "v2"]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));
}

#[test]
fn a_missing_or_broken_helper_is_named_in_the_error() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let (source, _) = stream_archive(&t);
    let repo = format!("{}/{APP}", registry.host());
    write_docker_config(
        &t,
        &serde_json::json!({ "credHelpers": { registry.host(): "not-installed" } }),
    );
    let out = run(t.nixfly().args(["push", &source, "--to", &repo]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("docker-credential-not-installed") && err.contains("PATH"),
        "{err}"
    );
    assert_eq!(registry.blob_bytes(), 0);

    let bin = t.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let broken = bin.join("docker-credential-broken");
    // It reads the host first, as helpers do: one that never reads stdin cannot be told apart
    // from one that did not start.
    support::images::write_executable(
        &broken,
        "#!/bin/sh
read -r server
echo 'keychain locked' >&2
exit 3
",
    )
    .unwrap();
    write_docker_config(
        &t,
        &serde_json::json!({ "credHelpers": { registry.host(): "broken" } }),
    );
    let mut cmd = nixfly_with_helpers(&t);
    let out = run(cmd.args(["push", &source, "--to", &repo]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("docker-credential-broken") && err.contains("keychain locked"),
        "{err}"
    );
}

/// An identity token (from `auths.<host>.identitytoken`, or a helper answering the user
/// `<token>`) is an OAuth2 refresh token: exchanged at the token realm for access tokens, and
/// never printed, even with -vv.
#[test]
fn identity_tokens_are_exchanged_at_the_token_realm() {
    use support::registry::IDENTITY_TOKEN;
    let registry = Registry::start(AuthMode::token(std::time::Duration::from_secs(300)));
    let t = TestDir::new();
    let (source, written) = stream_archive(&t);
    let repo = format!("{}/{APP}", registry.host());

    write_docker_config(
        &t,
        &serde_json::json!({ "auths": { registry.host(): { "identitytoken": IDENTITY_TOKEN } } }),
    );
    let out = run(t
        .nixfly()
        .args(["push", &source, "--to", &repo, "--tag", "v1", "-vv"]));
    let reference = pushed_reference(&out, &registry.host(), APP);
    assert_same_image(&registry, &reference, &written);
    assert!(!stderr(&out).contains(IDENTITY_TOKEN), "{}", stderr(&out));
    let server = registry.token_server.as_ref().unwrap();
    let issued = server.issued.load(std::sync::atomic::Ordering::Relaxed);
    assert!(issued > 0);

    install_helper(&t, "oauth", &registry.host(), "<token>", IDENTITY_TOKEN);
    write_docker_config(
        &t,
        &serde_json::json!({ "credHelpers": { registry.host(): "oauth" } }),
    );
    let mut cmd = nixfly_with_helpers(&t);
    let out = run(cmd.args(["push", &source, "--to", &repo, "--tag", "v2"]));
    pushed_reference(&out, &registry.host(), APP);
    assert!(server.issued.load(std::sync::atomic::Ordering::Relaxed) > issued);

    // A wrong identity token is refused at the realm, and the error names the helper.
    install_helper(&t, "oauth", &registry.host(), "<token>", "not-the-token");
    let mut cmd = nixfly_with_helpers(&t);
    let out = run(cmd.args(["push", &source, "--to", &repo, "--tag", "v3"]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("docker-credential-oauth"), "{err}");
    assert!(!err.contains("not-the-token"), "{err}");
}

/// A deploy token pasted whole (`FlyV1 fm2_...`, as `fly tokens create deploy` prints it) into
/// `--creds x:...` or `docker login registry.fly.io -u x -p ...` reaches Fly's registry as
/// flyctl sends a token there: without the scheme (fly-go `Tokens.Docker()`). This registry,
/// as the Fly registry, takes only that bare form. Any other registry gets the password as
/// typed.
#[test]
fn a_deploy_token_pasted_with_its_scheme_reaches_the_fly_registry_as_flyctl_sends_it() {
    use base64::Engine as _;
    let token = "fm2_lJPECAAAAAAAAMZ3nixflypasteddeploytoken0123456789";
    let pasted = format!("FlyV1 {token}");
    let registry = Registry::start(AuthMode::fly(token));
    let t = TestDir::new();
    let (source, written) = stream_archive(&t);
    let repo = format!("{}/{APP}", registry.host());
    let push = |t: &TestDir, fly_registry: bool, creds: Option<&str>| {
        let mut cmd = t.nixfly();
        if fly_registry {
            cmd.env("FLY_REGISTRY_HOST", registry.host());
        }
        cmd.args(["push", &source, "--to", &repo, "--tag", "v1"]);
        if let Some(creds) = creds {
            cmd.args(["--creds", creds]);
        }
        run(&mut cmd)
    };

    // Any other registry: sent as typed, and refused.
    let out = push(&t, false, Some(&format!("x:{pasted}")));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!stderr(&out).contains(token), "{}", stderr(&out));

    let out = push(&t, true, Some(&format!("x:{pasted}")));
    let reference = pushed_reference(&out, &registry.host(), APP);
    assert_same_image(&registry, &reference, &written);
    assert!(!stderr(&out).contains(token), "{}", stderr(&out));

    let auth = base64::engine::general_purpose::STANDARD.encode(format!("x:{pasted}"));
    write_docker_config(
        &t,
        &serde_json::json!({ "auths": { registry.host(): { "auth": auth } } }),
    );
    let out = push(&t, true, None);
    support::assert_success(&out);
    assert!(!stderr(&out).contains(token), "{}", stderr(&out));
}
