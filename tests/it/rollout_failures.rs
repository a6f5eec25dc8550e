//! Rollouts that go wrong against the Fly API double: rollback, release_command failure,
//! someone else's lease, API errors, signals, missing token.

use crate::support;

use std::time::Duration;
use support::fly_api::{Behavior, FaultKind, FlyApi, MachineSpec, Options, Timing};
use support::rollout::{
    APP, NO_ROOM, assert_no_leases, assert_no_violations, digest_hex, image, rollout_cmd, run_rollout,
    stderr, updated_ids, write_fly_toml,
};
use support::{TestDir, assert_success};

/// nixfly's exit codes (src/error.rs).
const EXIT_FAILURE: i32 = 1;
const EXIT_ROLLED_BACK: i32 = 1;
const EXIT_INTERRUPTED: i32 = 130;

#[test]
fn failing_checks_roll_back_every_updated_machine() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(5).checks(1));
    let t = TestDir::new();
    let old = fly.machine(&ids[0]).image().to_string();
    let new = image(9);
    fly.set_behavior(digest_hex(&new), Behavior::ChecksFail);

    let out = run_rollout(
        &fly,
        &t,
        &new,
        &["--max-unavailable", "2", "--wait-timeout", "2s"],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_ROLLED_BACK), "{err}");
    assert!(err.contains(&ids[0]) && err.contains("health checks"), "{err}");
    assert!(err.contains("rolled back 1 machine"), "{err}");

    // The first machine goes alone: it fails, nothing else is touched.
    assert_eq!(updated_ids(&fly.requests()), [ids[0].clone(), ids[0].clone()]);
    let first = fly.machine(&ids[0]);
    let images: Vec<&str> = first
        .config_history
        .iter()
        .map(|c| c["image"].as_str().unwrap())
        .collect();
    assert_eq!(images, [old.as_str(), new.as_str(), old.as_str()]);
    assert_eq!(first.state, "started");
    assert!(
        first.checks.iter().all(|c| c.status == "passing"),
        "{:?}",
        first.checks
    );
    assert_eq!(first.metadata("fly_release_id"), Some("seed"));
    for id in &ids[1..] {
        assert_eq!(
            fly.machine(id).config_history.len(),
            1,
            "machine {id} was changed"
        );
    }
    assert_eq!(fly.releases()[0].statuses, ["created", "running", "failed"]);
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

#[test]
fn no_rollback_leaves_the_failed_machine_and_still_fails() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(2));
    let t = TestDir::new();
    let new = image(10);
    fly.set_behavior(digest_hex(&new), Behavior::FailToStart);

    let out = run_rollout(&fly, &t, &new, &["--no-rollback", "--wait-timeout", "5s"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_ROLLED_BACK), "{err}");
    assert!(err.contains("not rolled back") && err.contains(&ids[0]), "{err}");
    assert_eq!(fly.machine(&ids[0]).image(), new);
    assert_eq!(fly.machine(&ids[1]).config_history.len(), 1);
    assert_eq!(fly.releases()[0].statuses, ["created", "running", "failed"]);
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// A machine without checks whose process runs once and exits 0 (a one-shot group) is
/// deployed, as flyctl's smoke check passes it (it fails only machines that keep restarting);
/// one that exits 1 and stops did not come up, and is rolled back, and started again as it
/// was: an update alone leaves a stopped machine stopped on Fly (flyctl preflight
/// `fly_machine_test.go`, `TestFlyMachineRun_standbyFor`).
#[test]
fn a_one_shot_machine_that_exits_cleanly_is_deployed_and_one_that_fails_is_not() {
    for (exit_code, deployed) in [(0, true), (1, false)] {
        let fly = FlyApi::start();
        fly.add_app(APP);
        let ids = fly.add_machines(APP, &MachineSpec::new("app").count(1));
        let t = TestDir::new();
        let new = image(11);
        fly.set_behavior(
            digest_hex(&new),
            Behavior::RestartLoop {
                exit_code,
                restarts: 0,
            },
        );
        let out = run_rollout(&fly, &t, &new, &["--wait-timeout", "20s"]);
        let err = stderr(&out);
        if deployed {
            assert_success(&out);
            assert_eq!(fly.machine(&ids[0]).image(), new);
            assert_eq!(fly.machine(&ids[0]).state, "stopped");
        } else {
            assert_eq!(out.status.code(), Some(EXIT_ROLLED_BACK), "{err}");
            let machine = fly.machine(&ids[0]);
            assert_ne!(machine.image(), new);
            assert_eq!(machine.state, "started", "{err}");
        }
        assert_no_leases(&fly);
        assert_no_violations(&fly);
    }
}

#[test]
fn restart_loop_is_caught_by_the_smoke_check() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(2));
    let t = TestDir::new();
    let new = image(11);
    fly.set_behavior(
        digest_hex(&new),
        Behavior::RestartLoop {
            exit_code: 2,
            restarts: 5,
        },
    );

    // What the process said is shown, from the app logs since the update, as flyctl shows
    // it when smoke checks fail (`doSmokeChecks`).
    fly.set_log_output(
        digest_hex(&new),
        &["Error: listen tcp :8080: address already in use"],
    );

    let out = run_rollout(&fly, &t, &new, &["--wait-timeout", "20s"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_ROLLED_BACK), "{err}");
    assert!(err.contains("crash looping") && err.contains("code 2"), "{err}");
    assert!(
        err.contains("log line(s) (all of them: `fly logs -i")
            && err.contains("Error: listen tcp :8080: address already in use")
            && err.contains("Main child exited normally with code: 2"),
        "{err}"
    );
    assert_ne!(fly.machine(&ids[0]).image(), new);
    // The rollback's own smoke check reads only the exits of the config it put back, not
    // the crash loop it replaced (the event list outlives updates).
    assert!(!err.contains("could not be rolled back"), "{err}");
    assert!(!err.contains("rollback failed"), "{err}");
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

#[test]
fn release_command_exit_1_stops_before_any_machine_changes() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(2).region("ams"));
    fly.set_release_command_exit_code(1);
    let t = TestDir::new();
    write_fly_toml(
        &t,
        "app = \"demo\"\nprimary_region = \"ams\"\n[deploy]\nrelease_command = \"bin/migrate --to 'latest version'\"\n[env]\nDATABASE = \"main\"\n",
    );
    let new = image(12);

    // What the command prints reaches the user through the app logs, as flyctl shows them
    // (an exit event carries no output).
    fly.set_log_output(
        &new[..40],
        &["Running migrations", "ERROR: relation \"users\" already exists"],
    );

    let out = run_rollout(&fly, &t, &new, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_FAILURE), "{err}");
    assert!(
        err.contains("exited with code 1") && err.contains("bin/migrate"),
        "{err}"
    );
    let shown: Vec<&str> = err
        .lines()
        .skip_while(|l| !l.contains("its last 4 log line(s):"))
        .skip(1)
        .take(4)
        .map(|l| l.split_once(' ').map_or(l, |(_, message)| message))
        .collect();
    assert_eq!(
        shown,
        [
            " INFO Preparing to run: `bin/migrate --to latest version` as root",
            "Running migrations",
            "ERROR: relation \"users\" already exists",
            " INFO Main child exited normally with code: 1",
        ],
        "{err}"
    );
    // fly-go reads logs with `Tokens.BubblegumHeader()`: the Machines API's scheme.
    let requests = fly.requests();
    let logs: Vec<_> = requests
        .iter()
        .filter(|r| r.path == "/api/v1/apps/demo/logs")
        .collect();
    let machines_scheme = &requests
        .iter()
        .find(|r| r.path.starts_with("/v1/"))
        .unwrap()
        .auth_scheme;
    assert!(!logs.is_empty());
    assert!(
        logs.iter().all(|r| &r.auth_scheme == machines_scheme),
        "{logs:#?}"
    );

    let temp: Vec<_> = fly
        .machines(APP)
        .into_iter()
        .filter(|m| !ids.contains(&m.id))
        .collect();
    assert_eq!(temp.len(), 1);
    let config = &temp[0].config;
    assert_eq!(
        config["init"]["cmd"],
        serde_json::json!(["bin/migrate", "--to", "latest version"])
    );
    assert_eq!(config["image"], new.as_str());
    assert_eq!(config["restart"]["policy"], "no");
    assert_eq!(config["auto_destroy"], true);
    assert_eq!(config["env"]["RELEASE_COMMAND"], "1");
    assert_eq!(config["env"]["DATABASE"], "main");
    assert_eq!(config["metadata"]["fly_process_group"], "fly_app_release_command");
    assert_eq!(temp[0].region, "ams");

    assert!(updated_ids(&fly.requests()).is_empty());
    assert!(
        !fly.requests().iter().any(|r| r.path.ends_with("/lease")),
        "app machines were leased"
    );
    for id in &ids {
        assert_eq!(fly.machine(id).config_history.len(), 1);
    }
    assert_eq!(fly.releases()[0].statuses, ["created", "running", "failed"]);
    assert_no_violations(&fly);
}

/// A start Fly answers with 200 and `status: "error"` (fly-go `MachineStartResponse`) fails
/// the deploy at once with Fly's message, as `fly machine start` does, instead of waiting
/// `wait_timeout` (5 minutes) for a release command that never runs. Nothing else changes and
/// the release machine is destroyed.
#[test]
fn a_start_fly_refuses_in_its_answer_fails_at_once_with_its_message() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(1).region("ams"));
    fly.refuse_next_starts(1, "machine is in a bad state");
    let t = TestDir::new();
    write_fly_toml(
        &t,
        "app = \"demo\"\nprimary_region = \"ams\"\n[deploy]\nrelease_command = \"bin/migrate\"\n",
    );
    let started = std::time::Instant::now();
    let out = run_rollout(&fly, &t, &image(13), &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_FAILURE), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        err.contains("Fly did not start machine") && err.contains("machine is in a bad state"),
        "{err}"
    );
    let left: Vec<_> = fly
        .machines(APP)
        .into_iter()
        .filter(|m| !ids.contains(&m.id) && m.state != "destroyed")
        .collect();
    assert!(left.is_empty(), "the release machine was left: {left:?}");
    assert!(updated_ids(&fly.requests()).is_empty());
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

#[test]
fn release_command_success_lets_the_rollout_go_on() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(1));
    let t = TestDir::new();
    write_fly_toml(
        &t,
        "app = \"demo\"\n[deploy]\nrelease_command = \"bin/migrate\"\n",
    );
    let new = image(13);
    fly.set_log_output(&new[..40], &["Migrated 3 tables"]);

    // Quiet by default; with -v its log lines show as they come (flyctl --verbose).
    let out = run_rollout(&fly, &t, &new, &[]);
    assert_success(&out);
    assert!(!stderr(&out).contains("Migrated 3 tables"), "{}", stderr(&out));
    let out = run_rollout(&fly, &t, &new, &["-v", "--force"]);
    assert_success(&out);
    assert_eq!(fly.machine(&ids[0]).image(), new);
    let temps: Vec<_> = fly.machines(APP).into_iter().filter(|m| m.id != ids[0]).collect();
    assert_eq!(temps.len(), 2, "one release_command machine per deploy");
    assert!(temps.iter().all(|m| m.state == "destroyed"));
    // Its wait for `stopped` names the version the create answered (flaps once refused it
    // without: flyctl issue 1751; fly-go sent it on every wait, flaps_machines_wait.go).
    for temp in &temps {
        let waits = fly.requests_to("GET", &format!("/machines/{}/wait", temp.id));
        let stopped = waits
            .iter()
            .find(|w| w.query.contains("state=stopped"))
            .expect("a wait for stopped");
        assert!(
            stopped.query.contains(&format!("version={}", temp.version)),
            "{stopped:?}"
        );
    }
    let err = stderr(&out);
    assert!(
        err.contains(&format!("debug: release_command machine {}: ", temps[1].id))
            && err.contains("Migrated 3 tables"),
        "{err}"
    );
    assert_no_violations(&fly);
}

/// Without `[deploy.release_command_vm]`, the release_command machine gets the guest of the
/// default group's largest machine, not that of a bigger worker of another group (flyctl
/// `machines_releasecommand.go`, `inferReleaseCommandGuest`).
#[test]
fn the_release_command_guest_comes_from_the_default_group() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let mut app = MachineSpec::new("app").config();
    app["guest"] = serde_json::json!({"cpu_kind": "shared", "cpus": 1, "memory_mb": 512});
    fly.add_machine_with_config(APP, "iad", "started", app);
    let mut worker = MachineSpec::new("worker").config();
    worker["guest"] = serde_json::json!({"cpu_kind": "performance", "cpus": 2, "memory_mb": 4096});
    fly.add_machine_with_config(APP, "iad", "started", worker);
    let t = TestDir::new();
    write_fly_toml(
        &t,
        "app = \"demo\"\nprimary_region = \"iad\"\n[processes]\napp = \"serve\"\nworker = \"work\"\n\
         [deploy]\nrelease_command = \"bin/migrate\"\n",
    );
    let out = run_rollout(&fly, &t, &image(13), &[]);
    assert_success(&out);
    let temp = fly
        .machines(APP)
        .into_iter()
        .find(|m| m.metadata("fly_process_group") == Some("fly_app_release_command"))
        .expect("release_command machine");
    assert_eq!(
        temp.config["guest"],
        serde_json::json!({"cpu_kind": "shared", "cpus": 1, "memory_mb": 512})
    );
    assert_no_violations(&fly);
}

/// A release_command machine an earlier deploy left behind that cannot be destroyed does not
/// stop this deploy (flyctl only records it, `createOrUpdateReleaseCmdMachine`): a warning
/// names it, the release_command runs, the rollout goes on.
#[test]
fn a_leftover_release_command_machine_that_will_not_go_does_not_stop_the_deploy() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(1));
    let leftover = fly.add_machine_with_config(
        APP,
        "iad",
        "stopped",
        MachineSpec::new("fly_app_release_command").config(),
    );
    fly.inject_fault(
        "DELETE",
        &format!("/machines/{leftover}"),
        1,
        FaultKind::Status {
            status: 412,
            message: "machine is being replaced".into(),
        },
    );
    let t = TestDir::new();
    write_fly_toml(
        &t,
        "app = \"demo\"\n[deploy]\nrelease_command = \"bin/migrate\"\n",
    );
    let new = image(13);
    let out = run_rollout(&fly, &t, &new, &[]);
    assert_success(&out);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "cannot destroy release_command machine {leftover} left by an earlier deploy"
        )),
        "{err}"
    );
    assert_eq!(fly.machine(&ids[0]).image(), new);
    assert!(fly.pending_faults().is_empty());
    assert_no_violations(&fly);
}

#[test]
fn someone_elses_lease_is_waited_for_then_named() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(3));
    let theirs = fly.hold_lease(&ids[1], "alice@example.com", None);
    let t = TestDir::new();

    let started = std::time::Instant::now();
    let out = run_rollout(&fly, &t, &image(14), &["--lease-wait", "2s"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_FAILURE), "{err}");
    assert!(started.elapsed() >= Duration::from_secs(2), "did not wait");
    assert!(
        err.contains(&ids[1]) && err.contains("alice@example.com"),
        "{err}"
    );
    assert!(err.contains("fly machine leases clear"), "{err}");
    assert!(updated_ids(&fly.requests()).is_empty());
    // Ours are released, theirs is untouched.
    assert_eq!(fly.lease(&ids[1]).map(|l| l.nonce), Some(theirs));
    for id in [&ids[0], &ids[2]] {
        assert!(fly.lease(id).is_none(), "lease left on {id}");
    }
    assert_eq!(fly.releases()[0].statuses, ["created", "running", "failed"]);
    assert_no_violations(&fly);
}

/// A lease request answered with success but no lease in it: flyctl's `AcquireLease`
/// (`internal/machine/leasable_machine.go`) takes it for none. nixfly used to keep an empty
/// nonce and update the machine as if it held the lease. The leases of the other machines,
/// asked for at the same time, are all released: none is dropped with its answer unread.
/// A machine updated by someone else after this deploy listed it (here: by the holder of the
/// lease it waited for) has another version when its lease is granted (fly-go
/// `MachineLease.Data.Version`). Updating it, or rolling it back, from the listed config would
/// undo that change: the deploy stops before any change, names the machine and says to run it
/// again. The other client's change stays.
#[test]
fn a_machine_updated_while_its_lease_was_waited_for_stops_the_deploy() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(1));
    fly.hold_lease(&ids[0], "other-deploy@example.com", Some(Duration::from_secs(3)));
    let t = TestDir::new();
    let child = rollout_cmd(&fly, &t, &image(17))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The other deploy updates the machine while this one waits for the lease.
    assert!(fly.wait_until(Duration::from_secs(20), |f| {
        !f.requests_to("POST", "/lease").is_empty()
    }));
    fly.update_elsewhere(&ids[0], "CHANGED_BY", "the other deploy");
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_FAILURE), "{err}");
    assert!(
        err.contains(&format!(
            "machine {} was updated after this deploy read it",
            ids[0]
        )) && err.contains("run the deploy again"),
        "{err}"
    );
    let machine = fly.machine(&ids[0]);
    assert_eq!(machine.config["env"]["CHANGED_BY"], "the other deploy");
    assert_ne!(machine.image(), image(17));
    assert!(updated_ids(&fly.requests()).is_empty());
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

#[test]
fn a_lease_answer_without_a_lease_changes_nothing() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(3));
    fly.inject_fault(
        "POST",
        &format!("/machines/{}/lease", ids[0]),
        1,
        FaultKind::Status {
            status: 201,
            message: "granted, or was it".into(),
        },
    );
    // The others' leases are taken while that answer is read, and their answers come later.
    for id in &ids[1..] {
        fly.inject_fault(
            "POST",
            &format!("/machines/{id}/lease"),
            1,
            FaultKind::SlowAnswer { millis: 300 },
        );
    }
    let t = TestDir::new();
    let out = run_rollout(&fly, &t, &image(15), &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_FAILURE), "{err}");
    assert!(err.contains(&ids[0]) && err.contains("grants no lease"), "{err}");
    assert!(updated_ids(&fly.requests()).is_empty());
    assert!(
        fly.requests()
            .iter()
            .all(|r| r.lease_nonce.as_deref() != Some("")),
        "a request went out with an empty lease nonce"
    );
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

#[test]
fn too_many_requests_and_unavailable_are_retried() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(2).checks(1));
    fly.inject_fault(
        "GET",
        "/machines",
        1,
        FaultKind::TooManyRequests { retry_after_secs: 1 },
    );
    // Lease and update requests of the first machine: any request is retried on 429.
    fly.inject_fault(
        "POST",
        &format!("/machines/{}", ids[0]),
        3,
        FaultKind::TooManyRequests { retry_after_secs: 0 },
    );
    // Only requests that are safe to repeat are retried on 5xx.
    fly.inject_fault("GET", "/wait", 2, FaultKind::Unavailable);
    fly.inject_fault("PATCH", "/api/v1/releases/", 1, FaultKind::Unavailable);
    let t = TestDir::new();
    let new = image(15);

    let out = run_rollout(&fly, &t, &new, &[]);
    assert_success(&out);
    assert!(fly.pending_faults().is_empty(), "{:?}", fly.pending_faults());
    for id in &ids {
        assert_eq!(fly.machine(id).image(), new);
    }
    let err = stderr(&out);
    assert!(err.contains("429") && err.contains("503"), "{err}");
    assert_eq!(fly.releases()[0].statuses, ["created", "running", "complete"]);
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

#[test]
fn api_errors_show_the_error_body() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    fly.add_machines(APP, &MachineSpec::new("app").count(1));
    fly.inject_fault(
        "POST",
        "/api/v1/releases",
        1,
        FaultKind::Status {
            status: 422,
            message: "app is suspended".into(),
        },
    );
    let t = TestDir::new();
    let out = run_rollout(&fly, &t, &image(16), &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_FAILURE), "{err}");
    assert!(
        err.contains("app is suspended") && err.contains("--skip-release"),
        "{err}"
    );
    assert!(updated_ids(&fly.requests()).is_empty());
    assert_no_violations(&fly);
}

/// A Fly API double whose health checks take 2 minutes of Fly time (6 s here) to pass.
fn slow_checks() -> FlyApi {
    FlyApi::with_options(Options {
        timing: Timing {
            checks: Duration::from_secs(120),
            ..Timing::default()
        },
        ..Options::default()
    })
}

/// A rollout of 3 machines whose checks take 2 minutes of Fly time (6 s here), started and
/// caught mid-way: one machine updated, the rest waiting. Returns the double, the machine ids,
/// the running nixfly (stdout and stderr piped) and its temp dir.
fn rollout_caught_mid_way(image_number: u8) -> (FlyApi, Vec<String>, std::process::Child, TestDir) {
    let fly = slow_checks();
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(3).checks(1));
    let t = TestDir::new();
    let mut child = rollout_cmd(&fly, &t, &image(image_number))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start nixfly");
    let first_updated = fly.wait_until(Duration::from_secs(20), |fly| {
        !updated_ids(&fly.requests()).is_empty()
    });
    if !first_updated {
        let _ = child.kill();
    }
    assert!(first_updated, "the rollout never updated a machine");
    (fly, ids, child, t)
}

#[test]
fn sigterm_mid_rollout_releases_leases_and_marks_the_release_interrupted() {
    let (fly, ids, child, _t) = rollout_caught_mid_way(17);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let out = child.wait_with_output().expect("wait for nixfly");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_INTERRUPTED), "{err}");
    assert!(err.contains("SIGTERM") && err.contains(&ids[0]), "{err}");
    assert_eq!(fly.releases()[0].statuses, ["created", "running", "interrupted"]);
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// A signal while a canary or the greens wait for their health checks: the machines created
/// only for the deploy are destroyed before nixfly exits (flyctl destroys its greens on Ctrl-C
/// too, `strategy_bluegreen.go` `canDeleteGreenMachines`), the message names them, and the
/// machines the app had are untouched. They were left running before, and the message said
/// that no machine had been changed.
#[test]
fn a_signal_destroys_the_canary_or_greens_the_deploy_created() {
    for (strategy, what, number) in [("canary", "canary", 20), ("bluegreen", "green", 21)] {
        let fly = slow_checks();
        fly.add_app(APP);
        let ids = fly.add_machines(APP, &MachineSpec::new("app").count(2).checks(1).services(true));
        let t = TestDir::new();
        let mut cmd = rollout_cmd(&fly, &t, &image(number));
        let out = interrupted_once(&fly, cmd.args(["--strategy", strategy]), strategy, |fly| {
            fly.machines(APP)
                .iter()
                .any(|m| !ids.contains(&m.id) && m.state == "started")
        });
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(EXIT_INTERRUPTED), "{strategy}: {err}");
        let extra: Vec<_> = fly
            .machines(APP)
            .into_iter()
            .filter(|m| !ids.contains(&m.id))
            .collect();
        assert!(!extra.is_empty());
        for machine in &extra {
            assert_eq!(
                machine.state, "destroyed",
                "{strategy}: {} left behind\n{err}",
                machine.id
            );
            assert!(
                err.contains(&format!("{what} {}", machine.id)),
                "{strategy}: the message does not name {}:\n{err}",
                machine.id
            );
        }
        assert!(
            err.contains("destroyed the machines it had created for the deploy"),
            "{err}"
        );
        for id in &ids {
            let machine = fly.machine(id);
            assert_eq!(machine.state, "started", "{strategy}: {id}");
            assert!(!machine.cordoned, "{strategy}: {id} cordoned");
        }
        assert_eq!(fly.releases()[0].statuses, ["created", "running", "interrupted"]);
        assert_no_leases(&fly);
        assert_no_violations(&fly);
    }
}

/// A signal while a replacement's create is on its way (Fly made the machine, its answer is
/// late): the answer is still read before nixfly exits, so the replacement is known. It keeps
/// the new image, as every machine already updated does, and the message names it instead of
/// calling the machine it replaced "not replaced yet". The create was dropped unread before,
/// leaving a machine nixfly never named.
#[test]
fn a_signal_during_a_replacements_create_still_reads_its_answer() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(1));
    fly.refuse_updates(&ids[0], NO_ROOM);
    fly.inject_fault(
        "POST",
        &format!("/v1/apps/{APP}/machines$"),
        1,
        FaultKind::SlowAnswer { millis: 3000 },
    );
    let t = TestDir::new();
    let new = image(22);
    let mut cmd = rollout_cmd(&fly, &t, &new);
    let out = interrupted_once(&fly, &mut cmd, "replacement", |fly| {
        fly.machines(APP).iter().any(|m| !ids.contains(&m.id))
    });
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_INTERRUPTED), "{err}");
    let created: Vec<_> = fly
        .machines(APP)
        .into_iter()
        .filter(|m| !ids.contains(&m.id))
        .collect();
    assert_eq!(created.len(), 1, "{err}");
    let replacement = &created[0];
    assert_ne!(replacement.state, "destroyed", "{err}");
    assert_eq!(replacement.image(), new);
    assert_eq!(fly.machine(&ids[0]).state, "destroyed");
    assert!(
        err.contains(&format!("machine {} (it replaces {})", replacement.id, ids[0])),
        "{err}"
    );
    assert!(!err.contains("not replaced yet"), "{err}");
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// A signal while a new process group's first machine waits to start: the machine is named
/// with those that keep the new image. It was recorded only once healthy before, so the
/// message left it out.
#[test]
fn a_signal_while_a_new_groups_machine_starts_names_it() {
    let fly = slow_to_start();
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(1));
    let t = TestDir::new();
    write_fly_toml(
        &t,
        "app = \"demo\"\nprimary_region = \"iad\"\n[processes]\napp = \"serve\"\nworker = \"work\"\n",
    );
    let mut cmd = rollout_cmd(&fly, &t, &image(24));
    let out = interrupted_once(&fly, &mut cmd, "new group", |fly| {
        fly.machines(APP).iter().any(|m| !ids.contains(&m.id))
    });
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_INTERRUPTED), "{err}");
    let worker = fly
        .machines(APP)
        .into_iter()
        .find(|m| m.process_group() == "worker")
        .expect("the new group's machine");
    let kept = err
        .lines()
        .find(|l| l.contains("keep it:"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(kept.contains(&worker.id), "{err}");
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// Groups roll side by side, and the first failure stops the others: here the worker's
/// replacement create is on its way (Fly made the machine, the answer is late) when the app
/// group's machine fails its checks. The create is read to its answer, and its machine
/// destroyed before the rollback creates the replaced worker again with its old image: one
/// worker, not two. Before, the dropped create left a worker on the new image nobody knew of.
#[test]
fn a_failure_in_one_group_while_another_creates_leaves_no_machine_behind() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let apps = fly.add_machines(APP, &MachineSpec::new("app").count(1).checks(1));
    let workers = fly.add_machines(APP, &MachineSpec::new("worker").count(1));
    let old = fly.machine(&workers[0]).image().to_string();
    fly.refuse_updates(&workers[0], NO_ROOM);
    fly.inject_fault(
        "POST",
        &format!("/v1/apps/{APP}/machines$"),
        1,
        FaultKind::SlowAnswer { millis: 4000 },
    );
    let new = image(23);
    fly.set_behavior(digest_hex(&new), Behavior::ChecksFail);
    let t = TestDir::new();
    let out = run_rollout(&fly, &t, &new, &["--wait-timeout", "2s"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_ROLLED_BACK), "{err}");
    assert!(err.contains("health checks"), "{err}");
    let live_workers: Vec<_> = fly
        .machines(APP)
        .into_iter()
        .filter(|m| m.process_group() == "worker" && m.state != "destroyed")
        .collect();
    assert_eq!(live_workers.len(), 1, "{err}");
    assert_eq!(live_workers[0].image(), old, "{err}");
    assert_ne!(live_workers[0].id, workers[0]);
    assert!(
        err.contains("created by a request answered after the deploy had stopped waiting for it"),
        "{err}"
    );
    assert_eq!(fly.machine(&apps[0]).image(), old);
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// A double whose machines take 120 s to start: a signal lands while the deploy waits.
fn slow_to_start() -> FlyApi {
    FlyApi::with_options(Options {
        timing: Timing {
            start: Duration::from_secs(120),
            ..Timing::default()
        },
        ..Options::default()
    })
}

/// Run `cmd` (a rollout against `fly`), and once `ready` holds of the double, send it SIGINT
/// and wait for it to end.
fn interrupted_once(
    fly: &FlyApi,
    cmd: &mut std::process::Command,
    what: &str,
    ready: impl FnMut(&FlyApi) -> bool,
) -> std::process::Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start nixfly");
    if !fly.wait_until(Duration::from_secs(20), ready) {
        let _ = child.kill();
        panic!("{what}: the rollout never got there");
    }
    support::send_signal(child.id(), "INT");
    child.wait_with_output().expect("wait for nixfly")
}

/// A signal while the release_command machine waits for its image (created with skip_launch,
/// not started yet): it is destroyed and named, instead of staying stopped until the next
/// deploy; no app machine was touched.
#[test]
fn a_signal_before_the_release_command_starts_destroys_its_machine() {
    let fly = slow_to_start();
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(1));
    let t = TestDir::new();
    write_fly_toml(
        &t,
        "app = \"demo\"\n[deploy]\nrelease_command = \"bin/migrate\"\n",
    );
    let release_machine = |fly: &FlyApi| {
        fly.machines(APP)
            .into_iter()
            .find(|m| m.metadata("fly_process_group") == Some("fly_app_release_command"))
    };
    let out = interrupted_once(
        &fly,
        &mut rollout_cmd(&fly, &t, &image(22)),
        "release_command",
        |fly| release_machine(fly).is_some(),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_INTERRUPTED), "{err}");
    let machine = release_machine(&fly).unwrap();
    assert_eq!(machine.state, "destroyed", "{err}");
    assert!(
        err.contains(&format!("release_command machine {}", machine.id))
            && err.contains("no machine had been changed"),
        "{err}"
    );
    assert_eq!(fly.machine(&ids[0]).state, "started");
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// Issue 13 point 7: interrupted while the Fly API is down, the final message says which
/// leases were not released and that the release was not marked, instead of claiming both;
/// a second signal during the cleanup says it is still cleaning up.
#[test]
fn issue_13_interrupted_with_the_api_down_says_what_was_not_cleaned_up() {
    let (fly, _, child, _t) = rollout_caught_mid_way(19);
    // The API goes down: every lease release and release update answers 503 from now on.
    fly.inject_fault("DELETE", "/lease", 1000, FaultKind::Unavailable);
    fly.inject_fault("PATCH", "/api/v1/releases/", 1000, FaultKind::Unavailable);
    let kill = |signal: &str| {
        let status = std::process::Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    };
    kill("-TERM");
    std::thread::sleep(Duration::from_millis(500));
    kill("-INT");
    let out = child.wait_with_output().expect("wait for nixfly");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_INTERRUPTED), "{err}");
    assert!(err.contains("SIGINT: still cleaning up"), "{err}");
    let last = err
        .lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert!(
        last.contains("interrupted by SIGTERM")
            && last.contains("could not be released")
            && last.contains("could not be marked interrupted"),
        "{err}"
    );
    assert!(
        !last.contains("leases released") && !last.contains("marked interrupted;"),
        "{last}"
    );
    assert_eq!(fly.releases()[0].statuses, ["created", "running"]);
}

#[test]
fn missing_token_says_where_tokens_are_looked_for() {
    let fly = FlyApi::start();
    let t = TestDir::new();
    let mut cmd = rollout_cmd(&fly, &t, &image(18));
    cmd.env_remove("FLY_API_TOKEN");
    let out = support::run(&mut cmd);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_FAILURE), "{err}");
    assert!(
        err.contains("fly tokens create deploy") && err.contains("FLY_API_TOKEN"),
        "{err}"
    );
    assert!(fly.requests().is_empty());
}

#[test]
fn rejected_token_names_its_source_and_is_never_printed() {
    let fly = FlyApi::start();
    let t = TestDir::new();
    let mut cmd = rollout_cmd(&fly, &t, &image(19));
    cmd.env("FLY_API_TOKEN", "FlyV1 fm2_this_token_is_wrong_and_secret");
    let out = support::run(cmd.arg("-v"));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_FAILURE), "{err}");
    assert!(err.contains("FLY_API_TOKEN") && err.contains("401"), "{err}");
    assert!(!err.contains("fm2_this_token"), "{err}");
}

/// A token that may not read the app's logs (a deploy token): the failure says so and where
/// to look, as flyctl's `waitForLogs` does; without the platform API there are no logs to read.
#[test]
fn a_release_command_failure_without_logs_says_where_to_find_them() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    fly.add_machines(APP, &MachineSpec::new("app").region("ams"));
    fly.set_release_command_exit_code(2);
    fly.refuse_logs();
    let t = TestDir::new();
    write_fly_toml(
        &t,
        "app = \"demo\"\nprimary_region = \"ams\"\n[deploy]\nrelease_command = \"bin/migrate\"\n",
    );
    let out = run_rollout(&fly, &t, &image(13), &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_FAILURE), "{err}");
    let machine = fly
        .machines(APP)
        .into_iter()
        .find(|m| m.process_group() == "fly_app_release_command")
        .unwrap()
        .id;
    assert!(
        err.contains("exited with code 2")
            && err.contains("this token may not read the app's logs")
            && err.contains(&format!("`fly logs -i {machine}`")),
        "{err}"
    );
    assert_no_violations(&fly);

    let out = run_rollout(&fly, &t, &image(14), &["--skip-release"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_FAILURE), "{err}");
    assert!(
        err.contains("exited with code 2") && err.contains("its logs: `fly logs -i"),
        "{err}"
    );
    assert_no_violations(&fly);
}

/// `nixfly rollout --app APP` of image 1, plain output: what it did and its stderr.
fn rollout_to(fly: &FlyApi, app: &str) -> (std::process::Output, String) {
    let t = TestDir::new();
    let mut cmd = t.nixfly();
    fly.configure(&mut cmd);
    cmd.args(["rollout", "--app", app, "--image", &image(1), "--output", "plain"]);
    let out = support::run(&mut cmd);
    let err = stderr(&out);
    (out, err)
}

/// A wrong app name is said as such, before anything else is read or written, as `nixfly
/// deploy` says it: not as a release config that cannot be read followed by a bare 404.
#[test]
fn a_rollout_to_an_app_that_does_not_exist_says_so_first() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let (out, err) = rollout_to(&fly, "nope");
    assert_eq!(out.status.code(), Some(EXIT_FAILURE));
    assert!(
        err.contains("Fly app nope does not exist: check --app")
            && err.contains("fly apps create nope")
            && !err.contains("warning"),
        "{err}"
    );
    assert_eq!(fly.requests().len(), 1, "{:#?}", fly.requests());
    assert_no_violations(&fly);
}

/// fly-go `flaps/flaps_apps_test.go`, `TestAppNameAvailable`: flaps answers 404 only when no
/// app has the name; an app in an organization the token cannot see into is 403 `{"error":
/// "unauthorized"}`. nixfly said of a 404 that the token might not see the app, and of a 403
/// only that the token was bad; a 403 now says the name is taken, maybe by someone else.
#[test]
fn a_rollout_to_an_app_of_another_organization_says_the_name_is_taken() {
    let fly = FlyApi::start();
    fly.add_app("taken-app");
    fly.inject_fault(
        "GET",
        "/v1/apps/taken-app$",
        1,
        FaultKind::Status {
            status: 403,
            message: "unauthorized".into(),
        },
    );
    let (out, err) = rollout_to(&fly, "taken-app");
    assert_eq!(out.status.code(), Some(EXIT_FAILURE));
    assert!(
        err.contains("Fly app taken-app exists, but this token may not use it")
            && err.contains("another organization's app")
            && !err.contains("does not exist"),
        "{err}"
    );
    assert_eq!(fly.requests().len(), 1, "{:#?}", fly.requests());
    assert_no_violations(&fly);
}

/// The rollback is paced as the deploy was: with `max_unavailable` 1, the machines that took
/// the new image are put back one at a time, each waited for before the next goes down (the
/// failed one first). They were all restarted at once, taking the whole group down.
#[test]
fn the_rollback_keeps_max_unavailable() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(4).checks(1));
    let t = TestDir::new();
    let new = image(31);
    fly.set_machine_behavior(&ids[3], digest_hex(&new), Behavior::ChecksFail);
    let out = run_rollout(
        &fly,
        &t,
        &new,
        &["--max-unavailable", "1", "--wait-timeout", "3s"],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_ROLLED_BACK), "{err}");
    assert!(err.contains("rolled back 4 machine(s)"), "{err}");
    let requests = fly.requests();
    let old = MachineSpec::new("app").config()["image"].clone();
    // The rollback's updates (back to the old image), in order, and each machine's waits.
    let rollback: Vec<(usize, String)> = requests
        .iter()
        .enumerate()
        .filter(|(_, r)| r.method == "POST" && r.body.as_ref().is_some_and(|b| b["config"]["image"] == old))
        .filter_map(|(i, r)| {
            let id = r.path.strip_prefix(&format!("/v1/apps/{APP}/machines/"))?;
            (!id.contains('/')).then(|| (i, id.to_string()))
        })
        .collect();
    assert_eq!(rollback.len(), 4, "{rollback:?}");
    assert_eq!(rollback[0].1, ids[3], "the failed machine goes first");
    for pair in rollback.windows(2) {
        let (from, to) = (pair[0].0, pair[1].0);
        let waited = requests[from..to]
            .iter()
            .any(|r| r.method == "GET" && r.path.ends_with(&format!("/machines/{}/wait", pair[0].1)));
        assert!(
            waited,
            "machine {} was put back before {} was waited for",
            pair[1].1, pair[0].1
        );
    }
    for id in &ids {
        assert_eq!(fly.machine(id).image(), old.as_str().unwrap(), "{id}");
    }
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}
