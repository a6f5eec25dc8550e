//! Immediate, canary and bluegreen deploys against the Fly API double.

use crate::support;

use support::fly_api::{FlyApi, MachineSpec};
use support::rollout::{
    APP, assert_no_leases, assert_no_violations, image, run_rollout, stderr, updated_ids,
};
use support::{TestDir, assert_success};

#[test]
fn immediate_updates_every_machine_without_waiting() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(4).checks(1));
    let t = TestDir::new();
    let new = image(5);

    let out = run_rollout(&fly, &t, &new, &["--strategy", "immediate"]);
    assert_success(&out);

    let requests = fly.requests();
    let mut updates = updated_ids(&requests);
    updates.sort();
    assert_eq!(updates, ids);
    assert!(
        !requests.iter().any(|r| r.path.ends_with("/wait")),
        "immediate waited for a machine"
    );
    for id in &ids {
        assert_eq!(fly.machine(id).image(), new);
    }
    assert_eq!(fly.releases()[0].strategy, "IMMEDIATE");
    assert_eq!(fly.releases()[0].statuses, ["created", "running", "complete"]);
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

#[test]
fn canary_machine_is_checked_and_destroyed_before_the_group_rolls() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(3).checks(1).services(true));
    let t = TestDir::new();
    let new = image(6);

    let out = run_rollout(&fly, &t, &new, &["--strategy", "canary"]);
    assert_success(&out);

    let all = fly.machines(APP);
    let canaries: Vec<_> = all.iter().filter(|m| !ids.contains(&m.id)).collect();
    assert_eq!(canaries.len(), 1, "{all:#?}");
    let canary = canaries[0];
    assert_eq!(canary.metadata("fly_canary"), Some("true"));
    assert_eq!(canary.config["dns"]["skip_registration"], true);
    assert_eq!(canary.image(), new);
    assert_eq!(canary.state, "destroyed");
    assert!(
        canary.events.iter().any(|e| e["type"] == "start"),
        "the canary never started"
    );

    let requests = fly.requests();
    let created_at = requests
        .iter()
        .position(|r| r.method == "POST" && r.path == format!("/v1/apps/{APP}/machines"))
        .expect("canary created");
    let destroyed_at = requests
        .iter()
        .position(|r| r.method == "DELETE" && r.path.ends_with(&format!("/machines/{}", canary.id)))
        .expect("canary destroyed");
    let first_update = requests
        .iter()
        .position(|r| {
            r.method == "POST"
                && updated_ids(std::slice::from_ref(r))
                    .first()
                    .is_some_and(|id| ids.contains(id))
        })
        .expect("machines updated");
    assert!(created_at < destroyed_at && destroyed_at < first_update);
    for id in &ids {
        assert_eq!(fly.machine(id).image(), new);
    }
    assert_eq!(fly.releases()[0].strategy, "CANARY");
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

#[test]
fn bluegreen_replaces_blues_with_healthy_greens() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let blues = fly.add_machines(APP, &MachineSpec::new("app").count(2).checks(1).services(true));
    let t = TestDir::new();
    let new = image(7);

    let out = run_rollout(&fly, &t, &new, &["--strategy", "bluegreen"]);
    assert_success(&out);

    let all = fly.machines(APP);
    let greens: Vec<_> = all.iter().filter(|m| !blues.contains(&m.id)).collect();
    assert_eq!(greens.len(), 2);
    let tag = greens[0].metadata("fly_bluegreen_deployment_tag").expect("tag");
    for green in &greens {
        assert_eq!(green.image(), new);
        assert_eq!(green.state, "started");
        assert!(!green.cordoned, "green {} still cordoned", green.id);
        assert_eq!(green.metadata("fly_bluegreen_deployment_tag"), Some(tag));
        assert!(green.checks.iter().all(|c| c.status == "passing"));
    }
    for blue in &blues {
        assert_eq!(fly.machine(blue).state, "destroyed", "blue {blue}");
        // Blues were never updated in place.
        assert_eq!(fly.machine(blue).config_history.len(), 1);
    }
    let requests = fly.requests();
    let creates: Vec<_> = requests
        .iter()
        .filter(|r| r.method == "POST" && r.path == format!("/v1/apps/{APP}/machines"))
        .collect();
    assert_eq!(creates.len(), 2);
    for create in creates {
        assert_eq!(create.body.as_ref().unwrap()["skip_service_registration"], true);
    }
    let position = |suffix: &str| {
        requests
            .iter()
            .position(|r| r.method != "GET" && r.path.ends_with(suffix))
            .unwrap_or_else(|| panic!("no request to {suffix}"))
    };
    let last_uncordon = greens
        .iter()
        .map(|g| position(&format!("{}/uncordon", g.id)))
        .max()
        .unwrap();
    assert!(last_uncordon < position(&format!("{}/cordon", blues[0])));
    assert_eq!(fly.releases()[0].statuses, ["created", "running", "complete"]);
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

#[test]
fn bluegreen_without_checks_is_refused_before_any_change() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    fly.add_machines(APP, &MachineSpec::new("app").count(2));
    let t = TestDir::new();

    let out = run_rollout(&fly, &t, &image(8), &["--strategy", "bluegreen"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("bluegreen") && err.contains("process group app"),
        "{err}"
    );
    assert!(fly.mutating_requests().is_empty());
    assert_no_violations(&fly);
}
