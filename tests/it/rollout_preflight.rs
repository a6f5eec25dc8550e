//! Deploy behaviour checked against flyctl's preflight tests (`test/preflight/*_test.go`,
//! superfly/flyctl), which run `fly deploy` against the real Fly platform: what they assert
//! about the machines a deploy leaves behind is evidence of what Fly does, and of what a
//! deployer must do for the same outcome. Each test names the preflight test it follows.

use crate::support;

use std::time::Duration;
use support::fly_api::{Behavior, FlyApi, MachineSpec};
use support::rollout::{
    APP, BLUEGREEN, assert_no_changes, assert_no_leases, assert_no_violations, digest_hex, image,
    live_machines, rollout_cmd, run_rollout, stderr, write_fly_toml,
};
use support::{TestDir, assert_success};

const WEB: &str = "app = \"demo\"\nprimary_region = \"ams\"\n\n[http_service]\n  internal_port = 8080\n";

const SERVICE_CHECK: &str = "\n[[http_service.checks]]\n  grace_period = \"5s\"\n  interval = \"10s\"\n  \
                             method = \"GET\"\n  timeout = \"5s\"\n  path = \"/\"\n";

/// `fly_deploy_test.go`, `TestFlyDeployHA` (and `TestFlyDeploy_AddNewMount`, its one-region
/// form): `[mounts]` added to an app with a machine in each of two regions. Without volumes
/// the deploy is refused before anything changes, naming the volume; with one volume of that
/// name in each region it succeeds, each machine replaced in its own region by one mounting
/// the volume there.
#[test]
fn an_added_mount_needs_a_volume_in_each_machines_region() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let old_ams = fly.add_machines(APP, &MachineSpec::new("app").region("ams").services(true));
    let old_cdg = fly.add_machines(APP, &MachineSpec::new("app").region("cdg").services(true));
    let t = TestDir::new();
    write_fly_toml(
        &t,
        &format!("{WEB}\n[mounts]\n  source = \"data\"\n  destination = \"/data\"\n"),
    );

    let out = run_rollout(&fly, &t, &image(1), &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("requires an unattached volume \"data\""), "{err}");
    assert_no_changes(&fly);

    // One region's volume is not enough: the other machine still has none.
    let ams = fly.add_volume(APP, "data", "ams", 1);
    let out = run_rollout(&fly, &t, &image(1), &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("requires an unattached volume \"data\" in cdg"),
        "{err}"
    );
    assert_no_changes(&fly);

    let cdg = fly.add_volume(APP, "data", "cdg", 1);
    let out = run_rollout(&fly, &t, &image(1), &[]);
    assert_success(&out);
    let live = live_machines(&fly);
    assert_eq!(live.len(), 2, "{live:#?}");
    for (region, volume) in [("ams", &ams), ("cdg", &cdg)] {
        let machine = live
            .iter()
            .find(|m| m.region == region)
            .unwrap_or_else(|| panic!("no machine in {region}: {live:#?}"));
        assert!(!old_ams.contains(&machine.id) && !old_cdg.contains(&machine.id));
        assert_eq!(machine.config["mounts"][0]["volume"], volume.as_str());
        assert_eq!(machine.config["mounts"][0]["path"], "/data");
        assert_eq!(machine.image(), image(1));
    }
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// `fly_deploy_test.go`, `TestFlyDeploy_DeployToken_FailingSmokeCheck`: with a deploy token
/// (which may not read the app's logs) an app whose process exits at once fails the deploy
/// as crashing, not with the logs API's 401.
#[test]
fn a_crashing_app_fails_as_crashing_with_a_token_that_may_not_read_logs() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app"));
    fly.refuse_logs();
    let new = image(2);
    fly.set_behavior(
        digest_hex(&new),
        Behavior::RestartLoop {
            exit_code: 1,
            restarts: 5,
        },
    );
    let t = TestDir::new();
    let out = run_rollout(&fly, &t, &new, &["--wait-timeout", "20s"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("crash looping") && err.contains("code 1"), "{err}");
    assert!(!err.contains("401"), "{err}");
    assert!(!err.contains("rollback failed"), "{err}");
    assert_ne!(fly.machine(&ids[0]).image(), new);
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// `fly_deploy_bluegreen_test.go`, `TestFlyDeployBluegreen_LaunchIdempotencyMetadata`: after
/// a bluegreen deploy every machine is started and carries a launch id (nixfly's
/// `nixfly_launch_id`, flyctl's `fly_flyctl_bluegreen_launch_id`); a second bluegreen deploy
/// gives every new machine a fresh one, and leaves one image running.
#[test]
fn bluegreen_machines_carry_a_fresh_launch_id_each_deploy() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    fly.add_machines(APP, &MachineSpec::new("app").count(2).checks(1));
    let t = TestDir::new();
    let launch_ids = |fly: &FlyApi, image: &str| -> Vec<String> {
        let live = live_machines(fly);
        assert_eq!(live.len(), 2, "{live:#?}");
        live.iter()
            .map(|m| {
                assert_eq!((m.state.as_str(), m.image()), ("started", image), "{}", m.id);
                m.metadata("nixfly_launch_id")
                    .unwrap_or_else(|| panic!("machine {} has no launch id", m.id))
                    .to_string()
            })
            .collect()
    };
    assert_success(&run_rollout(&fly, &t, &image(3), &BLUEGREEN));
    let first = launch_ids(&fly, &image(3));
    assert_success(&run_rollout(&fly, &t, &image(4), &BLUEGREEN));
    let second = launch_ids(&fly, &image(4));
    assert!(
        second.iter().all(|id| !first.contains(id)),
        "{first:?} {second:?}"
    );
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// `fly_deploy_test.go`, `TestFlyDeploy_BlueGreen_StoppedMachines`: the app's one machine has
/// a service check and was stopped (as autostop leaves it). A bluegreen deploy of an app that
/// crashes fails, and the stopped machine stays as it was; one of a healthy app succeeds and
/// leaves every machine started.
#[test]
fn bluegreen_over_a_stopped_machine_fails_on_a_crash_and_starts_a_healthy_app() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let blue = fly.add_machines(
        APP,
        &MachineSpec::new("app").checks(1).services(true).state("stopped"),
    );
    let t = TestDir::new();
    write_fly_toml(&t, &format!("{WEB}{SERVICE_CHECK}"));
    let crashing = image(5);
    fly.set_behavior(
        digest_hex(&crashing),
        Behavior::RestartLoop {
            exit_code: 1,
            restarts: 5,
        },
    );
    let out = run_rollout(
        &fly,
        &t,
        &crashing,
        &[&BLUEGREEN[..], &["--wait-timeout", "5s"]].concat(),
    );
    assert!(!out.status.success(), "{}", stderr(&out));
    let live = live_machines(&fly);
    assert_eq!(live.len(), 1, "{live:#?}");
    assert_eq!(
        (live[0].id.as_str(), live[0].state.as_str()),
        (blue[0].as_str(), "stopped")
    );

    let healthy = image(6);
    assert_success(&run_rollout(&fly, &t, &healthy, &BLUEGREEN));
    let live = live_machines(&fly);
    assert_eq!(live.len(), 1, "{live:#?}");
    assert_eq!(
        (live[0].state.as_str(), live[0].image()),
        ("started", healthy.as_str())
    );
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// `fly_machine_test.go`, `TestFlyMachineRun_standbyFor` ("Updating a stopped machine doesn't
/// start it"): a machine that was running when the deploy listed it, and was stopped (as the
/// proxy autostops an idle one) while the deploy waited for its lease, is updated and stays
/// stopped on Fly. The deploy starts it, as it meant to, and checks it, rather than wait for
/// a start that never comes.
#[test]
fn a_machine_stopped_after_the_listing_is_started_after_its_update() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let id = fly
        .add_machines(APP, &MachineSpec::new("app").checks(1))
        .remove(0);
    fly.hold_lease(&id, "someone@else.com", Some(Duration::from_secs(2)));
    let t = TestDir::new();
    let new = image(7);
    let child = rollout_cmd(&fly, &t, &new)
        .args(["--wait-timeout", "10s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(fly.wait_until(Duration::from_secs(10), |f| {
        !f.requests_to("POST", &format!("/machines/{id}/lease")).is_empty()
    }));
    fly.stop(&id);
    let out = child.wait_with_output().unwrap();
    assert_success(&out);
    let machine = fly.machine(&id);
    assert_eq!(
        (machine.state.as_str(), machine.image()),
        ("started", new.as_str())
    );
    assert_eq!(machine.checks[0].status, "passing");
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}
