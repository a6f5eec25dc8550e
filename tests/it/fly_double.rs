//! Tests of the Fly API double itself, driven with a plain HTTP client: if the double is wrong,
//! every rollout test built on it is wrong too.

use crate::support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::Digest;
use support::fly_api::state::{RELEASE_COMMAND_GROUP, TEST_MACHINE_GROUP};
use support::fly_api::{Behavior, FaultKind, FlyApi, MachineSpec, Options, Timing, schema};

const NONCE: &str = "fly-machine-lease-nonce";

/// A thin client: every call returns (status, JSON body or Null).
struct Api {
    http: reqwest::Client,
    base: String,
    auth: String,
}

impl Api {
    fn new(fly: &FlyApi) -> Self {
        Self::with_auth(fly, format!("FlyV1 {}", fly.token()))
    }

    /// What flyctl sends to the platform API (api.fly.io): `Bearer`, never `FlyV1`.
    fn platform(fly: &FlyApi) -> Self {
        Self::with_auth(fly, format!("Bearer {}", fly.token()))
    }

    fn with_auth(fly: &FlyApi, auth: String) -> Self {
        Api {
            http: reqwest::Client::new(),
            base: fly.url().to_string(),
            auth,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>, nonce: Option<&str>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("authorization", &self.auth)
            .timeout(Duration::from_secs(20));
        if let Some(body) = body {
            req = req.json(&body);
        }
        if let Some(nonce) = nonce {
            req = req.header(NONCE, nonce);
        }
        let resp = req.send().await.expect("request to the double");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(body), None).await
    }

    /// `POST /v1/apps/demo/machines` with `body`, which must succeed: the new machine's id.
    async fn create_machine(&self, body: Value) -> String {
        let (status, created) = self.post("/v1/apps/demo/machines", body).await;
        assert_eq!(status, 200, "{created}");
        created["id"].as_str().expect("id").to_string()
    }

    async fn lease(&self, app: &str, id: &str) -> String {
        let (status, body) = self
            .post(&format!("/v1/apps/{app}/machines/{id}/lease"), json!({"ttl": 30}))
            .await;
        assert_eq!(status, 201, "{body}");
        body["data"]["nonce"].as_str().expect("nonce").to_string()
    }
}

fn fast() -> Options {
    Options {
        timing: Timing {
            scale: 0.02,
            ..Timing::default()
        },
        ..Options::default()
    }
}

/// A fast double with app `demo`, and a client for it.
fn demo() -> (FlyApi, Api) {
    let fly = FlyApi::with_options(fast());
    fly.add_app("demo");
    let api = Api::new(&fly);
    (fly, api)
}

fn schema_errors(component: &str, value: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    schema::validate(schema::component(component), value, "response", &mut errors);
    errors
}

/// The `error` text of a refusal's body (empty when there is none).
fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_default()
}

#[test]
fn spec_fixture_matches_the_checksum_in_source_md() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/crates/fly-api-double");
    let spec = std::fs::read(format!("{dir}/machines-openapi.json")).expect("spec fixture");
    let source = std::fs::read_to_string(format!("{dir}/OPENAPI-SOURCE.md")).expect("OPENAPI-SOURCE.md");
    let digest = hex::encode(sha2::Sha256::digest(&spec));
    assert!(
        source.contains(&digest),
        "OPENAPI-SOURCE.md does not record the fixture's sha256 {digest}"
    );
}

#[tokio::test]
async fn schema_valid_requests_are_accepted_and_answers_match_the_schema() {
    let (fly, api) = demo();
    let web = fly.add_machines("demo", &MachineSpec::new("app").count(2).checks(2).services(true));
    fly.add_machines("demo", &MachineSpec::new("worker").state("stopped"));

    let (status, app) = api.get("/v1/apps/demo").await;
    assert_eq!(status, 200);
    assert_eq!(app["status"], "deployed");
    assert_eq!(app["machine_count"], 3);
    assert!(schema_errors("App", &app).is_empty());

    let (status, list) = api
        .get("/v1/apps/demo/machines?include_deleted=false&region=iad")
        .await;
    assert_eq!(status, 200);
    let list = list.as_array().expect("array");
    assert_eq!(list.len(), 3);
    for machine in list {
        assert_eq!(machine["config"]["metadata"]["fly_platform_version"], "v2");
        let errors = schema_errors("Machine", machine);
        assert!(errors.is_empty(), "{errors:?}");
    }
    let (_, workers) = api
        .get("/v1/apps/demo/machines?metadata.fly_process_group=worker")
        .await;
    assert_eq!(workers.as_array().map(Vec::len), Some(1));
    assert_eq!(workers[0]["state"], "stopped");

    let (status, machine) = api.get(&format!("/v1/apps/demo/machines/{}", web[0])).await;
    assert_eq!(status, 200);
    let checks = machine["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 2);
    assert!(checks.iter().all(|c| c["status"] == "passing"));
    // Fly answers autostop as a boolean; sending the config back must still be valid.
    assert_eq!(machine["config"]["services"][0]["autostop"], true);
    let nonce = api.lease("demo", &web[0]).await;
    let (status, body) = api
        .call(
            "POST",
            &format!("/v1/apps/demo/machines/{}", web[0]),
            Some(json!({"config": machine["config"], "region": "iad", "skip_launch": false, "skip_secrets": false})),
            Some(&nonce),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let (status, _) = api.get("/v1/apps/nope").await;
    assert_eq!(status, 404);
    assert!(fly.violations().is_empty(), "{:?}", fly.violations());
    assert_eq!(fly.requests().len(), 7);
    assert_eq!(fly.mutating_requests().len(), 2);
}

#[tokio::test]
async fn update_passes_through_replacing_to_started_then_checks_pass() {
    let (fly, api) = demo();
    let id = fly
        .add_machines("demo", &MachineSpec::new("app").checks(1))
        .remove(0);
    let before = fly.machine(&id);
    let nonce = api.lease("demo", &id).await;
    let mut config = before.config.clone();
    config["image"] = json!("registry.fly.io/demo@sha256:abc");
    let (status, updated) = api
        .call(
            "POST",
            &format!("/v1/apps/demo/machines/{id}"),
            Some(json!({"config": config, "skip_launch": false})),
            Some(&nonce),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["state"], "replacing");
    assert_ne!(updated["instance_id"], json!(before.version));
    assert_eq!(updated["events"][0]["type"], "update");

    let version = updated["instance_id"].as_str().expect("version").to_string();
    let (status, waited) = api
        .get(&format!(
            "/v1/apps/demo/machines/{id}/wait?state=started&timeout=60&version={version}"
        ))
        .await;
    assert_eq!(status, 200, "{waited}");
    assert_eq!(waited["state"], "started");
    let (_, machine) = api.get(&format!("/v1/apps/demo/machines/{id}")).await;
    assert_eq!(machine["checks"][0]["status"], "warning");
    assert_eq!(machine["events"][0]["type"], "start", "newest first");
    assert!(
        fly.wait_until(Duration::from_secs(5), |f| f.machine(&id).checks[0].status
            == "passing")
    );

    let after = fly.machine(&id);
    assert_eq!(after.image(), "registry.fly.io/demo@sha256:abc");
    assert_eq!(after.config_history.len(), 2);
    assert_eq!(fly.max_concurrent_updates(), 1);
}

/// flaps refuses to start a machine still `created` or being `replacing`: 412
/// `failed_precondition` (recorded answers), which is why flyctl waits for `stopped` before
/// starting its release command machine (`machines_releasecommand.go`). A slow image pull
/// keeps both states long enough to ask.
#[tokio::test]
async fn a_machine_being_created_or_replaced_cannot_be_started() {
    let (fly, api) = demo();
    fly.set_image_pull("sha256:slow", Duration::from_secs(100));
    let id = fly.add_machines("demo", &MachineSpec::new("app")).remove(0);
    let path = format!("/v1/apps/demo/machines/{id}");
    let nonce = api.lease("demo", &id).await;
    let mut config = fly.machine(&id).config;
    config["image"] = json!("registry.fly.io/demo@sha256:slow");
    let (status, updated) = api
        .call(
            "POST",
            &path,
            Some(json!({"config": config.clone()})),
            Some(&nonce),
        )
        .await;
    assert_eq!((status, updated["state"].as_str()), (200, Some("replacing")));
    let (status, answer) = api
        .call("POST", &format!("{path}/start"), None, Some(&nonce))
        .await;
    assert_eq!(status, 412, "{answer}");
    assert!(
        error_of(&answer).starts_with("failed_precondition: machine getting replaced"),
        "{answer}"
    );
    assert_eq!(fly.machine(&id).state, "replacing");

    let created = api
        .create_machine(json!({"region": "iad", "skip_launch": true, "config": config}))
        .await;
    let start = format!("/v1/apps/demo/machines/{created}/start");
    let (status, answer) = api.call("POST", &start, None, None).await;
    assert_eq!(status, 412, "{answer}");
    assert_eq!(
        answer["error"],
        json!("failed_precondition: unable to start machine from current state: 'created'")
    );
    assert_eq!(fly.machine(&created).state, "created");
    // Once the pull is done (100 Fly seconds: a 60 s wait times out first) it settles in
    // `stopped` (a wait answers 404 for a moment after the create, as flaps' reads lag it),
    // and then it starts.
    let wait = format!("/v1/apps/demo/machines/{created}/wait?state=stopped&timeout=60");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let (status, _) = api.get(&wait).await;
        if !matches!(status, 404 | 408) || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, 200);
    let (status, answer) = api.call("POST", &start, None, None).await;
    assert_eq!(
        (status, answer["previous_state"].as_str()),
        (200, Some("stopped"))
    );
    // fly-go's destroy of a machine on its way (`flaps/flaps_machines.go`, `Destroy`):
    // `kill=true`, which the spec calls `force`.
    let (status, answer) = api
        .call("DELETE", &format!("{path}?kill=true"), None, Some(&nonce))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(fly.machine(&id).state, "destroyed");
    assert!(fly.take_violations().is_empty());
}

#[tokio::test]
async fn skip_launch_leaves_a_stopped_machine_stopped() {
    let (fly, api) = demo();
    let id = fly
        .add_machines("demo", &MachineSpec::new("worker").state("stopped"))
        .remove(0);
    let config = fly.machine(&id).config;
    let (status, _) = api
        .post(
            &format!("/v1/apps/demo/machines/{id}"),
            json!({"config": config, "skip_launch": true}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, waited) = api
        .get(&format!(
            "/v1/apps/demo/machines/{id}/wait?state=stopped&timeout=10"
        ))
        .await;
    assert_eq!(status, 200, "{waited}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(fly.machine(&id).state, "stopped");
}

/// flyctl preflight `fly_machine_test.go`, `TestFlyMachineRun_standbyFor` ("Updating a
/// stopped machine doesn't start it"): `fly machine update` sends skip_launch false, and on
/// Fly the stopped machine is still stopped once the update settles.
#[tokio::test]
async fn an_update_without_skip_launch_leaves_a_stopped_machine_stopped() {
    let (fly, api) = demo();
    let id = fly
        .add_machines("demo", &MachineSpec::new("app").state("stopped"))
        .remove(0);
    let mut config = fly.machine(&id).config;
    config["image"] = json!("registry.fly.io/demo@sha256:abc");
    let (status, updated) = api
        .post(
            &format!("/v1/apps/demo/machines/{id}"),
            json!({"config": config, "skip_launch": false}),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    let version = updated["instance_id"].as_str().expect("version").to_string();
    let (status, waited) = api
        .get(&format!(
            "/v1/apps/demo/machines/{id}/wait?state=stopped&timeout=10&version={version}"
        ))
        .await;
    assert_eq!(status, 200, "{waited}");
    std::thread::sleep(Duration::from_millis(200));
    let machine = fly.machine(&id);
    assert_eq!(
        (machine.state.as_str(), machine.image()),
        ("stopped", "registry.fly.io/demo@sha256:abc")
    );
}

#[tokio::test]
async fn bodies_and_queries_that_break_the_schema_are_rejected_and_recorded() {
    let (fly, api) = demo();
    let id = fly.add_machines("demo", &MachineSpec::new("app")).remove(0);
    let path = format!("/v1/apps/demo/machines/{id}");
    let config = fly.machine(&id).config;

    let mut bad_restart = config.clone();
    bad_restart["restart"]["policy"] = json!("sometimes");
    let cases = [
        (
            json!({"config": config, "skip_launch": "yes"}),
            "body.skip_launch: expected boolean",
        ),
        (
            json!({"config": bad_restart}),
            "body.config.restart.policy: \"sometimes\" is not one of",
        ),
        (
            json!({"config": config, "skip_lauch": true}),
            "body.skip_lauch: not a property",
        ),
        (
            json!({"config": config, "region": null}),
            "body.region: null is not allowed",
        ),
        (
            json!({"config": {"image": "x", "guest": {"cpus": "2"}}}),
            "body.config.guest.cpus: expected integer",
        ),
    ];
    for (body, expected) in cases {
        let (status, answer) = api.post(&path, body).await;
        assert_eq!(status, 400, "{answer}");
        assert!(error_of(&answer).contains(expected), "{answer}");
        let violations = fly.take_violations();
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].reason.contains(expected), "{violations:?}");
    }
    assert_eq!(
        fly.machine(&id).config_history.len(),
        1,
        "rejected updates change nothing"
    );

    for (query, expected) in [
        ("wait?state=running", "query `state`: \"running\" is not one of"),
        (
            "wait?timeout=soon",
            "query `timeout`: `soon` is not a valid integer",
        ),
        ("wait?states=started", "query parameter `states` is not defined"),
    ] {
        let (status, _) = api.get(&format!("{path}/{query}")).await;
        assert_eq!(status, 400);
        let violations = fly.take_violations();
        assert!(
            violations.iter().any(|v| v.reason.contains(expected)),
            "{violations:?}"
        );
    }

    let (status, _) = api.post(&format!("{path}/start"), json!({})).await;
    assert_eq!(status, 400);
    assert!(fly.take_violations()[0].reason.contains("takes no request body"));
    let (status, _) = api.call("DELETE", &format!("{path}/lease"), None, None).await;
    assert_eq!(status, 400);
    assert!(
        fly.take_violations()[0]
            .reason
            .contains("`fly-machine-lease-nonce` is missing")
    );
    let (status, _) = api.get("/v1/apps/demo/machinez").await;
    assert_eq!(status, 404);
    assert!(
        fly.take_violations()[0]
            .reason
            .contains("no operation `GET /v1/apps/demo/machinez`")
    );
    // In the spec but not served by the double: still made visible.
    let (status, _) = api.get(&format!("{path}/memory")).await;
    assert_eq!(status, 501);
    assert!(fly.take_violations()[0].reason.contains("does not implement"));
}

#[test]
fn dropping_the_double_with_untaken_violations_fails_the_test() {
    let result = std::panic::catch_unwind(|| {
        let fly = FlyApi::with_options(fast());
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(Api::new(&fly).get("/v1/nothing/here"));
        drop(fly);
    });
    let panic = result.expect_err("drop must panic");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("broke the API schema"), "{message}");
    assert!(message.contains("GET /v1/nothing/here"), "{message}");

    // A test already failing keeps its own message (the violations go to stderr) instead
    // of aborting on a second panic.
    let result = std::panic::catch_unwind(|| {
        let fly = FlyApi::with_options(fast());
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(Api::new(&fly).get("/v1/nothing/here"));
        panic!("the test's own failure");
    });
    let panic = result.expect_err("the test panicked");
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"the test's own failure"));
}

#[tokio::test]
async fn leases_conflict_refresh_release_and_expire() {
    let (fly, api) = demo();
    let id = fly.add_machines("demo", &MachineSpec::new("app")).remove(0);
    let lease_path = format!("/v1/apps/demo/machines/{id}/lease");

    let (status, lease) = api
        .post(&lease_path, json!({"ttl": 1, "description": "deploy"}))
        .await;
    assert_eq!(status, 201);
    assert_eq!(lease["status"], "success");
    let nonce = lease["data"]["nonce"].as_str().expect("nonce").to_string();
    assert_eq!(lease["data"]["owner"], "deployer@example.com");
    assert!(schema_errors("Lease", &lease["data"]).is_empty());

    let (status, conflict) = api.post(&lease_path, json!({"ttl": 30})).await;
    assert_eq!(status, 409);
    // The lease envelope: `status` and `message`, no `error`.
    assert_eq!(conflict["status"], "error");
    assert!(conflict.get("error").is_none(), "{conflict}");
    let message = conflict["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("lease currently held by deployer@example.com"),
        "{message}"
    );
    let expiry = message.rsplit(' ').next().unwrap_or_default();
    assert!(
        expiry.len() == 20 && expiry.starts_with("20") && expiry.ends_with('Z'),
        "expiry shown as an RFC 3339 time: {message}"
    );
    let (status, _) = api
        .call("POST", &lease_path, Some(json!({"ttl": 30})), Some("wrong"))
        .await;
    assert_eq!(status, 409);

    // Refresh with the nonce: same nonce, later expiry, and it outlives the first TTL.
    let (status, refreshed) = api
        .call("POST", &lease_path, Some(json!({"ttl": 3})), Some(&nonce))
        .await;
    assert_eq!(status, 201);
    assert_eq!(refreshed["data"]["nonce"], json!(nonce));
    assert!(refreshed["data"]["expires_at"].as_i64() > lease["data"]["expires_at"].as_i64());
    std::thread::sleep(Duration::from_millis(1200));
    let (status, shown) = api.get(&lease_path).await;
    assert_eq!(status, 200, "refreshed lease still active");
    assert_eq!(shown["data"]["nonce"], json!(nonce));

    let (status, _) = api.call("DELETE", &lease_path, None, Some("wrong")).await;
    assert_eq!(status, 409);
    let (status, _) = api.call("DELETE", &lease_path, None, Some(&nonce)).await;
    assert_eq!(status, 200);
    assert!(fly.lease(&id).is_none());
    // No lease: the words flyctl takes as "no lease" (internal/command/machine/leases.go).
    let (status, answer) = api.get(&lease_path).await;
    assert_eq!(status, 404);
    assert!(error_of(&answer).contains("lease not found"), "{answer}");
    // Releasing it again: the words flyctl takes as "already gone" (internal/machine/lease.go).
    let (status, answer) = api.call("DELETE", &lease_path, None, Some(&nonce)).await;
    assert_eq!(status, 404);
    assert!(error_of(&answer).contains("lease not found"), "{answer}");

    // Expiry: a 1 s lease is gone after 1 s, and its nonce no longer works.
    let (_, short) = api.post(&lease_path, json!({"ttl": 1})).await;
    let short_nonce = short["data"]["nonce"].as_str().expect("nonce").to_string();
    std::thread::sleep(Duration::from_millis(1100));
    let (status, _) = api
        .call(
            "POST",
            &format!("/v1/apps/demo/machines/{id}/stop"),
            None,
            Some(&short_nonce),
        )
        .await;
    assert_eq!(status, 409, "a stale nonce is refused");
    let (status, _) = api.post(&lease_path, json!({"ttl": 5})).await;
    assert_eq!(status, 201, "an expired lease can be taken over");
}

/// fly-go acquires and refreshes leases as `POST .../lease?ttl=<seconds>` with no body
/// (`flaps/flaps_machines.go`, `AcquireLease` and `RefreshLease`), which the spec does not
/// document: Fly takes it, so the double must too, with that TTL.
#[tokio::test]
async fn leases_are_taken_and_refreshed_the_way_fly_go_asks() {
    let (fly, api) = demo();
    let id = fly.add_machines("demo", &MachineSpec::new("app")).remove(0);
    let lease_path = format!("/v1/apps/demo/machines/{id}/lease");
    let (status, lease) = api
        .call("POST", &format!("{lease_path}?ttl=13"), None, None)
        .await;
    assert_eq!(status, 201, "{lease}");
    let nonce = lease["data"]["nonce"].as_str().expect("nonce").to_string();
    let expires = fly.lease(&id).and_then(|l| l.expires).expect("a TTL");
    let left = expires.saturating_duration_since(Instant::now());
    assert!(
        left > Duration::from_secs(11) && left <= Duration::from_secs(13),
        "{left:?}"
    );
    let (status, refreshed) = api
        .call("POST", &format!("{lease_path}?ttl=60"), None, Some(&nonce))
        .await;
    assert_eq!(status, 201, "{refreshed}");
    assert_eq!(refreshed["data"]["nonce"], json!(nonce));
    // The refresh's own TTL, not the first one's.
    let expires = fly.lease(&id).and_then(|l| l.expires).expect("a TTL");
    let left = expires.saturating_duration_since(Instant::now());
    assert!(
        left > Duration::from_secs(58) && left <= Duration::from_secs(60),
        "{left:?}"
    );
    assert!(fly.take_violations().is_empty());
}

#[tokio::test]
async fn a_lease_held_by_someone_else_blocks_every_change_until_it_expires() {
    let (fly, api) = demo();
    let ids = fly.add_machines("demo", &MachineSpec::new("app").count(2));
    fly.hold_lease(&ids[0], "someone@else.com", None);
    fly.hold_lease(&ids[1], "someone@else.com", Some(Duration::from_millis(300)));
    let config = fly.machine(&ids[0]).config;
    for (method, suffix, body) in [
        ("POST", "", Some(json!({"config": config}))),
        ("POST", "/stop", None),
        ("POST", "/cordon", None),
        ("DELETE", "?force=true", None),
        ("DELETE", "?kill=true", None),
    ] {
        let (status, answer) = api
            .call(
                method,
                &format!("/v1/apps/demo/machines/{}{suffix}", ids[0]),
                body,
                None,
            )
            .await;
        assert_eq!(status, 409, "{method} {suffix}: {answer}");
        assert!(error_of(&answer).contains("someone@else.com"));
    }
    // Metadata writes are not lease-guarded: fly-go's SetMetadata sends no nonce, and flyctl
    // tags the machines it holds leases on with it (strategy_bluegreen.go).
    let (status, answer) = api
        .call(
            "POST",
            &format!("/v1/apps/demo/machines/{}/metadata/k", ids[0]),
            Some(json!({"value": "v"})),
            None,
        )
        .await;
    assert!(status < 300, "{status}: {answer}");
    assert_eq!(fly.machine(&ids[0]).metadata("k"), Some("v"));
    let (status, _) = api
        .call(
            "POST",
            &format!("/v1/apps/demo/machines/{}/lease", ids[0]),
            Some(json!({"ttl": 13})),
            None,
        )
        .await;
    assert_eq!(status, 409);
    std::thread::sleep(Duration::from_millis(350));
    let nonce = api.lease("demo", &ids[1]).await;
    let (status, _) = api
        .call(
            "POST",
            &format!("/v1/apps/demo/machines/{}/stop", ids[1]),
            None,
            Some(&nonce),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(fly.machine(&ids[0]).state, "started");
}

#[tokio::test]
async fn wait_answers_408_on_timeout_and_blocks_at_most_60_fly_seconds() {
    let fly = FlyApi::with_options(Options {
        timing: Timing {
            scale: 0.01,
            ..Timing::default()
        },
        ..Options::default()
    });
    fly.add_app("demo");
    let id = fly
        .add_machines("demo", &MachineSpec::new("app").state("stopped"))
        .remove(0);
    let api = Api::new(&fly);
    let started = Instant::now();
    let (status, body) = api
        .get(&format!(
            "/v1/apps/demo/machines/{id}/wait?state=started&timeout=5"
        ))
        .await;
    assert_eq!(status, 408, "{body}");
    assert!(error_of(&body).contains("did not reach state started"));
    assert!(started.elapsed() >= Duration::from_millis(50));
    // 60 s is the most a call may ask for: 0.6 s at this scale; 61 s is refused outright.
    let started = Instant::now();
    let (status, _) = api
        .get(&format!(
            "/v1/apps/demo/machines/{id}/wait?state=started&timeout=60"
        ))
        .await;
    assert_eq!(status, 408);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    let (status, _) = api
        .get(&format!(
            "/v1/apps/demo/machines/{id}/wait?state=started&timeout=3600"
        ))
        .await;
    assert_eq!(status, 400);
    // A state reached in time answers at once, comma lists included.
    let (status, body) = api
        .get(&format!("/v1/apps/demo/machines/{id}/wait?state=started,stopped"))
        .await;
    assert_eq!((status, body["state"].clone()), (200, json!("stopped")));
}

#[tokio::test]
async fn the_three_auth_header_forms_are_accepted_and_anything_else_is_401() {
    let fly = FlyApi::with_options(fast());
    fly.add_app("demo");
    let http = reqwest::Client::new();
    let token = fly.token().to_string();
    let url = format!("{}/v1/apps/demo", fly.url());
    for (header, expected) in [
        (Some(format!("Bearer {token}")), 200),
        (Some(format!("FlyV1 {token}")), 200),
        (Some(format!("Bearer FlyV1 {token}")), 200),
        (Some("Bearer wrong".to_string()), 401),
        (Some(format!("Basic {token}")), 401),
        (Some(token.clone()), 401),
        (None, 401),
    ] {
        let mut req = http.get(&url);
        if let Some(h) = &header {
            req = req.header("authorization", h);
        }
        let resp = req.send().await.expect("request");
        assert_eq!(resp.status().as_u16(), expected, "{header:?}");
        if expected == 401 {
            let body: Value = resp.json().await.expect("json");
            assert_eq!(body, json!({"error": "Authenticate: token validation error"}));
        }
    }
    let schemes: Vec<String> = fly.requests().into_iter().map(|r| r.auth_scheme).collect();
    assert_eq!(
        schemes,
        ["Bearer", "FlyV1", "Bearer FlyV1", "Bearer", "Basic", "other", ""],
        "the log names the scheme, never the token"
    );
    let release = json!({"app_name": "demo", "build_id": 0, "definition": {"app": "demo"},
                         "image": "registry.fly.io/demo@sha256:abc", "strategy": "ROLLING"});
    let resp = http
        .post(format!("{}/api/v1/releases", fly.url()))
        .json(&release)
        .send()
        .await
        .expect("request");
    assert_eq!(
        resp.status().as_u16(),
        401,
        "the platform API needs the token too"
    );
    // Refused for its token, a request off the schema is still a violation.
    let resp = http
        .post(format!("{}/api/v1/releases", fly.url()))
        .json(&json!({}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 401);
    let reasons: Vec<String> = fly.take_violations().into_iter().map(|v| v.reason).collect();
    assert!(
        reasons.iter().any(|r| r.contains("`app_name` is missing")),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn injected_faults_answer_the_next_matching_requests_only() {
    let (fly, api) = demo();
    let id = fly.add_machines("demo", &MachineSpec::new("app")).remove(0);
    fly.inject_fault(
        "GET",
        "/machines",
        2,
        FaultKind::TooManyRequests { retry_after_secs: 2 },
    );
    fly.inject_fault("POST", "/lease", 1, FaultKind::Unavailable);

    let resp = api
        .http
        .get(format!("{}/v1/apps/demo/machines", fly.url()))
        .header("authorization", &api.auth)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["retry-after"], "2");
    assert_eq!(api.get(&format!("/v1/apps/demo/machines/{id}")).await.0, 429);
    assert_eq!(
        api.get("/v1/apps/demo").await.0,
        200,
        "other paths are not affected"
    );
    assert_eq!(api.get("/v1/apps/demo/machines").await.0, 200, "only 2 requests");

    let lease_path = format!("/v1/apps/demo/machines/{id}/lease");
    let (status, body) = api.post(&lease_path, json!({"ttl": 10})).await;
    assert_eq!((status, body), (503, json!({"error": "service unavailable"})));
    assert!(fly.lease(&id).is_none(), "a faulted request has no effect");
    api.lease("demo", &id).await;
    assert!(fly.pending_faults().is_empty());
    let statuses: Vec<u16> = fly.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 429, 200, 200, 503, 201]);
}

#[tokio::test]
async fn release_command_machine_runs_records_its_exit_and_is_destroyed() {
    let (fly, api) = demo();
    fly.set_release_command_exit_code(3);
    let config = json!({
        "image": "registry.fly.io/demo@sha256:abc",
        "init": {"cmd": ["bin/migrate", "--all"]},
        "restart": {"policy": "no"},
        "auto_destroy": true,
        "dns": {"skip_registration": true},
        "env": {"RELEASE_COMMAND": "1", "FLY_PROCESS_GROUP": RELEASE_COMMAND_GROUP, "PRIMARY_REGION": "iad"},
        "guest": {"cpu_kind": "shared", "cpus": 2, "memory_mb": 512},
        "metadata": {"fly_platform_version": "v2", "fly_process_group": RELEASE_COMMAND_GROUP},
    });
    let id = api
        .create_machine(json!({"region": "iad", "skip_launch": true, "config": config}))
        .await;
    let base = format!("/v1/apps/demo/machines/{id}");
    // Reads lag behind the create (2 Fly seconds, 40 ms here).
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        api.get(&format!("{base}/wait?state=stopped&timeout=60")).await.0,
        200
    );
    assert_eq!(
        api.call("POST", &format!("{base}/start"), None, None).await.0,
        200
    );
    assert_eq!(
        api.get(&format!("{base}/wait?state=started&timeout=60")).await.0,
        200
    );
    assert_eq!(
        api.get(&format!("{base}/wait?state=destroyed&timeout=60"))
            .await
            .0,
        200
    );

    let (status, machine) = api.get(&base).await;
    assert_eq!(status, 200, "destroyed machines stay readable");
    assert_eq!(machine["state"], "destroyed");
    let events = machine["events"].as_array().expect("events");
    let exit = events.iter().find(|e| e["type"] == "exit").expect("exit event");
    assert_eq!(exit["request"]["exit_event"]["exit_code"], 3);
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        kinds,
        ["destroy", "exit", "start", "start", "launch"],
        "newest first"
    );
    assert_eq!(
        api.get(&format!("{base}/wait?state=started&timeout=1")).await.0,
        404
    );
    let (_, list) = api.get("/v1/apps/demo/machines").await;
    assert_eq!(list, json!([]));
    let (_, list) = api.get("/v1/apps/demo/machines?include_deleted=true").await;
    assert_eq!(list.as_array().map(Vec::len), Some(1));
}

/// A machine check's test machine, created launched as flyctl's `launchInputForTestMachine`
/// makes it (`machinebasedtest.go`), runs once with its own exit code, leaves a pending app
/// pending, and is destroyed; every machine has its own private IP.
#[tokio::test]
async fn test_command_machine_runs_once_with_its_own_exit_code() {
    let (fly, api) = demo();
    fly.set_app_status("demo", "pending");
    fly.set_release_command_exit_code(3);
    fly.set_test_command_exit_code(7);
    let config = json!({
        "image": "curlimages/curl",
        "init": {"cmd": ["curl", "http://app.internal"]},
        "restart": {"policy": "no"},
        "auto_destroy": true,
        "dns": {"skip_registration": true},
        "env": {"FLY_TEST_COMMAND": "1", "FLY_PROCESS_GROUP": TEST_MACHINE_GROUP, "FLY_TEST_MACHINE_IP": ""},
        "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256},
        "metadata": {"fly_platform_version": "v2", "fly_process_group": TEST_MACHINE_GROUP},
        "stop_config": {},
    });
    let id = api
        .create_machine(json!({"region": "iad", "config": config}))
        .await;
    let base = format!("/v1/apps/demo/machines/{id}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        api.get(&format!("{base}/wait?state=destroyed&timeout=60"))
            .await
            .0,
        200
    );
    let (_, machine) = api.get(&base).await;
    let events = machine["events"].as_array().expect("events");
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds, ["destroy", "exit", "start", "launch"], "newest first");
    assert_eq!(events[1]["request"]["exit_event"]["exit_code"], 7);
    let (_, app) = api.get("/v1/apps/demo").await;
    assert_eq!(app["status"], "pending");

    let other = fly.add_machines("demo", &MachineSpec::new("app").count(2));
    let ips: Vec<String> = other.iter().map(|id| fly.machine(id).private_ip()).collect();
    assert_ne!(ips[0], ips[1]);
    let (_, shown) = api.get(&format!("/v1/apps/demo/machines/{}", other[1])).await;
    assert_eq!(shown["private_ip"], ips[1].as_str());
    assert_ne!(machine["private_ip"], ips[0].as_str());
}

#[tokio::test]
async fn releases_are_created_patched_and_their_bodies_checked() {
    let (fly, _) = demo();
    let api = Api::platform(&fly);
    let (status, created) = api
        .post(
            "/api/v1/releases",
            json!({"app_name": "demo", "build_id": 0, "definition": {"app": "demo"},
                        "image": "registry.fly.io/demo@sha256:abc", "strategy": "ROLLING"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["release"]["id"].as_str().expect("id").to_string();
    assert_eq!(created["release"]["version"], 1);
    for status in ["running", "complete"] {
        let (code, body) = api
            .call(
                "PATCH",
                &format!("/api/v1/releases/{id}"),
                Some(json!({"status": status, "metadata": null})),
                None,
            )
            .await;
        assert_eq!(code, 200, "{body}");
    }
    let releases = fly.releases();
    assert_eq!(releases[0].statuses, ["created", "running", "complete"]);
    assert_eq!(releases[0].definition, json!({"app": "demo"}));

    let (status, _) = api
        .post(
            "/api/v1/releases",
            json!({"app_name": "demo", "definition": {}, "image": "x", "strategy": "rolling"}),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = api
        .call(
            "PATCH",
            &format!("/api/v1/releases/{id}"),
            Some(json!({"status": "done"})),
            None,
        )
        .await;
    assert_eq!(status, 400);
    let reasons: Vec<String> = fly.take_violations().into_iter().map(|v| v.reason).collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("\"rolling\" is not one of"), "{reasons:?}");
    assert!(reasons[1].contains("\"done\" is not one of"), "{reasons:?}");
    let (status, _) = api
        .call(
            "PATCH",
            "/api/v1/releases/unknown",
            Some(json!({"status": "failed"})),
            None,
        )
        .await;
    assert_eq!(status, 404);
    // The metadata is fly-go's `ReleaseMetadata` (`types.go`), nothing else.
    let (status, _) = api
        .call(
            "PATCH",
            &format!("/api/v1/releases/{id}"),
            Some(json!({"status": "failed", "metadata": {"post_deployment_info": {"eror": "x"}}})),
            None,
        )
        .await;
    assert_eq!(status, 400);
    let reasons: Vec<String> = fly.take_violations().into_iter().map(|v| v.reason).collect();
    assert!(
        reasons.len() == 1 && reasons[0].contains("post_deployment_info.eror: not a property"),
        "{reasons:?}"
    );
}

/// Issue 10, points 1 and 2: the platform API takes `Bearer` (flyctl
/// `internal/uiex/releases.go`), refuses `FlyV1` with 401, and refuses a release without the
/// app config as `definition` with 422; `build_id` is an integer.
#[tokio::test]
async fn the_platform_api_wants_bearer_and_a_definition() {
    let (fly, machines_client) = demo();
    let release = json!({"app_name": "demo", "build_id": 0, "definition": {"app": "demo"},
                         "image": "registry.fly.io/demo@sha256:abc", "strategy": "ROLLING"});
    let (status, body) = machines_client.post("/api/v1/releases", release.clone()).await;
    assert_eq!(status, 401, "{body}");
    let bearer_flyv1 = Api::with_auth(&fly, format!("Bearer FlyV1 {}", fly.token()));
    assert_eq!(
        bearer_flyv1.post("/api/v1/releases", release.clone()).await.0,
        401
    );
    // The Machines API still takes FlyV1.
    assert_eq!(machines_client.get("/v1/apps/demo").await.0, 200);

    let api = Api::platform(&fly);
    for definition in [None, Some(Value::Null), Some(json!("fly.toml"))] {
        let mut body = release.clone();
        match definition {
            None => drop(body.as_object_mut().unwrap().remove("definition")),
            Some(value) => body["definition"] = value,
        }
        let (status, answer) = api.post("/api/v1/releases", body).await;
        assert_eq!(status, 422, "{answer}");
    }
    let mut text_build = release.clone();
    text_build["build_id"] = json!("b1");
    assert_eq!(api.post("/api/v1/releases", text_build).await.0, 400);
    // Each refusal is a violation too: the three definitions, then the build_id.
    let reasons: Vec<String> = fly.take_violations().into_iter().map(|v| v.reason).collect();
    assert!(
        reasons.len() == 4
            && reasons[..3].iter().all(|r| r.contains("definition"))
            && reasons[3].contains("build_id"),
        "{reasons:?}"
    );
    assert!(fly.releases().is_empty());
    assert_eq!(api.post("/api/v1/releases", release).await.0, 201);
}

/// Issue 10, points 3 and 4: a just-created machine answers 404 to get and wait for a moment
/// (flyctl `internal/machine/leasable_machine.go` retries that: `WithJustCreated`), and a
/// slow image pull delays its start.
#[tokio::test]
async fn new_machines_are_invisible_for_a_moment_and_slow_pulls_delay_them() {
    // 25 Fly seconds (0.5 s here) of invisibility: long enough that the first reads come inside
    // it on a loaded machine (the default 40 ms is not), short enough for the pull below.
    let mut options = fast();
    options.timing.visible_after_create = Duration::from_secs(25);
    let fly = FlyApi::with_options(options);
    fly.add_app("demo");
    let api = Api::new(&fly);
    // Reads see a new machine once its invisible moment is over.
    let visible = async |base: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, machine) = api.get(base).await;
            if status != 404 || Instant::now() > deadline {
                return (status, machine);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    fly.set_image_pull("sha256:slow", Duration::from_secs(100));
    let create = |image: &str| {
        json!({"region": "iad", "skip_launch": true, "config": {
            "image": image, "metadata": {"fly_platform_version": "v2", "fly_process_group": "app"}}})
    };
    let started = Instant::now();
    let slow = api
        .create_machine(create("registry.fly.io/demo@sha256:slow"))
        .await;
    let base = format!("/v1/apps/demo/machines/{slow}");
    assert_eq!(api.get(&base).await.0, 404);
    assert_eq!(
        api.get(&format!("{base}/wait?state=stopped&timeout=1")).await.0,
        404
    );
    // The list shows it (only get and wait lag), and so does the test's own handle.
    let (_, list) = api.get("/v1/apps/demo/machines").await;
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    let (status, machine) = visible(&base).await;
    assert_eq!((status, machine["state"].as_str()), (200, Some("created")));
    // 100 Fly seconds of pull at scale 0.02: stopped after ~2 s, so a 60 s wait times out.
    assert_eq!(
        api.get(&format!("{base}/wait?state=stopped&timeout=60")).await.0,
        408
    );
    assert_eq!(
        api.get(&format!("{base}/wait?state=stopped&timeout=60")).await.0,
        200
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    let quick = api
        .create_machine(create("registry.fly.io/demo@sha256:quick"))
        .await;
    let base = format!("/v1/apps/demo/machines/{quick}");
    assert_eq!(visible(&base).await.0, 200);
    assert_eq!(
        api.get(&format!("{base}/wait?state=stopped&timeout=5")).await.0,
        200
    );
}

/// Issue 10, point 5: hosts that refuse updates (the texts flyctl
/// `machines_deploymachinesapp.go` matches) and hosts that are not `ok`.
#[tokio::test]
async fn hosts_can_refuse_updates_and_be_unreachable() {
    let (fly, api) = demo();
    let ids = fly.add_machines("demo", &MachineSpec::new("app").count(3));
    let message = support::rollout::NO_ROOM;
    fly.refuse_updates(&ids[0], message);
    fly.set_host_status(&ids[1], "unreachable");
    let config = fly.machine(&ids[2]).config;
    for (id, status) in [(&ids[0], 409), (&ids[1], 412), (&ids[2], 200)] {
        let nonce = api.lease("demo", id).await;
        let (code, body) = api
            .call(
                "POST",
                &format!("/v1/apps/demo/machines/{id}"),
                Some(json!({"config": config, "region": "iad"})),
                Some(&nonce),
            )
            .await;
        assert_eq!(code, status, "{id}: {body}");
        if status == 409 {
            assert_eq!(body["error"], message);
        }
    }
    let (_, shown) = api.get(&format!("/v1/apps/demo/machines/{}", ids[1])).await;
    assert_eq!(shown["host_status"], "unreachable");
    // fly-go `machine_types.go`: no `config`, a partial `incomplete_config` instead, which has
    // what flyctl's tests give it (`machines_launchinput_test.go`, `plan_test.go`) and not
    // the rest of the machine's config.
    assert!(shown.get("config").is_none(), "{shown}");
    let partial = shown["incomplete_config"].as_object().expect("incomplete_config");
    assert_eq!(partial["image"], config["image"]);
    assert_eq!(partial["metadata"]["fly_process_group"], "app");
    assert!(
        partial.get("restart").is_none() && partial.get("env").is_none(),
        "{shown}"
    );
    assert_eq!(fly.machine(&ids[0]).config_history.len(), 1);
}

/// An update whose `current_version` is not the machine's is a 409, as a Fly engineer lists
/// update's conflicts on community.fly.io (t/15555); with the current one it goes through.
#[tokio::test]
async fn an_update_for_a_version_that_is_not_current_is_a_conflict() {
    let (fly, api) = demo();
    let id = fly.add_machines("demo", &MachineSpec::new("app"))[0].clone();
    let machine = fly.machine(&id);
    let nonce = api.lease("demo", &id).await;
    let path = format!("/v1/apps/demo/machines/{id}");
    for (version, status) in [
        ("01JSTALEVERSION0000000000", 409),
        (machine.version.as_str(), 200),
    ] {
        let body = json!({"config": machine.config, "current_version": version});
        let (code, answer) = api.call("POST", &path, Some(body), Some(&nonce)).await;
        assert_eq!(code, status, "{answer}");
    }
}

/// The spec's parameter descriptions: the events list gives 20 by default and at most 50
/// ("max of 50. If omitted, this is set to 20 by default"), newest first; a `summary` list omits
/// "config, checks, events, host_status, nonce, etc.".
#[tokio::test]
async fn events_are_limited_and_summaries_are_short_as_the_spec_says() {
    let (fly, api) = demo();
    fly.add_app("other");
    let id = fly.add_machines("demo", &MachineSpec::new("app").state("stopped"))[0].clone();
    let path = format!("/v1/apps/demo/machines/{id}");
    for _ in 0..30 {
        for action in ["start", "stop"] {
            let (status, body) = api.call("POST", &format!("{path}/{action}"), None, None).await;
            assert_eq!(status, 200, "{action}: {body}");
        }
    }
    assert!(fly.machine(&id).events.len() > 60);
    let (_, events) = api.get(&format!("{path}/events")).await;
    assert_eq!(events.as_array().map(Vec::len), Some(20));
    let newest = fly.machine(&id).events.last().cloned().expect("events");
    assert_eq!(events[0]["id"], newest["id"]);
    let (_, events) = api.get(&format!("{path}/events?limit=80")).await;
    assert_eq!(events.as_array().map(Vec::len), Some(50));
    let (_, events) = api.get(&format!("{path}/events?limit=3")).await;
    assert_eq!(events.as_array().map(Vec::len), Some(3));
    let (_, list) = api.get("/v1/apps/demo/machines?summary=true").await;
    for key in ["config", "checks", "events", "host_status"] {
        assert!(list[0].get(key).is_none(), "{key}: {}", list[0]);
    }
    assert_eq!(list[0]["id"], json!(id));
}

/// A create Fly has no room for comes in the shapes fly-go's `flaps/flaps_error_test.go`
/// (`TestCapacityScopeOf`, `TestFlapsErrorSuggestionVolumePlacementCapacity`) classifies: with
/// an existing volume, 412 `volume_placement_capacity`; without, 422 `insufficient_capacity`.
/// Either before any effect.
#[tokio::test]
async fn creates_without_room_are_refused_as_flaps_classifies_them() {
    let (fly, api) = demo();
    let volume = fly.add_volume("demo", "data", "iad", 1);
    fly.refuse_next_creates(2);
    let pinned = json!({"image": "x", "mounts": [{"volume": volume, "path": "/data"}]});
    let (status, body) = api
        .post("/v1/apps/demo/machines", json!({"config": pinned}))
        .await;
    assert_eq!(status, 412, "{body}");
    assert_eq!(body["status"], "volume_placement_capacity");
    assert_eq!(
        body["error"],
        format!("insufficient resources to create new machine with existing volume id '{volume}'")
    );
    let (status, body) = api
        .post("/v1/apps/demo/machines", json!({"config": {"image": "x"}}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["status"], "insufficient_capacity");
    assert!(schema_errors("ErrorResponse", &body).is_empty(), "{body}");
    assert!(fly.machines("demo").is_empty());
    assert!(fly.volumes("demo")[0].attached_machine_id.is_none());
    // Only the next two.
    api.create_machine(json!({"config": pinned})).await;
}

#[tokio::test]
async fn image_behaviours_fail_checks_fail_starts_and_loop_restarts() {
    let (fly, api) = demo();
    let ids = fly.add_machines("demo", &MachineSpec::new("app").count(3).checks(1));
    fly.set_behavior("unhealthy", Behavior::ChecksFail);
    fly.set_behavior("broken", Behavior::FailToStart);
    fly.set_behavior(
        "crashy",
        Behavior::RestartLoop {
            exit_code: 2,
            restarts: 3,
        },
    );
    for (id, image) in ids.iter().zip(["unhealthy", "broken", "crashy"]) {
        let mut config = fly.machine(id).config;
        config["image"] = json!(format!("registry.fly.io/demo:{image}"));
        let (status, _) = api
            .post(&format!("/v1/apps/demo/machines/{id}"), json!({"config": config}))
            .await;
        assert_eq!(status, 200);
    }
    assert!(fly.wait_until(Duration::from_secs(5), |f| {
        ids.iter().all(|id| !f.machine(id).busy())
    }));
    let unhealthy = fly.machine(&ids[0]);
    assert_eq!(unhealthy.state, "started");
    assert_eq!(unhealthy.checks[0].status, "critical");
    let broken = fly.machine(&ids[1]);
    assert_eq!(broken.state, "failed");
    let (status, _) = api
        .get(&format!(
            "/v1/apps/demo/machines/{}/wait?state=started&timeout=1",
            ids[1]
        ))
        .await;
    assert_eq!(status, 408, "a failed machine never reaches started");
    let crashy = fly.machine_json(&ids[2]);
    assert_eq!(crashy["state"], "stopped");
    let exits: Vec<&Value> = crashy["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == "exit")
        .collect();
    assert_eq!(exits.len(), 4);
    assert_eq!(exits[1]["request"]["restart_count"], 3, "newest restart first");
    assert_eq!(exits[1]["request"]["exit_event"]["restarting"], true);
    assert_eq!(exits[1]["request"]["exit_event"]["exit_code"], 2);
    assert_eq!(exits[0]["request"]["exit_event"]["restarting"], false);
}

#[tokio::test]
async fn concurrent_updates_are_measured() {
    let (fly, api) = demo();
    let ids = fly.add_machines("demo", &MachineSpec::new("app").count(4).checks(1));
    let update = |id: String| {
        let api = &api;
        let config = fly.machine(&id).config;
        async move {
            let path = format!("/v1/apps/demo/machines/{id}");
            assert_eq!(api.post(&path, json!({"config": config})).await.0, 200);
        }
    };
    // Two one at a time (each settled before the next), then two together.
    for id in &ids[..2] {
        update(id.clone()).await;
        let id = id.clone();
        assert!(fly.wait_until(Duration::from_secs(5), |f| !f.machine(&id).busy()));
    }
    assert_eq!(fly.max_concurrent_updates(), 1);
    futures::future::join(update(ids[2].clone()), update(ids[3].clone())).await;
    assert_eq!(fly.max_concurrent_updates(), 2);
}

#[tokio::test]
async fn destroy_cordon_uncordon_and_metadata() {
    let (fly, api) = demo();
    let blue = fly
        .add_machines("demo", &MachineSpec::new("app").checks(1))
        .remove(0);
    let mut config = fly.machine(&blue).config;
    config["metadata"]["fly_bluegreen_deployment_tag"] = json!("green-1");
    let (status, green) = api
        .post(
            "/v1/apps/demo/machines",
            json!({"config": config, "region": "iad", "skip_service_registration": true, "lease_ttl": 30}),
        )
        .await;
    assert_eq!(status, 200, "{green}");
    assert_eq!(green["cordoned"], true);
    let green_id = green["id"].as_str().expect("id").to_string();
    let green_nonce = green["nonce"]
        .as_str()
        .expect("create with lease_ttl returns a nonce")
        .to_string();
    let green_path = format!("/v1/apps/demo/machines/{green_id}");
    assert_eq!(
        api.call("POST", &format!("{green_path}/uncordon"), None, None)
            .await
            .0,
        409,
        "leased"
    );
    assert_eq!(
        api.call(
            "POST",
            &format!("{green_path}/uncordon"),
            None,
            Some(&green_nonce)
        )
        .await
        .0,
        200
    );
    assert!(!fly.machine(&green_id).cordoned);

    let blue_path = format!("/v1/apps/demo/machines/{blue}");
    assert_eq!(
        api.call("POST", &format!("{blue_path}/cordon"), None, None)
            .await
            .0,
        200
    );
    assert!(fly.machine(&blue).cordoned);
    let (status, body) = api.call("DELETE", &blue_path, None, None).await;
    assert_eq!(status, 412, "running machines need force: {body}");
    assert_eq!(
        api.post(
            &format!("{blue_path}/stop"),
            json!({"signal": "SIGTERM", "timeout": "5s"})
        )
        .await
        .0,
        200
    );
    assert_eq!(
        api.get(&format!("{blue_path}/wait?state=stopped&timeout=60"))
            .await
            .0,
        200
    );
    assert_eq!(api.call("DELETE", &blue_path, None, None).await.0, 200);
    assert_eq!(fly.machine(&blue).state, "destroyed");
    assert_eq!(api.post(&blue_path, json!({"config": config})).await.0, 412);

    assert_eq!(
        api.call(
            "POST",
            &format!("{green_path}/metadata/owner"),
            Some(json!({"value": "team"})),
            Some(&green_nonce)
        )
        .await
        .0,
        204
    );
    let (_, value) = api.get(&format!("{green_path}/metadata/owner")).await;
    assert_eq!(value, json!({"value": "team"}));
    let (status, _) = api
        .call(
            "PATCH",
            &format!("{green_path}/metadata"),
            Some(json!({"metadata": {"owner": "", "tier": "web"}})),
            Some(&green_nonce),
        )
        .await;
    assert_eq!(status, 204);
    let (_, metadata) = api.get(&format!("{green_path}/metadata")).await;
    assert_eq!(metadata["tier"], "web");
    assert!(metadata.get("owner").is_none());
    assert_eq!(metadata["fly_bluegreen_deployment_tag"], "green-1");
}

#[tokio::test]
async fn a_machine_rule_applies_to_that_machine_on_that_image_only() {
    let (fly, api) = demo();
    let ids = fly.add_machines("demo", &MachineSpec::new("app").count(2).checks(1));
    fly.set_machine_behavior(&ids[1], ":v2", Behavior::ChecksFail);
    let deploy = |id: &String, tag: &str| {
        let mut config = fly.machine(id).config;
        config["image"] = json!(format!("registry.fly.io/demo:{tag}"));
        let path = format!("/v1/apps/demo/machines/{id}");
        let api = &api;
        async move { assert_eq!(api.post(&path, json!({"config": config})).await.0, 200) }
    };
    deploy(&ids[0], "v2").await;
    deploy(&ids[1], "v2").await;
    let settled = |f: &FlyApi| ids.iter().all(|id| !f.machine(id).busy());
    assert!(fly.wait_until(Duration::from_secs(5), settled));
    assert_eq!(fly.machine(&ids[0]).checks[0].status, "passing");
    assert_eq!(fly.machine(&ids[1]).checks[0].status, "critical");
    // Rolled back to the old image, it is healthy again.
    deploy(&ids[1], "v1").await;
    assert!(fly.wait_until(Duration::from_secs(5), settled));
    assert_eq!(fly.machine(&ids[1]).checks[0].status, "passing");
    assert_eq!(fly.machine(&ids[1]).config_history.len(), 3);
}

#[tokio::test]
async fn volumes_are_created_listed_and_attached_by_mounts() {
    let (fly, api) = demo();
    let (status, volume) = api
        .post(
            "/v1/apps/demo/volumes",
            json!({"name": "data", "region": "iad", "size_gb": 3, "encrypted": true}),
        )
        .await;
    assert_eq!(status, 200, "{volume}");
    let vol = volume["id"].as_str().expect("id").to_string();
    assert!(schema_errors("Volume", &volume).is_empty());

    let config = json!({"image": "registry.fly.io/demo:v1", "mounts": [{"volume": vol, "path": "/data", "name": "data"}]});
    let (status, machine) = api
        .post(
            "/v1/apps/demo/machines",
            json!({"config": config, "region": "iad"}),
        )
        .await;
    assert_eq!(status, 200, "{machine}");
    let (_, list) = api.get("/v1/apps/demo/volumes").await;
    assert_eq!(list[0]["attached_machine_id"], machine["id"]);
    let (status, body) = api
        .post(
            "/v1/apps/demo/machines",
            json!({"config": config, "region": "iad"}),
        )
        .await;
    // A Fly engineer on community.fly.io (t/15555): 412 is the answer to a machine that would
    // use a volume another machine already has.
    assert_eq!(status, 412, "{body}");
    assert!(error_of(&body).contains("already attached"), "{body}");
    // A volume lives in one region: a machine elsewhere cannot mount it, and a create without
    // a region goes where the volume is.
    let far = fly.add_volume("demo", "far", "syd", 1);
    let on_far = json!({"image": "x", "mounts": [{"volume": far, "path": "/data"}]});
    let (status, body) = api
        .post(
            "/v1/apps/demo/machines",
            json!({"config": on_far, "region": "iad"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(error_of(&body).contains("is in region syd"), "{body}");
    let (status, placed) = api
        .post("/v1/apps/demo/machines", json!({"config": on_far}))
        .await;
    assert_eq!(status, 200, "{placed}");
    assert_eq!(placed["region"], "syd");
    let missing = json!({"image": "x", "mounts": [{"volume": "vol_nope", "path": "/data"}]});
    let (status, _) = api
        .post("/v1/apps/demo/machines", json!({"config": missing}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        api.call("DELETE", &format!("/v1/apps/demo/volumes/{vol}"), None, None)
            .await
            .0,
        412
    );

    let seeded = fly.add_machine_with_config(
        "demo",
        "iad",
        "stopped",
        json!({"image": "registry.fly.io/demo:v1", "mounts": [{"volume": fly.add_volume("demo", "logs", "iad", 1), "path": "/logs"}]}),
    );
    assert!(
        fly.volumes("demo")
            .iter()
            .any(|v| v.attached_machine_id.as_deref() == Some(seeded.as_str()))
    );
}

/// A machine's volume is fixed at creation (flyctl replaces the machine instead,
/// `machines_launchinput.go`): an update that attaches, detaches or swaps one is refused; one
/// that only moves the mount path goes through.
#[tokio::test]
async fn an_update_cannot_attach_detach_or_swap_a_volume() {
    let (fly, api) = demo();
    let data = fly.add_volume("demo", "data", "iad", 1);
    let other = fly.add_volume("demo", "other", "iad", 1);
    let with = fly.add_machine_with_config(
        "demo",
        "iad",
        "stopped",
        json!({"image": "registry.fly.io/demo:v1", "mounts": [{"volume": data, "path": "/data", "name": "data"}]}),
    );
    let without = fly.add_machine_with_config(
        "demo",
        "iad",
        "stopped",
        json!({"image": "registry.fly.io/demo:v1"}),
    );
    let update = |id: String, config: Value| {
        let api = &api;
        async move {
            let nonce = api.lease("demo", &id).await;
            let answer = api
                .call(
                    "POST",
                    &format!("/v1/apps/demo/machines/{id}"),
                    Some(json!({"config": config, "skip_launch": true})),
                    Some(&nonce),
                )
                .await;
            api.call(
                "DELETE",
                &format!("/v1/apps/demo/machines/{id}/lease"),
                None,
                Some(&nonce),
            )
            .await;
            answer
        }
    };
    let image = "registry.fly.io/demo:v2";
    for (id, config) in [
        (
            with.clone(),
            json!({"image": image, "mounts": [{"volume": other, "path": "/data", "name": "other"}]}),
        ),
        (with.clone(), json!({"image": image})),
        (
            without.clone(),
            json!({"image": image, "mounts": [{"volume": other, "path": "/data", "name": "other"}]}),
        ),
    ] {
        let (status, body) = update(id, config.clone()).await;
        assert_eq!(status, 400, "{config}: {body}");
        assert!(
            error_of(&body).contains("cannot be attached, detached or swapped"),
            "{body}"
        );
    }
    assert_eq!(fly.machine(&with).config["mounts"][0]["volume"], json!(data));
    let (status, body) = update(
        with.clone(),
        json!({"image": image, "mounts": [{"volume": data, "path": "/srv", "name": "data"}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(fly.machine(&with).config["mounts"][0]["path"], "/srv");
}

/// The logs API as fly-go's `GetAppLogs` reads it: pages after `next_token`, one machine's
/// lines with `instance`, the token kept when nothing is new; anything but that GET is a
/// violation.
#[tokio::test]
async fn app_logs_page_by_token_and_filter_by_instance() {
    let (fly, api) = demo();
    fly.set_log_output("demo:deployment-", &["hello"]);
    let a = fly.add_machines("demo", &MachineSpec::new("app")).remove(0);
    let b = fly.add_machines("demo", &MachineSpec::new("app")).remove(0);
    let messages = |page: &Value| -> Vec<String> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["attributes"]["message"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, only_a) = api
        .get(&format!("/api/v1/apps/demo/logs?next_token=&instance={a}"))
        .await;
    assert_eq!(messages(&only_a).len(), 2, "{only_a}");
    assert!(
        only_a["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["attributes"]["instance"] == json!(a))
    );
    assert_eq!(messages(&only_a)[1], "hello");
    let token = only_a["meta"]["next_token"].as_str().unwrap().to_string();
    let (_, nothing_new) = api
        .get(&format!("/api/v1/apps/demo/logs?next_token={token}&instance={a}"))
        .await;
    assert!(messages(&nothing_new).is_empty());
    assert_eq!(nothing_new["meta"]["next_token"], json!(token));
    let (_, both) = api.get("/api/v1/apps/demo/logs?next_token=").await;
    assert_eq!(messages(&both).len(), 4, "{both}");
    assert!(
        both["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["attributes"]["instance"] == json!(b))
    );
    assert!(fly.violations().is_empty(), "{:#?}", fly.violations());
    let (status, _) = api.post("/api/v1/apps/demo/logs", json!({})).await;
    assert_eq!(status, 400);
    let violations = fly.take_violations();
    assert!(
        violations
            .iter()
            .any(|v| v.reason.contains("the logs API is GET")),
        "{violations:#?}"
    );
    fly.refuse_logs();
    assert_eq!(api.get("/api/v1/apps/demo/logs?next_token=").await.0, 401);
}

#[tokio::test]
async fn a_first_deploy_turns_a_pending_app_into_a_deployed_one() {
    let (fly, api) = demo();
    fly.set_app_status("demo", "pending");
    assert_eq!(api.get("/v1/apps/demo").await.1["status"], "pending");
    let config = MachineSpec::new("app").config();
    let (status, _) = api
        .post(
            "/v1/apps/demo/machines",
            json!({"config": config, "region": "ams"}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, app) = api.get("/v1/apps/demo").await;
    assert_eq!(
        (app["status"].clone(), app["machine_count"].clone()),
        (json!("deployed"), json!(1))
    );
    assert_eq!(fly.machines("demo")[0].region, "ams");
}

/// What the 100-machine rollout test relies on: a client that keeps at most 5 updates in
/// flight (lease, update, wait, poll checks, release) is measured at exactly 5, and the
/// double keeps up.
#[tokio::test]
async fn a_hundred_machines_updated_five_at_a_time_measure_five() {
    use futures::StreamExt;
    let (fly, api) = demo();
    let ids = fly.add_machines("demo", &MachineSpec::new("app").count(100).checks(1));
    let started = Instant::now();
    let api = &api;
    let fly_ref = &fly;
    futures::stream::iter(ids.clone())
        .map(|id| async move {
            let nonce = api.lease("demo", &id).await;
            let path = format!("/v1/apps/demo/machines/{id}");
            let mut config = fly_ref.machine(&id).config;
            config["image"] = json!("registry.fly.io/demo@sha256:new");
            let (status, _) = api
                .call("POST", &path, Some(json!({"config": config})), Some(&nonce))
                .await;
            assert_eq!(status, 200);
            let (status, _) = api.get(&format!("{path}/wait?state=started&timeout=60")).await;
            assert_eq!(status, 200);
            for _ in 0..200 {
                let (_, machine) = api.get(&path).await;
                if machine["checks"][0]["status"] == "passing" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            api.call("DELETE", &format!("{path}/lease"), None, Some(&nonce))
                .await;
        })
        .buffer_unordered(5)
        .collect::<Vec<()>>()
        .await;
    let elapsed = started.elapsed();
    assert_eq!(fly.max_concurrent_updates(), 5);
    assert!(
        fly.machines("demo")
            .iter()
            .all(|m| m.image() == "registry.fly.io/demo@sha256:new")
    );
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
    eprintln!(
        "100 machines, 5 at a time: {elapsed:?}, {} requests",
        fly.requests().len()
    );
}

#[tokio::test]
async fn flat_leases_and_zero_delays_are_options() {
    let fly = FlyApi::with_options(Options {
        flat_lease: true,
        timing: Timing {
            start: Duration::ZERO,
            checks: Duration::ZERO,
            ..Timing::default()
        },
        ..Options::default()
    });
    fly.add_app("demo");
    let id = fly
        .add_machines("demo", &MachineSpec::new("app").checks(1))
        .remove(0);
    let api = Api::new(&fly);
    let (status, lease) = api
        .post(&format!("/v1/apps/demo/machines/{id}/lease"), json!({"ttl": 13}))
        .await;
    assert_eq!(status, 201);
    let nonce = lease["nonce"]
        .as_str()
        .expect("flat lease has a nonce")
        .to_string();
    let config = fly.machine(&id).config;
    let (status, machine) = api
        .call(
            "POST",
            &format!("/v1/apps/demo/machines/{id}"),
            Some(json!({"config": config})),
            Some(&nonce),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        machine["state"], "started",
        "no delay: the answer shows the end state"
    );
    assert_eq!(machine["checks"][0]["status"], "passing");
}

/// An IP assignment as fly-go's `AssignIPRequest` sends it (`flaps/flaps_ip_assignments.go`:
/// every field, none omitted) with the app's organization, as flyctl's first deploy does.
fn ip_request(kind: &str) -> Value {
    json!({"type": kind, "region": "", "org_slug": "personal", "network": "", "service_name": ""})
}

#[tokio::test]
async fn ip_addresses_are_assigned_listed_and_released() {
    let (fly, api) = demo();
    let (status, v6) = api.post("/v1/apps/demo/ip_assignments", ip_request("v6")).await;
    assert_eq!(status, 200, "{v6}");
    let (_, v4) = api
        .post("/v1/apps/demo/ip_assignments", ip_request("shared_v4"))
        .await;
    assert_eq!(v4["shared"], true);
    assert!(fly.take_violations().is_empty());
    let (status, _) = api.post("/v1/apps/demo/ip_assignments", ip_request("v5")).await;
    assert_eq!(status, 400);
    assert_eq!(fly.take_violations().len(), 1);
    // Without the app's org_slug: not what fly-go sends (a violation), though answered.
    let (status, _) = api
        .post("/v1/apps/demo/ip_assignments", json!({"type": "v6"}))
        .await;
    assert_eq!(status, 200);
    let violations = fly.take_violations();
    assert!(
        violations.len() == 1 && violations[0].reason.contains("org_slug"),
        "{violations:?}"
    );
    let (_, ip) = api.get("/v1/apps/demo/ip_assignments").await;
    let extra = ip["ips"][2]["ip"]
        .as_str()
        .expect("the third address")
        .to_string();
    api.call(
        "DELETE",
        &format!("/v1/apps/demo/ip_assignments/{extra}"),
        None,
        None,
    )
    .await;
    let (_, list) = api.get("/v1/apps/demo/ip_assignments").await;
    assert_eq!(list["ips"].as_array().map(Vec::len), Some(2));
    let ip = v6["ip"].as_str().expect("ip");
    assert_eq!(
        api.call(
            "DELETE",
            &format!("/v1/apps/demo/ip_assignments/{ip}"),
            None,
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(
        api.call(
            "DELETE",
            &format!("/v1/apps/demo/ip_assignments/{ip}"),
            None,
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(fly.ips("demo"), [v4]);
}

#[tokio::test]
async fn wait_refuses_timeouts_above_60s_and_answers_only_for_the_version_asked() {
    let (fly, api) = demo();
    let id = fly.add_machines("demo", &MachineSpec::new("app")).remove(0);
    let path = format!("/v1/apps/demo/machines/{id}");
    for timeout in [61, 0] {
        let (status, answer) = api
            .get(&format!("{path}/wait?state=started&timeout={timeout}"))
            .await;
        assert_eq!(status, 400, "{answer}");
        assert!(
            error_of(&answer).starts_with("invalid_argument: invalid WaitMachineRequest.Timeout"),
            "{answer}"
        );
    }
    let (status, _) = api.get(&format!("{path}/wait?state=started&timeout=60")).await;
    assert_eq!(status, 200);

    let old_version = fly.machine(&id).version;
    let nonce = api.lease("demo", &id).await;
    let mut config = fly.machine(&id).config;
    config["image"] = json!("registry.fly.io/demo@sha256:def");
    let (status, updated) = api
        .call("POST", &path, Some(json!({"config": config})), Some(&nonce))
        .await;
    assert_eq!(status, 200, "{updated}");
    let new_version = updated["instance_id"].as_str().unwrap().to_string();
    // The machine is started again soon, but never at the version it had before the update.
    let (status, _) = api
        .get(&format!(
            "{path}/wait?state=started&timeout=2&version={old_version}"
        ))
        .await;
    assert_eq!(status, 408);
    let (status, waited) = api
        .get(&format!(
            "{path}/wait?state=started&timeout=10&instance_id={new_version}"
        ))
        .await;
    assert_eq!(status, 200, "{waited}");
    assert_eq!(waited["version"], json!(new_version));
    assert!(fly.violations().is_empty(), "{:?}", fly.violations());
}

/// fly-go `flaps/flaps_machines_wait_test.go`, `TestWaitOptions` (states sent as repeated
/// `state` parameters, `from_event_id`) and `TestWaitStatesNoCommaSplitting` (one
/// comma-separated value, which the spec says flaps splits): the double answers a wait for any
/// of the states either way. `from_event_id` it does not model, so a client sending it is told.
#[tokio::test]
async fn wait_takes_several_states_and_flags_from_event_id() {
    let (fly, api) = demo();
    let id = fly.add_machines("demo", &MachineSpec::new("app")).remove(0);
    let path = format!("/v1/apps/demo/machines/{id}/wait");
    for query in ["state=stopped&state=started", "state=stopped,started"] {
        let (status, waited) = api.get(&format!("{path}?{query}&timeout=1")).await;
        assert_eq!((status, &waited["state"]), (200, &json!("started")), "{query}");
    }
    for query in ["state=stopped&state=suspended", "state=stopped,suspended"] {
        let (status, _) = api.get(&format!("{path}?{query}&timeout=1")).await;
        assert_eq!(status, 408, "{query}");
    }
    assert!(fly.violations().is_empty(), "{:?}", fly.violations());

    let (status, _) = api
        .get(&format!(
            "{path}?state=started&from_event_id=01JC1V3CW1VEKNMHX7MJ70DE1D"
        ))
        .await;
    assert_eq!(status, 501);
    assert!(fly.take_violations()[0].reason.contains("from_event_id"));
}

/// Machine sizes: the double refuses on create and update what Fly refuses (its own reading of
/// flyctl's `internal/machine/update.go`), and nixfly's fly.toml check refuses exactly those
/// sizes, found before any upload. Two implementations of one rule set, held against each other
/// over every CPU kind, a spread of CPU counts and memory sizes around each limit.
#[tokio::test]
async fn machine_sizes_fly_refuses_are_refused_by_the_double_and_by_fly_toml_checks() {
    use nixfly::fly::appconfig::AppConfig;
    let (fly, api) = demo();
    let id = api
        .create_machine(json!({"config": {"image": "registry.fly.io/demo:v1"}, "region": "iad"}))
        .await;
    let path = format!("/v1/apps/demo/machines/{id}");

    let (mut accepted, mut refused) = (0, 0);
    for kind in ["shared", "performance"] {
        for cpus in [1, 2, 3, 4, 8, 12, 16, 20, 32] {
            for memory in [
                100, 256, 300, 512, 768, 1024, 2048, 2560, 3072, 4096, 8192, 16384, 65536, 70000,
            ] {
                let guest = json!({"cpu_kind": kind, "cpus": cpus, "memory_mb": memory});
                let config = json!({"image": "registry.fly.io/demo:v1", "guest": guest});
                let (status, answer) = api
                    .post(
                        "/v1/apps/demo/machines",
                        json!({"config": config, "region": "iad"}),
                    )
                    .await;
                assert!(status == 200 || status == 400, "{guest}: {status} {answer}");
                let double_refuses = status == 400;
                let (update_status, _) = api.post(&path, json!({"config": config})).await;
                assert_eq!(update_status, status, "{guest}: create and update disagree");

                let toml = format!(
                    "app = \"demo\"\n[[vm]]\ncpu_kind = \"{kind}\"\ncpus = {cpus}\nmemory_mb = {memory}\n"
                );
                let parsed = AppConfig::parse(&toml, std::path::Path::new("fly.toml"));
                if let Ok((config, _)) = &parsed {
                    assert_eq!(config.machine_config("app").unwrap()["guest"], guest);
                }
                assert_eq!(
                    parsed.is_err(),
                    double_refuses,
                    "{guest}: the double says {status} {answer}, nixfly's fly.toml check says {:?}",
                    parsed.err().map(|e| e.to_string())
                );
                if double_refuses {
                    refused += 1;
                } else {
                    accepted += 1;
                }
            }
        }
    }
    // The grid reaches both sides of every rule, and most of it is refused.
    assert!(
        accepted >= 30 && refused >= 150,
        "{accepted} accepted, {refused} refused"
    );
    assert_eq!(
        fly.machine(&id).config_history.len(),
        1 + accepted,
        "refused updates change nothing"
    );
    assert!(fly.violations().is_empty(), "{:?}", fly.violations());
}

/// Machine checks (`[checks]`): the double refuses intervals under 2s and timeouts over 60s,
/// as flaps does (flyctl's `internal/appconfig/validation.go`), and nixfly's fly.toml check
/// refuses the same ones before any upload. Durations on both sides of each limit, in the
/// spellings fly.toml allows (a bare number is milliseconds there).
#[tokio::test]
async fn machine_checks_fly_refuses_are_refused_by_the_double_and_by_fly_toml_checks() {
    use nixfly::fly::appconfig::AppConfig;
    let (fly, api) = demo();
    // (fly.toml value, what nixfly sends as a Go duration)
    let intervals = [
        ("\"1s\"", "1s"),
        ("1999", "1.999s"),
        ("\"2s\"", "2s"),
        ("2000", "2s"),
        ("\"15s\"", "15s"),
    ];
    let timeouts = [
        ("\"2s\"", "2s"),
        ("\"1m\"", "1m0s"),
        ("60000", "1m0s"),
        ("60001", "1m0.001s"),
        ("\"90s\"", "1m30s"),
    ];
    let mut refused = 0;
    for (interval_toml, interval) in intervals {
        for (timeout_toml, timeout) in timeouts {
            let toml = format!(
                "app = \"demo\"\n[checks.db]\ntype = \"tcp\"\nport = 5432\ninterval = {interval_toml}\ntimeout = {timeout_toml}\n"
            );
            let parsed = AppConfig::parse(&toml, std::path::Path::new("fly.toml"));
            let check = json!({"type": "tcp", "port": 5432, "interval": interval, "timeout": timeout});
            if let Ok((config, _)) = &parsed {
                assert_eq!(config.machine_config("app").unwrap()["checks"]["db"], check);
            }
            let config = json!({"image": "registry.fly.io/demo:v1", "checks": {"db": check}});
            let (status, answer) = api
                .post(
                    "/v1/apps/demo/machines",
                    json!({"config": config, "region": "iad"}),
                )
                .await;
            assert!(status == 200 || status == 400, "{check}: {status} {answer}");
            assert_eq!(
                parsed.is_err(),
                status == 400,
                "{check}: the double says {status} {answer}, nixfly's fly.toml check says {:?}",
                parsed.err().map(|e| e.to_string())
            );
            refused += usize::from(status == 400);
        }
    }
    // 2 of 5 intervals and 2 of 5 timeouts are out of range: 25 - 3 * 3 pairs are refused.
    assert_eq!(refused, 16);
    assert!(fly.violations().is_empty(), "{:?}", fly.violations());
}

/// `FaultKind::AfterCommit`: the create takes effect and the answer is the error, as flaps'
/// ambiguous 408s are; the list's `metadata.KEY` filter then finds the machine. A fault path
/// ending in `$` matches the create only, not the machine's own paths.
#[tokio::test]
async fn a_create_can_be_committed_and_answered_with_an_error() {
    let (fly, api) = demo();
    fly.inject_fault(
        "POST",
        "/v1/apps/demo/machines$",
        1,
        FaultKind::AfterCommit {
            status: 408,
            message: "deadline_exceeded".into(),
        },
    );
    let config = json!({"image": "registry.fly.io/demo:v1", "metadata": {"launch": "one"}});
    let (status, answer) = api
        .post(
            "/v1/apps/demo/machines",
            json!({"config": config, "region": "iad"}),
        )
        .await;
    assert_eq!(status, 408, "{answer}");
    assert_eq!(answer["error"], "deadline_exceeded");
    let (status, found) = api.get("/v1/apps/demo/machines?metadata.launch=one").await;
    assert_eq!(status, 200);
    assert_eq!(found.as_array().map(Vec::len), Some(1), "{found}");
    let (_, none) = api.get("/v1/apps/demo/machines?metadata.launch=two").await;
    assert_eq!(none, json!([]));
    let id = found[0]["id"].as_str().unwrap();
    fly.inject_fault("POST", "/v1/apps/demo/machines$", 1, FaultKind::Unavailable);
    let (status, _) = api
        .post(&format!("/v1/apps/demo/machines/{id}/stop"), json!({}))
        .await;
    assert_eq!(status, 200, "the fault is for creates only");
    assert_eq!(fly.pending_faults().len(), 1);
    assert!(fly.violations().is_empty(), "{:?}", fly.violations());
}

/// The double's hand-written OpenAPI validator (`schema.rs`) against an independent one, the
/// `jsonschema` crate, on the request bodies a real rollout sends and on broken copies of them.
/// The spec becomes JSON Schema 2020-12 with the double's two deliberate departures spelt out:
/// an object with declared properties takes no other (`unevaluatedProperties: false`; Fly would
/// silently drop a misspelt field), and a field documented as "or a boolean (old format)"
/// takes a boolean. Every verdict must agree.
#[test]
fn the_doubles_validator_agrees_with_jsonschema_on_rollout_requests() {
    use std::collections::BTreeSet;
    use support::rollout::{APP, image, run_rollout};
    use support::{TestDir, assert_success};
    let fly = FlyApi::start();
    fly.add_app(APP);
    fly.add_machines(APP, &MachineSpec::new("app").count(2).checks(1).services(true));
    let t = TestDir::new();
    assert_success(&run_rollout(&fly, &t, &image(30), &[]));
    assert_success(&run_rollout(&fly, &t, &image(31), &["--strategy", "bluegreen"]));
    assert_success(&run_rollout(&fly, &t, &image(32), &["--strategy", "canary"]));

    let root = json_schema_of_spec(schema::spec());
    let mut checked = BTreeSet::new();
    let mut disagreements = Vec::new();
    for request in fly.requests() {
        let Some(body) = &request.body else { continue };
        let Some(op) = schema::find_operation(&request.method, &request.path) else {
            continue;
        };
        let method = request.method.to_ascii_lowercase();
        let pointer = format!(
            "/paths/{}/{method}/requestBody/content/application~1json/schema",
            op.template.replace('~', "~0").replace('/', "~1")
        );
        let Some(body_schema) = schema::spec().pointer(&pointer) else {
            continue;
        };
        checked.insert(op.id.clone());
        let mut js_schema = root.clone();
        js_schema["$ref"] = json!(format!("#/$defs/{}", ref_name(body_schema)));
        let validator = jsonschema::draft202012::new(&js_schema).expect("the converted spec compiles");
        for (what, candidate) in broken_copies(body) {
            let mut errors = Vec::new();
            schema::validate(body_schema, &candidate, "body", &mut errors);
            let independent = validator.is_valid(&candidate);
            if errors.is_empty() != independent {
                disagreements.push(format!(
                    "{} ({what}): schema.rs says {:?}, jsonschema says {}",
                    op.id,
                    errors,
                    if independent { "valid" } else { "invalid" }
                ));
            }
        }
    }
    assert!(
        checked.contains("Machines_create") && checked.contains("Machines_update"),
        "{checked:?}"
    );
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}

/// `#/components/schemas/NAME` of a `$ref` body schema.
fn ref_name(schema: &Value) -> String {
    schema["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
        .expect("request bodies are $refs to components")
        .to_string()
}

/// The body as sent (valid), and copies broken one way each: an unknown property at the top and
/// in `config`, each required top-level property removed, a string turned into a number.
fn broken_copies(body: &Value) -> Vec<(String, Value)> {
    let mut out = vec![("as sent".to_string(), body.clone())];
    if let Some(object) = body.as_object() {
        let mut extra = body.clone();
        extra["nixfly_typo"] = json!(true);
        out.push(("unknown property".into(), extra));
        if object.get("config").is_some_and(Value::is_object) {
            let mut extra = body.clone();
            extra["config"]["skip_lauch"] = json!(true);
            out.push(("unknown config property".into(), extra));
            let mut wrong = body.clone();
            wrong["config"]["image"] = json!(42);
            out.push(("config.image a number".into(), wrong));
            let mut gone = body.clone();
            gone["config"].as_object_mut().unwrap().remove("image");
            out.push(("config.image removed".into(), gone));
        }
        for (key, value) in object {
            if value.is_string() {
                let mut wrong = body.clone();
                wrong[key] = json!(7);
                out.push((format!("{key} a number"), wrong));
            }
        }
    }
    out
}

/// The OpenAPI 3.0 spec's components as JSON Schema 2020-12 `$defs` (see the test above).
fn json_schema_of_spec(spec: &Value) -> Value {
    fn convert(node: &Value) -> Value {
        match node {
            Value::Object(map) => {
                let mut out = serde_json::Map::new();
                for (key, value) in map {
                    match key.as_str() {
                        // OpenAPI-only keywords.
                        "example" | "xml" | "discriminator" | "externalDocs" | "deprecated" => {}
                        "$ref" => {
                            let name = value
                                .as_str()
                                .and_then(|r| r.strip_prefix("#/components/schemas/"))
                                .expect("component $refs only");
                            out.insert(key.clone(), json!(format!("#/$defs/{name}")));
                        }
                        // `properties` maps names to schemas: convert each, not the map.
                        "properties" => {
                            let props = value
                                .as_object()
                                .unwrap()
                                .iter()
                                .map(|(k, v)| (k.clone(), convert(v)))
                                .collect();
                            out.insert(key.clone(), Value::Object(props));
                        }
                        _ => {
                            out.insert(key.clone(), convert(value));
                        }
                    }
                }
                let declares = map.contains_key("properties") || map.contains_key("allOf");
                if declares && !map.contains_key("additionalProperties") {
                    out.insert("unevaluatedProperties".into(), json!(false));
                }
                if map
                    .get("description")
                    .and_then(Value::as_str)
                    .is_some_and(|d| d.contains("or a boolean (old format)"))
                    && let Some(ty) = map.get("type").and_then(Value::as_str)
                {
                    out.insert("type".into(), json!([ty, "boolean"]));
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(convert).collect()),
            other => other.clone(),
        }
    }
    let defs: serde_json::Map<String, Value> = spec["components"]["schemas"]
        .as_object()
        .expect("the spec has components")
        .iter()
        .map(|(name, schema)| (name.clone(), convert(schema)))
        .collect();
    json!({ "$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": defs })
}
