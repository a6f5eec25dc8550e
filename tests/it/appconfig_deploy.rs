//! fly.toml applied by the rollout, against the Fly API double (issue 6): first deploys create
//! the machines flyctl would create, config-only changes roll out with the same image, new
//! process groups get machines, removed ones lose theirs only when confirmed, and a bad
//! fly.toml stops before the first request.

use crate::support;

use serde_json::{Value, json};
use std::time::Duration;
use support::fly_api::{Behavior, FaultKind, FlyApi, Machine, Options, Timing};
use support::rollout::{
    APP, assert_no_changes, assert_no_leases, assert_no_violations, create_bodies, image, run_rollout,
    stderr, updated_ids, write_fly_toml,
};
use support::{TestDir, assert_success};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/flytoml/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// An app that exists but was never deployed.
fn new_app() -> FlyApi {
    let fly = FlyApi::start();
    fly.set_app_status(APP, "pending");
    fly
}

fn group_machines(fly: &FlyApi, group: &str) -> Vec<Machine> {
    let mut machines: Vec<Machine> = fly
        .machines(APP)
        .into_iter()
        .filter(|m| m.process_group() == group && m.state != "destroyed")
        .collect();
    machines.sort_by(|a, b| a.id.cmp(&b.id));
    machines
}

/// A machine's config without what the rollout adds to fly.toml's (image, release metadata,
/// the create's launch id).
fn fly_toml_part(machine: &Machine) -> Value {
    let mut config = machine.config.clone();
    let object = config.as_object_mut().unwrap();
    object.remove("image");
    let metadata = object["metadata"].as_object_mut().unwrap();
    metadata.remove("fly_release_id");
    metadata.remove("fly_release_version");
    metadata.remove("nixfly_launch_id");
    config
}

#[test]
fn first_deploy_creates_the_machines_flyctl_would() {
    let fly = new_app();
    let t = TestDir::new();
    write_fly_toml(&t, &fixture("02-web-and-worker.toml"));
    let new = image(1);

    // `--app demo` from the command line wins over fly.toml's `app = "shop"`.
    let out = run_rollout(&fly, &t, &new, &[]);
    assert_success(&out);

    let expected: Value = serde_json::from_str(&fixture("02-web-and-worker.json")).unwrap();
    let release = &fly.releases()[0];
    assert_eq!(release.statuses, ["created", "running", "complete"]);

    // web has an HTTP service and no volume: two machines for availability.
    let web = group_machines(&fly, "web");
    assert_eq!(web.len(), 2, "{web:#?}");
    for machine in &web {
        assert_eq!(machine.state, "started");
        assert_eq!(machine.region, "iad");
        assert_eq!(machine.image(), new);
        assert_eq!(machine.metadata("fly_release_id"), Some(release.id.as_str()));
        assert_eq!(fly_toml_part(machine), expected["web"], "machine {}", machine.id);
    }
    // worker has no service: one machine and a stopped standby for it.
    let worker = group_machines(&fly, "worker");
    assert_eq!(worker.len(), 2, "{worker:#?}");
    let (running, standby) = (&worker[0], &worker[1]);
    assert_eq!(running.state, "started");
    assert_eq!(fly_toml_part(running), expected["worker"]);
    // Created with skip_launch: never started.
    assert!(
        matches!(standby.state.as_str(), "created" | "stopped"),
        "standby {} is {}",
        standby.id,
        standby.state
    );
    // Every create carried a launch id of its own, which makes it safe to repeat.
    let mut launch_ids: Vec<&str> = web
        .iter()
        .chain(&worker)
        .map(|m| m.metadata("nixfly_launch_id").expect("a launch id"))
        .collect();
    launch_ids.sort();
    launch_ids.dedup();
    assert_eq!(launch_ids.len(), 4);
    let mut standby_expected = expected["worker"].clone();
    standby_expected["standbys"] = json!([running.id]);
    standby_expected["env"]["FLY_STANDBY_FOR"] = json!(running.id);
    assert_eq!(fly_toml_part(standby), standby_expected);
    // flyctl's first-deploy addresses for an HTTP app: a dedicated v6 and a shared v4.
    let ips = fly.ips(APP);
    assert_eq!(ips.len(), 2, "{ips:#?}");
    assert!(ips.iter().any(|ip| ip["shared"] == true), "{ips:#?}");
    // The worker's check passed before the deploy went on.
    assert!(
        running.checks.iter().all(|c| c.status == "passing"),
        "{:?}",
        running.checks
    );

    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// The path of `POST /machines` only (the double's `$`: not the machines' own paths).
const CREATES: &str = "/v1/apps/demo/machines$";

/// A first deploy of `fly_toml` that succeeds although a create (or volume create) failed,
/// says it went on with what the failed create made, and used every injected fault; its
/// stderr.
fn deploy_adopting(fly: &FlyApi, fly_toml: &str) -> String {
    let t = TestDir::new();
    write_fly_toml(&t, fly_toml);
    let out = run_rollout(fly, &t, &image(1), &[]);
    assert_success(&out);
    let err = stderr(&out);
    assert!(err.contains("was created all the same"), "{err}");
    assert!(fly.pending_faults().is_empty(), "{:?}", fly.pending_faults());
    assert_no_leases(fly);
    assert_no_violations(fly);
    err
}

/// flaps may answer a create with a 408 or 5xx although the machine was made (flyctl
/// `internal/flapsutil/retry.go`). The first create here is committed and answered 408, the
/// second fails with 503 and makes nothing: the deploy adopts the first machine (found by its
/// launch id) and sends the second again, and ends with exactly the machines a clean first
/// deploy makes, none left over and none destroyed.
#[test]
fn a_create_answered_with_an_error_is_looked_up_before_it_is_sent_again() {
    let fly = new_app();
    fly.inject_fault(
        "POST",
        CREATES,
        1,
        FaultKind::AfterCommit {
            status: 408,
            message: "deadline_exceeded: timed out waiting for flyd".into(),
        },
    );
    fly.inject_fault("POST", CREATES, 1, FaultKind::Unavailable);
    let err = deploy_adopting(&fly, &fixture("02-web-and-worker.toml"));
    assert!(err.contains("408"), "{err}");
    assert!(
        err.contains("503") && err.contains("no machine was created, creating it again"),
        "{err}"
    );
    // Four machines, as in `first_deploy_creates_the_machines_flyctl_would`, from five creates.
    let all = fly.machines(APP);
    assert_eq!(all.len(), 4, "{all:#?}");
    assert!(all.iter().all(|m| m.state != "destroyed"), "{all:#?}");
    assert_eq!(group_machines(&fly, "web").len(), 2);
    assert_eq!(group_machines(&fly, "worker").len(), 2);
    assert_eq!(
        fly.requests_to("POST", "/v1/apps/demo/machines")
            .iter()
            .filter(|r| r.path.ends_with("/machines"))
            .count(),
        5
    );
    assert_eq!(fly.releases()[0].statuses, ["created", "running", "complete"]);
}

/// A create whose connection breaks in the middle of the answer, after the machine was made:
/// nixfly cannot know whether it worked, looks, and adopts it.
#[test]
fn a_create_whose_answer_is_cut_off_is_looked_up() {
    let fly = new_app();
    fly.inject_fault("POST", CREATES, 1, FaultKind::AfterCommitBroken);
    let err = deploy_adopting(&fly, WEB_V1);
    assert!(
        err.contains("no complete answer came from the Fly API (the connection broke or timed out)"),
        "{err}"
    );
    assert_eq!(fly.machines(APP).len(), 2, "{:#?}", fly.machines(APP));
}

/// The same silent success, on a double whose list shows a new machine only a second (20 Fly
/// seconds) after its create, as Fly's list may lag: the lookup waits for the machine instead of
/// creating a second one.
#[test]
fn a_lagging_list_still_finds_the_machine_a_failed_create_made() {
    let fly = FlyApi::with_options(Options {
        timing: Timing {
            listed_after_create: Duration::from_secs(20),
            ..Timing::default()
        },
        ..Options::default()
    });
    fly.set_app_status(APP, "pending");
    fly.inject_fault(
        "POST",
        CREATES,
        1,
        FaultKind::AfterCommit {
            status: 504,
            message: "gateway timeout".into(),
        },
    );
    deploy_adopting(&fly, WEB_V1);
    let all = fly.machines(APP);
    assert_eq!(all.len(), 2, "one create each for the two web machines: {all:#?}");
    assert_eq!(group_machines(&fly, "app").len(), 2);
}

/// The lookup after an ambiguous create fails too: nixfly cannot know whether the machine
/// exists, so it does not create a second one. The deploy fails and names the launch id of the
/// machine that was in fact made. (Without the check it would create the machine again.)
#[test]
fn a_create_whose_lookup_fails_is_not_sent_again() {
    let fly = new_app();
    fly.inject_fault(
        "POST",
        CREATES,
        1,
        FaultKind::AfterCommit {
            status: 503,
            message: "service unavailable".into(),
        },
    );
    // The lookup and all five of its retries are refused.
    fly.inject_fault(
        "GET",
        "/v1/apps/demo/machines$?metadata.nixfly_launch_id",
        6,
        FaultKind::TooManyRequests { retry_after_secs: 0 },
    );
    let t = TestDir::new();
    write_fly_toml(&t, WEB_V1);
    let out = run_rollout(&fly, &t, &image(1), &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    let made = fly.machines(APP);
    assert_eq!(made.len(), 1, "one create, not sent again: {made:#?}");
    let launch_id = made[0].config["metadata"]["nixfly_launch_id"].as_str().unwrap();
    assert!(
        err.contains("it may have been created all the same, and looking it up failed too")
            && err.contains("429")
            && err.contains(&format!("nixfly_launch_id = {launch_id}")),
        "{err}"
    );
    // Fly's request id, which Fly support asks for, is in the message.
    assert!(
        err.contains("service unavailable (fly-request-id 01double"),
        "{err}"
    );
    assert_eq!(fly.requests_to("POST", "/v1/apps/demo/machines").len(), 1);
    assert!(fly.pending_faults().is_empty(), "{:?}", fly.pending_faults());
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

const WEB_V1: &str = r#"
app = "demo"
primary_region = "ams"

[env]
  LOG_LEVEL = "info"

[http_service]
  internal_port = 8080
  force_https = true

[[vm]]
  size = "shared-cpu-1x"
"#;

/// First deploy of `WEB_V1` with image 1: two web machines.
fn deployed_web_app(t: &TestDir) -> FlyApi {
    let fly = new_app();
    write_fly_toml(t, WEB_V1);
    assert_success(&run_rollout(&fly, t, &image(1), &[]));
    assert_eq!(group_machines(&fly, "app").len(), 2);
    fly
}

#[test]
fn a_config_only_change_rolls_out_with_the_same_image() {
    let t = TestDir::new();
    let fly = deployed_web_app(&t);
    let before: Vec<String> = group_machines(&fly, "app").into_iter().map(|m| m.id).collect();
    // A new env var, a new check, a bigger VM; same image.
    write_fly_toml(
        &t,
        &(WEB_V1
            .replace(
                "LOG_LEVEL = \"info\"",
                "LOG_LEVEL = \"info\"\n  FEATURE_X = \"on\"",
            )
            .replace(
                "size = \"shared-cpu-1x\"",
                "size = \"shared-cpu-2x\"\n  memory = \"1gb\"",
            )
            + "\n[checks.health]\n  type = \"http\"\n  path = \"/health\"\n  interval = \"10s\"\n  timeout = \"2s\"\n"),
    );
    let out = run_rollout(&fly, &t, &image(1), &[]);
    assert_success(&out);

    let after = group_machines(&fly, "app");
    assert_eq!(after.iter().map(|m| m.id.clone()).collect::<Vec<_>>(), before);
    for machine in &after {
        assert_eq!(machine.image(), image(1));
        assert_eq!(machine.config["env"]["FEATURE_X"], "on");
        assert_eq!(
            machine.config["guest"],
            json!({"cpu_kind": "shared", "cpus": 2, "memory_mb": 1024})
        );
        assert_eq!(
            machine.config["checks"]["health"],
            json!({"type": "http", "port": 8080, "path": "/health", "interval": "10s", "timeout": "2s"})
        );
        // The new check was waited for: it passes.
        assert!(
            machine
                .checks
                .iter()
                .any(|c| c.name == "health" && c.status == "passing"),
            "{:?}",
            machine.checks
        );
        // Two configs: the one it was created with, the one this deploy gave it.
        assert_eq!(machine.config_history.len(), 2, "machine {}", machine.id);
    }
    assert_eq!(fly.releases().len(), 2);
    // Addresses are a first-deploy affair.
    assert_eq!(fly.ips(APP).len(), 2);
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

#[test]
fn a_new_process_group_gets_machines_and_the_others_are_updated() {
    let t = TestDir::new();
    let fly = deployed_web_app(&t);
    write_fly_toml(
        &t,
        &(WEB_V1.to_string() + "\n[processes]\n  app = \"./server\"\n  mailer = \"./mailer --queue mail\"\n"),
    );
    let out = run_rollout(&fly, &t, &image(2), &[]);
    assert_success(&out);

    for machine in group_machines(&fly, "app") {
        assert_eq!(machine.image(), image(2));
        assert_eq!(machine.config["init"]["cmd"], json!(["./server"]));
    }
    let mailer = group_machines(&fly, "mailer");
    assert_eq!(mailer.len(), 2, "one machine and its standby: {mailer:#?}");
    assert_eq!(mailer[0].state, "started");
    assert_eq!(mailer[0].image(), image(2));
    assert_eq!(
        mailer[0].config["init"]["cmd"],
        json!(["./mailer", "--queue", "mail"])
    );
    assert_eq!(mailer[0].config["env"]["FLY_PROCESS_GROUP"], "mailer");
    assert!(mailer[0].config.get("services").is_none());
    assert_eq!(mailer[1].config["standbys"], json!([mailer[0].id]));
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// `WEB_V1` deployed with a `cron` group beside `app` (two machines each, whose ids are
/// returned for cron), then fly.toml without the cron group.
fn deployed_with_a_cron_group_then_dropped(t: &TestDir) -> (FlyApi, Vec<String>) {
    let fly = new_app();
    write_fly_toml(
        t,
        &(WEB_V1.to_string() + "\n[processes]\n  app = \"./server\"\n  cron = \"./cron\"\n"),
    );
    assert_success(&run_rollout(&fly, t, &image(1), &[]));
    let cron: Vec<String> = group_machines(&fly, "cron").into_iter().map(|m| m.id).collect();
    assert_eq!(cron.len(), 2);
    write_fly_toml(t, &(WEB_V1.to_string() + "\n[processes]\n  app = \"./server\"\n"));
    (fly, cron)
}

#[test]
fn a_removed_group_is_destroyed_only_when_confirmed_and_last() {
    let t = TestDir::new();
    let (fly, cron) = deployed_with_a_cron_group_then_dropped(&t);

    // Not a terminal and no flag: refused before anything changes.
    let requests = fly.requests().len();
    let out = run_rollout(&fly, &t, &image(2), &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("no longer has process group(s) cron"), "{err}");
    assert!(err.contains("--destroy-removed-groups"), "{err}");
    assert!(fly.requests()[requests..].iter().all(|r| !r.is_mutating()));

    let before = fly.requests().len();
    let out = run_rollout(&fly, &t, &image(2), &["--destroy-removed-groups"]);
    assert_success(&out);
    for id in &cron {
        assert_eq!(fly.machine(id).state, "destroyed", "machine {id}");
    }
    // flyctl `internal/machine/machine_set_test.go`, `TestRemoveMachines`: a removed group's
    // machines leave the set the deploy updates, so they are destroyed, never updated.
    let updated = updated_ids(&fly.requests()[before..]);
    assert!(cron.iter().all(|id| !updated.contains(id)), "{updated:?}");
    // Destroyed after every app machine was updated and healthy (flyctl destroys them
    // first; nixfly last, as a destroy cannot be rolled back).
    let requests = fly.requests();
    let last_update = requests
        .iter()
        .rposition(|r| {
            r.method == "POST" && r.body.as_ref().is_some_and(|b| b["config"]["image"] == image(2))
        })
        .unwrap();
    let first_destroy = requests.iter().position(|r| r.method == "DELETE").unwrap();
    assert!(
        first_destroy > last_update,
        "a cron machine was destroyed before the app was updated"
    );
    for machine in group_machines(&fly, "app") {
        assert_eq!(machine.image(), image(2));
    }
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

#[test]
fn a_bad_fly_toml_stops_before_any_request() {
    let fly = new_app();
    let t = TestDir::new();
    write_fly_toml(
        &t,
        "app = \"demo\"\nprimary_region = \"ams\"\n\n[deploy]\n  max_unavailable = 0\n\n[[vm]]\n  size = \"huge\"\n",
    );
    let out = run_rollout(&fly, &t, &image(1), &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("fly.toml:5: [deploy] max_unavailable: must be above 0"),
        "{err}"
    );
    assert!(
        err.contains("fly.toml:8: [vm[0]] size: \"huge\" is not a machine size"),
        "{err}"
    );
    assert!(fly.requests().is_empty(), "{:#?}", fly.requests());
}

#[test]
fn a_failed_first_deploy_destroys_what_it_created() {
    let fly = new_app();
    let t = TestDir::new();
    write_fly_toml(
        &t,
        &(WEB_V1.to_string()
            + "\n[[http_service.checks]]\n  path = \"/\"\n  interval = \"5s\"\n  timeout = \"1s\"\n"),
    );
    fly.set_behavior(&image(1)[..30], Behavior::ChecksFail);
    let out = run_rollout(&fly, &t, &image(1), &["--wait-timeout", "5s"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(group_machines(&fly, "app").is_empty(), "{:#?}", fly.machines(APP));
    let err = stderr(&out);
    assert!(err.contains("destroyed the 1 machine(s) it had created"), "{err}");
    assert_eq!(fly.releases()[0].status(), "failed");
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// A new app whose fly.toml mounts a volume and has an HTTP check, and whose image 1 fails it.
fn first_deploy_of_a_volume_whose_checks_fail() -> (FlyApi, TestDir) {
    let fly = new_app();
    let t = TestDir::new();
    write_fly_toml(
        &t,
        &(fixture("03-volume-autoextend.toml")
            + "\n[[http_service.checks]]\n  path = \"/\"\n  interval = \"5s\"\n  timeout = \"1s\"\n"),
    );
    fly.set_behavior(&image(1)[..30], Behavior::ChecksFail);
    (fly, t)
}

/// A first deploy rolled back after its machine failed its checks destroys the machine but
/// keeps the volume it made for it (storage the machine may have written to; flyctl destroys
/// none either), unattached, and names it with how to destroy it.
#[test]
fn a_rolled_back_first_deploy_names_the_volume_it_keeps() {
    let (fly, t) = first_deploy_of_a_volume_whose_checks_fail();
    let out = run_rollout(&fly, &t, &image(1), &["--wait-timeout", "5s"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("destroyed the 1 machine(s) it had created"), "{err}");
    assert!(group_machines(&fly, "app").is_empty());
    let volumes = fly.volumes(APP);
    assert_eq!(volumes.len(), 1);
    assert_eq!(volumes[0].attached_machine_id, None);
    assert!(
        err.contains(&format!(
            "volume {} (notes_data, in fra) was created by this deploy and is kept",
            volumes[0].id
        )),
        "{err}"
    );
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

#[test]
fn a_first_deploy_with_a_volume_creates_and_mounts_it() {
    let fly = new_app();
    let t = TestDir::new();
    write_fly_toml(&t, &fixture("03-volume-autoextend.toml"));
    let out = run_rollout(&fly, &t, &image(1), &[]);
    assert_success(&out);
    let machines = group_machines(&fly, "app");
    assert_eq!(machines.len(), 1, "a group with a volume gets one machine");
    let volumes = fly.volumes(APP);
    assert_eq!(volumes.len(), 1);
    assert_eq!(
        (
            volumes[0].name.as_str(),
            volumes[0].size_gb,
            volumes[0].region.as_str()
        ),
        ("notes_data", 10, "fra")
    );
    assert_eq!(
        volumes[0].attached_machine_id.as_deref(),
        Some(machines[0].id.as_str())
    );
    assert_eq!(machines[0].config["mounts"][0]["volume"], json!(volumes[0].id));
    assert_eq!(machines[0].config["mounts"][0]["path"], "/data");
    assert_no_violations(&fly);
}

/// A machine whose volume's host has no room is refused with flaps' `volume_placement_capacity`
/// (fly-go `flaps/flaps_error_test.go`, `TestFlapsErrorSuggestionVolumePlacementCapacity`:
/// 412, and a suggestion keyed off the code): the deploy fails saying what to do, and leaves
/// no machine behind. The volume it created stays for the next deploy, which mounts it instead
/// of making another, and the failed deploy names it with how to destroy it.
#[test]
fn a_machine_its_volumes_host_has_no_room_for_fails_with_advice() {
    let fly = new_app();
    fly.refuse_next_creates(1);
    let t = TestDir::new();
    write_fly_toml(&t, &fixture("03-volume-autoextend.toml"));
    let out = run_rollout(&fly, &t, &image(1), &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("(volume_placement_capacity): try again later") && err.contains("fly volumes fork"),
        "{err}"
    );
    assert!(group_machines(&fly, "app").is_empty());
    let volumes = fly.volumes(APP);
    assert_eq!(volumes.len(), 1);
    let kept = &volumes[0];
    assert_eq!(kept.attached_machine_id, None);
    assert!(
        err.contains(&format!(
            "volume {} (notes_data, in fra) was created by this deploy and is kept, unattached: \
             the next deploy mounts it; `fly volumes destroy {}`",
            kept.id, kept.id
        )),
        "{err}"
    );

    let out = run_rollout(&fly, &t, &image(1), &[]);
    assert_success(&out);
    let volumes = fly.volumes(APP);
    assert_eq!(volumes.len(), 1, "the retry made another volume");
    let machines = group_machines(&fly, "app");
    assert_eq!(machines[0].config["mounts"][0]["volume"], json!(kept.id));
    assert_no_violations(&fly);
}

/// The same rollback, when the machine it created cannot be destroyed: its new volume is still
/// attached to that machine, so the warning names the machine to destroy first instead of
/// calling the volume unattached.
#[test]
fn a_kept_volume_whose_machine_was_not_destroyed_is_named_with_it() {
    let (fly, t) = first_deploy_of_a_volume_whose_checks_fail();
    fly.inject_fault(
        "DELETE",
        "/v1/apps/demo/machines/",
        10,
        FaultKind::Status {
            status: 412,
            message: "failed_precondition: machine is busy".into(),
        },
    );
    let out = run_rollout(&fly, &t, &image(1), &["--wait-timeout", "5s"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    let machines = group_machines(&fly, "app");
    assert_eq!(machines.len(), 1, "{err}");
    let volumes = fly.volumes(APP);
    assert_eq!(volumes.len(), 1);
    let machine = &machines[0].id;
    assert_eq!(volumes[0].attached_machine_id.as_deref(), Some(machine.as_str()));
    assert!(
        err.contains(&format!(
            "volume {} (notes_data, in fra) was created by this deploy and is kept, still \
             attached to machine {machine}, which this deploy created and could not destroy \
             (above): `fly machine destroy --force {machine}`, then `fly volumes destroy {}`",
            volumes[0].id, volumes[0].id
        )),
        "{err}"
    );
    assert!(!err.contains("is kept, unattached"), "{err}");
}

/// After an app's first deploy, flyctl makes no volume: a new machine that mounts one needs an
/// unattached volume of that name made beforehand (`validateVolumeConfig`). Without it the
/// deploy stops before any change, naming the `fly volume create` to run; with it, the machine
/// mounts it and nothing new is made.
#[test]
fn after_the_first_deploy_new_machines_need_a_volume_made_beforehand() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let t = TestDir::new();
    write_fly_toml(&t, &fixture("03-volume-autoextend.toml"));
    let out = run_rollout(&fly, &t, &image(1), &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("requires an unattached volume \"notes_data\" in fra")
            && err.contains("fly volume create notes_data --region fra"),
        "{err}"
    );
    assert_no_changes(&fly);
    assert!(fly.volumes(APP).is_empty());

    let volume = fly.add_volume(APP, "notes_data", "fra", 10);
    let out = run_rollout(&fly, &t, &image(1), &[]);
    assert_success(&out);
    let machines = group_machines(&fly, "app");
    assert_eq!(machines.len(), 1);
    assert_eq!(machines[0].config["mounts"][0]["volume"], json!(volume));
    assert_eq!(fly.volumes(APP).len(), 1);
    assert_no_violations(&fly);
}

/// A volume create flaps committed and answered with a 500: the new volume is found and
/// mounted, and no second one is made.
#[test]
fn a_volume_created_despite_an_error_answer_is_used() {
    let fly = new_app();
    fly.inject_fault(
        "POST",
        "/v1/apps/demo/volumes$",
        1,
        FaultKind::AfterCommit {
            status: 500,
            message: "internal error".into(),
        },
    );
    let err = deploy_adopting(&fly, &fixture("03-volume-autoextend.toml"));
    assert!(err.contains("500"), "{err}");
    let volumes = fly.volumes(APP);
    assert_eq!(volumes.len(), 1, "{volumes:#?}");
    let machines = group_machines(&fly, "app");
    assert_eq!(machines.len(), 1);
    assert_eq!(machines[0].config["mounts"][0]["volume"], json!(volumes[0].id));
}

/// A volume create answered with a 500 whose lookup then fails: the volume is not created
/// again, and the deploy fails saying which volume to look for.
#[test]
fn a_volume_create_whose_lookup_fails_is_not_sent_again() {
    let fly = new_app();
    fly.inject_fault(
        "POST",
        "/v1/apps/demo/volumes$",
        1,
        FaultKind::AfterCommit {
            status: 500,
            message: "internal error".into(),
        },
    );
    // The listing before the create goes through; the lookup after it is refused throughout.
    fly.inject_fault_after(
        "GET",
        "/v1/apps/demo/volumes$",
        1,
        6,
        FaultKind::TooManyRequests { retry_after_secs: 0 },
    );
    let t = TestDir::new();
    write_fly_toml(&t, &fixture("03-volume-autoextend.toml"));
    let out = run_rollout(&fly, &t, &image(1), &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("it may have been created all the same, and looking it up failed too")
            && err.contains("an unattached volume notes_data in fra"),
        "{err}"
    );
    assert_eq!(fly.volumes(APP).len(), 1);
    assert_eq!(fly.requests_to("POST", "/v1/apps/demo/volumes").len(), 1);
    assert!(group_machines(&fly, "app").is_empty());
    assert!(fly.pending_faults().is_empty(), "{:?}", fly.pending_faults());
    assert_no_violations(&fly);
}

#[test]
fn new_volumes_get_flyctls_fields() {
    let fly = new_app();
    let t = TestDir::new();
    write_fly_toml(
        &t,
        &fixture("03-volume-autoextend.toml").replace(
            "auto_extend_size_threshold = 80",
            "auto_extend_size_threshold = 80\n  snapshot_retention = 14\n  scheduled_snapshots = false",
        ),
    );
    let out = run_rollout(&fly, &t, &image(1), &[]);
    assert_success(&out);
    let creates = fly.requests_to("POST", &format!("/v1/apps/{APP}/volumes"));
    assert_eq!(creates.len(), 1);
    let body = creates[0].body.as_ref().unwrap();
    let machine = &group_machines(&fly, "app")[0];
    // flyctl's deploy_first.go: encrypted, placed for the machine's guest and image.
    assert_eq!(
        body,
        &json!({
            "name": "notes_data",
            "region": "fra",
            "size_gb": 10,
            "encrypted": true,
            "compute": machine.config["guest"],
            "compute_image": image(1),
            "snapshot_retention": 14,
            "auto_backup_enabled": false,
        })
    );
    let volume = &fly.volumes(APP)[0];
    assert_eq!(
        (
            volume.encrypted,
            volume.snapshot_retention,
            volume.auto_backup_enabled
        ),
        (true, Some(14), Some(false))
    );
    assert_no_violations(&fly);
}

#[test]
fn nothing_to_deploy_touches_no_machine_and_force_rolls_anyway() {
    let t = TestDir::new();
    let fly = deployed_web_app(&t);
    let machines = group_machines(&fly, "app");
    let requests_before = fly.requests().len();

    for args in [&["--dry-run"][..], &[]] {
        let out = run_rollout(&fly, &t, &image(1), args);
        assert_success(&out);
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        assert!(said.contains("nothing to deploy"), "{said}");
        assert!(said.contains("--force"), "{said}");
    }
    let mutating: Vec<_> = fly.requests()[requests_before..]
        .iter()
        .filter(|r| r.is_mutating())
        .cloned()
        .collect();
    assert!(mutating.is_empty(), "{mutating:#?}");
    assert_eq!(fly.releases().len(), 1, "no release for nothing");

    // A different image is something to deploy; so is the same one with --force.
    let out = run_rollout(&fly, &t, &image(1), &["--force"]);
    assert_success(&out);
    assert_eq!(fly.releases().len(), 2);
    for machine in &machines {
        assert_eq!(fly.machine(&machine.id).config_history.len(), 2);
    }
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

#[test]
fn dry_run_shows_each_groups_config_changes_and_changes_nothing() {
    let t = TestDir::new();
    let fly = deployed_web_app(&t);
    write_fly_toml(
        &t,
        &(WEB_V1.replace("force_https = true", "force_https = false")
            + "\n[processes]\n  app = \"./server\"\n  worker = \"./worker\"\n"),
    );
    let requests = fly.requests().len();
    let out = run_rollout(&fly, &t, &image(2), &["--dry-run"]);
    assert_success(&out);
    assert!(fly.requests()[requests..].iter().all(|r| !r.is_mutating()));
    let plan = String::from_utf8_lossy(&out.stdout);
    let ids: Vec<String> = group_machines(&fly, "app").into_iter().map(|m| m.id).collect();
    for needle in [
        format!("process group app: fly.toml changes the config of {}:", ids.join(", ")),
        "    - services[0].ports[0].force_https: true".to_string(),
        "    + init.cmd: [\"./server\"]".to_string(),
        "process group worker: no machines yet: 1 new machine(s) and 1 standby in ams (shared cpu x1, 256 MB)".to_string(),
    ] {
        assert!(plan.contains(&needle), "plan lacks {needle:?}:\n{plan}");
    }
}

#[test]
fn the_release_command_machine_gets_fly_tomls_entrypoint_and_files() {
    let t = TestDir::new();
    let fly = deployed_web_app(&t);
    write_fly_toml(
        &t,
        &(WEB_V1.replacen(
            "primary_region = \"ams\"",
            "primary_region = \"ams\"\nkill_signal = \"SIGTERM\"",
            1,
        ) + "\n[deploy]\n  release_command = \"migrate --all\"\n\
             \n[experimental]\n  entrypoint = [\"/bin/entry\"]\n\
             \n[[files]]\n  guest_path = \"/etc/motd\"\n  raw_value = \"hi\"\n"),
    );
    let out = run_rollout(&fly, &t, &image(2), &[]);
    assert_success(&out);
    let create = fly
        .requests_to("POST", &format!("/v1/apps/{APP}/machines"))
        .into_iter()
        .filter_map(|r| r.body)
        .find(|b| b["config"]["metadata"]["fly_process_group"] == "fly_app_release_command")
        .expect("a release command machine was created");
    let config = &create["config"];
    assert_eq!(
        config["init"],
        json!({"cmd": ["migrate", "--all"], "entrypoint": ["/bin/entry"]})
    );
    assert_eq!(config["stop_config"], json!({"signal": "SIGTERM"}));
    assert_eq!(
        config["files"],
        json!([{"guest_path": "/etc/motd", "raw_value": "aGk="}])
    );
    assert_eq!(config["env"]["RELEASE_COMMAND"], "1");
    assert_eq!(config["image"], image(2));
    assert_no_violations(&fly);
}

#[test]
fn bluegreen_counts_the_checks_fly_toml_adds() {
    let t = TestDir::new();
    let fly = deployed_web_app(&t);
    let blues: Vec<String> = group_machines(&fly, "app").into_iter().map(|m| m.id).collect();
    // The machines have no check yet; fly.toml gives them one, which bluegreen can wait for.
    write_fly_toml(
        &t,
        &(WEB_V1.to_string()
            + "\n[[http_service.checks]]\n  path = \"/up\"\n  interval = \"5s\"\n  timeout = \"1s\"\n\
               \n[deploy]\n  strategy = \"bluegreen\"\n"),
    );
    let out = run_rollout(&fly, &t, &image(2), &[]);
    assert_success(&out);
    let greens = group_machines(&fly, "app");
    assert_eq!(greens.len(), 2);
    for green in &greens {
        assert!(!blues.contains(&green.id), "blue {} survived", green.id);
        assert_eq!(green.image(), image(2));
        assert_eq!(green.config["services"][0]["checks"][0]["path"], "/up");
    }
    assert_no_violations(&fly);
}

#[test]
fn unknown_keys_are_warned_about_and_the_deploy_goes_on() {
    let t = TestDir::new();
    let fly = deployed_web_app(&t);
    write_fly_toml(
        &t,
        &WEB_V1.replace("force_https = true", "force_https = true\n  forse_https = true"),
    );
    let out = run_rollout(&fly, &t, &image(2), &[]);
    assert_success(&out);
    let err = stderr(&out);
    assert!(
        err.contains("fly.toml:11: [http_service] forse_https: unknown key, ignored"),
        "{err}"
    );
    assert!(group_machines(&fly, "app").iter().all(|m| m.image() == image(2)));
}

/// First deploy of the volume fixture: one machine mounting a new `notes_data` in fra.
/// Returns (machine id, volume id).
fn deployed_volume_app(fly: &FlyApi, t: &TestDir) -> (String, String) {
    write_fly_toml(t, &fixture("03-volume-autoextend.toml"));
    assert_success(&run_rollout(fly, t, &image(1), &[]));
    let machines = group_machines(fly, "app");
    assert_eq!(machines.len(), 1);
    let volume = machines[0].config["mounts"][0]["volume"]
        .as_str()
        .unwrap()
        .to_string();
    (machines[0].id.clone(), volume)
}

fn attached_to(fly: &FlyApi, volume: &str) -> Option<String> {
    fly.volumes(APP)
        .into_iter()
        .find(|v| v.id == volume)
        .unwrap_or_else(|| panic!("no volume {volume}"))
        .attached_machine_id
}

fn without_mounts(fly_toml: &str) -> String {
    let start = fly_toml.find("[mounts]").unwrap();
    let end = fly_toml.find("[http_service]").unwrap();
    format!("{}{}", &fly_toml[..start], &fly_toml[end..])
}

/// A `[[mounts]]` source renamed in fly.toml: a machine's volume cannot be swapped, and `fly
/// deploy` refuses it before anything changes (`validateVolumeConfig`), even with a free volume
/// of the new name; so does nixfly, naming both ways out.
#[test]
fn a_renamed_mount_is_refused_before_any_change() {
    let fly = new_app();
    let t = TestDir::new();
    let (machine, volume) = deployed_volume_app(&fly, &t);
    write_fly_toml(
        &t,
        &fixture("03-volume-autoextend.toml").replace("source = \"notes_data\"", "source = \"notes_v2\""),
    );
    fly.add_volume(APP, "notes_v2", "fra", 10);
    let before = fly.mutating_requests().len();
    let out = run_rollout(&fly, &t, &image(2), &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "machine {machine} (process group app) mounts volume {volume} named \"notes_data\", and fly.toml mounts \"notes_v2\""
        )) && err.contains("set source back to \"notes_data\"")
            && err.contains(&format!("fly machine destroy {machine}")),
        "{err}"
    );
    assert_eq!(fly.mutating_requests().len(), before, "nothing changed");
}

/// `[[mounts]]` removed from fly.toml: flyctl asks before it replaces the machine by one
/// without a volume, and wants --yes without a terminal; nixfly wants --detach-volumes. Then
/// the machine is replaced; the volume stays, unattached, with its data.
#[test]
fn a_removed_mount_replaces_the_machine_only_when_confirmed() {
    let fly = new_app();
    let t = TestDir::new();
    let (old_machine, old_volume) = deployed_volume_app(&fly, &t);
    write_fly_toml(&t, &without_mounts(&fixture("03-volume-autoextend.toml")));
    let before = fly.mutating_requests().len();
    let out = run_rollout(&fly, &t, &image(2), &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "fly.toml no longer mounts a volume for machine(s) {old_machine}"
        )) && err.contains("--detach-volumes"),
        "{err}"
    );
    assert_eq!(fly.mutating_requests().len(), before, "nothing changed");

    let out = run_rollout(&fly, &t, &image(2), &["--detach-volumes"]);
    assert_success(&out);
    assert!(
        stderr(&out).contains("an update cannot change a machine's volume"),
        "{}",
        stderr(&out)
    );
    let machines = group_machines(&fly, "app");
    assert_eq!(machines.len(), 1);
    assert_ne!(machines[0].id, old_machine);
    assert_eq!(machines[0].region, "fra");
    assert!(
        machines[0].config.get("mounts").is_none(),
        "{}",
        machines[0].config
    );
    assert_eq!(machines[0].image(), image(2));
    assert_eq!(
        attached_to(&fly, &old_volume),
        None,
        "the volume stays, unattached"
    );
    assert_eq!(fly.volumes(APP).len(), 1, "no volume made or destroyed");
    assert!(
        fly.machines(APP)
            .iter()
            .any(|m| m.id == old_machine && m.state == "destroyed")
    );
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// `[[mounts]]` added for a group of two machines: an update cannot attach a volume, so each
/// machine is replaced by one in its region on an unattached volume of its own (flyctl
/// `validateVolumeConfig` counts them per region, `popVolumeFor` hands them out; a volume on
/// a host that does not answer does not count, as in flyctl's `setVolumes`). Too few, and
/// nothing changes; `--dry-run` shows the replacements.
#[test]
fn an_added_mount_replaces_each_machine_onto_a_free_volume_of_its_own() {
    let t = TestDir::new();
    let fly = deployed_web_app(&t);
    let old: Vec<String> = group_machines(&fly, "app").into_iter().map(|m| m.id).collect();
    let region = group_machines(&fly, "app")[0].region.clone();
    write_fly_toml(
        &t,
        &format!("{WEB_V1}\n[mounts]\n  source = \"cache\"\n  destination = \"/cache\"\n"),
    );
    let first = fly.add_volume(APP, "cache", &region, 1);
    let second = fly.add_volume(APP, "cache", &region, 1);
    fly.set_volume_host_status(&second, "unreachable");
    let before = fly.mutating_requests().len();
    let out = run_rollout(&fly, &t, &image(2), &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "requires an unattached volume \"cache\" in {region}, and the app has only 1 for 2 machines"
        )) && err.contains(&format!(
            "create it with `fly volume create cache --region {region}`"
        )),
        "{err}"
    );
    assert_eq!(fly.mutating_requests().len(), before, "nothing changed");

    fly.set_volume_host_status(&second, "ok");
    let dry = run_rollout(&fly, &t, &image(2), &["--dry-run"]);
    assert_success(&dry);
    let preview = String::from_utf8_lossy(&dry.stdout).to_string();
    for id in &old {
        assert!(
            preview.contains(&format!(
                "machine {id} (process group app) has no volume but fly.toml mounts \"cache\": an update \
                 cannot change a machine's volume, so a new machine replaces it, mounting an unattached \
                 volume cache in {region}"
            )),
            "{preview}"
        );
    }
    assert_eq!(fly.mutating_requests().len(), before, "a dry run changes nothing");

    let out = run_rollout(&fly, &t, &image(2), &[]);
    assert_success(&out);
    let machines = group_machines(&fly, "app");
    assert_eq!(machines.len(), 2);
    let mut mounted: Vec<String> = machines
        .iter()
        .map(|m| {
            assert!(!old.contains(&m.id), "machine {} was not replaced", m.id);
            assert_eq!(m.region, region);
            assert_eq!(m.image(), image(2));
            assert_eq!(m.config["mounts"][0]["path"], "/cache");
            let volume = m.config["mounts"][0]["volume"].as_str().unwrap().to_string();
            assert_eq!(attached_to(&fly, &volume), Some(m.id.clone()));
            volume
        })
        .collect();
    mounted.sort();
    let mut expected = vec![first, second];
    expected.sort();
    assert_eq!(mounted, expected);
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// A replacement that fails its checks is rolled back: it is destroyed and a machine with the
/// old config mounts the old volume again (an update could not).
#[test]
fn a_failed_volume_replacement_rolls_back_onto_the_old_volume() {
    let fly = new_app();
    let t = TestDir::new();
    let (_, old_volume) = deployed_volume_app(&fly, &t);
    write_fly_toml(
        &t,
        &(without_mounts(&fixture("03-volume-autoextend.toml"))
            + "\n[checks.health]\n  type = \"http\"\n  port = 8080\n  path = \"/health\"\n  interval = \"10s\"\n  timeout = \"2s\"\n"),
    );
    fly.set_behavior(&image(2)[..30], Behavior::ChecksFail);
    let out = run_rollout(&fly, &t, &image(2), &["--detach-volumes", "--wait-timeout", "5s"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("rolled back"), "{}", stderr(&out));
    let machines = group_machines(&fly, "app");
    assert_eq!(machines.len(), 1, "{machines:#?}");
    let restored = &machines[0];
    assert_eq!(restored.image(), image(1), "{}", stderr(&out));
    assert_eq!(restored.config["mounts"][0]["volume"], json!(old_volume));
    assert_eq!(attached_to(&fly, &old_volume), Some(restored.id.clone()));
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// bluegreen creates green machines next to the blue ones and replaces none: a mount change
/// under it stops before any change.
#[test]
fn bluegreen_refuses_a_mount_change() {
    let fly = new_app();
    let t = TestDir::new();
    let (machine, _) = deployed_volume_app(&fly, &t);
    write_fly_toml(&t, &without_mounts(&fixture("03-volume-autoextend.toml")));
    let before = fly.mutating_requests().len();
    let out = run_rollout(
        &fly,
        &t,
        &image(2),
        &["--strategy", "bluegreen", "--detach-volumes"],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("machine {machine} (process group app)")) && err.contains("--strategy rolling"),
        "{err}"
    );
    assert_eq!(fly.mutating_requests().len(), before);
}

/// bluegreen creates each green with its blue's config, mounts included, and a volume mounts
/// on one machine only: a deploy of machines with volumes is refused before any change
/// rather than failing at the first green (and canary's advice no longer points there).
#[test]
fn bluegreen_refuses_machines_with_volumes() {
    let fly = new_app();
    let t = TestDir::new();
    let (machine, volume) = deployed_volume_app(&fly, &t);
    write_fly_toml(
        &t,
        &(fixture("03-volume-autoextend.toml")
            + "\n[checks.health]\n  type = \"http\"\n  port = 8080\n  path = \"/health\"\n  interval = \"10s\"\n  timeout = \"2s\"\n"),
    );
    let before = fly.mutating_requests().len();
    let out = run_rollout(&fly, &t, &image(2), &["--strategy", "bluegreen"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "the bluegreen strategy does not work with volumes: machine {machine} mounts volume {volume}"
        )) && err.contains("--strategy rolling"),
        "{err}"
    );
    assert_eq!(fly.mutating_requests().len(), before);
    let out = run_rollout(&fly, &t, &image(2), &["--strategy", "canary"]);
    assert!(!out.status.success());
    assert!(!stderr(&out).contains("bluegreen"), "{}", stderr(&out));
    assert_eq!(fly.mutating_requests().len(), before);
}

/// An app whose only machine is outside Fly Launch (made by `fly machine run`, no
/// `fly_platform_version` v2) is deployed as a first deploy, as flyctl does after its warning
/// (`setMachinesForDeployment`): fly.toml's machines are created, with a new volume and the
/// first deploy's addresses, and the other machine is left alone.
#[test]
fn an_app_with_only_machines_outside_fly_launch_gets_a_first_deploy() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let outsider = fly.add_machine_with_config(APP, "fra", "started", json!({"image": image(1)}));
    let t = TestDir::new();
    write_fly_toml(&t, &fixture("03-volume-autoextend.toml"));
    // bluegreen refuses, as flyctl's validateNoDetachedBluegreenMachines does: the outsider
    // is in fly.toml's default group and would go on serving beside the new machine.
    let out = run_rollout(&fly, &t, &image(2), &["--strategy", "bluegreen"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!(
            "machines outside Fly Launch belong to fly.toml's process groups: {outsider} (app)"
        )),
        "{}",
        stderr(&out)
    );
    assert_no_changes(&fly);
    let out = run_rollout(&fly, &t, &image(2), &[]);
    assert_success(&out);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "app {APP} has no Fly Launch machines ({outsider} is not"
        )),
        "{err}"
    );
    let machines = group_machines(&fly, "app");
    assert_eq!(machines.len(), 1, "{machines:#?}");
    assert_eq!(machines[0].image(), image(2));
    let volumes = fly.volumes(APP);
    assert_eq!(volumes.len(), 1, "a first deploy creates the volume");
    assert_eq!(machines[0].config["mounts"][0]["volume"], json!(volumes[0].id));
    assert_eq!(fly.ips(APP).len(), 2, "and the first deploy's addresses");
    let untouched = fly.machine(&outsider);
    assert_eq!(untouched.image(), image(1));
    assert_eq!(untouched.config_history.len(), 1);
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// Without primary_region flyctl sends new machines no region and Fly places them
/// (`machines_launchinput.go`, `launchInputForLaunch`); only a group that mounts a volume
/// needs one, and is refused before any change.
#[test]
fn without_primary_region_fly_places_new_machines_and_only_a_volume_needs_one() {
    let fly = new_app();
    let t = TestDir::new();
    write_fly_toml(&t, "app = \"demo\"\n[http_service]\ninternal_port = 8080\n");
    let out = run_rollout(&fly, &t, &image(1), &[]);
    assert_success(&out);
    let creates = create_bodies(&fly);
    assert_eq!(creates.len(), 2, "{creates:#?}");
    for body in &creates {
        assert!(body.get("region").is_none(), "{body:#}");
        assert!(body["config"]["env"].get("PRIMARY_REGION").is_none(), "{body:#}");
    }
    assert_eq!(group_machines(&fly, "app").len(), 2);
    assert_no_violations(&fly);

    let fly = new_app();
    write_fly_toml(
        &t,
        "app = \"demo\"\n[[mounts]]\nsource = \"data\"\ndestination = \"/data\"\n",
    );
    let out = run_rollout(&fly, &t, &image(1), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "the first deploy creates a volume for process group(s) app, and a volume needs a \
             region: set primary_region in fly.toml"
        ),
        "{}",
        stderr(&out)
    );
    assert_no_changes(&fly);
}

/// `fly deploy -e NAME=VALUE --primary-region R` (flyctl `machines.go`,
/// `determineAppConfigForMachines`): the flags are set over fly.toml's `[env]` and
/// `primary_region`, for new machines, the release command and the release's definition; without
/// a fly.toml `-e` is set over each machine's own env.
#[test]
fn env_and_primary_region_flags_are_set_over_fly_toml() {
    let fly = new_app();
    let t = TestDir::new();
    write_fly_toml(
        &t,
        "app = \"demo\"\nprimary_region = \"ams\"\n[env]\nLOG_LEVEL = \"info\"\nKEEP = \"1\"\n\
         [deploy]\nrelease_command = \"migrate\"\n[http_service]\ninternal_port = 8080\n",
    );
    let flags = [
        "-e",
        "LOG_LEVEL=debug",
        "--env",
        "EXTRA=a=b",
        "--primary-region",
        "fra",
    ];
    let out = run_rollout(&fly, &t, &image(1), &flags);
    assert_success(&out);
    let machines = group_machines(&fly, "app");
    assert_eq!(machines.len(), 2);
    for machine in &machines {
        assert_eq!(machine.region, "fra");
        let env = &machine.config["env"];
        assert_eq!(
            (
                &env["LOG_LEVEL"],
                &env["EXTRA"],
                &env["KEEP"],
                &env["PRIMARY_REGION"]
            ),
            (&json!("debug"), &json!("a=b"), &json!("1"), &json!("fra")),
            "{env:#}"
        );
    }
    let release_machine = create_bodies(&fly)
        .into_iter()
        .find(|b| b["config"]["metadata"]["fly_process_group"] == "fly_app_release_command")
        .expect("a release command machine");
    assert_eq!(release_machine["region"], "fra");
    assert_eq!(release_machine["config"]["env"]["EXTRA"], "a=b");
    assert_eq!(release_machine["config"]["env"]["LOG_LEVEL"], "debug");
    let definition = &fly.releases()[0].definition;
    assert_eq!(definition["primary_region"], "fra");
    assert_eq!(definition["env"]["EXTRA"], "a=b");
    assert_no_violations(&fly);

    // Without a fly.toml the machines keep their own env, with the flags over it; the same
    // flags again change nothing.
    let fly = FlyApi::start();
    fly.add_app(APP);
    let ids = fly.add_machines(
        APP,
        &support::fly_api::MachineSpec::new("app").count(2).env("OWN", "x"),
    );
    let bare = TestDir::new();
    let out = run_rollout(&fly, &bare, &image(2), &["-e", "EXTRA=1"]);
    assert_success(&out);
    for id in &ids {
        let env = &fly.machine(id).config["env"];
        assert_eq!(
            (&env["OWN"], &env["EXTRA"]),
            (&json!("x"), &json!("1")),
            "{env:#}"
        );
    }
    let again = run_rollout(&fly, &bare, &image(2), &["-e", "EXTRA=1"]);
    assert_success(&again);
    assert!(stderr(&again).contains("nothing to deploy"), "{}", stderr(&again));
    assert_no_violations(&fly);
}

/// A relative `[[files]] local_path` is read from the current directory, as flyctl reads it
/// (`toMachineFile`, `internal/appconfig/config.go`): mkFlyDeploy's `flyToml = ./fly.toml` is a
/// copy in the store, alone in its directory, and `nix run .#deploy` runs in the project.
/// Where the current directory lacks the file, the one next to fly.toml is taken.
#[test]
fn a_local_file_is_read_from_the_current_directory_then_next_to_fly_toml() {
    let t = TestDir::new();
    let fly = new_app();
    let store = t.join("store");
    std::fs::create_dir(&store).unwrap();
    let config = store.join("hash-fly.toml");
    std::fs::write(
        &config,
        WEB_V1.to_string()
            + "\n[[files]]\n  guest_path = \"/etc/app.conf\"\n  local_path = \"app.conf\"\n\
               \n[[files]]\n  guest_path = \"/etc/extra.conf\"\n  local_path = \"extra.conf\"\n",
    )
    .unwrap();
    // app.conf in both places (the current directory wins); extra.conf only next to fly.toml.
    std::fs::write(t.join("app.conf"), "from the project").unwrap();
    std::fs::write(store.join("app.conf"), "from beside fly.toml").unwrap();
    std::fs::write(store.join("extra.conf"), "extra").unwrap();
    let out = run_rollout(&fly, &t, &image(1), &["--config", config.to_str().unwrap()]);
    assert_success(&out);
    let machines = group_machines(&fly, "app");
    assert!(!machines.is_empty());
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    for machine in machines {
        assert_eq!(
            machine.config["files"],
            json!([
                {"guest_path": "/etc/app.conf", "raw_value": b64("from the project")},
                {"guest_path": "/etc/extra.conf", "raw_value": b64("extra")},
            ]),
            "machine {}",
            machine.id
        );
    }
    // Missing everywhere: refused before any request, naming both places.
    std::fs::remove_file(store.join("extra.conf")).unwrap();
    let requests = fly.requests().len();
    let out = run_rollout(&fly, &t, &image(2), &["--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("cannot read extra.conf: neither in the current directory nor at")
            && err.contains("store/extra.conf"),
        "{err}"
    );
    assert_eq!(
        fly.requests().len(),
        requests,
        "no request after a refused fly.toml"
    );
}

/// `--config DIR` reads DIR/fly.toml, as flyctl's `ResolveConfigFileFromPath`
/// (`internal/appconfig/file.go`) does; it used to fail with "Is a directory".
#[test]
fn a_config_directory_means_its_fly_toml() {
    let t = TestDir::new();
    let fly = new_app();
    let sub = t.join("app");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(
        sub.join("fly.toml"),
        WEB_V1.replace("\"info\"", "\"from-the-directory\""),
    )
    .unwrap();
    let out = run_rollout(&fly, &t, &image(1), &["--config", sub.to_str().unwrap()]);
    assert_success(&out);
    let machines = group_machines(&fly, "app");
    assert!(!machines.is_empty());
    for machine in machines {
        assert_eq!(machine.config["env"]["LOG_LEVEL"], "from-the-directory");
    }
    assert_no_violations(&fly);
}

/// `[deploy] strategy = "bluegreen"` on an app without machines: no blues, so nothing to
/// refuse (flyctl's `strategy_bluegreen.go` refuses a deploy without checks only when there
/// are blues); the first machines are created and checked.
#[test]
fn a_first_deploy_with_the_bluegreen_strategy_creates_the_machines() {
    let t = TestDir::new();
    let fly = new_app();
    write_fly_toml(
        &t,
        &(WEB_V1.to_string()
            + "\n[deploy]\n  strategy = \"bluegreen\"\n\
               \n[[http_service.checks]]\n  path = \"/health\"\n  interval = \"10s\"\n  timeout = \"2s\"\n"),
    );
    let out = run_rollout(&fly, &t, &image(1), &["--bluegreen-cutover-wait", "0s"]);
    assert_success(&out);
    let machines = group_machines(&fly, "app");
    assert_eq!(machines.len(), 2, "{machines:?}");
    assert!(machines.iter().all(|m| m.image() == image(1)));
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// A removed group's machine that cannot be destroyed, after the new config serves: a warning
/// naming it and the command that removes it; the healthy deploy stands (it was rolled back,
/// the removed group's other machine gone for good, and the release marked failed).
#[test]
fn a_removed_groups_machine_that_cannot_be_destroyed_is_a_warning_not_a_rollback() {
    let t = TestDir::new();
    let (fly, cron) = deployed_with_a_cron_group_then_dropped(&t);
    fly.inject_fault(
        "DELETE",
        &format!("/machines/{}$", cron[1]),
        10,
        FaultKind::Status {
            status: 412,
            message: "failed_precondition: host is draining".into(),
        },
    );
    let out = run_rollout(&fly, &t, &image(2), &["--destroy-removed-groups"]);
    let err = stderr(&out);
    assert_success(&out);
    assert!(
        err.contains(&format!("machine {} of process group cron", cron[1]))
            && err.contains(&format!("fly machine destroy --force {}", cron[1])),
        "{err}"
    );
    assert!(!err.contains("rolling back"), "{err}");
    assert_eq!(fly.machine(&cron[0]).state, "destroyed");
    assert_ne!(fly.machine(&cron[1]).state, "destroyed");
    for machine in group_machines(&fly, "app") {
        assert_eq!(machine.image(), image(2));
    }
    assert_eq!(fly.releases().last().unwrap().status(), "complete");
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}
