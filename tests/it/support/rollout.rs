//! Helpers for the rollout tests: a digest image reference and the `nixfly rollout` command
//! pointed at the Fly API double.

use super::TestDir;
use super::fly_api::{FlyApi, RecordedRequest};
use std::process::{Command, Output};

pub const APP: &str = "demo";

/// A digest reference as `nixfly push` prints it; `n` makes distinct images.
pub fn image(n: u8) -> String {
    format!("registry.fly.io/{APP}@sha256:{}", format!("{n:02x}").repeat(32))
}

/// A deploy gives machines and the release the pushed digest with the tag it pushed:
/// `host/repo:<tag>@<digest>` for the `host/repo@<digest>` it printed.
#[track_caller]
pub fn assert_runs_pushed(image: &str, reference: &str) {
    let (name, digest) = reference.split_once('@').expect("a digest reference");
    let tag = image
        .strip_prefix(name)
        .and_then(|rest| rest.strip_prefix(':'))
        .and_then(|rest| rest.strip_suffix(&format!("@{digest}")));
    assert!(
        tag.is_some_and(|tag| !tag.is_empty() && !tag.contains(['/', '@', ':'])),
        "{image} is not {name}:<tag>@{digest}"
    );
}

/// `nixfly rollout --app demo --image IMAGE --output plain` against the double, watching
/// machines without checks for 1 s (the double runs Fly time 20 times faster).
pub fn rollout_cmd(fly: &FlyApi, t: &TestDir, image: &str) -> Command {
    let mut cmd = t.nixfly();
    fly.configure(&mut cmd);
    cmd.args(["rollout", "--app", APP, "--image", image, "--output", "plain"])
        .args(["--smoke-check-window", "1s"]);
    cmd
}

pub fn run_rollout(fly: &FlyApi, t: &TestDir, image: &str, args: &[&str]) -> Output {
    let mut cmd = rollout_cmd(fly, t, image);
    super::run(cmd.args(args))
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The bodies of the deploy's `POST /v1/apps/demo/machines` creates, in arrival order.
pub fn create_bodies(fly: &FlyApi) -> Vec<serde_json::Value> {
    fly.requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == format!("/v1/apps/{APP}/machines"))
        .filter_map(|r| r.body)
        .collect()
}

/// Machine ids of the `POST /v1/apps/demo/machines/{id}` update requests, in arrival order.
pub fn updated_ids(requests: &[RecordedRequest]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.method == "POST")
        .filter_map(|r| {
            let rest = r.path.strip_prefix(&format!("/v1/apps/{APP}/machines/"))?;
            (!rest.contains('/')).then(|| rest.to_string())
        })
        .collect()
}

/// Assert the double saw no request that breaks the API schema.
#[track_caller]
pub fn assert_no_violations(fly: &FlyApi) {
    let violations = fly.violations();
    assert!(violations.is_empty(), "schema violations: {violations:#?}");
}

/// No lease is left on any machine of the app.
#[track_caller]
pub fn assert_no_leases(fly: &FlyApi) {
    for machine in fly.machines(APP) {
        assert!(
            fly.lease(&machine.id).is_none(),
            "machine {} still has a lease",
            machine.id
        );
    }
}
