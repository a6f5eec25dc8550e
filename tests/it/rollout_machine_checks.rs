//! fly.toml's machine checks against the Fly API double: a test machine per check after each
//! started machine's update (flyctl `internal/command/deploy/machinebasedtest.go`, run from
//! `plan.go` `updateMachineWChecks` and `machines_deploymachinesapp.go` `waitForMachine`), a
//! failing one rolling that machine back, none with the immediate strategy.

use crate::support;

use serde_json::{Value, json};
use std::time::Duration;
use support::fly_api::{FlyApi, MachineSpec, Options, Timing};
use support::rollout::{
    APP, assert_no_changes, assert_no_leases, assert_no_violations, canaries, image,
    one_machine_and_a_release, run_rollout, stderr, updated_ids, write_fly_toml,
};
use support::{TestDir, assert_success};

const TEST_GROUP: &str = "fly_app_test_machine_command";

/// A service check on the machine's own image and a top-level one on an image of its own.
const FLY_TOML: &str = r#"app = "demo"
primary_region = "ams"

[env]
  MODE = "prod"

[http_service]
  internal_port = 8080

  [[http_service.machine_checks]]
    command = ["sh", "-c", "curl -f http://[$FLY_TEST_MACHINE_IP]:8080/health"]

[[machine_checks]]
  image = "curlimages/curl"
  command = ["curl", "-f", "https://example.com"]
  kill_signal = "SIGKILL"
"#;

fn test_machines(fly: &FlyApi) -> Vec<support::fly_api::Machine> {
    fly.machines(APP)
        .into_iter()
        .filter(|m| m.config["metadata"]["fly_process_group"] == TEST_GROUP)
        .collect()
}

fn request_index(fly: &FlyApi, wanted: impl Fn(&support::fly_api::RecordedRequest) -> bool) -> Vec<usize> {
    fly.requests()
        .iter()
        .enumerate()
        .filter(|(_, r)| wanted(r))
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn each_started_machine_gets_its_test_machines_after_its_update() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(2).region("ams"));
    let stopped = fly.add_machines(APP, &MachineSpec::new("app").count(1).state("stopped"));
    // One left by an interrupted deploy: not deployed to.
    let mut left = MachineSpec::new("app").config();
    left["metadata"]["fly_process_group"] = json!(TEST_GROUP);
    let leftover = fly.add_machine_with_config(APP, "ams", "stopped", left);
    let t = TestDir::new();
    write_fly_toml(&t, FLY_TOML);
    let new = image(40);

    let out = run_rollout(&fly, &t, &new, &[]);
    assert_success(&out);

    let tests = test_machines(&fly);
    let tests: Vec<_> = tests.iter().filter(|m| m.id != leftover).collect();
    assert_eq!(tests.len(), 4, "two checks for each of the two started machines");
    let release = &fly.releases()[0];
    for id in &ids {
        let tested = fly.machine(id);
        assert_eq!(tested.image(), new);
        let mine: Vec<_> = tests
            .iter()
            .filter(|m| m.config["env"]["FLY_TEST_MACHINE_IP"] == tested.private_ip().as_str())
            .collect();
        assert_eq!(mine.len(), 2, "{id}: {mine:#?}");
        let images: Vec<&str> = mine.iter().map(|m| m.image()).collect();
        assert_eq!(images, [new.as_str(), "curlimages/curl"], "{id}");
        for test in &mine {
            let config = &test.config;
            assert_eq!(test.state, "destroyed");
            assert_eq!(test.region, tested.region);
            assert_eq!(config["env"]["FLY_TEST_COMMAND"], "1");
            assert_eq!(config["env"]["FLY_PROCESS_GROUP"], TEST_GROUP);
            assert_eq!(config["env"]["PRIMARY_REGION"], "ams");
            assert_eq!(config["env"]["MODE"], "prod");
            assert_eq!(config["restart"]["policy"], "no");
            assert_eq!(config["auto_destroy"], true);
            assert_eq!(config["dns"]["skip_registration"], true);
            assert_eq!(config["metadata"]["fly_release_id"], release.id.as_str());
            assert_eq!(config["metadata"]["fly_release_version"], "1");
            assert_eq!(
                config["guest"],
                json!({"cpu_kind": "shared", "cpus": 1, "memory_mb": 256})
            );
        }
        assert_eq!(
            mine[0].config["init"]["cmd"],
            json!(["sh", "-c", "curl -f http://[$FLY_TEST_MACHINE_IP]:8080/health"])
        );
        // The check on the machine's image stops as fly.toml says (nothing here); the one on
        // its own image as the check says.
        assert_eq!(mine[0].config["stop_config"], json!({}));
        assert_eq!(mine[1].config["stop_config"], json!({"signal": "SIGKILL"}));
    }
    // The first machine's checks ran after its update and before the next machine's.
    let updates = request_index(&fly, |r| {
        r.method == "POST"
            && ids
                .iter()
                .any(|id| r.path == format!("/v1/apps/{APP}/machines/{id}"))
    });
    let creates = request_index(&fly, |r| {
        r.method == "POST"
            && r.path == format!("/v1/apps/{APP}/machines")
            && r.body
                .as_ref()
                .is_some_and(|b| b["config"]["metadata"]["fly_process_group"] == TEST_GROUP)
    });
    assert_eq!(creates.len(), 4);
    assert!(
        updates[0] < creates[0] && creates[1] < updates[1],
        "{updates:?} {creates:?}"
    );
    // Left stopped: no test machine; the leftover is not deployed to.
    assert_eq!(fly.machine(&stopped[0]).image(), new);
    assert_eq!(fly.machine(&leftover).config_history.len(), 1);
    assert!(!updated_ids(&fly.requests()).contains(&leftover));
    assert_eq!(fly.releases()[0].statuses, ["created", "running", "complete"]);
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

#[test]
fn a_failing_machine_check_rolls_its_machine_back_and_shows_the_test_machines_logs() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(3));
    let old = fly.machine(&ids[0]).image().to_string();
    fly.set_test_command_exit_code(22);
    let t = TestDir::new();
    write_fly_toml(
        &t,
        "app = \"demo\"\n[[machine_checks]]\ncommand = [\"bin/smoke\", \"--all\"]\n",
    );
    let new = image(41);
    fly.set_log_output(
        &new[..40],
        &["smoke: GET /health", "smoke: 503 Service Unavailable"],
    );

    let out = run_rollout(&fly, &t, &new, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let tests = test_machines(&fly);
    assert_eq!(tests.len(), 1, "the first machine's check stopped the deploy");
    assert_eq!(
        tests[0].config["env"]["FLY_TEST_MACHINE_IP"],
        fly.machine(&ids[0]).private_ip().as_str()
    );
    assert!(
        err.contains(&format!(
            "machine check `bin/smoke --all` failed on machine {}: its test machine {} exited with code 22",
            ids[0], tests[0].id
        )),
        "{err}"
    );
    assert!(err.contains("smoke: 503 Service Unavailable"), "{err}");
    assert!(err.contains("Main child exited normally with code: 22"), "{err}");
    assert!(err.contains("rolled back 1 machine(s)"), "{err}");
    for id in &ids {
        assert_eq!(fly.machine(id).image(), old, "{id}");
    }
    assert_eq!(updated_ids(&fly.requests()), [ids[0].clone(), ids[0].clone()]);
    assert_eq!(fly.releases()[0].statuses, ["created", "running", "failed"]);
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

#[test]
fn immediate_runs_no_machine_checks_and_dry_run_lists_them() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(2));
    fly.set_test_command_exit_code(1);
    let t = TestDir::new();
    write_fly_toml(&t, FLY_TOML);
    let new = image(42);

    let out = run_rollout(&fly, &t, &new, &["--dry-run"]);
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "process group app: machine checks after each machine's update, each on a test machine: \
             `sh -c 'curl -f http://[$FLY_TEST_MACHINE_IP]:8080/health'` on the new image, \
             `curl -f https://example.com` on curlimages/curl"
        ),
        "{stdout}"
    );
    assert_no_changes(&fly);

    let out = run_rollout(&fly, &t, &new, &["--strategy", "immediate"]);
    assert_success(&out);
    assert!(
        stderr(&out).contains("machine checks: not run with the immediate strategy"),
        "{}",
        stderr(&out)
    );
    assert!(test_machines(&fly).is_empty());
    for id in &ids {
        assert_eq!(fly.machine(id).image(), new);
    }
    assert_no_violations(&fly);
}

/// flyctl's `deployCanaryMachines` tests each canary once healthy; the group then rolls with
/// checks on every machine.
#[test]
fn the_canary_is_tested_too() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(1));
    let t = TestDir::new();
    write_fly_toml(&t, "app = \"demo\"\n[[machine_checks]]\ncommand = [\"true\"]\n");
    let new = image(43);

    let out = run_rollout(&fly, &t, &new, &["--strategy", "canary"]);
    assert_success(&out);
    let canaries = canaries(&fly);
    assert_eq!(canaries.len(), 1);
    let tested: Vec<Value> = test_machines(&fly)
        .iter()
        .map(|m| m.config["env"]["FLY_TEST_MACHINE_IP"].clone())
        .collect();
    assert_eq!(
        tested,
        [
            json!(canaries[0].private_ip()),
            json!(fly.machine(&ids[0]).private_ip())
        ]
    );
    assert_no_violations(&fly);
}

/// Without a fly.toml, `fly deploy` takes the app config, machine checks included, from the
/// current release (`internal/appconfig/remote.go`); the test machine gets that config's env
/// under the machine's own.
#[test]
fn without_fly_toml_the_current_releases_machine_checks_run() {
    let fly = FlyApi::start();
    let id = one_machine_and_a_release(
        &fly,
        json!({
            "app": APP,
            "env": {"LOG_LEVEL": "info", "REGION_NAME": "east"},
            "machine_checks": [{"command": ["bin/check"]}],
        }),
    );
    let t = TestDir::new();
    let new = image(44);
    let out = run_rollout(&fly, &t, &new, &[]);
    assert_success(&out);
    assert!(
        stderr(&out)
            .contains("(release_command, strategy, ...) and machine checks of app demo's current release"),
        "{}",
        stderr(&out)
    );
    let tests = test_machines(&fly);
    assert_eq!(tests.len(), 1);
    let env = &tests[0].config["env"];
    assert_eq!(env["LOG_LEVEL"], "debug");
    assert_eq!(env["REGION_NAME"], "east");
    assert_eq!(env["FLY_TEST_MACHINE_IP"], fly.machine(&id).private_ip().as_str());
    assert_eq!(tests[0].image(), new);
    assert_no_violations(&fly);
}

/// A test machine that runs and is destroyed before the API shows it (reads lag behind a
/// create, and without the affinity cookie nothing hides the lag): both waits answer 404, which
/// they take for done, and its exit code is read once the API shows it, where flyctl's
/// `WaitForEventType` would fail on the first 404.
#[test]
fn a_test_machine_that_ran_before_it_was_visible_is_read_once_it_is() {
    let fly = FlyApi::with_options(Options {
        affinity: false,
        timing: Timing {
            visible_after_create: Duration::from_secs(40),
            ..Timing::default()
        },
        ..Options::default()
    });
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(1).region("ams"));
    let t = TestDir::new();
    write_fly_toml(&t, FLY_TOML);
    let new = image(44);

    let out = run_rollout(&fly, &t, &new, &[]);
    assert_success(&out);
    assert_eq!(fly.machine(&ids[0]).image(), new);
    let tests = test_machines(&fly);
    assert_eq!(tests.len(), 2, "{tests:?}");
    for test in &tests {
        let read = format!("/machines/{}", test.id);
        let not_found = fly
            .requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.path.ends_with(&read) && r.status == 404)
            .count();
        assert!(
            not_found >= 1,
            "test machine {} was never caught invisible",
            test.id
        );
        assert_eq!(test.state, "destroyed");
    }
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}
