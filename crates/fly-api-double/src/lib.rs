//! A Fly API double for tests: the Machines API (`/v1/...`, checked against the official
//! OpenAPI file beside this crate, `machines-openapi.json`) and the platform releases API (`/api/v1/releases`),
//! served on a free loopback port by its own thread and tokio runtime, so plain `#[test]`s
//! that run the nixfly binary as a subprocess can use it.
//!
//! ```ignore
//! let fly = FlyApi::start();                       // Options::default()
//! fly.add_app("demo");
//! let web = fly.add_machines("demo", &MachineSpec::new("app").count(3).checks(1));
//! let worker = fly.add_machines("demo", &MachineSpec::new("worker").count(2).state("stopped"));
//! fly.set_behavior("bad-image", Behavior::ChecksFail);          // every machine on it
//! fly.set_machine_behavior(&web[2], "@sha256:new", Behavior::FailToStart); // just one
//! fly.set_release_command_exit_code(1);
//! fly.set_test_command_exit_code(1);                  // machine checks' test machines
//! fly.hold_lease(&web[0], "someone@else.com", Some(Duration::from_secs(2)));
//! fly.inject_fault("POST", "/machines/", 2, FaultKind::TooManyRequests { retry_after_secs: 1 });
//! // A create that takes effect although its answer is an error, or is cut off:
//! fly.inject_fault("POST", "/v1/apps/demo/machines$", 1,
//!     FaultKind::AfterCommit { status: 408, message: "deadline_exceeded".into() });
//! fly.inject_fault("POST", "/v1/apps/demo/machines$", 1, FaultKind::AfterCommitBroken);
//! // Fly's "could not reserve resource" on update, which flyctl answers by recreating:
//! fly.inject_fault("POST", &format!("/machines/{}", web[1]), 1,
//!     FaultKind::Status { status: 409, message: "could not reserve resource for machine".into() });
//!
//! let out = run(fly.configure(&mut t.nixfly()).args(["rollout", "--app", "demo", ...]));
//!
//! assert_eq!(fly.machine(&web[0]).image(), "registry.fly.io/demo@sha256:...");
//! assert!(fly.requests().iter().all(|r| !r.is_mutating()));   // e.g. for --dry-run
//! assert_eq!(fly.releases()[0].statuses, ["created", "running", "complete"]);
//! assert!(fly.max_concurrent_updates() <= 2);
//! // Dropping `fly` panics if any request broke the schema (or prints them, when the test
//! // is already failing): look at them with `fly.violations()`, or `fly.take_violations()`
//! // in a test that sends bad requests on purpose.
//! ```
//!
//! # Behaviour
//! Each rule below names its source here or at the code that applies it: a fly-go or flyctl
//! file, an operation or schema of the spec, a section of `shared/fly/NOTES.md`, or a Fly
//! engineer's answer on community.fly.io. Rules without one are listed under "Assumptions"
//! at the end, and marked "no source found" in the code.
//! - Auth: `Authorization: Bearer X`, `FlyV1 X` or `Bearer FlyV1 X` with X the token
//!   (`fly.token()`); anything else is 401 `{"error":"Authenticate: token validation error"}`.
//!   (NOTES.md "Base URLs"). The platform API (`/api/...`) takes only `Bearer`, with X among
//!   the comma-joined tokens sent (flyctl `internal/uiex/releases.go`, fly-go
//!   `Tokens.GraphQL()`); `FlyV1` there is 401.
//! - Every request is recorded (`requests()`), then validated: the operation must exist in the
//!   spec; query parameters and the JSON body must match its schemas; properties the schema
//!   does not declare and `null`s where the schema is not nullable are violations too (Fly
//!   would silently ignore them). A violation answers 400 (404 for an unknown path) with the
//!   reasons, and is recorded. Release bodies are checked against the shapes in the notes.
//! - Time runs in "Fly seconds" scaled by `Timing::scale` (default 0.05): an update puts the
//!   machine in `replacing`, then `started` after `Timing::start` (or `stopped` with
//!   `skip_launch`, or when the machine was `stopped` or `created`: an update starts only a
//!   machine that was running, as flyctl's preflight `TestFlyMachineRun_standbyFor` sees);
//!   checks are `warning`, then `passing` after `Timing::checks`. A wait call blocks at most
//!   60 Fly seconds (3 s by default) and answers 408 on timeout; a `timeout` of 0 or above 60
//!   is 400 `invalid_argument`; with `version` (or `instance_id`) it answers only once the
//!   machine runs that version. `state` may be repeated or comma-separated (any of them will do: the
//!   spec's description of the parameter); a machine marked with `start_on_request` starts
//!   as soon as an update leaves it stopped, as fly-proxy's autostart starts it on a request,
//!   and one marked with `suspend_once_up` is suspended as soon as a launch has it up, as
//!   fly-proxy's autostop may;
//!   `from_event_id` is not modelled: 501 and a violation. Lease TTLs are not scaled:
//!   clients refresh them on their own clock.
//! - Leases: `POST .../lease` with body `{"ttl": n}` (or `?ttl=n` and no body, as fly-go's
//!   `AcquireLease` sends it, though the spec does not say so) answers 201
//!   `{"status":"success","data":{nonce,expires_at,owner,description,version}}` (flat with
//!   `Options::flat_lease`); with the current nonce in `fly-machine-lease-nonce` it refreshes,
//!   keeping the nonce (flyctl's `RefreshLease`, `internal/machine/leasable_machine.go`, fails
//!   on a new one); while someone else's lease is active it is 409 (a Fly engineer on community.fly.io,
//!   t/15555). Update, destroy, start, stop and cordon/uncordon need the nonce while a lease
//!   is active (409 otherwise), and a nonce that matches no active lease is 409 too; metadata writes do not (fly-go's `SetMetadata` takes
//!   no nonce). `DELETE .../lease` with the nonce releases it (404 "lease not found" when no
//!   lease is active).
//! - Starting a machine that is `created` or `replacing` is 412 `failed_precondition`, as
//!   flaps answers it. A destroy forces with `force=true` (the spec) or `kill=true` (fly-go).
//! - A machine made by `POST /machines` answers 404 to get and wait for
//!   `Timing::visible_after_create` (2 Fly seconds), as Fly's reads lag behind a create
//!   (flyctl `internal/machine/leasable_machine.go` retries them: `WithJustCreated`). With
//!   `Options::affinity` the request that carries the app's `fly_flaps_affinity` cookie sees
//!   it at once, and every successful write sets that cookie (`Path=/v1/apps/<app>`): flaps
//!   sets it to send a client's later requests to the node that made its writes (fly-go keeps
//!   it in a cookie jar, `flaps/flaps.go`), but the one source, fly-go's
//!   `TestFlapsClientPersistsPathScopedCookiesPerApp`, shows it on an app create, which nixfly
//!   never makes. Whether machine writes set it is not known, so it is off by default. The
//!   list can lag too, cookie or not (`Timing::listed_after_create`, zero unless a test sets
//!   it), as flyctl's bluegreen launch-id lookup allows for. Every answer has a
//!   `fly-request-id`.
//! - Destroying a destroyed machine answers 404 (flyctl's bluegreen strategy takes that as
//!   success); other writes to it 412.
//! - `set_image_pull(image, time)`: machines created or updated onto that image start `time`
//!   later (the pull), which the release command's waits must leave room for.
//! - `refuse_next_starts(times, message)`: those starts answer 200 with `status: "error"`
//!   and the message, and start nothing (fly-go `MachineStartResponse`).
//! - `refuse_updates(machine, message)`: its updates answer 409 with that message and no
//!   `status` code, as flaps answers an update its host has no room for (fly-go
//!   `flaps/flaps_error_test.go`, `TestCapacityScopeOf`; Kilo-Org/cloud#412 quotes it from
//!   production). `set_host_status(machine, "unreachable")`: the machine shows it (with
//!   `incomplete_config`), and updates answer 412. `refuse_next_creates(n)`: the next n creates
//!   are refused for capacity: 412 `{"error":"insufficient resources to create new machine with
//!   existing volume id '…'","status":"volume_placement_capacity"}` when the machine mounts a
//!   volume, else 422 `{"error":"could not find a candidate host","status":"insufficient_capacity"}`
//!   (the same fly-go test). A volume attached to another machine is 412 (a Fly engineer on
//!   community.fly.io, t/15555).
//! - Creates and updates with a guest Fly refuses answer 400: a CPU count its kind does not
//!   come in, memory off its step or outside its per-CPU range (`sizing`, after flyctl's
//!   `internal/machine/update.go`), and so do machine checks polled more often than every 2s or
//!   given more than 60s (`checks`, after flyctl's `internal/appconfig/validation.go`).
//! - Destroyed machines stay GET-able with state `destroyed` (hidden from the list unless
//!   `include_deleted=true`); waiting on them for any state but `destroyed` is 404.
//! - A machine whose `config.metadata.fly_process_group` is `fly_app_release_command`, when
//!   started, runs for `Timing::release_command_run`, records an `exit` event whose
//!   `request.exit_event.exit_code` is `set_release_command_exit_code` (default 0), stops,
//!   and is destroyed if `config.auto_destroy`. A machine check's test machine
//!   (`fly_app_test_machine_command`, fly-go `MachineProcessGroupFlyAppTestMachineCommand`;
//!   flyctl creates it launched) does the same with `set_test_command_exit_code`. Neither
//!   makes a never-deployed app deployed. The Machines API does not return a machine's
//!   output, so the double gives none either.
//! - Every machine has its own `private_ip` (6PN), which a test machine gets as
//!   `FLY_TEST_MACHINE_IP`.
//! - `Behavior` (by image, optionally for one machine): `ChecksFail` (checks go `critical`),
//!   `FailToStart` (state `failed`; a wait for `started` then times out with 408),
//!   `RestartLoop { exit_code, restarts }` (stays `started` while exit events with
//!   `restarting: true` and `restart_count` 1..=restarts pile up, then stops).
//! - Releases: `POST /api/v1/releases` answers 201 `{"release":{id,version,status,...}}` with
//!   versions counting up per app; a missing, null or non-object `definition` is 422 and
//!   `build_id` must be an integer (flyctl `uiex.CreateReleaseRequest`); `PATCH /api/v1/releases/{id}` appends to `statuses`.
//!   Creating an app machine in a `pending` app (`set_app_status`) makes it `deployed`.
//! - Operations in the spec that the double does not serve answer 501 and count as
//!   violations, so a client using one is noticed.
//! - Events are newest first; exit events carry `request.exit_event.{exit_code, restarting,
//!   requested_stop, ...}` and `request.restart_count`, as fly-go decodes them.
//! - The double checks its own successful answers against the spec's response schemas too;
//!   a mismatch is recorded as a violation (a bug in the double fails tests loudly).
//! - App logs (`GET /api/v1/apps/{app}/logs`, fly-go `GetAppLogs`, which flyctl polls for
//!   the release command): lines made from machine events (init's "Preparing to run" at
//!   each boot, `set_log_output` lines, "Main child exited normally with code: N" at each
//!   exit), paged by `next_token`, filtered by `instance`; `FlyV1` is accepted there, as
//!   fly-go sends `Tokens.BubblegumHeader()`; `refuse_logs` makes it answer 401, which flyctl
//!   reads as a token that may not read logs, "this can happen when using deploy tokens"
//!   (`internal/command/deploy/machines_releasecommand.go`, `waitForLogs`; fly-go
//!   `IsNotAuthenticatedError`).
//! - IP assignments: list/create (any spec type)/delete, for first deploys that allocate
//!   addresses.
//! - Volumes: list/create/get/delete; a create keeps `encrypted` (default true),
//!   `snapshot_retention` (1-60, else 400) and `auto_backup_enabled` and shows them back;
//!   `config.mounts[].volume` must name a volume of the app
//!   (400 otherwise) not attached to another machine (412 otherwise, community.fly.io
//!   t/15555); destroying the machine detaches it.
//!   A create must be in the volume's region (400 otherwise; without a region the machine
//!   goes there). An update must mount the volumes the machine has (400 otherwise): flyctl replaces a
//!   machine rather than attach, detach or swap its volume (`machines_launchinput.go`); the
//!   status and message of flaps' own refusal are not known, so this one is ours.
//! - Responses show `services[].autostop` "off"/"stop" as `false`/`true`, as Fly does; the
//!   validator accepts booleans there because the spec's description allows them.
//! - Events (`GET .../events`): newest first, 20 unless `limit` says otherwise, at most 50
//!   (the spec's `limit`). A `summary=true` list leaves out config, checks, events and
//!   `host_status` (the spec's `summary`).
//! - A stale `current_version` on update is 409 (community.fly.io t/15555); a stale
//!   `machine_version` on a metadata write is 412 (the spec's `Machines_update_metadata`).
//! - A machine on a host that is not `ok` shows no `config`, and an `incomplete_config` with
//!   only `image`, `metadata`, `mounts` and `guest` (fly-go `machine_types.go`; the fields
//!   flyctl's tests give it).
//!
//! # Assumptions (no source found)
//! Rules the double needs an answer for and no fly-go or flyctl file, spec operation, note or
//! Fly engineer gives. Each is marked "no source found" where it is applied; most are chosen to
//! be strict (refusing rather than accepting), so that nixfly does not come to depend on them.
//! - Statuses: 412 for `GET .../ps` of a machine that is not `started` (by analogy with flaps'
//!   412 for flyd's `failed_precondition`; nixfly, like flyctl, ignores any error there); 412
//!   for writes to a destroyed machine; 412 for destroying a running machine without
//!   `force=true` or `kill=true` (flyctl's `fly machine destroy` refuses it client-side); 412
//!   for an update of a machine whose host is not `ok` (flyctl never sends one); 409 for the
//!   update refusal text "deploys to this host are temporarily disabled" (its sibling "could
//!   not reserve resource" is a sourced 409); 409 for a lease nonce that matches no active lease; 404 for releasing or
//!   showing a lease when none is active (the text "lease not found" is flyctl's), and for a lease on a destroyed machine; 400 for a
//!   create/update without a config or image, for a mount naming no volume of the app, and for
//!   a create in another region than its volume; 400 for an update that attaches, detaches or
//!   swaps a volume; 400 for a volume create without a name or region; 412 for deleting a volume
//!   a machine mounts; 404 for an unknown app on the logs, releases and IP endpoints.
//! - The platform API refusing `FlyV1` (401) and a release without an object `definition`
//!   (422): flyctl never sends either, Fly's answer is unknown.
//! - Bodies: the logs API's 401 text (fly-go reads only the status); the GraphQL error text for
//!   an unknown app; check `output` texts; init's "Preparing to run" log line; the exit event of
//!   a requested stop (code 0, signal 15); how a failed start shows (state `failed`, a `start`
//!   event with status `failed`); what `ps` lists (by default a listener on 0.0.0.0 on each tcp
//!   service port); the wording of size and check refusals (`sizing`, `checks`).
//! - Defaults: a lease TTL of 30 s when none is given; a wait without `state` waits for
//!   `started`; a create without a region goes to iad (or its volume's region); an IP
//!   assignment without a type is v6; an image reference without a registry host is docker.io's;
//!   an app goes from `pending` to `deployed` at its first app machine's create; a volume
//!   created without `encrypted` is encrypted (flyctl always sends it).
//! - Behaviour: starting a running machine or stopping a stopped one changes nothing and
//!   answers 200; destroyed machines and volumes leave their lists at once; destroying a machine
//!   detaches its volumes at once; destroyed machines stay readable; which states `settled`
//!   covers; a wait with a `version` other than the current one waits until 408; a machine
//!   created with `skip_service_registration` reads `cordoned: true` until uncordoned (the
//!   spec's cordon description makes them the same state; no source shows the read).
//! - Timings: every `Timing` default but the existence of `visible_after_create` (none of
//!   Fly's durations is documented; they vary with image, host and region).
//! - The double's own rules, not Fly's: requests off the spec are violations answered 400 (404
//!   off every path), and spec operations the double does not serve answer 501.

pub mod checks;
pub mod schema;
pub mod server;
pub mod sizing;
pub mod state;

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub use state::{Behavior, Fault, FaultKind, Lease, Machine, RecordedRequest, Release, Timing, Violation};

/// How the double starts.
#[derive(Clone, Debug)]
pub struct Options {
    /// The token clients must present, without scheme prefix (one given with `FlyV1 ` or
    /// `Bearer ` is stripped). The default looks like a deploy token (comma-joined
    /// macaroons), so clients send `FlyV1`.
    pub token: String,
    pub timing: Timing,
    /// The owner Fly reports for leases this token takes.
    pub lease_owner: String,
    /// Answer lease calls with the spec's flat `Lease` rather than flyctl's envelope.
    pub flat_lease: bool,
    /// Set the `fly_flaps_affinity` cookie on every successful write and show new machines at
    /// once to the requests that carry it. Off (the default, since no source shows flaps
    /// setting it on machine writes), every request may reach a node that does not see a new
    /// machine yet.
    pub affinity: bool,
    /// Print each request and violation on stderr.
    pub echo: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            // Two comma-joined macaroons, the shape of a real deploy token.
            token: "fm2_lJPECAAAAAAAAflyapidouble,fm2_lJPEAAAAAAAAAtestdischarge".into(),
            timing: Timing::default(),
            lease_owner: "deployer@example.com".into(),
            flat_lease: false,
            affinity: false,
            echo: false,
        }
    }
}

/// Machines to seed with `FlyApi::add_machines`. Its config is a realistic flyctl-made one:
/// metadata `fly_platform_version=v2` and `fly_process_group`, a shared-cpu-1x guest, and
/// optionally named checks and an HTTP service on 8080.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MachineSpec {
    pub group: String,
    pub count: usize,
    pub region: String,
    /// `started` or `stopped` (or any other settled state).
    pub state: String,
    pub image: String,
    /// Number of top-level `config.checks` (named `http-0`, `http-1`, ...).
    pub checks: usize,
    /// Add an HTTP service (internal port 8080, ports 80 and 443, autostop "stop").
    pub services: bool,
    pub env: BTreeMap<String, String>,
}

impl Default for MachineSpec {
    fn default() -> Self {
        MachineSpec {
            group: "app".into(),
            count: 1,
            region: "iad".into(),
            state: "started".into(),
            image: "registry.fly.io/demo:deployment-01J0000000000000000000OLD".into(),
            checks: 0,
            services: false,
            env: BTreeMap::new(),
        }
    }
}

impl MachineSpec {
    pub fn new(group: &str) -> Self {
        MachineSpec {
            group: group.into(),
            ..MachineSpec::default()
        }
    }
    pub fn count(mut self, count: usize) -> Self {
        self.count = count;
        self
    }
    pub fn region(mut self, region: &str) -> Self {
        self.region = region.into();
        self
    }
    pub fn state(mut self, state: &str) -> Self {
        self.state = state.into();
        self
    }
    pub fn image(mut self, image: &str) -> Self {
        self.image = image.into();
        self
    }
    pub fn checks(mut self, checks: usize) -> Self {
        self.checks = checks;
        self
    }
    pub fn services(mut self, services: bool) -> Self {
        self.services = services;
        self
    }
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// The machine config this spec seeds.
    pub fn config(&self) -> Value {
        let mut config = json!({
            "image": self.image,
            "env": self.env,
            "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256},
            "restart": {"policy": "on-failure", "max_retries": 10},
            "metadata": {
                "fly_platform_version": "v2",
                "fly_process_group": self.group,
                "fly_release_id": "seed",
                "fly_release_version": "1",
                "fly_flyctl_version": "0.3.0",
            },
        });
        if self.checks > 0 {
            let checks: serde_json::Map<String, Value> = (0..self.checks)
                .map(|i| {
                    (
                        format!("http-{i}"),
                        json!({"type": "http", "port": 8080, "path": "/health",
                               "method": "GET", "interval": "15s", "timeout": "2s",
                               "grace_period": "5s"}),
                    )
                })
                .collect();
            config["checks"] = Value::Object(checks);
        }
        if self.services {
            config["services"] = json!([{
                "protocol": "tcp",
                "internal_port": 8080,
                "autostop": "stop",
                "autostart": true,
                "min_machines_running": 0,
                "ports": [
                    {"port": 80, "handlers": ["http"], "force_https": true},
                    {"port": 443, "handlers": ["tls", "http"]},
                ],
                "concurrency": {"type": "connections", "hard_limit": 25, "soft_limit": 20},
            }]);
        }
        config
    }
}

/// The running double. Dropping it stops the server, then panics if requests broke the
/// schema and the test did not take the violations.
pub struct FlyApi {
    shared: Arc<server::Shared>,
    url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FlyApi {
    /// Start with `Options::default()` on a free loopback port.
    pub fn start() -> Self {
        Self::with_options(Options::default())
    }

    pub fn with_options(options: Options) -> Self {
        Self::listen("127.0.0.1:0".parse().expect("literal"), options)
            .expect("bind a loopback port for the Fly API double")
    }

    /// Start on `addr` (the standalone sandbox lets users pick it).
    pub fn listen(addr: SocketAddr, options: Options) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}", listener.local_addr()?);
        let token = server::strip_scheme(&options.token).to_string();
        let shared = Arc::new(server::Shared {
            state: Mutex::new(state::State::new(options.timing, options.lease_owner)),
            token,
            started: Instant::now(),
            echo: options.echo,
            flat_lease: options.flat_lease,
            affinity: options.affinity,
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let router = axum::Router::new()
            .fallback(server::handle)
            .with_state(shared.clone());
        let thread = std::thread::Builder::new()
            .name("fly-api-double".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime for the Fly API double");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .expect("register the listener with tokio");
                    let serve = axum::serve(listener, router).into_future();
                    tokio::select! {
                        result = serve => result.expect("Fly API double server"),
                        _ = rx => {}
                    }
                });
            })?;
        Ok(FlyApi {
            shared,
            url,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// Base URL for both APIs: `FLY_FLAPS_BASE_URL` and `FLY_API_BASE_URL`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The token the double accepts (no scheme prefix).
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// Point a nixfly command at the double: both base URLs and `FLY_API_TOKEN`.
    pub fn configure<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("FLY_FLAPS_BASE_URL", &self.url)
            .env("FLY_API_BASE_URL", &self.url)
            .env("FLY_API_TOKEN", self.token())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, state::State> {
        let mut st = self.shared.lock();
        st.settle(Instant::now());
        st
    }

    /// Add an app with status `deployed`.
    pub fn add_app(&self, name: &str) {
        self.set_app_status(name, "deployed");
    }

    /// Add or change an app's status (`pending` for one never deployed).
    pub fn set_app_status(&self, name: &str, status: &str) {
        self.lock().apps.insert(
            name.into(),
            state::App {
                name: name.into(),
                status: status.into(),
            },
        );
    }

    /// Seed `spec.count` settled machines; returns their ids in ascending order. Panics if
    /// the spec's config does not match the schema (the double's own data must be valid).
    pub fn add_machines(&self, app: &str, spec: &MachineSpec) -> Vec<String> {
        let config = spec.config();
        assert_valid_config(&config);
        let mut st = self.lock();
        assert!(st.apps.contains_key(app), "add_app({app:?}) first");
        (0..spec.count)
            .map(|_| st.seed_machine(app, &spec.region, &spec.state, config.clone()))
            .collect()
    }

    /// Seed one settled machine with exactly `config` (e.g. what flyctl made from a given
    /// fly.toml). Panics if the config breaks the schema.
    pub fn add_machine_with_config(&self, app: &str, region: &str, state: &str, config: Value) -> String {
        assert_valid_config(&config);
        let mut st = self.lock();
        assert!(st.apps.contains_key(app), "add_app({app:?}) first");
        let volumes = st
            .mounted_volumes(app, None, &config)
            .unwrap_or_else(|e| panic!("seed machine: {e}"));
        let id = st.seed_machine(app, region, state, config);
        st.attach_volumes(&id, &volumes);
        id
    }

    /// Stop a machine as Fly's proxy does when it autostops an idle one: no lease needed.
    pub fn stop(&self, machine: &str) {
        let mut st = self.lock();
        assert!(
            st.machines.contains_key(machine),
            "the Fly API double has no machine {machine}"
        );
        st.stop_machine(machine, Instant::now());
    }

    /// Take a machine out of Fly's proxy (`cordoned`), as a machine created with
    /// `skip_service_registration` is until uncordoned.
    pub fn cordon(&self, machine: &str) {
        self.lock()
            .machines
            .get_mut(machine)
            .unwrap_or_else(|| panic!("the Fly API double has no machine {machine}"))
            .cordoned = true;
    }

    /// Add a volume; returns its id (`vol_...`).
    pub fn add_volume(&self, app: &str, name: &str, region: &str, size_gb: i64) -> String {
        let mut st = self.lock();
        let volume = state::Volume {
            id: st.new_volume_id(),
            app: app.into(),
            name: name.into(),
            region: region.into(),
            size_gb,
            state: "created".into(),
            attached_machine_id: None,
            host_status: "ok".into(),
            encrypted: true,
            snapshot_retention: None,
            auto_backup_enabled: None,
        };
        let id = volume.id.clone();
        st.volumes.insert(id.clone(), volume);
        id
    }

    /// Lines the process of machines whose image contains `image_contains` prints at every
    /// start, in the app logs (`GET /api/v1/apps/{app}/logs`) between init's lines.
    pub fn set_log_output(&self, image_contains: &str, lines: &[&str]) {
        self.lock().log_output.push((
            image_contains.into(),
            lines.iter().map(|l| l.to_string()).collect(),
        ));
    }

    /// The addresses (`0.0.0.0:8080`, `127.0.0.1:8080`) the app of machines whose image
    /// contains `image_contains` listens on, as `GET .../ps` shows them. By default it listens
    /// on 0.0.0.0 on every tcp service's internal port.
    pub fn set_listen_addresses(&self, image_contains: &str, addresses: &[&str]) {
        self.lock().listen_addresses.push((
            image_contains.into(),
            addresses.iter().map(|a| a.to_string()).collect(),
        ));
    }

    /// Make the logs API answer 401, as it can for a deploy token (flyctl
    /// `internal/command/deploy/machines_releasecommand.go`, `waitForLogs`).
    pub fn refuse_logs(&self) {
        self.lock().logs_refused = true;
    }

    /// Set the `host_status` a volume shows (`ok`, `unknown`, `unreachable`).
    pub fn set_volume_host_status(&self, volume: &str, status: &str) {
        self.lock()
            .volumes
            .get_mut(volume)
            .unwrap_or_else(|| panic!("the Fly API double has no volume {volume}"))
            .host_status = status.into();
    }

    /// Snapshots of the app's volumes, destroyed ones included.
    pub fn volumes(&self, app: &str) -> Vec<state::Volume> {
        self.lock()
            .volumes
            .values()
            .filter(|v| v.app == app)
            .cloned()
            .collect()
    }

    /// The IP addresses allocated to `app`, as the API lists them.
    pub fn ips(&self, app: &str) -> Vec<Value> {
        self.lock()
            .ips
            .iter()
            .filter(|(owner, _)| owner == app)
            .map(|(_, ip)| ip.clone())
            .collect()
    }

    /// A snapshot of one machine (including destroyed ones). Panics on an unknown id.
    pub fn machine(&self, id: &str) -> Machine {
        self.lock()
            .machines
            .get(id)
            .unwrap_or_else(|| panic!("the Fly API double has no machine {id}"))
            .clone()
    }

    /// Snapshots of every machine of `app`, destroyed ones included, sorted by id.
    pub fn machines(&self, app: &str) -> Vec<Machine> {
        self.lock()
            .machines
            .values()
            .filter(|m| m.app == app)
            .cloned()
            .collect()
    }

    /// The machine as `GET /v1/apps/{app}/machines/{id}` would show it.
    pub fn machine_json(&self, id: &str) -> Value {
        let machine = self.machine(id);
        server::machine_json(&machine, Instant::now(), true)
    }

    /// Every release created, in order.
    pub fn releases(&self) -> Vec<Release> {
        self.lock().releases.clone()
    }

    /// Seed a completed release of `app` with this `definition` (the app config an earlier
    /// `fly deploy` recorded): what the GraphQL `currentReleaseUnprocessed` query answers.
    pub fn add_release(&self, app: &str, image: &str, definition: Value) {
        let mut st = self.lock();
        let version = st.releases.iter().filter(|r| r.app == app).count() as u64 + 1;
        st.releases.push(Release {
            id: ulid::Ulid::new().to_string(),
            app: app.to_string(),
            version,
            image: image.to_string(),
            strategy: "ROLLING".into(),
            build_id: Some(0),
            definition,
            statuses: vec!["created".into(), "running".into(), "complete".into()],
            metadata: Value::Null,
        });
    }

    /// Machines whose image contains `image_contains` behave so from their next start
    /// (latest matching rule wins); machines seeded `started` afterwards show `ChecksFail`
    /// at once.
    pub fn set_behavior(&self, image_contains: &str, behavior: Behavior) {
        self.lock().behaviors.push(state::BehaviorRule {
            image_contains: image_contains.into(),
            machine: None,
            behavior,
        });
    }

    /// Like `set_behavior`, for one machine only: e.g. the fourth machine of a rolling
    /// deploy fails its checks on the new image, and recovers when rolled back to the old.
    pub fn set_machine_behavior(&self, machine: &str, image_contains: &str, behavior: Behavior) {
        self.lock().behaviors.push(state::BehaviorRule {
            image_contains: image_contains.into(),
            machine: Some(machine.into()),
            behavior,
        });
    }

    /// Pulling an image whose reference contains `image_contains` takes `fly_time` (scaled
    /// like every other delay): machines created or updated onto it start that much later.
    /// A large Nix image on a cold host takes minutes.
    pub fn set_image_pull(&self, image_contains: &str, fly_time: Duration) {
        self.lock().image_pulls.push((image_contains.into(), fly_time));
    }

    /// Every update of `machine` is refused by its host with `message`, e.g. "aborted: could
    /// not reserve resource for machine: insufficient memory available to fulfill request"
    /// or "deploys to this host are temporarily disabled" (the texts flyctl
    /// `internal/command/deploy/machines_deploymachinesapp.go` answers by replacing the machine).
    pub fn refuse_updates(&self, machine: &str, message: &str) {
        self.lock().update_refusals.insert(machine.into(), message.into());
    }

    /// The next `times` starts answer 200 with `{"status": "error", "message": message}` and
    /// leave the machine as it was: fly-go's `MachineStartResponse` (`machine_types.go`) has
    /// those fields, and flyctl's `fly machine start` fails on `status == "error"` with the
    /// message (`internal/command/machine/start.go`). No source found for when Fly answers so.
    pub fn refuse_next_starts(&self, times: usize, message: &str) {
        let mut state = self.lock();
        state
            .start_refusals
            .extend(std::iter::repeat_n(message.to_string(), times));
    }

    /// A request reaches `machine` (fly-proxy's autostart) just as each update that leaves it
    /// stopped lands, so it starts at once: stopped, then started at the same instant, with
    /// no action of the client. flyctl waits for such a machine in "stopped", "started"
    /// or "suspended" (`internal/command/deploy/plan.go` `updateMachineWChecks`), since any
    /// of them may be its settled state.
    pub fn start_on_request(&self, machine: &str) {
        self.lock().started_by_requests.insert(machine.into());
    }

    /// fly-proxy's autostop (`auto_stop_machines = "suspend"`, fly-go `machine_types.go`
    /// `MachineAutostopSuspend`) suspends `machine` as soon as each launch has it up: a
    /// machine without checks is `suspended` before a client's wait for `started` can answer,
    /// so such a wait runs out. flyctl waits for "stopped", "started" or "suspended" after an
    /// update (`internal/command/deploy/plan.go` `updateMachineWChecks`). No source found for
    /// the event Fly records: type `suspend`, status `suspended` here.
    pub fn suspend_once_up(&self, machine: &str) {
        self.lock().suspended_once_up.insert(machine.into());
    }

    /// Fly has no room for the next `times` machine creates: each is refused before any effect,
    /// in the shape flaps gives (see `server::capacity_refusal`): 412 `volume_placement_capacity`
    /// for a machine that mounts an existing volume, else 422 `insufficient_capacity`.
    pub fn refuse_next_creates(&self, times: usize) {
        self.lock().create_refusals += times;
    }

    /// Set what `host_status` the machine shows (`ok`, `unknown`, `unreachable`); a machine
    /// whose host is not `ok` cannot be updated.
    pub fn set_host_status(&self, machine: &str, status: &str) {
        let mut st = self.lock();
        let m = st
            .machines
            .get_mut(machine)
            .unwrap_or_else(|| panic!("the Fly API double has no machine {machine}"));
        m.host_status = status.into();
    }

    /// Exit code of every release-command machine run from now on.
    pub fn set_release_command_exit_code(&self, code: i64) {
        self.lock().release_command_exit_code = code;
    }

    /// Exit code of every machine check's test machine run from now on.
    pub fn set_test_command_exit_code(&self, code: i64) {
        self.lock().test_command_exit_code = code;
    }

    /// Take a lease on `machine` as someone else, for `ttl` or forever (None); returns its
    /// nonce. Replaces any lease held.
    pub fn hold_lease(&self, machine: &str, owner: &str, ttl: Option<Duration>) -> String {
        let mut st = self.lock();
        let now = Instant::now();
        let m = st
            .machines
            .get_mut(machine)
            .unwrap_or_else(|| panic!("the Fly API double has no machine {machine}"));
        let lease = Lease::new(m, owner.into(), "held by the test", ttl, now);
        let nonce = lease.nonce.clone();
        m.lease = Some(lease);
        nonce
    }

    /// Another client (a deploy, `fly scale`) updates `machine` as `POST /machines/{id}` does:
    /// `env[key] = value` in its config, and a new version (`instance_id`), as Fly gives one on
    /// every update.
    pub fn update_elsewhere(&self, machine: &str, key: &str, value: &str) {
        let mut st = self.lock();
        let mut config = st
            .machines
            .get(machine)
            .unwrap_or_else(|| panic!("the Fly API double has no machine {machine}"))
            .config
            .clone();
        config["env"][key] = value.into();
        st.update_machine(machine, config, None, false, Instant::now());
    }

    /// The lease active on `machine` now, if any.
    pub fn lease(&self, machine: &str) -> Option<Lease> {
        let now = Instant::now();
        self.machine(machine).active_lease(now).cloned()
    }

    /// Answer the next `times` requests whose method matches (`"*"` for any) and whose path
    /// contains `path_contains` (ends with it, when it ends in `$`: `"/machines$"` is only
    /// the create; `"/machines$?metadata.nixfly_launch_id"` only requests of that path that
    /// carry that query parameter) with `kind`, before they have any effect
    /// (`FaultKind::AfterCommit`: after).
    pub fn inject_fault(&self, method: &str, path_contains: &str, times: usize, kind: FaultKind) {
        self.inject_fault_after(method, path_contains, 0, times, kind);
    }

    /// `inject_fault`, once `passes` matching requests have gone through untouched: a fault
    /// for the second listing of a deploy, not its first.
    pub fn inject_fault_after(
        &self,
        method: &str,
        path_contains: &str,
        passes: usize,
        times: usize,
        kind: FaultKind,
    ) {
        assert!(times > 0, "a fault for 0 requests does nothing");
        self.lock().faults.push(Fault {
            method: method.into(),
            path_contains: path_contains.into(),
            passes,
            remaining: times,
            kind,
        });
    }

    /// Injected faults not consumed yet.
    pub fn pending_faults(&self) -> Vec<Fault> {
        self.lock().faults.clone()
    }

    /// Every request received, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// Requests with this method whose path contains `path_contains`, in order.
    pub fn requests_to(&self, method: &str, path_contains: &str) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path.contains(path_contains))
            .collect()
    }

    /// Requests other than GET/HEAD.
    pub fn mutating_requests(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(RecordedRequest::is_mutating)
            .collect()
    }

    /// Schema violations so far (they stay, and fail the test on drop).
    pub fn violations(&self) -> Vec<Violation> {
        self.lock().violations.clone()
    }

    /// Schema violations so far, cleared: for tests that send bad requests on purpose.
    pub fn take_violations(&self) -> Vec<Violation> {
        std::mem::take(&mut self.lock().violations)
    }

    /// The largest number of machines busy with an update at once: from the update request
    /// until the machine settled (checks passed or failed, or it stopped or failed).
    pub fn max_concurrent_updates(&self) -> usize {
        self.lock().max_concurrent_updates()
    }

    /// Poll `condition` every 10 ms until it holds or `timeout` passes; returns whether it
    /// held. For tests that act mid-rollout (e.g. SIGTERM once a machine is replacing).
    pub fn wait_until(&self, timeout: Duration, mut condition: impl FnMut(&FlyApi) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if condition(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The double's own data must be valid, or tests would pass against impossible machines.
fn assert_valid_config(config: &Value) {
    let mut errors = Vec::new();
    schema::validate(
        schema::component("fly.MachineConfig"),
        config,
        "config",
        &mut errors,
    );
    assert!(errors.is_empty(), "seed config breaks the schema: {errors:?}");
}

impl Drop for FlyApi {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let violations = self.shared.lock().violations.clone();
        if violations.is_empty() {
            return;
        }
        let list: Vec<String> = violations.iter().map(|v| format!("  {v}")).collect();
        let message = format!(
            "{} request(s) to the Fly API double broke the API schema:\n{}",
            violations.len(),
            list.join("\n")
        );
        // A test already failing (often because of one of these 400s) must still show them;
        // a second panic would abort the process instead.
        if std::thread::panicking() {
            eprintln!("{message}");
        } else {
            panic!("{message}");
        }
    }
}
