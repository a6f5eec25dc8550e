//! Helpers for the rollout tests: a digest image reference, the `nixfly rollout` command
//! pointed at the Fly API double, and what the tests set up in and read back from the double.

use super::TestDir;
use super::fly_api::{FlyApi, Machine, MachineSpec, RecordedRequest};
use std::process::{Command, Output};

pub const APP: &str = "demo";

/// flaps' refusal of an update when the machine's host has no room: a 409 with this message
/// (fly-go's `flaps/flaps_error_test.go`, `TestCapacityScopeOf`, has it followed by " on the
/// current host"). flyctl, and nixfly, replace the machine instead.
pub const NO_ROOM: &str =
    "aborted: could not reserve resource for machine: insufficient memory available to fulfill request";

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

/// The hex of an image's digest, which picks out that image alone where the double matches
/// images by a part of their name (`set_behavior`, `set_log_output`).
pub fn digest_hex(image: &str) -> &str {
    image.rsplit(':').next().unwrap()
}

/// The app's machines that are not destroyed.
pub fn live_machines(fly: &FlyApi) -> Vec<Machine> {
    fly.machines(APP)
        .into_iter()
        .filter(|m| m.state != "destroyed")
        .collect()
}

/// The canary machines the deploy made (and destroyed).
pub fn canaries(fly: &FlyApi) -> Vec<Machine> {
    fly.machines(APP)
        .into_iter()
        .filter(|m| m.metadata("fly_canary") == Some("true"))
        .collect()
}

/// The canary machine the deploy made (and destroyed), for an app of one process group.
pub fn the_canary(fly: &FlyApi) -> Machine {
    canaries(fly).into_iter().next().expect("a canary")
}

/// An app of one machine with `LOG_LEVEL=debug` in its env, whose current release (of
/// `image(1)`) has `definition` as its app config, as a deploy without a fly.toml finds it.
/// Returns the machine's id.
pub fn one_machine_and_a_release(fly: &FlyApi, definition: serde_json::Value) -> String {
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(1).env("LOG_LEVEL", "debug"));
    fly.add_release(APP, &image(1), definition);
    ids[0].clone()
}

/// `text` as the fly.toml of `t`, the directory `nixfly rollout` runs in.
pub fn write_fly_toml(t: &TestDir, text: &str) {
    std::fs::write(t.join("fly.toml"), text).unwrap();
}

/// The bluegreen strategy without the wait before the cutover, so that a test does not sit
/// through it.
pub const BLUEGREEN: [&str; 4] = ["--strategy", "bluegreen", "--bluegreen-cutover-wait", "0s"];

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

/// The double saw no request that changes anything: a dry run, or a deploy refused up front.
#[track_caller]
pub fn assert_no_changes(fly: &FlyApi) {
    let changes = fly.mutating_requests();
    assert!(changes.is_empty(), "{changes:#?}");
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
