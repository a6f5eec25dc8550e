//! Deploy behaviour checked against what flyctl's own unit tests say flyctl does
//! (`internal/command/deploy/*_test.go`, superfly/flyctl), against the Fly API double. Each
//! test names the flyctl test whose expectation it carries over; the unit-level cases are in
//! `src/rollout/launch_input_tests.rs`, `src/rollout/listen.rs` (`warn_listen_address_test.go`),
//! `src/rollout/health.rs` (`internal/machine/leasable_machine_test.go`) and `src/fly/api.rs`
//! (`internal/flapsutil/retry_test.go`, `machines_releasestatus_test.go`).

use crate::support;

use support::fly_api::{FaultKind, FlyApi, MachineSpec};
use support::rollout::{
    APP, BLUEGREEN, assert_no_changes, assert_no_leases, assert_no_violations, create_bodies, image,
    live_machines, run_rollout, stderr, updated_ids, write_fly_toml,
};
use support::{TestDir, assert_success};

/// flyctl `machines_launchinput_test.go`, `testLaunchInputForBasic`, and `machines_test.go`,
/// `Test_resolveUpdatedMachineConfig_restartOnlyProcessGroup`: an app that is not a postgres
/// cluster loses `fly-managed-postgres` on its machines; metadata the user added stays.
#[test]
fn managed_postgres_metadata_goes_and_user_metadata_stays() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let mut config = MachineSpec::new("app").config();
    config["metadata"]["fly-managed-postgres"] = "true".into();
    config["metadata"]["user-added-me"] = "keep it".into();
    let id = fly.add_machine_with_config(APP, "ams", "started", config);
    let t = TestDir::new();
    let out = run_rollout(&fly, &t, &image(3), &[]);
    assert_success(&out);
    let metadata = &fly.machine(&id).config["metadata"];
    assert!(metadata.get("fly-managed-postgres").is_none(), "{metadata}");
    assert_eq!(metadata["user-added-me"], "keep it");
    assert_eq!(metadata["fly_process_group"], "app");
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// flyctl `machines_launchinput_test.go`, `testLaunchInputForUpdateHostStatusUnreachable`, and
/// the rule under it in `launchInputForUpdate`: only a machine that keeps its volume is stuck
/// on an unreachable host. One whose `[[mounts]]` fly.toml dropped is replaced, in its region,
/// by a machine without a volume (once the detach is confirmed, as flyctl asks).
#[test]
fn an_unreachable_machine_whose_mounts_are_gone_is_replaced_without_its_volume() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let volume = fly.add_volume(APP, "data", "ord", 1);
    let mut config = MachineSpec::new("app").region("ord").config();
    config["mounts"] = serde_json::json!([{"volume": volume, "path": "/data", "name": "data"}]);
    let id = fly.add_machine_with_config(APP, "ord", "started", config);
    fly.set_host_status(&id, "unreachable");
    let t = TestDir::new();
    write_fly_toml(&t, "app = \"demo\"\nprimary_region = \"scl\"\n");
    let new = image(4);
    let out = run_rollout(&fly, &t, &new, &["--detach-volumes"]);
    assert_success(&out);
    assert_eq!(fly.machine(&id).state, "destroyed");
    let live = live_machines(&fly);
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].region, "ord");
    assert_eq!(live[0].image(), new);
    assert!(live[0].config.get("mounts").is_none(), "{}", live[0].config);
    assert!(fly.volumes(APP).iter().any(|v| v.id == volume));
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// flyctl `strategy_bluegreen_test.go`, `TestDeploy`, "non-ok blue machine is skipped and
/// force-destroyed": a blue on a host that is not `ok` does not hold the deploy up; it is
/// neither leased, cordoned, stopped nor waited for, and is destroyed with force and no lease
/// nonce (flyctl `strategy_bluegreen.go`, `DestroyBlueMachines`; `internal/machine/lease.go`
/// leases no machine on such a host).
#[test]
fn bluegreen_force_destroys_a_blue_on_an_unreachable_host() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let blues = fly.add_machines(APP, &MachineSpec::new("app").count(2).checks(1));
    fly.set_host_status(&blues[1], "unreachable");
    let t = TestDir::new();
    let new = image(5);
    let out = run_rollout(&fly, &t, &new, &BLUEGREEN);
    assert_success(&out);
    for id in &blues {
        assert_eq!(fly.machine(id).state, "destroyed", "{id}");
    }
    let greens = live_machines(&fly);
    assert_eq!(greens.len(), 2, "{greens:?}");
    assert!(greens.iter().all(|g| g.image() == new), "{greens:?}");
    let touched: Vec<String> = fly
        .requests_to("POST", &format!("/machines/{}/", blues[1]))
        .into_iter()
        .map(|r| r.path)
        .collect();
    for action in ["/lease", "/cordon", "/stop"] {
        assert!(
            !touched.iter().any(|p| p.ends_with(action)),
            "{action}: {touched:?}"
        );
    }
    assert!(
        fly.requests_to("GET", &format!("/machines/{}/wait", blues[1]))
            .is_empty()
    );
    let destroys = fly.requests_to("DELETE", &format!("/machines/{}", blues[1]));
    assert!(!destroys.is_empty());
    for destroy in &destroys {
        // fly-go's `Destroy` sends `kill` (`flaps/flaps_machines.go`); the spec names `force`.
        assert!(destroy.query.contains("kill=true"), "{destroy:?}");
        assert!(destroy.query.contains("force=true"), "{destroy:?}");
        assert_eq!(destroy.lease_nonce, None, "{destroy:?}");
    }
    // The blue on an ok host goes the usual way.
    for action in ["/cordon", "/stop"] {
        assert!(
            fly.requests_to("POST", &format!("/machines/{}{action}", blues[0]))
                .iter()
                .any(|r| r.status < 300),
            "{action}"
        );
    }
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// flyctl `machines_test.go`, `Test_resolveUpdatedMachineConfig_Basic` and
/// `Test_resolveUpdatedMachineConfig_Mounts`: without `primary_region` a new machine is
/// created with no region (Fly places it; with a volume, where the volume is), `[env]`'s
/// `PRIMARY_REGION` as it is, and an unattached volume of fly.toml's name from any region.
#[test]
fn without_primary_region_new_machines_name_no_region() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    fly.add_machines(APP, &MachineSpec::new("app").count(1).region("ams"));
    let volume = fly.add_volume(APP, "data", "syd", 1);
    let t = TestDir::new();
    write_fly_toml(
        &t,
        "app = \"demo\"\n[env]\nPRIMARY_REGION = \"scl\"\n\
         [processes]\napp = \"serve\"\ndb = \"db\"\n\
         [[mounts]]\nsource = \"data\"\ndestination = \"/data\"\nprocesses = [\"db\"]\n",
    );
    let new = image(6);
    let out = run_rollout(&fly, &t, &new, &[]);
    assert_success(&out);
    let creates = create_bodies(&fly);
    assert_eq!(creates.len(), 1, "{creates:#?}");
    assert!(creates[0].get("region").is_none(), "{:#}", creates[0]);
    assert_eq!(creates[0]["config"]["mounts"][0]["volume"], volume);
    assert_eq!(creates[0]["config"]["env"]["PRIMARY_REGION"], "scl");
    let db: Vec<_> = fly
        .machines(APP)
        .into_iter()
        .filter(|m| m.process_group() == "db")
        .collect();
    assert_eq!(db.len(), 1);
    assert_eq!((db[0].region.as_str(), db[0].image()), ("syd", new.as_str()));
    assert_no_leases(&fly);
    assert_no_violations(&fly);

    // On a first deploy the volume would have to be made, and nixfly does not create one
    // without a region (on purpose: flyctl would send the create with none): it stops first.
    let fly = FlyApi::start();
    fly.set_app_status(APP, "pending");
    let out = run_rollout(&fly, &t, &new, &[]);
    assert!(!out.status.success());
    let err = support::rollout::stderr(&out);
    assert!(err.contains("set primary_region"), "{err}");
    assert_no_changes(&fly);
}

/// flyctl `strategy_bluegreen_test.go`, `TestBlueGreenAbortsWhenGreenChecksFailAfterConfigChange`
/// and `TestDeployWithStoppedBlueMachinesEnforcesHealthChecks`: every blue is stopped, and
/// still the new config is put to its checks (one green is started); when they fail the
/// deploy fails, and the blues are left as they were. With passing checks it succeeds.
#[test]
fn bluegreen_with_stopped_blues_still_checks_the_new_config() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let blues = fly.add_machines(APP, &MachineSpec::new("app").count(2).checks(1).state("stopped"));
    let t = TestDir::new();
    let bad = image(7);
    fly.set_behavior(&bad[..30], support::fly_api::Behavior::ChecksFail);
    let args = [&BLUEGREEN[..], &["--wait-timeout", "3s"]].concat();
    let out = run_rollout(&fly, &t, &bad, &args);
    assert!(!out.status.success(), "{}", support::rollout::stderr(&out));
    for id in &blues {
        let blue = fly.machine(id);
        assert_eq!(
            (blue.state.as_str(), blue.config_history.len()),
            ("stopped", 1),
            "{id}"
        );
    }
    let others: Vec<_> = fly
        .machines(APP)
        .into_iter()
        .filter(|m| !blues.contains(&m.id))
        .collect();
    assert!(!others.is_empty());
    assert!(others.iter().all(|m| m.state == "destroyed"), "{others:?}");

    let good = image(8);
    let out = run_rollout(&fly, &t, &good, &args);
    assert_success(&out);
    let greens = live_machines(&fly);
    // One started, the other mirrors its stopped blue (created with skip_launch: never
    // started).
    let started = greens.iter().filter(|m| m.state == "started").count();
    assert_eq!((greens.len(), started), (2, 1), "{greens:?}");
    assert!(greens.iter().all(|m| m.image() == good));
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// flyctl `strategy_bluegreen_test.go`, `TestDeploy`, "failed to launch machines": a green
/// that cannot be created fails the deploy; the greens made are destroyed and the blues keep
/// serving, untouched.
#[test]
fn bluegreen_fails_when_a_green_cannot_be_created() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let blues = fly.add_machines(APP, &MachineSpec::new("app").count(3).checks(1));
    fly.refuse_next_creates(1);
    let t = TestDir::new();
    let out = run_rollout(&fly, &t, &image(9), &BLUEGREEN);
    let err = support::rollout::stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("(insufficient_capacity): try again later"), "{err}");
    for id in &blues {
        let blue = fly.machine(id);
        assert_eq!(
            (blue.state.as_str(), blue.config_history.len()),
            ("started", 1),
            "{id}"
        );
        assert!(!blue.cordoned);
    }
    assert!(
        fly.machines(APP)
            .iter()
            .filter(|m| !blues.contains(&m.id))
            .all(|m| m.state == "destroyed")
    );
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// flyctl `strategy_bluegreen_test.go`, `TestDeployContinuesWhenCheckpointFails` and
/// `TestTagBlueMachinesAsSafeForDeletion` ("returns nil when retries are exhausted"): once the
/// greens serve, a `safe_to_destroy` tag that cannot be written does not stop the deploy;
/// every blue is still destroyed (else old and new would serve side by side).
#[test]
fn bluegreen_destroys_the_blues_even_when_they_cannot_be_tagged() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let blues = fly.add_machines(APP, &MachineSpec::new("app").count(2).checks(1));
    fly.inject_fault(
        "POST",
        "/metadata/fly_bluegreen_deployment_tag",
        1000,
        support::fly_api::FaultKind::Status {
            status: 400,
            message: "cannot write metadata".into(),
        },
    );
    let t = TestDir::new();
    let out = run_rollout(&fly, &t, &image(10), &BLUEGREEN);
    assert_success(&out);
    assert!(
        support::rollout::stderr(&out).contains("cannot write metadata"),
        "{}",
        support::rollout::stderr(&out)
    );
    for id in &blues {
        assert_eq!(fly.machine(id).state, "destroyed", "{id}");
    }
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// flyctl `machines_test.go`, `TestSetMachinesForDeploymentRejectsDetachedProcessGroupMachinesForBluegreen`
/// and `TestSetMachinesForDeploymentAllowsDetachedProcessGroupMachinesForBluegreenWithManagedMachines`:
/// bluegreen refuses an app whose only machines are outside Fly Launch but in fly.toml's
/// groups (the error names the machine and `fly_platform_version`); with a Fly Launch machine
/// beside it, the deploy goes on and leaves the other machine alone.
#[test]
fn bluegreen_and_machines_outside_fly_launch() {
    let toml = "app = \"demo\"\nprimary_region = \"iad\"\n[http_service]\ninternal_port = 8080\n\
                processes = [\"app\"]\n[checks.alive]\ntype = \"tcp\"\nport = 8080\n";
    let args = BLUEGREEN;
    let fly = FlyApi::start();
    fly.add_app(APP);
    let detached = fly.add_machine_with_config(
        APP,
        "iad",
        "started",
        serde_json::json!({"image": image(1), "metadata": {"fly_process_group": "app"}}),
    );
    let t = TestDir::new();
    write_fly_toml(&t, toml);
    let out = run_rollout(&fly, &t, &image(2), &args);
    let err = support::rollout::stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&detached) && err.contains("fly_platform_version"),
        "{err}"
    );
    assert_no_changes(&fly);

    let managed = fly.add_machines(APP, &MachineSpec::new("app").count(1).checks(1));
    let out = run_rollout(&fly, &t, &image(2), &args);
    assert_success(&out);
    assert_eq!(fly.machine(&managed[0]).state, "destroyed");
    let untouched = fly.machine(&detached);
    assert_eq!(
        (untouched.state.as_str(), untouched.image()),
        ("started", image(1).as_str())
    );
    assert_eq!(untouched.config_history.len(), 1);
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// flyctl `machines_deploymachinesapp_test.go`, `TestDeployMachinesApp`: a canary deploy of an
/// app whose four machines in group `app` have neither checks nor services succeeds: every
/// machine runs the new image, the canary is gone, the release is complete.
#[test]
fn a_canary_deploy_of_machines_without_checks_succeeds() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(4));
    let t = TestDir::new();
    let new = image(7);
    let out = run_rollout(&fly, &t, &new, &["--strategy", "canary"]);
    assert_success(&out);
    for id in &ids {
        assert_eq!(fly.machine(id).image(), new);
        assert_eq!(fly.machine(id).state, "started");
    }
    let extra: Vec<_> = fly
        .machines(APP)
        .into_iter()
        .filter(|m| !ids.contains(&m.id))
        .collect();
    assert_eq!(extra.len(), 1, "one canary: {extra:#?}");
    assert_eq!(extra[0].state, "destroyed");
    assert_eq!(fly.releases()[0].statuses, ["created", "running", "complete"]);
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// flyctl `machines_deploymachinesapp_test.go`, `TestUpdateExistingMachinesWRecovery`: an
/// update of a machine the API no longer knows is an error, not a silent skip. Here the
/// second machine vanishes between its lease and its update: the deploy fails naming it, the
/// machine already updated is put back, and the release is marked failed (flyctl would leave
/// the first machine on the new image: nixfly rolls back).
#[test]
fn a_machine_gone_before_its_update_fails_the_deploy() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let mut ids = fly.add_machines(APP, &MachineSpec::new("app").count(3));
    // The rolling order: the first alone, then the rest.
    ids.sort();
    let old = fly.machine(&ids[0]).image().to_string();
    fly.inject_fault(
        "POST",
        &format!("/machines/{}$", ids[1]),
        1,
        FaultKind::Status {
            status: 404,
            message: "machine not found".into(),
        },
    );
    let t = TestDir::new();
    let out = run_rollout(&fly, &t, &image(8), &[]);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&ids[1]) && err.contains("machine not found"),
        "{err}"
    );
    for id in &ids {
        assert_eq!(fly.machine(id).image(), old, "machine {id}");
    }
    let updates = updated_ids(&fly.requests());
    let first = updates.iter().filter(|id| **id == ids[0]).count();
    assert_eq!(first, 2, "the first machine updated, then put back: {updates:?}");
    assert_eq!(fly.releases()[0].status(), "failed");
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}
