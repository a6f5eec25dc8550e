//! Immediate, canary and bluegreen deploys against the Fly API double.

use crate::support;

use support::fly_api::{Behavior, FaultKind, FlyApi, MachineSpec, Options};
use support::rollout::{
    APP, BLUEGREEN, assert_no_changes, assert_no_leases, assert_no_violations, canaries, image, run_rollout,
    stderr, the_canary, updated_ids, write_fly_toml,
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
    // Without a fly.toml nixfly does not know the app's services, so it names no URL.
    assert!(!stderr(&out).contains("visit your"), "{}", stderr(&out));

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

/// The canary is made from a running machine of the group that is not a standby, and is no
/// standby itself (flyctl builds it from fly.toml, which has none), even when the first machine
/// of the group is a standby that happens to run.
#[test]
fn the_canary_is_never_a_standby() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let mut standby = MachineSpec::new("app").checks(1).config();
    standby["standbys"] = serde_json::json!(["m-other"]);
    standby["env"]["FLY_STANDBY_FOR"] = "m-other".into();
    fly.add_machine_with_config(APP, "iad", "started", standby);
    fly.add_machines(APP, &MachineSpec::new("app").count(1).checks(1).services(true));
    let t = TestDir::new();
    let out = run_rollout(&fly, &t, &image(6), &["--strategy", "canary"]);
    assert_success(&out);
    let canary = the_canary(&fly);
    assert!(canary.config.get("standbys").is_none(), "{:#?}", canary.config);
    assert!(
        canary.config["env"].get("FLY_STANDBY_FOR").is_none(),
        "{:#?}",
        canary.config
    );
    assert_no_violations(&fly);
}

/// With a fly.toml, the canary goes to its primary_region, as flyctl launches canaries there,
/// not to the region of the machine it was modelled on.
#[test]
fn the_canary_goes_to_the_primary_region() {
    let fly = two_web_machines_in_ams();
    let t = TestDir::new();
    write_fly_toml(
        &t,
        "app = \"demo\"\nprimary_region = \"iad\"\n[http_service]\ninternal_port = 8080\n\
         [checks.alive]\ntype = \"tcp\"\nport = 8080\ninterval = \"15s\"\ntimeout = \"2s\"\n",
    );
    let out = run_rollout(&fly, &t, &image(6), &["--strategy", "canary"]);
    assert_success(&out);
    let canary = the_canary(&fly);
    assert_eq!(canary.region, "iad");
    assert_no_violations(&fly);
}

#[test]
fn bluegreen_replaces_blues_with_healthy_greens() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let blues = fly.add_machines(APP, &MachineSpec::new("app").count(2).checks(1).services(true));
    let t = TestDir::new();
    let new = image(7);

    let out = run_rollout(&fly, &t, &new, &BLUEGREEN);
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

/// The passing failures flaps answers with, each where flyctl rides it out: an acquire answered
/// 503 (fly-go retries `AcquireLease`), waits answered 429 past the request's own retries
/// (flyctl's `WaitForState` keeps waiting), an uncordon answered 408 (transient, flyctl
/// `internal/flapsutil/retry.go`), and a blue's destroy whose answer was lost after it took
/// effect (sent again, it is 404: already gone, as flyctl's bluegreen strategy takes it).
/// Without any one of those the deploy fails.
#[test]
fn bluegreen_rides_out_flaps_passing_failures() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let blues = fly.add_machines(APP, &MachineSpec::new("app").count(2).checks(1).services(true));
    fly.inject_fault("POST", "/lease", 1, FaultKind::Unavailable);
    fly.inject_fault(
        "GET",
        "/wait",
        6,
        FaultKind::TooManyRequests { retry_after_secs: 0 },
    );
    fly.inject_fault(
        "POST",
        "/uncordon",
        1,
        FaultKind::Status {
            status: 408,
            message: "upstream timeout".into(),
        },
    );
    fly.inject_fault(
        "DELETE",
        &format!("/machines/{}", blues[0]),
        1,
        FaultKind::AfterCommitBroken,
    );
    let t = TestDir::new();

    let out = run_rollout(&fly, &t, &image(7), &BLUEGREEN);
    assert_success(&out);
    assert!(fly.pending_faults().is_empty(), "{:?}", fly.pending_faults());
    for blue in &blues {
        assert_eq!(fly.machine(blue).state, "destroyed", "blue {blue}");
    }
    let deletes = fly.requests_to("DELETE", &format!("/machines/{}", blues[0]));
    assert_eq!(
        deletes.iter().map(|r| r.status).collect::<Vec<_>>(),
        [200, 404],
        "the lost destroy was sent again and found the machine gone"
    );
    assert_eq!(
        fly.machines(APP).iter().filter(|m| m.state == "started").count(),
        2
    );
    assert_eq!(fly.releases()[0].statuses, ["created", "running", "complete"]);
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// flaps' affinity cookie, where flaps sets it (the double's `affinity`): every read of one
/// machine (get, wait) carries it, so it reaches the node that made the deploy's writes and
/// sees new machines at once; without it the double, like Fly's other nodes, answers 404 for a
/// while.
#[test]
fn machine_reads_carry_flaps_affinity_cookie() {
    let fly = FlyApi::with_options(Options {
        affinity: true,
        ..Options::default()
    });
    fly.add_app(APP);
    fly.add_machines(APP, &MachineSpec::new("app").count(2).checks(1).services(true));
    let t = TestDir::new();

    let out = run_rollout(&fly, &t, &image(7), &BLUEGREEN);
    assert_success(&out);
    let reads: Vec<_> = fly
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains(&format!("/v1/apps/{APP}/machines/")))
        .collect();
    assert!(reads.len() >= 4, "{reads:#?}");
    let without: Vec<_> = reads.iter().filter(|r| !r.affinity).collect();
    assert!(
        without.is_empty(),
        "reads without the affinity cookie: {without:#?}"
    );
    let not_found: Vec<_> = reads.iter().filter(|r| r.status == 404).collect();
    assert!(not_found.is_empty(), "{not_found:#?}");
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
        err.contains("bluegreen") && err.contains("no machine has one"),
        "{err}"
    );
    assert_no_changes(&fly);
    assert_no_violations(&fly);
}

/// A seeded machine of `group` carrying flyctl's bluegreen tag.
fn tagged(fly: &FlyApi, group: &str, state: &str, tag: &str) -> String {
    let mut config = MachineSpec::new(group).checks(1).config();
    config["metadata"]["fly_bluegreen_deployment_tag"] = tag.into();
    fly.add_machine_with_config(APP, "iad", state, config)
}

#[test]
fn bluegreen_cuts_over_like_flyctl_and_clears_an_earlier_deploys_leftovers() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    // web: two serving blues from a finished bluegreen deploy, and a green of a later one
    // that was interrupted before it took traffic (still cordoned).
    let web = vec![
        tagged(&fly, "app", "started", "1700000000"),
        tagged(&fly, "app", "started", "1700000000"),
    ];
    let stale_green = tagged(&fly, "app", "started", "1700000500");
    fly.cordon(&stale_green);
    // worker: no checks (fine: web has some), and a blue an interrupted deploy had already
    // tagged as replaced.
    let worker = fly.add_machines(APP, &MachineSpec::new("worker").count(1).state("stopped"));
    let mut replaced = MachineSpec::new("worker").config();
    replaced["metadata"]["fly_bluegreen_deployment_tag"] = "safe_to_destroy".into();
    let stale_blue = fly.add_machine_with_config(APP, "iad", "stopped", replaced);
    // cron: checks, every machine stopped.
    let cron = fly.add_machines(APP, &MachineSpec::new("cron").count(2).checks(1).state("stopped"));
    let t = TestDir::new();
    let new = image(9);

    let plan = run_rollout(&fly, &t, &new, &["--strategy", "bluegreen", "--dry-run"]);
    let plan = String::from_utf8_lossy(&plan.stdout).into_owned();
    for leftover in [&stale_green, &stale_blue] {
        assert!(
            plan.contains(&format!(
                "machine {leftover}: left over from an interrupted bluegreen deploy"
            )),
            "{plan}"
        );
    }
    assert!(
        plan.contains(&format!(
            "wave 1: a green machine beside each of {} {}\n",
            web[0], web[1]
        )),
        "{plan}"
    );
    let out = run_rollout(
        &fly,
        &t,
        &new,
        &["--strategy", "bluegreen", "--bluegreen-cutover-wait", "500ms"],
    );
    assert_success(&out);

    let requests = fly.requests();
    let at = |method: &str, suffix: &str| {
        requests
            .iter()
            .position(|r| r.method == method && r.path.ends_with(suffix))
            .unwrap_or_else(|| panic!("no {method} {suffix}"))
    };
    let blues: Vec<&String> = web.iter().chain(&worker).chain(&cron).collect();
    let old: Vec<&String> = blues.iter().copied().chain([&stale_green, &stale_blue]).collect();
    let first_create = at("POST", &format!("/v1/apps/{APP}/machines"));
    for leftover in [&stale_green, &stale_blue] {
        assert!(at("DELETE", &format!("/machines/{leftover}")) < first_create);
    }
    let greens: Vec<_> = fly
        .machines(APP)
        .into_iter()
        .filter(|m| !old.contains(&&m.id))
        .collect();
    assert_eq!(
        greens.len(),
        blues.len(),
        "one green per blue, none for the leftovers"
    );
    for green in &greens {
        assert_eq!(green.image(), new);
        assert!(!green.cordoned, "green {} still cordoned", green.id);
        assert!(
            green
                .metadata("fly_bluegreen_deployment_tag")
                .unwrap()
                .parse::<u64>()
                .is_ok()
        );
    }
    // cron's machines are all stopped: one green is started anyway to check the new config,
    // the other mirrors its stopped blue; so does the worker's.
    let states = |group: &str| {
        let mut states: Vec<String> = greens
            .iter()
            .filter(|g| g.process_group() == group)
            .map(|g| g.state.clone())
            .collect();
        states.sort();
        states
    };
    assert_eq!(states("cron"), ["started", "stopped"]);
    assert_eq!(states("worker"), ["stopped"]);
    assert_eq!(states("app"), ["started", "started"]);

    // uncordon greens, tag blues, wait, cordon blues, wait, stop the running ones, wait for
    // stopped, destroy.
    let last_uncordon = greens
        .iter()
        .map(|g| at("POST", &format!("{}/uncordon", g.id)))
        .max()
        .unwrap();
    for blue in &blues {
        let tag = at("POST", &format!("{blue}/metadata/fly_bluegreen_deployment_tag"));
        let cordon = at("POST", &format!("{blue}/cordon"));
        let destroy = at("DELETE", &format!("/machines/{blue}"));
        assert!(
            last_uncordon < tag && tag < cordon && cordon < destroy,
            "blue {blue}"
        );
        assert!(
            requests[cordon].at >= requests[last_uncordon].at + std::time::Duration::from_millis(450),
            "blue {blue} cordoned without the pause"
        );
        assert_eq!(fly.machine(blue).state, "destroyed");
    }
    for blue in &web {
        let stop = at("POST", &format!("{blue}/stop"));
        assert!(stop > at("POST", &format!("{blue}/cordon")));
        assert!(stop < at("DELETE", &format!("/machines/{blue}")));
        let events: Vec<String> = fly
            .machine(blue)
            .events
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_string())
            .collect();
        // Stopped gracefully, and only destroyed once stopped.
        assert_eq!(
            events[events.len() - 3..],
            ["stop", "exit", "destroy"],
            "{events:?}"
        );
    }
    assert!(
        requests
            .iter()
            .all(|r| !(r.path.ends_with("/stop") && cron.iter().any(|c| r.path.contains(c.as_str()))))
    );
    assert_eq!(fly.releases()[0].statuses, ["created", "running", "complete"]);
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

#[test]
fn canary_with_volumes_is_refused_before_any_change() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let volume = fly.add_volume(APP, "data", "iad", 1);
    let mut config = MachineSpec::new("app").checks(1).config();
    config["mounts"] = serde_json::json!([{"volume": volume, "name": "data", "path": "/data"}]);
    let machine = fly.add_machine_with_config(APP, "iad", "started", config);
    let t = TestDir::new();

    // --strategy canary on machines that mount a volume.
    let out = run_rollout(&fly, &t, &image(10), &["--strategy", "canary"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("canary") && err.contains(&machine), "{err}");

    // fly.toml asking for canary with [[mounts]]: refused when fly.toml is read, as flyctl's
    // validation does.
    write_fly_toml(
        &t,
        "app = \"demo\"\nprimary_region = \"iad\"\n[deploy]\nstrategy = \"canary\"\n[[mounts]]\nsource = \"data\"\ndestination = \"/data\"\n",
    );
    let out = run_rollout(&fly, &t, &image(10), &[]);
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(
        err.contains("fly.toml:5: [deploy] strategy: the canary strategy does not work with [[mounts]]"),
        "{err}"
    );

    assert_no_changes(&fly);
    assert_eq!(fly.machine(&machine).config_history.len(), 1);
    assert_no_violations(&fly);
}

#[test]
fn multi_container_machines_and_machine_config_are_refused_not_ignored() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let mut config = MachineSpec::new("app").config();
    config["containers"] = serde_json::json!([
        {"name": "app", "image": "registry.fly.io/demo@sha256:aa"},
        {"name": "sidecar", "image": "nginx:1.27"},
    ]);
    let machine = fly.add_machine_with_config(APP, "iad", "started", config);
    let t = TestDir::new();

    let out = run_rollout(&fly, &t, &image(11), &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("machine {machine} runs 2 containers")) && err.contains("fly deploy"),
        "{err}"
    );

    write_fly_toml(
        &t,
        "app = \"demo\"\nprimary_region = \"iad\"\nmachine_config = \"containers.json\"\ncontainer = \"app\"\n",
    );
    let out = run_rollout(&fly, &t, &image(11), &[]);
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    for key in ["fly.toml:3: machine_config", "fly.toml:4: container"] {
        assert!(
            err.contains(&format!("{key}: nixfly does not build multi-container machines")),
            "{err}"
        );
    }
    assert_no_changes(&fly);
    assert_no_violations(&fly);
}

/// The double with two web machines in ams, each with a check and services: the canary
/// modelled on them would go to ams unless told otherwise.
fn two_web_machines_in_ams() -> FlyApi {
    let fly = FlyApi::start();
    fly.add_app(APP);
    fly.add_machines(
        APP,
        &MachineSpec::new("app")
            .count(2)
            .region("ams")
            .checks(1)
            .services(true),
    );
    fly
}

/// fly.toml for the canary tests: three process groups, `web` with an HTTP service, a health
/// check and its own `[[vm]]`; `cron` has no machines yet.
const THREE_GROUPS: &str = "app = \"demo\"\nprimary_region = \"iad\"\n\
    [processes]\nweb = \"serve\"\nworker = \"work\"\ncron = \"tick\"\n\
    [http_service]\ninternal_port = 8080\nprocesses = [\"web\"]\n\
    [[http_service.checks]]\npath = \"/\"\ninterval = \"5s\"\ntimeout = \"1s\"\n\
    [[vm]]\nsize = \"shared-cpu-1x\"\nmemory = \"512mb\"\nprocesses = [\"web\"]\n";

/// Two web machines and one worker on a performance-2x guest, with metadata of its own.
fn three_group_app(fly: &FlyApi) -> Vec<String> {
    fly.add_app(APP);
    let mut ids = fly.add_machines(APP, &MachineSpec::new("web").count(2).checks(1).services(true));
    let mut worker = MachineSpec::new("worker").config();
    worker["guest"] = serde_json::json!({"cpu_kind": "performance", "cpus": 2, "memory_mb": 4096});
    worker["metadata"]["owner"] = "team-a".into();
    ids.push(fly.add_machine_with_config(APP, "iad", "started", worker));
    ids
}

/// As flyctl's `deployCanaryMachines`: one canary per process group of fly.toml, a group with
/// no machine yet included, each built from fly.toml (`launchInputForLaunch`: no metadata of
/// the machine it would replace; the guest of `[[vm]]`, else of a machine whose size differs
/// from the default, `inferCanaryGuest`), all destroyed before any machine is created for a new
/// group or updated.
#[test]
fn every_group_gets_a_canary_from_fly_toml_before_any_machine_changes() {
    let fly = FlyApi::start();
    let ids = three_group_app(&fly);
    let t = TestDir::new();
    write_fly_toml(&t, THREE_GROUPS);
    let new = image(6);
    let dry = run_rollout(&fly, &t, &new, &["--strategy", "canary", "--dry-run"]);
    assert_success(&dry);
    let preview = String::from_utf8_lossy(&dry.stdout);
    for line in [
        "process group web: a canary machine from fly.toml in iad (shared cpu x1, 512 MB)",
        "process group worker: a canary machine from fly.toml in iad (performance cpu x2, 4096 MB)",
        "process group cron: a canary machine from fly.toml in iad (shared cpu x1, 256 MB)",
    ] {
        assert!(preview.contains(line), "{line} in {preview}");
    }
    assert_no_changes(&fly);
    let out = run_rollout(&fly, &t, &new, &["--strategy", "canary"]);
    assert_success(&out);
    // As flyctl ends a deploy (`deploy.go`, the URL of `appconfig.Config.URL`).
    assert!(
        stderr(&out).contains("visit your newly deployed app at https://demo.fly.dev/"),
        "{}",
        stderr(&out)
    );

    let canaries = canaries(&fly);
    let group_of = |m: &support::fly_api::Machine| m.metadata("fly_process_group").unwrap().to_string();
    let mut groups: Vec<String> = canaries.iter().map(group_of).collect();
    groups.sort();
    assert_eq!(groups, ["cron", "web", "worker"], "{canaries:#?}");
    for canary in &canaries {
        assert_eq!(canary.state, "destroyed", "{canary:#?}");
        assert_eq!(canary.image(), new);
        assert_eq!(canary.region, "iad");
        assert_eq!(
            canary.config["dns"],
            serde_json::json!({"skip_registration": true})
        );
        assert_eq!(
            canary.metadata("owner"),
            None,
            "built from fly.toml, not a machine"
        );
        let guest = &canary.config["guest"];
        let size = (
            guest["cpu_kind"].as_str().unwrap(),
            guest["cpus"].as_u64().unwrap(),
            guest["memory_mb"].as_u64().unwrap(),
        );
        let expected = match group_of(canary).as_str() {
            "web" => ("shared", 1, 512),
            "worker" => ("performance", 2, 4096),
            _ => ("shared", 1, 256),
        };
        assert_eq!(size, expected, "{}", group_of(canary));
    }
    let web_canary = canaries.iter().find(|m| group_of(m) == "web").unwrap();
    assert_eq!(
        web_canary.config["services"][0]["checks"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "{:#?}",
        web_canary.config
    );

    let requests = fly.requests();
    let canary_ids: Vec<&str> = canaries.iter().map(|m| m.id.as_str()).collect();
    let last_canary_destroyed = requests
        .iter()
        .rposition(|r| {
            r.method == "DELETE"
                && canary_ids
                    .iter()
                    .any(|id| r.path.ends_with(&format!("/machines/{id}")))
        })
        .expect("canaries destroyed");
    let first_change = requests
        .iter()
        .position(|r| {
            let update = r.method == "POST"
                && updated_ids(std::slice::from_ref(r))
                    .first()
                    .is_some_and(|id| ids.contains(id));
            let create = r.method == "POST"
                && r.path == format!("/v1/apps/{APP}/machines")
                && r.body
                    .as_ref()
                    .is_some_and(|b| b["config"]["metadata"].get("fly_canary").is_none());
            update || create
        })
        .expect("machines changed");
    assert!(last_canary_destroyed < first_change, "{requests:#?}");
    for id in &ids {
        assert_eq!(fly.machine(id).image(), new);
    }
    let cron: Vec<_> = fly
        .machines(APP)
        .into_iter()
        .filter(|m| m.metadata("fly_process_group") == Some("cron") && m.state != "destroyed")
        .collect();
    assert!(!cron.is_empty(), "the new group got its machines");
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// A canary that fails in one group leaves every group as it was: the others' canaries ran
/// beside it and are destroyed, no machine was updated, and the new group got none (flyctl
/// runs every canary before any other change).
#[test]
fn a_canary_failing_in_one_group_changes_no_group() {
    let fly = FlyApi::start();
    let ids = three_group_app(&fly);
    let t = TestDir::new();
    write_fly_toml(&t, THREE_GROUPS);
    let new = image(7);
    // Only web's canary has a check, and it goes critical.
    fly.set_behavior(&new[..30], Behavior::ChecksFail);
    let out = run_rollout(&fly, &t, &new, &["--strategy", "canary", "--wait-timeout", "5s"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("failed before any machine changed"), "{err}");

    let canaries = canaries(&fly);
    assert_eq!(canaries.len(), 3, "{canaries:#?}");
    assert!(canaries.iter().all(|m| m.state == "destroyed"), "{canaries:#?}");
    let requests = fly.requests();
    let updated: Vec<String> = updated_ids(&requests)
        .into_iter()
        .filter(|id| ids.contains(id))
        .collect();
    assert!(updated.is_empty(), "updated {updated:?}");
    let created: Vec<_> = fly
        .machines(APP)
        .into_iter()
        .filter(|m| !ids.contains(&m.id) && m.metadata("fly_canary").is_none())
        .collect();
    assert!(created.is_empty(), "{created:#?}");
    for id in &ids {
        assert_ne!(fly.machine(id).image(), new);
    }
    assert_eq!(fly.releases()[0].status(), "failed");
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// A standby that runs (it took over for its machine) gets a green that runs too, as flyctl's
/// greens take `shouldSkipLaunch` (`machines_launchinput.go`: a started machine is launched
/// before `standbys` is looked at); a stopped standby's green is created stopped. Before, every
/// standby's green stayed stopped, and the capacity the running one gave went with its blue.
#[test]
fn bluegreen_starts_the_green_of_a_running_standby_only() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let standby = |primary: &str| {
        let mut config = MachineSpec::new("worker").checks(1).config();
        config["standbys"] = serde_json::json!([primary]);
        config["env"]["FLY_STANDBY_FOR"] = primary.into();
        config
    };
    let primary = fly.add_machines(APP, &MachineSpec::new("worker").checks(1))[0].clone();
    let running = fly.add_machine_with_config(APP, "iad", "started", standby(&primary));
    let stopped = fly.add_machine_with_config(APP, "iad", "stopped", standby(&primary));
    let t = TestDir::new();
    let out = run_rollout(&fly, &t, &image(8), &BLUEGREEN);
    assert_success(&out);
    let greens: Vec<_> = fly
        .machines(APP)
        .into_iter()
        .filter(|m| ![&primary, &running, &stopped].contains(&&m.id))
        .collect();
    assert_eq!(greens.len(), 3, "{greens:#?}");
    let states = |standby: bool| -> Vec<String> {
        let mut states: Vec<String> = greens
            .iter()
            .filter(|g| g.config.get("standbys").is_some_and(|s| s.is_array()) == standby)
            // A create with skip_launch leaves the machine `created`, and `stopped` once Fly
            // has its image (the double's timing: a loaded machine may see either), never
            // started.
            .map(|g| match g.state.as_str() {
                "created" => "stopped".to_string(),
                state => state.to_string(),
            })
            .collect();
        states.sort();
        states
    };
    assert_eq!(states(false), ["started"]);
    assert_eq!(states(true), ["started", "stopped"]);
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// `--primary-region` without a fly.toml still places the canary, as its --help says.
#[test]
fn the_primary_region_flag_places_the_canary_without_a_fly_toml() {
    let fly = two_web_machines_in_ams();
    let t = TestDir::new();
    let out = run_rollout(
        &fly,
        &t,
        &image(6),
        &["--strategy", "canary", "--primary-region", "fra"],
    );
    assert_success(&out);
    assert_eq!(the_canary(&fly).region, "fra");
    assert_no_violations(&fly);
}
