//! Rolling deploys against the Fly API double: order, parallelism, release record, leases.

use crate::support;

use std::time::Instant;
use support::fly_api::{FlyApi, MachineSpec, Options, Timing};
use support::rollout::{
    APP, assert_no_leases, assert_no_violations, image, run_rollout, stderr, updated_ids,
};
use support::{TestDir, assert_success};

#[test]
fn rolling_six_machines_in_two_groups_two_at_a_time() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let web = fly.add_machines(APP, &MachineSpec::new("app").count(3).checks(2));
    let worker = fly.add_machines(APP, &MachineSpec::new("worker").count(3));
    let t = TestDir::new();
    let new = image(1);

    let out = run_rollout(&fly, &t, &new, &["--max-unavailable", "2"]);
    assert_success(&out);

    let releases = fly.releases();
    assert_eq!(releases.len(), 1);
    let release = &releases[0];
    assert_eq!(release.statuses, ["created", "running", "complete"]);
    assert_eq!(release.strategy, "ROLLING");
    assert_eq!(release.image, new);
    for id in web.iter().chain(&worker) {
        let machine = fly.machine(id);
        assert_eq!(machine.image(), new, "machine {id}");
        assert_eq!(machine.state, "started", "machine {id}");
        assert_eq!(machine.metadata("fly_release_id"), Some(release.id.as_str()));
        assert_eq!(
            machine.metadata("fly_release_version"),
            Some(release.version.to_string().as_str())
        );
        // Everything else of the config is kept.
        assert_eq!(machine.metadata("fly_flyctl_version"), Some("0.3.0"));
    }
    for id in &web {
        let checks = &fly.machine(id).checks;
        assert_eq!(checks.len(), 2);
        assert!(checks.iter().all(|c| c.status == "passing"), "{checks:?}");
    }

    // Groups one after the other, each in id order (the pool may finish out of order, but
    // it starts in order), the first machine of each group alone.
    let updates = updated_ids(&fly.requests());
    let mut expected: Vec<String> = web.clone();
    expected.extend(worker.clone());
    assert_eq!(updates, expected);
    assert!(
        fly.max_concurrent_updates() <= 2,
        "{} machines were updating at once",
        fly.max_concurrent_updates()
    );
    let requests = fly.requests();
    let at = |id: &str| {
        requests
            .iter()
            .find(|r| r.method == "POST" && r.path.ends_with(&format!("/machines/{id}")))
            .map(|r| r.at)
            .unwrap()
    };
    let first_settled = requests
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&format!("/machines/{}", web[0])))
        .map(|r| r.at)
        .next_back()
        .unwrap();
    assert!(
        at(&web[1]) > first_settled,
        "the second machine was updated before the first passed its checks"
    );

    assert_no_leases(&fly);
    assert_no_violations(&fly);
    let err = stderr(&out);
    assert!(err.contains("wave 1"), "{err}");
}

#[test]
fn stopped_machines_are_updated_with_skip_launch_and_stay_stopped() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let stopped = fly.add_machines(APP, &MachineSpec::new("app").count(2).state("stopped").checks(1));
    let running = fly.add_machines(APP, &MachineSpec::new("app").count(1).checks(1));
    let t = TestDir::new();
    let new = image(2);

    let out = run_rollout(&fly, &t, &new, &[]);
    assert_success(&out);

    let bodies: Vec<(String, bool)> = fly
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && updated_ids(std::slice::from_ref(r)).len() == 1)
        .map(|r| {
            let id = updated_ids(std::slice::from_ref(r)).remove(0);
            let body = r.body.as_ref().expect("update body");
            assert_eq!(body["config"]["image"], new.as_str());
            (id, body["skip_launch"].as_bool().expect("skip_launch sent"))
        })
        .collect();
    assert_eq!(bodies.len(), 3);
    for (id, skip_launch) in bodies {
        assert_eq!(skip_launch, stopped.contains(&id), "machine {id}");
    }
    for id in &stopped {
        assert_eq!(fly.machine(id).state, "stopped", "machine {id}");
        assert_eq!(fly.machine(id).image(), new);
    }
    assert_eq!(fly.machine(&running[0]).state, "started");
    assert_no_violations(&fly);
}

#[test]
fn plan_sends_no_mutating_request() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let web = fly.add_machines(APP, &MachineSpec::new("app").count(3).checks(1));
    let worker = fly.add_machines(APP, &MachineSpec::new("worker").count(1).state("stopped"));
    let t = TestDir::new();
    std::fs::write(
        t.join("fly.toml"),
        "app = \"demo\"\nprimary_region = \"iad\"\n[deploy]\nrelease_command = \"bin/migrate\"\nmax_unavailable = 2\n[env]\nLOG = \"debug\"\n[processes]\napp = \"\"\nworker = \"\"\n",
    )
    .unwrap();
    let new = image(3);

    let out = run_rollout(&fly, &t, &new, &["--plan"]);
    assert_success(&out);

    assert!(
        fly.mutating_requests().is_empty(),
        "{:#?}",
        fly.mutating_requests()
    );
    assert!(fly.releases().is_empty());
    let plan = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "release: a new ROLLING release record",
        "release_command: `bin/migrate`",
        &format!("wave 1: update {}", web[0]),
        &format!("wave 2: update {} {}", web[1], web[2]),
        &format!("{} (iad, stopped): stays stopped", worker[0]),
        "env +LOG",
        &new,
        // fly.toml has no [checks]: like flyctl, the deploy drops them, and the plan says so.
        &format!("process group app: fly.toml changes the config of {}", web[0]),
        "- checks.http-0.type",
    ] {
        assert!(plan.contains(needle), "plan lacks {needle:?}:\n{plan}");
    }
    for id in web.iter().chain(&worker) {
        assert_ne!(fly.machine(id).image(), new);
    }
    assert_no_violations(&fly);
}

#[test]
fn a_hundred_machines_roll_with_parallelism_bounded_by_max_unavailable() {
    let fly = FlyApi::with_options(Options {
        timing: Timing {
            scale: 0.01,
            ..Timing::default()
        },
        ..Options::default()
    });
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(100).checks(1));
    let t = TestDir::new();
    let new = image(4);

    let started = Instant::now();
    let out = run_rollout(&fly, &t, &new, &["--max-unavailable", "5"]);
    assert_success(&out);
    eprintln!("100 machines rolled in {:?}", started.elapsed());

    for id in &ids {
        assert_eq!(fly.machine(id).image(), new, "machine {id}");
    }
    let concurrent = fly.max_concurrent_updates();
    assert!(concurrent <= 5, "{concurrent} machines updating at once");
    assert!(concurrent >= 3, "only {concurrent} at once: the pool is not used");
    assert_eq!(updated_ids(&fly.requests()).len(), 100);
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

#[test]
fn leases_are_refreshed_while_a_slow_rollout_runs() {
    let fly = FlyApi::with_options(Options {
        timing: Timing {
            // 2 s of real time for checks: longer than the 1 s lease.
            checks: std::time::Duration::from_secs(40),
            ..Timing::default()
        },
        ..Options::default()
    });
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(2).checks(1));
    let t = TestDir::new();
    let new = image(20);

    let out = run_rollout(&fly, &t, &new, &["--lease-ttl", "1s", "--max-unavailable", "1"]);
    assert_success(&out);
    for id in &ids {
        assert_eq!(fly.machine(id).image(), new);
    }
    let refreshes = fly
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/lease") && r.lease_nonce.is_some())
        .count();
    assert!(refreshes >= 4, "only {refreshes} lease refreshes");
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}
