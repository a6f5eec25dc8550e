//! Issue 10, points 1–6: where nixfly used to differ from flyctl in ways real Fly would
//! punish, each against the double behaving as Fly does (the rules name the flyctl/fly-go file
//! they follow in crates/fly-api-double).

use crate::support;

use std::process::Command;
use support::fly_api::{FlyApi, MachineSpec, Options};
use support::rollout::{
    APP, NO_ROOM, assert_no_changes, assert_no_leases, assert_no_violations, image, live_machines,
    one_machine_and_a_release, run_rollout, stderr, write_fly_toml,
};
use support::{TestDir, assert_success};

/// Point 1: release calls carry `Bearer <tokens>` (flyctl `internal/uiex/releases.go`), the
/// Machines API `FlyV1 <macaroons>`; the double answers FlyV1 on the releases API with 401.
/// GraphQL gets what fly-go's GraphQL client sends (`client.go`, `Tokens.GraphQLHeader()`):
/// `FlyV1 <macaroons,oauth>` for a token with macaroons, and the double refuses `Bearer` there.
#[test]
fn release_records_are_sent_with_bearer_and_machines_and_graphql_calls_with_flyv1() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    fly.add_machines(APP, &MachineSpec::new("app").count(2));
    let t = TestDir::new();
    let out = run_rollout(&fly, &t, &image(1), &[]);
    assert_success(&out);
    let requests = fly.requests();
    let (releases, others): (Vec<_>, Vec<_>) = requests.iter().partition(|r| r.path.starts_with("/api/"));
    let (graphql, machines): (Vec<_>, Vec<_>) = others.into_iter().partition(|r| r.path == "/graphql");
    assert_eq!(releases.len(), 3, "create, running, complete: {releases:?}");
    assert!(
        releases
            .iter()
            .all(|r| r.auth_scheme == "Bearer" && r.status < 300),
        "{releases:?}"
    );
    assert_eq!(
        graphql.len(),
        1,
        "the current release's config (no fly.toml): {graphql:?}"
    );
    assert!(
        graphql.iter().all(|r| r.auth_scheme == "FlyV1" && r.status < 300),
        "{graphql:?}"
    );
    assert!(machines.iter().all(|r| r.auth_scheme == "FlyV1"), "{machines:?}");
    // Leases carry their TTL where fly-go sends it (`?ttl=`, `flaps/flaps_machines.go`
    // `AcquireLease`, `RefreshLease`) and where the spec puts it (the body).
    let leases: Vec<_> = machines
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/lease"))
        .collect();
    assert!(!leases.is_empty());
    for lease in leases {
        let ttl = &lease.body.as_ref().expect("a lease body")["ttl"];
        assert_eq!(lease.query, format!("ttl={ttl}"), "{lease:?}");
        assert_eq!(ttl, 13, "{lease:?}");
    }
    assert_eq!(fly.releases()[0].statuses, ["created", "running", "complete"]);
    assert_no_violations(&fly);
}

/// Without a fly.toml, flyctl takes the app's config from its current release (GraphQL
/// `currentReleaseUnprocessed.configDefinition`, `internal/appconfig/remote.go`): its
/// `[deploy] release_command` runs, as `fly deploy` would run it, while the machines keep
/// their config. (Before, the migration was skipped without a word.)
#[test]
fn without_fly_toml_the_current_releases_release_command_runs() {
    let fly = FlyApi::start();
    let id = one_machine_and_a_release(
        &fly,
        serde_json::json!({
            "app": APP,
            "primary_region": "iad",
            "env": {"LOG_LEVEL": "info"},
            "deploy": {"release_command": "bin/migrate", "strategy": "immediate"},
            "http_service": null,
        }),
    );
    let t = TestDir::new();
    let out = run_rollout(&fly, &t, &image(2), &[]);
    assert_success(&out);
    let err = stderr(&out);
    assert!(
        err.contains("no fly.toml: the [deploy] settings (release_command, strategy, ...) of app demo's current release apply"),
        "{err}"
    );
    let release_machine = fly
        .machines(APP)
        .into_iter()
        .find(|m| m.metadata("fly_process_group") == Some("fly_app_release_command"))
        .expect("the release_command ran");
    assert_eq!(
        release_machine.config["init"]["cmd"],
        serde_json::json!(["bin/migrate"])
    );
    // The release's strategy applies; the machine's own env stays.
    assert_eq!(fly.releases().last().unwrap().strategy, "IMMEDIATE");
    assert_eq!(fly.machine(&id).image(), image(2));
    assert_eq!(fly.machine(&id).config["env"]["LOG_LEVEL"], "debug");
    assert_no_violations(&fly);
}

/// `fly secrets set` records the app's new secrets version in config.yml
/// (`app_secrets_minvers`), and flyctl asks every machine it creates or updates for at least
/// that version (`min_secrets_version`), so that a deploy right after the change does not start
/// machines on the old secrets; so does nixfly.
#[test]
fn machines_are_asked_for_the_secrets_version_flyctl_recorded() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    fly.add_machines(APP, &MachineSpec::new("app").count(2));
    let t = TestDir::new();
    let config_dir = t.join("flyconfig");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("config.yml"),
        "app_secrets_minvers:\n    demo: 5\n    other: 9\n",
    )
    .unwrap();
    let out =
        support::run(support::rollout::rollout_cmd(&fly, &t, &image(4)).env("FLY_CONFIG_DIR", &config_dir));
    assert_success(&out);
    let updates = support::rollout::updated_ids(&fly.requests());
    assert_eq!(updates.len(), 2);
    let bodies: Vec<_> = fly
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == "POST"
                && updates
                    .iter()
                    .any(|id| r.path.ends_with(&format!("/machines/{id}")))
        })
        .map(|r| r.body.unwrap())
        .collect();
    assert_eq!(bodies.len(), 2);
    assert!(
        bodies.iter().all(|b| b["min_secrets_version"] == 5),
        "{bodies:#?}"
    );
    // Without the entry, nothing is asked.
    let before = fly.requests().len();
    let out = run_rollout(&fly, &t, &image(5), &[]);
    assert_success(&out);
    let second: Vec<_> = fly.requests()[before..]
        .iter()
        .filter(|r| {
            r.method == "POST"
                && r.path
                    .rsplit('/')
                    .next()
                    .is_some_and(|id| updates.iter().any(|u| u == id))
        })
        .map(|r| r.body.clone().unwrap())
        .collect();
    assert_eq!(second.len(), 2, "{second:#?}");
    assert!(
        second.iter().all(|b| b.get("min_secrets_version").is_none()),
        "{second:#?}"
    );
    assert_no_violations(&fly);
}

/// fly.toml's host_dedication_id differs from the machines' hosts: an update cannot move a
/// machine, so flyctl replaces it (`launchInputForUpdate`), and refuses for one whose volume
/// ties it to its host; so does nixfly.
#[test]
fn machines_on_another_host_dedication_are_replaced() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let old = fly.add_machines(APP, &MachineSpec::new("app").count(2).region("iad"));
    let t = TestDir::new();
    write_fly_toml(
        &t,
        "app = \"demo\"\nprimary_region = \"iad\"\nhost_dedication_id = \"hd-1\"\n",
    );
    let out = run_rollout(&fly, &t, &image(4), &[]);
    assert_success(&out);
    for id in &old {
        assert_eq!(fly.machine(id).state, "destroyed", "{id}");
    }
    let new: Vec<_> = fly
        .machines(APP)
        .into_iter()
        .filter(|m| !old.contains(&m.id))
        .collect();
    assert_eq!(new.len(), 2, "{new:#?}");
    for machine in &new {
        assert_eq!(machine.config["guest"]["host_dedication_id"], "hd-1");
        assert_eq!(machine.image(), image(4));
        assert_eq!(machine.region, "iad");
    }
    // Now on that dedication, they are not replaced again.
    let out = run_rollout(&fly, &t, &image(4), &[]);
    assert_success(&out);
    assert!(stderr(&out).contains("nothing to deploy"), "{}", stderr(&out));
    assert_no_violations(&fly);
}

/// Without fly.toml the release's `definition` is the app config rebuilt from the
/// machines (flyctl `internal/appconfig/remote.go` `getAppV2ConfigFromMachines`), never
/// null (the double answers 422), and `build_id` is an integer.
#[test]
fn without_fly_toml_the_release_definition_comes_from_the_machines() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let spec = MachineSpec::new("app")
        .count(3)
        .checks(1)
        .services(true)
        .env("PRIMARY_REGION", "ams")
        .env("LOG_LEVEL", "info");
    fly.add_machines(APP, &spec);
    let t = TestDir::new();
    let out = run_rollout(&fly, &t, &image(2), &[]);
    assert_success(&out);
    // What the machines cannot say is named: a release_command would not run.
    assert!(
        stderr(&out).contains("no fly.toml, and the app has no release with a config: the machines of app demo keep their config")
            && stderr(&out).contains("release_command (migrations)"),
        "{}",
        stderr(&out)
    );
    let release = &fly.releases()[0];
    assert_eq!(release.build_id, Some(0));
    let definition = &release.definition;
    assert_eq!(definition["app"], APP);
    assert_eq!(definition["primary_region"], "ams");
    assert_eq!(definition["env"]["LOG_LEVEL"], "info");
    // The seeded check and service, in fly.toml's words.
    assert_eq!(definition["checks"]["http-0"]["path"], "/health");
    assert_eq!(definition["services"][0]["internal_port"], 8080);
    assert_eq!(definition["services"][0]["auto_stop_machines"], "stop");
    assert_no_violations(&fly);
}

/// A macaroon in the wire format (superfly/macaroon `format.go`, `macaroon.go`): `fm2_` and
/// the base64 of the MessagePack array `[[kid, rnd, proof], location, [4, [nb, na]], tail]`,
/// written byte by byte here so that nixfly's decoder is checked against the format, not
/// against itself.
fn macaroon(kid: &[u8], not_after: u32) -> String {
    use base64::Engine as _;
    let bin = |bytes: &[u8]| [&[0xc4, bytes.len() as u8][..], bytes].concat();
    let location = "https://api.fly.io/v1";
    let mut raw = vec![0x94, 0x93];
    raw.extend(bin(kid));
    raw.extend(bin(&[1; 16]));
    raw.push(0xc2);
    raw.push(0xa0 | location.len() as u8);
    raw.extend(location.as_bytes());
    raw.extend([0x92, 0x04, 0x92, 0x00, 0xce]);
    raw.extend(not_after.to_be_bytes());
    raw.extend(bin(&[9; 32]));
    format!("fm2_{}", base64::engine::general_purpose::STANDARD.encode(raw))
}

fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32
}

/// A rollout whose only token is `access_token` in a `fly auth login` config.yml.
fn login_session_rollout(fly: &FlyApi, t: &TestDir, session: &str) -> Command {
    let config_dir = t.join("flyconfig");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("config.yml"),
        format!("access_token: {session}\nsend_metrics: true\n"),
    )
    .unwrap();
    let mut cmd = t.nixfly();
    cmd.env("FLY_FLAPS_BASE_URL", fly.url())
        .env("FLY_API_BASE_URL", fly.url())
        .env("FLY_CONFIG_DIR", &config_dir)
        .args(["rollout", "--app", APP, "--image", &image(3), "--output", "plain"])
        .args(["--smoke-check-window", "1s"]);
    cmd
}

/// Point 6: a login session's expired macaroons are dropped before use (fly-go
/// `tokens/tokens.go` `pruneBadMacaroons`); macaroons Fly refuses give way, once, to the
/// session's OAuth token; an expired session says `fly auth login`.
#[test]
fn login_sessions_drop_expired_macaroons_and_fall_back_to_their_oauth_token() {
    let oauth = "fo1_sessionoauthtokenfortests";
    let fly = FlyApi::with_options(Options {
        token: oauth.into(),
        ..Options::default()
    });
    fly.add_app(APP);
    fly.add_machines(APP, &MachineSpec::new("app").count(2));
    let t = TestDir::new();
    let now = unix_now();

    // Expired macaroon: pruned, so the OAuth token goes out from the first request on.
    let expired = macaroon(b"old-session", now - 3600);
    let out = support::run(&mut login_session_rollout(
        &fly,
        &t,
        &format!("{expired},{oauth}"),
    ));
    assert_success(&out);
    let requests = fly.requests();
    assert!(requests.iter().all(|r| r.status != 401), "{requests:?}");
    assert!(requests.iter().all(|r| r.auth_scheme == "Bearer"), "{requests:?}");

    // A live macaroon Fly does not take: one 401, then the OAuth token for good.
    let before = fly.requests().len();
    let refused = macaroon(b"other-org", now + 3600);
    let out = support::run(&mut login_session_rollout(
        &fly,
        &t,
        &format!("{refused},{oauth}"),
    ));
    assert_success(&out);
    assert!(
        stderr(&out).contains("retrying with its OAuth token"),
        "{}",
        stderr(&out)
    );
    let requests = &fly.requests()[before..];
    let refusals: Vec<_> = requests.iter().filter(|r| r.status == 401).collect();
    assert_eq!(refusals.len(), 1, "{requests:?}");
    assert_eq!(refusals[0].auth_scheme, "FlyV1");
    let refused_at = requests.iter().position(|r| r.status == 401).unwrap();
    // GraphQL takes every token at once (fly-go `Tokens.GraphQLHeader()`), so the refused
    // macaroon rides along there under FlyV1 beside the OAuth token that lets it in.
    assert!(
        requests[refused_at + 1..]
            .iter()
            .all(|r| r.auth_scheme == "Bearer" || (r.path == "/graphql" && r.auth_scheme == "FlyV1")),
        "{requests:?}"
    );
    assert!(!stderr(&out).contains(oauth) && !stderr(&out).contains(&refused));

    // Nothing left: no request at all, and the way out.
    let before = fly.requests().len();
    let out = support::run(&mut login_session_rollout(&fly, &t, &expired));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("fly auth login"), "{}", stderr(&out));
    assert_eq!(fly.requests().len(), before);

    // A session Fly refuses entirely says `fly auth login` too.
    let out = support::run(&mut login_session_rollout(
        &fly,
        &t,
        &format!("{refused},fo1_revoked"),
    ));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("fly auth login"), "{}", stderr(&out));
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// Point 6: flyctl reads FLY_ACCESS_TOKEN before FLY_API_TOKEN
/// (`internal/config/config.go`: `env.First(AccessTokenEnvKey, APITokenEnvKey)`).
#[test]
fn fly_access_token_wins_over_fly_api_token() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    fly.add_machines(APP, &MachineSpec::new("app"));
    let t = TestDir::new();
    let mut cmd = support::rollout::rollout_cmd(&fly, &t, &image(4));
    cmd.env("FLY_ACCESS_TOKEN", fly.token())
        .env("FLY_API_TOKEN", "fm2_notthetokenthedoubletakes");
    assert_success(&support::run(&mut cmd));
    let mut cmd = support::rollout::rollout_cmd(&fly, &t, &image(5));
    cmd.env("FLY_ACCESS_TOKEN", "fm2_notthetokenthedoubletakes");
    let out = support::run(&mut cmd);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("FLY_ACCESS_TOKEN"), "{}", stderr(&out));
}

/// The image's digest, which the double's per-image rules match on.
fn digest_of(image: &str) -> &str {
    image.rsplit('@').next().unwrap()
}

/// Point 3: the release_command machine pulls the image before it settles, so its waits use
/// the deploy's wait timeout (flyctl `internal/command/deploy/machines_releasecommand.go`:
/// `md.waitTimeout`, then `md.releaseCmdTimeout` for the run), not a short fixed one.
#[test]
fn the_release_command_waits_as_long_as_the_deploy_allows_for_a_slow_pull() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(2).region("ams"));
    let t = TestDir::new();
    write_fly_toml(
        &t,
        "app = \"demo\"\nprimary_region = \"ams\"\n[deploy]\nrelease_command = \"bin/migrate\"\n",
    );
    let new = image(6);
    // 100 Fly seconds (5 s here): longer than one 60-second wait call.
    fly.set_image_pull(digest_of(&new), std::time::Duration::from_secs(100));

    // A wait timeout shorter than the pull: the deploy stops, naming the setting to raise.
    let out = run_rollout(&fly, &t, &new, &["--wait-timeout", "2s"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("did not reach state stopped") && err.contains("--wait-timeout"),
        "{err}"
    );
    for id in &ids {
        assert_eq!(
            fly.machine(id).config_history.len(),
            1,
            "machine {id} was changed"
        );
    }
    let release_machines: Vec<_> = fly
        .machines(APP)
        .into_iter()
        .filter(|m| !ids.contains(&m.id))
        .collect();
    assert_eq!(release_machines.len(), 1);
    assert_eq!(release_machines[0].state, "destroyed", "left behind");

    // One long enough: the pull, the run, then the app machines.
    let out = run_rollout(&fly, &t, &new, &["--wait-timeout", "30s"]);
    assert_success(&out);
    let waits = fly.requests_to("GET", "/wait");
    assert!(
        waits
            .iter()
            .any(|w| w.query.contains("state=stopped") && w.status == 408),
        "the pull outlasted one wait call: {waits:?}"
    );
    for id in &ids {
        assert_eq!(fly.machine(id).image(), new);
    }
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// Point 4: a machine nixfly just created answers 404 to get and wait for a moment; that is
/// retried until the deadline (flyctl `internal/machine/leasable_machine.go`,
/// `WithJustCreated`), for the canary as for the release_command machine. The double keeps no
/// affinity here: with flaps' cookie the reads would reach the node that made the machines and
/// see them at once.
#[test]
fn just_created_machines_that_answer_404_are_waited_for() {
    let fly = FlyApi::with_options(Options {
        affinity: false,
        ..Options::default()
    });
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(2).region("ams").checks(1));
    let t = TestDir::new();
    write_fly_toml(
        &t,
        "app = \"demo\"\nprimary_region = \"ams\"\n[deploy]\nrelease_command = \"bin/migrate\"\n\
         [checks.http-0]\ntype = \"http\"\nport = 8080\npath = \"/health\"\ninterval = \"15s\"\n\
         timeout = \"2s\"\ngrace_period = \"5s\"\nmethod = \"GET\"\n",
    );
    let out = run_rollout(&fly, &t, &image(7), &["--strategy", "canary"]);
    assert_success(&out);
    let created: Vec<String> = fly
        .machines(APP)
        .into_iter()
        .map(|m| m.id)
        .filter(|id| !ids.contains(id))
        .collect();
    assert_eq!(
        created.len(),
        2,
        "release_command and canary machines: {created:?}"
    );
    for id in &created {
        let not_found = fly
            .requests_to("GET", &format!("/machines/{id}/wait"))
            .into_iter()
            .filter(|r| r.status == 404)
            .count();
        assert!(not_found >= 1, "machine {id} was never caught invisible");
        assert_eq!(fly.machine(id).state, "destroyed");
    }
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// Point 5: machines whose host cannot take the update (no room, deploys paused, host not
/// `ok`) are destroyed and re-created with the new config in the same region and process
/// group, as flyctl does (`internal/command/deploy/machines_deploymachinesapp.go`,
/// `machines_launchinput.go`); a rollback later puts the replacement back on the old image.
#[test]
fn machines_their_host_refuses_are_replaced_in_the_same_region_and_group() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(2).region("ams"));
    let workers = fly.add_machines(APP, &MachineSpec::new("worker").count(2).region("syd"));
    fly.refuse_updates(&ids[1], NO_ROOM);
    fly.refuse_updates(&workers[0], "deploys to this host are temporarily disabled");
    fly.set_host_status(&workers[1], "unreachable");
    let t = TestDir::new();
    let new = image(8);
    // The plan says so for the machine known to be on a bad host; the refusals come later.
    let plan = run_rollout(&fly, &t, &new, &["--dry-run"]);
    assert_success(&plan);
    let plan_text = String::from_utf8_lossy(&plan.stdout);
    let line = plan_text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{} (", workers[1])))
        .unwrap_or_default();
    assert!(line.contains("replaced by a new machine"), "{plan_text}");
    assert_no_changes(&fly);
    let out = run_rollout(&fly, &t, &new, &[]);
    assert_success(&out);
    let err = stderr(&out);
    for gone in [&ids[1], &workers[0], &workers[1]] {
        assert!(
            err.contains(&format!("machine {gone} cannot be updated where it runs")),
            "{err}"
        );
        assert_eq!(fly.machine(gone).state, "destroyed", "{gone}");
        assert_eq!(
            fly.machine(gone).image(),
            support::fly_api::MachineSpec::default().image
        );
    }
    // The unreachable one is not even tried, nor leased (flyctl `internal/machine/lease.go`).
    assert!(
        fly.requests_to("POST", &format!("/machines/{}", workers[1]))
            .is_empty()
    );
    let replacements: Vec<_> = fly
        .machines(APP)
        .into_iter()
        .filter(|m| !ids.contains(&m.id) && !workers.contains(&m.id))
        .collect();
    // Groups roll out side by side: the order of creation is the groups' race.
    let mut placed: Vec<(&str, &str)> = replacements
        .iter()
        .map(|m| (m.region.as_str(), m.process_group()))
        .collect();
    placed.sort();
    assert_eq!(placed, [("ams", "app"), ("syd", "worker"), ("syd", "worker")]);
    for m in &replacements {
        assert_eq!(
            (m.state.as_str(), m.image()),
            ("started", new.as_str()),
            "{}",
            m.id
        );
        // Whole configs, the unreachable one's too: what flaps shows of a machine on a host
        // that is not `ok` is a partial `incomplete_config` (fly-go `machine_types.go`: "not
        // suitable to clone or recreate the original machine"), which must not be what the
        // replacement is made from.
        let seeded = MachineSpec::new(m.process_group()).region("syd").config();
        assert_eq!(m.config["restart"], seeded["restart"], "{}", m.id);
        assert_eq!(m.config["env"], seeded["env"], "{}", m.id);
    }
    assert_eq!(fly.machine(&ids[0]).image(), new);

    // Next deploy: the first worker is replaced again, the second fails to start; the
    // rollback puts every machine, the new replacement included, back on the previous image.
    let bad = image(9);
    let new_workers: Vec<_> = replacements
        .iter()
        .filter(|m| m.process_group() == "worker")
        .collect();
    fly.refuse_updates(
        &new_workers[0].id,
        "could not reserve resource for machine: no room",
    );
    fly.set_machine_behavior(
        &new_workers[1].id,
        digest_of(&bad),
        support::fly_api::Behavior::FailToStart,
    );
    let out = run_rollout(&fly, &t, &bad, &["--wait-timeout", "2s"]);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert_eq!(fly.machine(&new_workers[0].id).state, "destroyed");
    let again: Vec<_> = fly
        .machines(APP)
        .into_iter()
        .filter(|m| m.state != "destroyed" && m.process_group() == "worker")
        .collect();
    assert_eq!(again.len(), 2, "{again:?}");
    assert!(
        again.iter().all(|m| m.image() == new && m.state == "started"),
        "{again:?}"
    );
    let twice = again.iter().find(|m| m.id != new_workers[1].id).unwrap();
    let history: Vec<&str> = twice
        .config_history
        .iter()
        .map(|c| c["image"].as_str().unwrap())
        .collect();
    assert_eq!(
        history,
        [bad.as_str(), new.as_str()],
        "created on the new image, rolled back"
    );
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// A machine on a host Fly cannot reach shows only a partial config (fly-go `machine_types.go`,
/// `IncompleteConfig`: "not suitable to clone or recreate the original machine"). Without a
/// fly.toml and without another machine of its group to take the whole config from, the
/// deploy stops before any change and says how to give the config, rather than replace the
/// machine by one that lacks its restart policy, env and services.
#[test]
fn a_lone_machine_on_an_unreachable_host_needs_fly_toml() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let id = fly.add_machines(APP, &MachineSpec::new("app").region("ams"))[0].clone();
    fly.set_host_status(&id, "unreachable");
    let t = TestDir::new();
    let out = run_rollout(&fly, &t, &image(13), &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&id) && err.contains("only part of its config") && err.contains("--config"),
        "{err}"
    );
    assert_no_changes(&fly);
    assert_no_violations(&fly);
}

/// Point 5: a machine with a volume cannot move away from its host; the deploy stops with an
/// error naming the machine and the volume (flyctl `machines_launchinput.go`).
#[test]
fn a_refused_machine_with_a_volume_stops_the_deploy_naming_both() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let volume = fly.add_volume(APP, "data", "ams", 1);
    let mut config = MachineSpec::new("app").region("ams").config();
    config["mounts"] = serde_json::json!([{"volume": volume, "path": "/data", "name": "data"}]);
    let id = fly.add_machine_with_config(APP, "ams", "started", config);
    fly.refuse_updates(&id, "could not reserve resource for machine: insufficient CPUs");
    let t = TestDir::new();
    let out = run_rollout(&fly, &t, &image(10), &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&id) && err.contains(&volume) && err.contains("fly volumes fork"),
        "{err}"
    );
    // The refused update changed nothing: there is nothing to roll back, and no claim that a
    // rollback failed.
    assert!(!err.contains("rolled back") && !err.contains("rollback"), "{err}");
    assert_eq!(fly.machine(&id).config_history.len(), 1);
    assert_eq!(fly.machine(&id).state, "started");
    assert_eq!(fly.machines(APP).len(), 1, "nothing created");

    // On a host Fly cannot reach, it is known before anything changes.
    fly.set_host_status(&id, "unreachable");
    let before = fly.mutating_requests().len();
    let out = run_rollout(&fly, &t, &image(12), &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&id) && err.contains(&volume) && err.contains("unreachable"),
        "{err}"
    );
    assert_eq!(
        fly.mutating_requests().len(),
        before,
        "no lease, no release, no change"
    );
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// Point 5, when the replacement cannot be made either: the refused machine is already
/// destroyed, so the rollback creates it again with its previous config; nothing is left
/// half-done.
#[test]
fn a_replacement_that_cannot_be_created_is_undone_by_the_rollback() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(2).region("ams").checks(1));
    let old = fly.machine(&ids[0]).image().to_string();
    fly.refuse_updates(&ids[1], "could not reserve resource for machine: no room");
    fly.refuse_next_creates(1);
    let t = TestDir::new();
    let out = run_rollout(&fly, &t, &image(11), &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("creating the replacement for machine {}", ids[1])),
        "{err}"
    );
    assert!(err.contains("(insufficient_capacity): try again later"), "{err}");
    assert_eq!(fly.machine(&ids[1]).state, "destroyed");
    let live = live_machines(&fly);
    assert_eq!(live.len(), 2, "{live:?}");
    for m in &live {
        assert_eq!(
            (m.image(), m.state.as_str(), m.region.as_str()),
            (old.as_str(), "started", "ams")
        );
        assert!(m.checks.iter().all(|c| c.status == "passing"), "{:?}", m.checks);
    }
    assert_eq!(fly.releases()[0].status(), "failed");
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// The warning flyctl gives when an app listens on loopback only (`machines_deploymachinesapp.go`,
/// `warnAboutIncorrectListenAddress`), the usual reason a first deploy's checks fail: read from
/// `GET .../ps` once per process group, after the health wait, before the rollback.
#[test]
fn an_app_listening_on_loopback_gets_flyctls_listen_warning() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    fly.add_machines(APP, &MachineSpec::new("app").count(3).checks(1).services(true));
    let t = TestDir::new();
    let new = image(4);
    fly.set_behavior(&new[..30], support::fly_api::Behavior::ChecksFail);
    fly.set_listen_addresses(&new[..30], &["127.0.0.1:8080", "0.0.0.0:9091"]);
    let out = run_rollout(
        &fly,
        &t,
        &new,
        &["--wait-timeout", "3s", "--max-unavailable", "2"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let warning = "the app is not listening on the expected address, so fly-proxy cannot reach \
                   it; make it listen on 0.0.0.0:8080 (listening now: /bin/app on 127.0.0.1:8080, \
                   0.0.0.0:9091)";
    assert_eq!(err.matches(warning).count(), 1, "once per group: {err}");
    assert!(
        err.find(warning) < err.find("rolling back"),
        "the warning comes before the rollback: {err}"
    );
    assert_eq!(fly.requests_to("GET", "/ps").len(), 1);
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// A healthy machine whose app binds 0.0.0.0 costs one look and no warning; a machine without
/// checks on loopback is given the window to bind (polled, as flyctl polls) before the warning.
#[test]
fn the_listen_check_is_one_look_when_fine_and_waits_for_a_slow_binder() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    fly.add_machines(APP, &MachineSpec::new("app").count(2).checks(1).services(true));
    let t = TestDir::new();
    let out = run_rollout(&fly, &t, &image(5), &[]);
    assert_success(&out);
    assert!(!stderr(&out).contains("not listening"), "{}", stderr(&out));
    assert_eq!(fly.requests_to("GET", "/ps").len(), 1);

    let fly = FlyApi::start();
    fly.add_app(APP);
    fly.add_machines(APP, &MachineSpec::new("app").count(1).services(true));
    let new = image(6);
    fly.set_listen_addresses(&new[..30], &["[::1]:8080"]);
    let out = run_rollout(&fly, &t, &new, &["--listen-check-window", "2s"]);
    assert_success(&out);
    let err = stderr(&out);
    assert!(err.contains("make it listen on 0.0.0.0:8080"), "{err}");
    let looks = fly.requests_to("GET", "/ps").len();
    assert!((3..=6).contains(&looks), "polled {looks} times in 2 s");
    assert_no_violations(&fly);
}

/// The final release status carries fly-go's `ReleaseMetadata` with the deploy's error, as
/// flyctl sends it (`machines_deploymachinesapp.go`): empty when the deploy completed, the
/// failure when it failed; `running` carries none. The double refuses any other shape.
#[test]
fn the_release_records_the_deploys_error() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    fly.add_machines(APP, &MachineSpec::new("app").count(2));
    let t = TestDir::new();
    assert_success(&run_rollout(&fly, &t, &image(1), &[]));
    let release = &fly.releases()[0];
    assert_eq!(release.statuses, ["created", "running", "complete"]);
    assert_eq!(
        release.metadata,
        serde_json::json!({"post_deployment_info": {"error": ""}})
    );
    let running: Vec<_> = fly
        .requests_to("PATCH", "/api/v1/releases/")
        .into_iter()
        .filter_map(|r| r.body)
        .filter(|b| b["status"] == "running")
        .collect();
    assert_eq!(
        running,
        [serde_json::json!({"status": "running", "metadata": null})]
    );

    let new = image(2);
    fly.set_behavior(&new[..30], support::fly_api::Behavior::FailToStart);
    let out = run_rollout(&fly, &t, &new, &["--wait-timeout", "2s"]);
    assert!(!out.status.success());
    let releases = fly.releases();
    assert_eq!(releases.len(), 2);
    let failed = &releases[1];
    assert_eq!(failed.statuses, ["created", "running", "failed"]);
    let error = failed.metadata["post_deployment_info"]["error"]
        .as_str()
        .expect("an error text");
    assert!(
        error.contains("failed; rolled back 1 machine(s)") && error.contains("instead of running"),
        "{error}"
    );
    assert!(
        stderr(&out).contains(error.split(": ").next().unwrap()),
        "the same words as the command's: {error}"
    );
    assert_no_violations(&fly);
}

/// A redeploy of what already runs still replaces a machine whose host cannot be reached, as
/// flyctl's deploy (`launchInputForUpdate`) does: "nothing to deploy" left it down.
#[test]
fn an_unchanged_deploy_still_replaces_a_machine_on_an_unreachable_host() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    let ids = fly.add_machines(APP, &MachineSpec::new("app").count(2).region("iad"));
    let t = TestDir::new();
    write_fly_toml(&t, "app = \"demo\"\nprimary_region = \"iad\"\n");
    assert_success(&run_rollout(&fly, &t, &image(5), &[]));
    let out = run_rollout(&fly, &t, &image(5), &[]);
    assert!(stderr(&out).contains("nothing to deploy"), "{}", stderr(&out));
    fly.set_host_status(&ids[1], "unreachable");
    let out = run_rollout(&fly, &t, &image(5), &[]);
    assert_success(&out);
    assert!(!stderr(&out).contains("nothing to deploy"), "{}", stderr(&out));
    assert_eq!(fly.machine(&ids[1]).state, "destroyed");
    let live = live_machines(&fly);
    assert_eq!(live.len(), 2, "{live:?}");
    assert!(live.iter().all(|m| m.image() == image(5)));
    assert_no_leases(&fly);
    assert_no_violations(&fly);
}

/// A machine whose volume ties it to a host that is not fly.toml's host dedication cannot be
/// moved: the deploy says so before any machine changes, as flyctl's `launchInputForUpdate`
/// fails while building every machine's input. nixfly found it at that machine's turn, after
/// the other groups' machines had been replaced (and then replaced them back).
#[test]
fn a_volume_machine_off_the_host_dedication_stops_the_deploy_before_any_change() {
    let fly = FlyApi::start();
    fly.add_app(APP);
    fly.add_machines(APP, &MachineSpec::new("app").count(2).region("iad"));
    let volume = fly.add_volume(APP, "data", "iad", 1);
    let mut config = MachineSpec::new("db").region("iad").config();
    config["mounts"] = serde_json::json!([{"volume": volume, "path": "/data", "name": "data"}]);
    fly.add_machine_with_config(APP, "iad", "started", config);
    let t = TestDir::new();
    write_fly_toml(
        &t,
        "app = \"demo\"\nprimary_region = \"iad\"\nhost_dedication_id = \"hd-1\"\n\
         [processes]\n  app = \"/bin/app\"\n  db = \"/bin/db\"\n\
         [[mounts]]\n  source = \"data\"\n  destination = \"/data\"\n  processes = [\"db\"]\n",
    );
    let out = run_rollout(&fly, &t, &image(4), &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("fly.toml's host_dedication_id is hd-1"), "{err}");
    assert_no_changes(&fly);
    assert_no_violations(&fly);
}
