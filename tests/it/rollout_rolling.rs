//! Rolling deploys against the Fly API double: order, parallelism, release record, leases.

use crate::support;

use std::time::Instant;
use support::fly_api::{FlyApi, MachineSpec, Options, Timing};
use support::rollout::{
    APP, assert_no_changes, assert_no_leases, assert_no_violations, image, run_rollout, stderr, updated_ids,
    write_fly_toml,
};
use support::{TestDir, assert_success};

#[test]
fn rolling_six_machines_in_two_groups_side_by_side_two_at_a_time() {
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

    // Groups side by side (as flyctl rolls them), the first machine of each group (in id order)
    // alone, then the rest two at a time: their requests race, so only the set is fixed. The
    // worker group starts before the web group's first machine has passed its checks.
    let updates = updated_ids(&fly.requests());
    let in_group = |group: &[String]| -> Vec<String> {
        updates.iter().filter(|id| group.contains(id)).cloned().collect()
    };
    for group in [&web, &worker] {
        let mut order = in_group(group);
        assert_eq!(order[0], group[0], "{updates:?}");
        order.sort();
        assert_eq!(&order, group, "{updates:?}");
    }
    let position = |id: &String| updates.iter().position(|u| u == id).unwrap();
    assert!(position(&worker[0]) < position(&web[1]), "{updates:?}");
    assert!(
        fly.max_concurrent_updates() <= 4,
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

/// A rollout with a 10 s `--wait-timeout` that succeeds before that runs out: no wait of it
/// was left to time out.
fn rollout_without_running_out(fly: &FlyApi, t: &TestDir, image: &str) -> std::process::Output {
    let began = Instant::now();
    let out = run_rollout(fly, t, image, &["--wait-timeout", "10s"]);
    assert_success(&out);
    assert!(
        began.elapsed().as_secs() < 10,
        "the rollout waited out its timeout: {}",
        stderr(&out)
    );
    out
}

/// A request starts a stopped machine (fly-proxy's autostart) just as its update lands: it
/// never shows `stopped` to a wait. flyctl settles such a machine in any of stopped, started
/// or suspended (`internal/command/deploy/plan.go` `updateMachineWChecks`); waiting for
/// `stopped` alone would time out and fail a deploy that went well.
#[test]
fn a_stopped_machine_a_request_starts_as_its_update_lands_is_settled() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let stopped = fly.add_machines(APP, &MachineSpec::new("app").count(1).state("stopped"));
    fly.start_on_request(&stopped[0]);
    let t = TestDir::new();
    let new = image(2);

    let out = rollout_without_running_out(&fly, &t, &new);

    let machine = fly.machine(&stopped[0]);
    assert_eq!(machine.state, "started");
    assert_eq!(machine.image(), new);
    let updates: Vec<_> = fly
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && updated_ids(std::slice::from_ref(r)).len() == 1)
        .collect();
    assert_eq!(updates.len(), 1);
    assert_eq!(
        updates[0].body.as_ref().expect("update body")["skip_launch"],
        true
    );
    assert!(
        stderr(&out).contains("updated (left stopped; it has since started)"),
        "{}",
        stderr(&out)
    );
    // The settling wait names its three states as fly-go names several: repeated parameters.
    let waits: Vec<String> = fly
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/wait"))
        .map(|r| r.query)
        .collect();
    assert!(
        waits
            .iter()
            .any(|q| q.contains("state=stopped&state=started&state=suspended")),
        "{waits:?}"
    );
    assert_eq!(fly.releases()[0].statuses, ["created", "running", "complete"]);
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// fly-proxy's autostop suspends a running machine as soon as its update has it up, before
/// the wait for `started` can answer. flyctl waits for "stopped", "started" or "suspended"
/// after every update (`internal/command/deploy/plan.go` `updateMachineWChecks`); waiting for
/// `started` alone would run out and roll back a deploy that went well.
#[test]
fn a_machine_its_autostop_suspends_as_soon_as_it_is_up_is_settled() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(2));
    fly.suspend_once_up(&ids[0]);
    let t = TestDir::new();
    let new = image(3);

    let out = rollout_without_running_out(&fly, &t, &new);
    let suspended = fly.machine(&ids[0]);
    assert_eq!(suspended.state, "suspended");
    assert_eq!(suspended.image(), new);
    assert_eq!(fly.machine(&ids[1]).state, "started");
    assert_eq!(fly.machine(&ids[1]).image(), new);
    assert!(
        stderr(&out).contains("started (suspended since, by its autostop)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fly.releases()[0].statuses, ["created", "running", "complete"]);
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

#[test]
fn stopped_machines_roll_in_their_own_pool_beside_the_running_ones() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let running = fly.add_machines(APP, &MachineSpec::new("app").count(3).checks(1));
    let stopped = fly.add_machines(APP, &MachineSpec::new("app").count(4).state("stopped").checks(1));
    let t = TestDir::new();
    let new = image(21);

    let out = run_rollout(&fly, &t, &new, &["--max-unavailable", "1"]);
    assert_success(&out);

    for id in running.iter().chain(&stopped) {
        assert_eq!(fly.machine(id).image(), new, "machine {id}");
    }
    let requests = fly.requests();
    let sent = |id: &str| {
        requests
            .iter()
            .position(|r| r.method == "POST" && r.path.ends_with(&format!("/machines/{id}")))
            .unwrap()
    };
    let last_get = |id: &str| {
        requests
            .iter()
            .rposition(|r| r.method == "GET" && r.path.ends_with(&format!("/machines/{id}")))
            .unwrap()
    };
    // max_unavailable 1 holds for the running machines: each waits for the one before to be
    // healthy.
    for pair in running.windows(2) {
        assert!(sent(&pair[1]) > last_get(&pair[0]), "{pair:?} overlapped");
    }
    // The stopped machines did not wait for them: all four were sent before the second running
    // machine, and more machines were busy at once than max_unavailable allows running ones.
    for id in &stopped {
        assert!(
            sent(id) < sent(&running[1]),
            "stopped machine {id} waited for the running ones"
        );
    }
    assert!(
        fly.max_concurrent_updates() >= 3,
        "only {} machines at once",
        fly.max_concurrent_updates()
    );
    for id in &stopped {
        assert_eq!(fly.machine(id).state, "stopped", "machine {id}");
    }
    let plan = run_rollout(&fly, &t, &image(22), &["--max-unavailable", "1", "--dry-run"]);
    let plan = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert!(
        plan.contains(&format!(
            "stopped wave 2 (beside the waves above): update {} {} {}",
            stopped[1], stopped[2], stopped[3]
        )),
        "{plan}"
    );
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

#[test]
fn dry_run_sends_no_mutating_request() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let web = fly.add_machines(APP, &MachineSpec::new("app").count(3).checks(1));
    let worker = fly.add_machines(APP, &MachineSpec::new("worker").count(1).state("stopped"));
    let t = TestDir::new();
    write_fly_toml(
        &t,
        "app = \"demo\"\nprimary_region = \"iad\"\n[deploy]\nrelease_command = \"bin/migrate\"\nmax_unavailable = 2\n[env]\nLOG = \"debug\"\n[processes]\napp = \"\"\nworker = \"\"\n",
    );
    let new = image(3);

    let out = run_rollout(&fly, &t, &new, &["--dry-run"]);
    assert_success(&out);

    assert_no_changes(&fly);
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

/// App `demo` on a double running Fly time a hundred times faster, for the big fleets.
fn fast_app() -> FlyApi {
    let fly = FlyApi::with_options(Options {
        timing: Timing {
            scale: 0.01,
            ..Timing::default()
        },
        ..Options::default()
    });
    fly.add_app(APP);
    fly
}

#[test]
fn a_hundred_machines_roll_with_parallelism_bounded_by_max_unavailable() {
    let fly = fast_app();
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

/// API calls per machine in flyctl's rolling update of a healthy machine with checks
/// (internal/command/deploy/machines_deploymachinesapp.go `updateEntriesGroup`, over
/// internal/machine/leasable_machine.go and machine_set.go):
/// - lease: one `AcquireLease` (machine_set.go `AcquireLeases`), plus one refresh every
///   (13 s - 1 s) / 3 = 4 s (`refreshLeaseUntilCanceled`, counted apart: it depends on time);
/// - update: one `Update`;
/// - wait: one `WaitForState(started)` call per 60 s (fly-go flaps/flaps_machines_wait.go);
/// - get: at least two: `WaitForSmokeChecksToPass` polls `Get` until the machine has been up
///   10 s (at least once), then `WaitForHealthchecksToPass` polls until all pass (at least
///   once);
/// - release: one `ReleaseLease`.
const FLYCTL_CALLS_PER_MACHINE: [(&str, usize); 5] = [
    ("lease", 1),
    ("update", 1),
    ("wait", 1),
    ("get", 2),
    ("release", 1),
];
const FLYCTL_LEASE_REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(4);

#[test]
fn five_hundred_machines_in_two_groups_take_no_more_calls_per_machine_than_flyctl() {
    let fly = fast_app();
    let web = fly.add_machines(APP, &MachineSpec::new("app").count(250).checks(1));
    let worker = fly.add_machines(APP, &MachineSpec::new("worker").count(250).checks(1));
    let t = TestDir::new();
    let new = image(23);

    let started = Instant::now();
    let out = run_rollout(&fly, &t, &new, &[]);
    assert_success(&out);
    let elapsed = started.elapsed();
    eprintln!("500 machines rolled in {elapsed:?}");

    let requests = fly.requests();
    let mut calls: std::collections::BTreeMap<(&str, &str), usize> = Default::default();
    let mut refreshes = 0;
    for r in &requests {
        let Some(rest) = r.path.strip_prefix(&format!("/v1/apps/{APP}/machines/")) else {
            continue;
        };
        let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
        let kind = match (r.method.as_str(), action) {
            ("POST", "lease") if r.lease_nonce.is_some() => {
                refreshes += 1;
                continue;
            }
            ("POST", "lease") => "lease",
            ("DELETE", "lease") => "release",
            ("POST", "") => "update",
            ("GET", "wait") => "wait",
            ("GET", "") => "get",
            other => panic!("unexpected call {other:?} on machine {id}"),
        };
        *calls.entry((id, kind)).or_default() += 1;
    }
    for id in web.iter().chain(&worker) {
        assert_eq!(fly.machine(id).image(), new, "machine {id}");
        for (kind, flyctl) in FLYCTL_CALLS_PER_MACHINE {
            let ours = calls.get(&(id.as_str(), kind)).copied().unwrap_or(0);
            assert!(
                ours <= flyctl,
                "machine {id}: {ours} {kind} calls, flyctl makes {flyctl}"
            );
            assert!(ours >= 1 || kind == "get", "machine {id}: no {kind} call");
        }
    }
    let rounds = (elapsed.as_secs_f64() / FLYCTL_LEASE_REFRESH_EVERY.as_secs_f64()).floor() as usize;
    assert!(
        refreshes <= 500 * rounds,
        "{refreshes} lease refreshes in {elapsed:?}"
    );

    // The groups rolled side by side: the worker group started before the web group ended.
    let updates = updated_ids(&requests);
    let position = |id: &String| updates.iter().position(|u| u == id).unwrap();
    assert!(position(&worker[0]) < position(web.last().unwrap()));
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
