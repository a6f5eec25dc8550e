//! What the double knows about Fly: apps, machines, leases, releases, and the behaviour tests
//! script. Time-driven changes (a machine finishing its start, checks turning green, a
//! release-command machine exiting) are queued as timed steps when the triggering request
//! arrives and applied by `settle`, so every read sees what a clock-driven Fly would show.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// How far ahead a lease "held forever" says it expires: ten years, a date every client can
/// still turn into a time (i64::MAX seconds overflows most time types).
pub const FOREVER_SECS: i64 = 10 * 365 * 24 * 3600;

/// Process group of the temporary machine that runs fly.toml's `release_command`.
pub const RELEASE_COMMAND_GROUP: &str = "fly_app_release_command";
/// Process group of the test machines of fly.toml's machine checks (fly-go `machine_types.go`,
/// `MachineProcessGroupFlyAppTestMachineCommand`).
pub const TEST_MACHINE_GROUP: &str = "fly_app_test_machine_command";

/// How long simulated things take, in Fly time; `scale` turns Fly time into wall time. No
/// source gives Fly's own durations (they vary with image, host and region): the defaults are
/// short stand-ins, except `visible_after_create`, whose existence flyctl's retries show.
#[derive(Clone, Debug)]
pub struct Timing {
    /// Wall seconds per Fly second (0.05: a 60 s wait times out after 3 s).
    pub scale: f64,
    /// From update/start/create to `started` (or `stopped` with skip_launch).
    pub start: Duration,
    /// From `started` until checks leave `warning`.
    pub checks: Duration,
    /// From a stop request to `stopped`.
    pub stop: Duration,
    /// How long a release-command machine (or a machine check's test machine) runs before
    /// it exits.
    pub release_command_run: Duration,
    /// Between two exits of a restart-looping machine.
    pub restart_interval: Duration,
    /// How long a machine made by `POST /machines` answers 404 to get and wait: reads lag
    /// behind the create (flyctl `internal/machine/leasable_machine.go` retries 404s of
    /// just-created machines, `WithJustCreated`, because Fly does this).
    pub visible_after_create: Duration,
    /// How long the machine list leaves out a machine made by `POST /machines`. Zero by
    /// default; flyctl's `internal/command/deploy/strategy_bluegreen.go` says the list reads
    /// a store (Corrosion) that can lag behind a create, and waits before its launch-id lookup.
    pub listed_after_create: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            scale: 0.05,
            start: Duration::from_secs(2),
            checks: Duration::from_secs(3),
            stop: Duration::from_secs(1),
            release_command_run: Duration::from_secs(4),
            restart_interval: Duration::from_secs(1),
            visible_after_create: Duration::from_secs(2),
            listed_after_create: Duration::ZERO,
        }
    }
}

impl Timing {
    pub fn wall(&self, fly_time: Duration) -> Duration {
        fly_time.mul_f64(self.scale)
    }
}

/// What a machine does when it starts, chosen by its image (see `FlyApi::set_behavior`).
#[derive(Clone, Debug, PartialEq)]
pub enum Behavior {
    /// Starts, checks go `warning` then `passing`.
    Healthy,
    /// Starts, checks go `warning` then `critical` and stay there.
    ChecksFail,
    /// Never reaches `started`: ends in state `failed` with a failed `start` event.
    FailToStart,
    /// Starts, then its process exits with `exit_code` and flyd restarts it `restarts` times
    /// (exit events with `restarting: true` and `restart_count` 1..=restarts), then it stops.
    RestartLoop { exit_code: i64, restarts: u32 },
}

/// `behavior` for machines whose image contains `image_contains`, and only machine
/// `machine` when set.
#[derive(Clone, Debug)]
pub struct BehaviorRule {
    pub image_contains: String,
    pub machine: Option<String>,
    pub behavior: Behavior,
}

/// A volume; `attached_machine_id` is set when a machine mounts it.
#[derive(Clone, Debug)]
pub struct Volume {
    pub id: String,
    pub app: String,
    pub name: String,
    pub region: String,
    pub size_gb: i64,
    pub state: String,
    pub attached_machine_id: Option<String>,
    /// `ok` unless a test says otherwise (`FlyApi::set_volume_host_status`).
    pub host_status: String,
    /// As created: Fly encrypts volumes unless asked not to.
    pub encrypted: bool,
    pub snapshot_retention: Option<i64>,
    pub auto_backup_enabled: Option<bool>,
}

impl Volume {
    pub fn to_json(&self) -> Value {
        let mut json = json!({
            "id": self.id,
            "name": self.name,
            "region": self.region,
            "size_gb": self.size_gb,
            "state": self.state,
            "encrypted": self.encrypted,
            "fstype": "ext4",
            "type": "local",
            "zone": "a1b2",
            "host_status": self.host_status,
            "created_at": rfc3339_now(),
        });
        if let Some(machine) = &self.attached_machine_id {
            json["attached_machine_id"] = json!(machine);
        }
        if let Some(days) = self.snapshot_retention {
            json["snapshot_retention"] = json!(days);
        }
        if let Some(enabled) = self.auto_backup_enabled {
            json["auto_backup_enabled"] = json!(enabled);
        }
        json
    }
}

#[derive(Clone, Debug)]
pub struct App {
    pub name: String,
    pub status: String,
}

#[derive(Clone, Debug)]
pub struct Lease {
    pub nonce: String,
    pub owner: String,
    pub description: String,
    /// None: held forever.
    pub expires: Option<Instant>,
    pub expires_at_unix: i64,
    pub version: String,
}

impl Lease {
    /// A new lease on `machine`'s current version; `ttl` None: held forever.
    pub fn new(
        machine: &Machine,
        owner: String,
        description: &str,
        ttl: Option<Duration>,
        now: Instant,
    ) -> Self {
        Lease {
            nonce: ulid::Ulid::new().to_string().to_lowercase(),
            owner,
            description: description.to_string(),
            expires: ttl.map(|t| now + t),
            expires_at_unix: unix_secs() + ttl.map_or(FOREVER_SECS, |t| t.as_secs_f64().ceil() as i64),
            version: machine.version.clone(),
        }
    }

    pub fn active(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| now < e)
    }
}

#[derive(Clone, Debug)]
pub struct Check {
    pub name: String,
    pub status: String,
    pub updated_at: String,
}

/// A machine as the double holds it; `FlyApi::machine` hands out snapshots.
#[derive(Clone, Debug)]
pub struct Machine {
    pub id: String,
    pub app: String,
    pub name: String,
    pub region: String,
    pub state: String,
    pub config: Value,
    /// The instance id / version, a new ULID on every update.
    pub version: String,
    /// Oldest first here; the API shows them newest first.
    pub events: Vec<Value>,
    pub checks: Vec<Check>,
    pub lease: Option<Lease>,
    pub cordoned: bool,
    pub created_at: String,
    pub updated_at: String,
    /// Every config this machine had, oldest first (for rollback assertions).
    pub config_history: Vec<Value>,
    /// Until when get and wait answer 404 (`Timing::visible_after_create`); None: at once.
    pub visible_at: Option<Instant>,
    /// Until when the list leaves it out (`Timing::listed_after_create`); None: at once.
    pub listed_at: Option<Instant>,
    /// `ok`, `unknown` or `unreachable` (`FlyApi::set_host_status`).
    pub host_status: String,
    pending: VecDeque<Step>,
}

impl Machine {
    pub fn image(&self) -> &str {
        self.config["image"].as_str().unwrap_or_default()
    }

    pub fn process_group(&self) -> &str {
        self.config["metadata"]["fly_process_group"]
            .as_str()
            .unwrap_or_default()
    }

    /// A release-command machine or a machine check's test machine: it runs its command
    /// once, exits and (with `auto_destroy`) is destroyed.
    pub fn is_one_shot(&self) -> bool {
        matches!(self.process_group(), RELEASE_COMMAND_GROUP | TEST_MACHINE_GROUP)
    }

    /// Its 6PN address, one per machine (made from its id, which counts up).
    pub fn private_ip(&self) -> String {
        let n = u64::from_str_radix(&self.id, 16).unwrap_or_default() & 0xffff_ffff;
        format!("fdaa:0:1:a7b:1f:0:{:x}:{:x}", n >> 16, n & 0xffff)
    }

    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.config["metadata"][key].as_str()
    }

    pub fn active_lease(&self, now: Instant) -> Option<&Lease> {
        self.lease.as_ref().filter(|l| l.active(now))
    }

    /// Whether reads already see the machine (see `Timing::visible_after_create`).
    pub fn visible(&self, now: Instant) -> bool {
        self.visible_at.is_none_or(|at| now >= at)
    }

    /// Whether the list already shows the machine (see `Timing::listed_after_create`).
    pub fn listed(&self, now: Instant) -> bool {
        self.listed_at.is_none_or(|at| now >= at)
    }

    /// True while a started/updated machine still has timed steps to go through.
    pub fn busy(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The names of the checks the config defines, named as Fly names them.
    fn check_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.config["checks"]
            .as_object()
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default();
        for service in self.config["services"].as_array().into_iter().flatten() {
            let port = service["internal_port"].as_i64().unwrap_or(0);
            for (i, check) in service["checks"].as_array().into_iter().flatten().enumerate() {
                let kind = check["type"].as_str().unwrap_or("tcp");
                names.push(format!("servicecheck-{i:02}-{kind}-{port}"));
            }
        }
        names
    }

    fn push_event(&mut self, kind: &str, status: &str, source: &str, request: Option<Value>) {
        let mut event = json!({
            "id": ulid::Ulid::new().to_string(),
            "type": kind,
            "status": status,
            "source": source,
            "timestamp": unix_millis(),
        });
        if let Some(request) = request {
            event["request"] = request;
        }
        self.events.push(event);
    }

    fn set_checks(&mut self, status: &str) {
        let now = rfc3339_now();
        self.checks = self
            .check_names()
            .into_iter()
            .map(|name| Check {
                name,
                status: status.to_string(),
                updated_at: now.clone(),
            })
            .collect();
    }

    fn apply_due(&mut self, now: Instant) {
        while let Some(step) = self.pending.pop_front() {
            if step.at.is_some_and(|at| at > now) {
                self.pending.push_front(step);
                break;
            }
            self.apply(step);
        }
    }

    fn apply(&mut self, step: Step) {
        if let Some(state) = step.state {
            self.state = state.to_string();
            self.updated_at = rfc3339_now();
            if state == "destroyed" {
                self.lease = None;
                self.checks.clear();
            }
        }
        if let Some(checks) = step.checks {
            self.set_checks(checks);
        }
        if let Some((kind, status, request)) = step.event {
            self.push_event(kind, status, "flyd", request);
        }
    }
}

/// One timed change: any of a new state, a checks status, an event.
#[derive(Clone, Debug, Default)]
struct Step {
    at: Option<Instant>,
    state: Option<&'static str>,
    checks: Option<&'static str>,
    event: Option<(&'static str, &'static str, Option<Value>)>,
}

#[derive(Clone, Debug)]
pub struct Release {
    pub id: String,
    pub app: String,
    pub version: u64,
    pub image: String,
    pub strategy: String,
    pub build_id: Option<i64>,
    pub definition: Value,
    /// Every status it had, in order, starting with `created`.
    pub statuses: Vec<String>,
    pub metadata: Value,
}

impl Release {
    pub fn status(&self) -> &str {
        self.statuses.last().map(String::as_str).unwrap_or_default()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "version": self.version,
            "app_name": self.app,
            "image": self.image,
            "strategy": self.strategy,
            "status": self.status(),
            "metadata": self.metadata,
        })
    }
}

/// A canned answer for the next `remaining` requests whose method and path match, once
/// `passes` more of them have gone through untouched.
#[derive(Clone, Debug)]
pub struct Fault {
    pub method: String,
    pub path_contains: String,
    pub passes: usize,
    pub remaining: usize,
    pub kind: FaultKind,
}

#[derive(Clone, Debug)]
pub enum FaultKind {
    /// 429 with `Retry-After: <secs>`.
    TooManyRequests { retry_after_secs: u64 },
    /// 503 `{"error":"service unavailable"}`.
    Unavailable,
    /// Any status with `{"error": message}`.
    Status { status: u16, message: String },
    /// The request takes effect, then the answer is `status` with `{"error": message}`: flaps'
    /// ambiguous 408 or 5xx on a create that flyd committed anyway (flyctl
    /// `internal/flapsutil/retry.go`; `internal/command/deploy/strategy_bluegreen.go`,
    /// `launchGreenMachineWithRetry`, looks the machine up by a launch-id in its metadata).
    AfterCommit { status: u16, message: String },
    /// The request takes effect, then the connection breaks in the middle of the answer (a
    /// 200 whose body never completes): the client cannot tell whether it worked.
    AfterCommitBroken,
    /// The request takes effect at once and its answer leaves `millis` (wall time) later: a
    /// client that gives up on it meanwhile never learns what it did.
    SlowAnswer { millis: u64 },
}

/// A request as the double received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The raw query string ("" when none).
    pub query: String,
    pub body: Option<Value>,
    /// The `fly-machine-lease-nonce` header, when sent.
    pub lease_nonce: Option<String>,
    /// The scheme(s) of the Authorization header (`FlyV1`, `Bearer`, `Bearer FlyV1`, `Basic`,
    /// or `other`), never the credential; "" when the header is missing.
    pub auth_scheme: String,
    /// It carried its app's `fly_flaps_affinity` cookie (set on the app's writes).
    pub affinity: bool,
    /// When it arrived, from the double's start.
    pub at: Duration,
    /// The status the double answered; 0 when none was sent (a long-poll still running, or
    /// the client went away, e.g. killed mid-wait).
    pub status: u16,
}

impl RecordedRequest {
    /// Anything but GET/HEAD: the requests `--dry-run` must never send.
    /// Whether it can change anything: not a read, and not a GraphQL query (a POST that
    /// only reads; the double answers no mutation).
    pub fn is_mutating(&self) -> bool {
        self.method != "GET" && self.method != "HEAD" && self.path != "/graphql"
    }
}

/// A request that broke the OpenAPI schema (or the documented shape of the releases API).
#[derive(Clone, Debug)]
pub struct Violation {
    pub method: String,
    pub path: String,
    pub reason: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.method, self.path, self.reason)
    }
}

/// The time an update kept a machine busy, for the concurrency bound.
#[derive(Clone, Debug)]
struct Flight {
    machine: String,
    start: Instant,
    end: Instant,
}

/// Why a create or update cannot mount the volumes its config names.
#[derive(Debug)]
pub enum MountRefusal {
    /// No volume named, or none of the app by that id: 400 (no source found for the status;
    /// the spec lists 400 as update's answer to a bad request).
    Invalid(String),
    /// The volume is attached to another machine: 412, the one case a Fly engineer names for
    /// that status on the Machines API (community.fly.io, "409 Conflict error from Machines
    /// API", t/15555: "412 ... can only happen if the machine attempts to use a volume that's
    /// already in use by another machine").
    InUse(String),
}

impl std::fmt::Display for MountRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MountRefusal::Invalid(message) | MountRefusal::InUse(message) => f.write_str(message),
        }
    }
}

/// What a `POST /machines` body asks for.
pub struct CreateMachine {
    pub app: String,
    pub name: Option<String>,
    pub region: String,
    pub config: Value,
    pub skip_launch: bool,
    /// `skip_service_registration`: the machine takes no traffic until uncordoned.
    pub cordoned: bool,
}

pub struct State {
    pub timing: Timing,
    pub lease_owner: String,
    pub apps: BTreeMap<String, App>,
    pub machines: BTreeMap<String, Machine>,
    pub releases: Vec<Release>,
    pub behaviors: Vec<BehaviorRule>,
    pub volumes: BTreeMap<String, Volume>,
    /// Allocated IP addresses as the API shows them, with their app.
    pub ips: Vec<(String, Value)>,
    pub release_command_exit_code: i64,
    /// The exit code of machine checks' test machines (`FlyApi::set_test_command_exit_code`).
    pub test_command_exit_code: i64,
    /// (image substring, lines) a machine's process prints each run (`FlyApi::set_log_output`).
    pub log_output: Vec<(String, Vec<String>)>,
    /// The logs API answers 401 (`FlyApi::refuse_logs`).
    pub logs_refused: bool,
    /// (image substring, addresses) the app of such machines listens on
    /// (`FlyApi::set_listen_addresses`); otherwise 0.0.0.0 on each tcp service's port.
    pub listen_addresses: Vec<(String, Vec<String>)>,
    /// (image substring, Fly time to pull it): see `pull_time`.
    pub image_pulls: Vec<(String, Duration)>,
    /// Machine id → the error its host answers every update with (`FlyApi::refuse_updates`).
    pub update_refusals: BTreeMap<String, String>,
    /// The message the next starts are refused with, one per start
    /// (`FlyApi::refuse_next_starts`).
    pub start_refusals: Vec<String>,
    /// How many of the next `POST /machines` calls Fly has no room for
    /// (`FlyApi::refuse_next_creates`).
    pub create_refusals: usize,
    /// Machines a request starts as soon as an update leaves them stopped
    /// (`FlyApi::start_on_request`).
    pub started_by_requests: BTreeSet<String>,
    /// Machines fly-proxy suspends as soon as they are up (`FlyApi::suspend_once_up`).
    pub suspended_once_up: BTreeSet<String>,
    pub faults: Vec<Fault>,
    pub requests: Vec<RecordedRequest>,
    pub violations: Vec<Violation>,
    pub violations_taken: bool,
    flights: Vec<Flight>,
    next_machine: u64,
}

impl State {
    pub fn new(timing: Timing, lease_owner: String) -> Self {
        State {
            timing,
            lease_owner,
            apps: BTreeMap::new(),
            machines: BTreeMap::new(),
            releases: Vec::new(),
            behaviors: Vec::new(),
            volumes: BTreeMap::new(),
            ips: Vec::new(),
            release_command_exit_code: 0,
            test_command_exit_code: 0,
            log_output: Vec::new(),
            logs_refused: false,
            listen_addresses: Vec::new(),
            image_pulls: Vec::new(),
            update_refusals: BTreeMap::new(),
            start_refusals: Vec::new(),
            create_refusals: 0,
            started_by_requests: BTreeSet::new(),
            suspended_once_up: BTreeSet::new(),
            faults: Vec::new(),
            requests: Vec::new(),
            violations: Vec::new(),
            violations_taken: false,
            flights: Vec::new(),
            next_machine: 0,
        }
    }

    /// `GET .../ps` of a running machine: its app's process (schema `ProcessStat`) with the tcp
    /// sockets it listens on (no source found for what init reports; by default the app
    /// listens on 0.0.0.0 on each tcp service's port, as an app fly-proxy can reach does).
    pub fn processes(&self, machine: &Machine) -> Value {
        let addresses: Vec<String> = match self
            .listen_addresses
            .iter()
            .rev()
            .find(|(image, _)| machine.image().contains(image.as_str()))
        {
            Some((_, addresses)) => addresses.clone(),
            None => machine.config["services"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|s| s["protocol"] == "tcp")
                .filter_map(|s| s["internal_port"].as_u64())
                .map(|port| format!("0.0.0.0:{port}"))
                .collect(),
        };
        let command = machine.config["init"]["cmd"]
            .as_array()
            .map(|cmd| cmd.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "))
            .filter(|cmd| !cmd.is_empty())
            .unwrap_or_else(|| "/bin/app".to_string());
        // A process that listens on nothing has `null` sockets: fly-go's `ListenSockets` is a Go
        // slice without `omitempty` (`machine_types.go`, `ProcessStat`).
        let sockets: Value = if addresses.is_empty() {
            Value::Null
        } else {
            addresses
                .iter()
                .map(|address| json!({"proto": "tcp", "address": address}))
                .collect()
        };
        json!([{
            "pid": 713,
            "command": command,
            "directory": "/",
            "cpu": 0,
            "rss": 4096,
            "rtime": 0,
            "stime": 0,
            "listen_sockets": sockets,
        }])
    }

    /// The app's log lines, oldest first, made from its machines' events as init and the
    /// process would write them: at each start, init's "Preparing to run" (its wording has no
    /// source: a stand-in) and what the image prints (`log_output`); at each exit, init's "Main
    /// child exited normally with code: N", the line flyctl waits for
    /// (`machines_releasecommand.go`).
    pub fn app_logs(&self, app: &str, instance: Option<&str>) -> Vec<LogLine> {
        let mut lines = Vec::new();
        for machine in self.machines.values() {
            if machine.app != app || instance.is_some_and(|i| i != machine.id) {
                continue;
            }
            let output: Vec<&String> = self
                .log_output
                .iter()
                .filter(|(image, _)| machine.image().contains(image.as_str()))
                .flat_map(|(_, lines)| lines)
                .collect();
            let cmd = machine.config["init"]["cmd"]
                .as_array()
                .map(|words| {
                    words
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            for event in &machine.events {
                let millis = event["timestamp"].as_u64().unwrap_or_default();
                let mut line = |offset: u64, message: String| {
                    lines.push(LogLine {
                        millis: millis + offset,
                        timestamp: rfc3339_millis(millis + offset),
                        message,
                        instance: machine.id.clone(),
                        region: machine.region.clone(),
                    });
                };
                // A start is requested (`starting`, by the user) and then done (`started`,
                // by flyd): init writes its lines once, when the machine boots.
                match (event["type"].as_str(), event["status"].as_str()) {
                    (Some("start"), Some("started")) => {
                        line(0, format!(" INFO Preparing to run: `{cmd}` as root"));
                        for (i, text) in output.iter().enumerate() {
                            line(1 + i as u64, (*text).clone());
                        }
                    }
                    (Some("exit"), _) => {
                        let code = event["request"]["exit_event"]["exit_code"]
                            .as_i64()
                            .unwrap_or_default();
                        line(0, format!(" INFO Main child exited normally with code: {code}"));
                    }
                    _ => {}
                }
            }
        }
        lines.sort_by_key(|l| l.millis);
        lines
    }

    /// Apply every timed step that is due.
    pub fn settle(&mut self, now: Instant) {
        for machine in self.machines.values_mut() {
            machine.apply_due(now);
        }
    }

    /// When the next timed step is due, if any.
    pub fn next_step_at(&self) -> Option<Instant> {
        self.machines
            .values()
            .filter_map(|m| m.pending.front().and_then(|s| s.at))
            .min()
    }

    /// The latest rule matching the machine and its image, else healthy.
    pub fn behavior_for(&self, machine: &Machine) -> Behavior {
        self.behaviors
            .iter()
            .rev()
            .find(|r| {
                machine.image().contains(r.image_contains.as_str())
                    && r.machine.as_ref().is_none_or(|id| *id == machine.id)
            })
            .map(|r| r.behavior.clone())
            .unwrap_or(Behavior::Healthy)
    }

    /// Allocate an address of `kind` (the spec's IPAssignmentType) for `app`.
    pub fn assign_ip(&mut self, app: &str, kind: &str, region: Option<&str>) -> Value {
        let n = self.ips.len() + 1;
        let ip = match kind {
            "shared_v4" => format!("66.241.124.{n}"),
            "v4" | "egress_v4" => format!("137.66.{n}.1"),
            "private_v6" => format!("fdaa:0:1::{n:x}"),
            _ => format!("2a09:8280:1::{n:x}"),
        };
        let mut json = json!({
            "ip": ip,
            "shared": kind == "shared_v4",
            "egress": kind.starts_with("egress"),
            "created_at": rfc3339_now(),
            "service_name": app,
        });
        if let Some(region) = region {
            json["region"] = json!(region);
        }
        self.ips.push((app.to_string(), json.clone()));
        json
    }

    pub fn new_volume_id(&self) -> String {
        format!(
            "vol_{:016x}",
            0x4d2a_0000_0000_0000_u64 + self.volumes.len() as u64 + 1
        )
    }

    /// Sequential 14-hex-digit ids, so that sorting by id (as rolling deploys do) follows
    /// creation order.
    fn new_machine_id(&mut self) -> String {
        self.next_machine += 1;
        format!("{:014x}", 0x0017_8100_0000_0000_u64 + self.next_machine)
    }

    /// A machine in state `created` with its `launch` event, not yet in the map.
    fn new_machine(&mut self, app: &str, name: Option<String>, region: &str, config: Value) -> Machine {
        let id = self.new_machine_id();
        let created = rfc3339_now();
        let mut machine = Machine {
            name: name.unwrap_or_else(|| format!("machine-{}", self.next_machine)),
            id,
            app: app.to_string(),
            region: region.to_string(),
            state: "created".into(),
            version: ulid::Ulid::new().to_string(),
            config_history: vec![config.clone()],
            config,
            events: Vec::new(),
            checks: Vec::new(),
            lease: None,
            cordoned: false,
            created_at: created.clone(),
            updated_at: created,
            visible_at: None,
            listed_at: None,
            host_status: "ok".into(),
            pending: VecDeque::new(),
        };
        machine.push_event("launch", "created", "user", None);
        machine
    }

    /// Create a machine as `POST /machines` does; it starts launching at `now` unless
    /// `skip_launch`.
    pub fn create_machine(&mut self, req: CreateMachine, now: Instant) -> String {
        let mut machine = self.new_machine(&req.app, req.name, &req.region, req.config);
        // A first deploy turns a never-deployed app into a deployed one (no source found for
        // when Fly changes the status: here at the first create of an app machine).
        if !machine.is_one_shot()
            && let Some(app) = self.apps.get_mut(&req.app)
            && app.status == "pending"
        {
            app.status = "deployed".into();
        }
        machine.cordoned = req.cordoned;
        machine.visible_at = Some(now + self.timing.wall(self.timing.visible_after_create));
        machine.listed_at = Some(now + self.timing.wall(self.timing.listed_after_create));
        let id = machine.id.clone();
        self.machines.insert(id.clone(), machine);
        let steps = if req.skip_launch {
            vec![self.stopped_after_start(now)]
        } else {
            self.launch_steps(&id, now)
        };
        let steps = self.after_pull(&id, steps);
        self.schedule(&id, now, steps);
        id
    }

    /// How long pulling `image` takes, in Fly time (`FlyApi::set_image_pull`); zero unless set.
    pub fn pull_time(&self, image: &str) -> Duration {
        self.image_pulls
            .iter()
            .rev()
            .find(|(contains, _)| image.contains(contains.as_str()))
            .map_or(Duration::ZERO, |(_, time)| *time)
    }

    /// A new image is pulled before the machine can start: every step moves back by the pull.
    /// (The release command's waits must leave room for this: flyctl
    /// `internal/command/deploy/machines_releasecommand.go` waits `md.waitTimeout`.)
    fn after_pull(&self, id: &str, mut steps: Vec<Step>) -> Vec<Step> {
        let pull = self.timing.wall(self.pull_time(self.machines[id].image()));
        for step in &mut steps {
            step.at = step.at.map(|at| at + pull);
        }
        steps
    }

    /// The volumes `config.mounts` names, checked as Fly would: they must exist in the app
    /// and not be attached to another machine.
    pub fn mounted_volumes(
        &self,
        app: &str,
        machine: Option<&str>,
        config: &Value,
    ) -> Result<Vec<String>, MountRefusal> {
        let mut ids = Vec::new();
        for mount in config["mounts"].as_array().into_iter().flatten() {
            let Some(id) = mount["volume"].as_str() else {
                return Err(MountRefusal::Invalid(
                    "mounts[].volume is required: create the volume first".into(),
                ));
            };
            let volume = self
                .volumes
                .get(id)
                .filter(|v| v.app == app && v.state != "destroyed")
                .ok_or_else(|| MountRefusal::Invalid(format!("volume {id} not found in app {app}")))?;
            if let Some(other) = &volume.attached_machine_id
                && Some(other.as_str()) != machine
            {
                return Err(MountRefusal::InUse(format!(
                    "volume {id} is already attached to machine {other}"
                )));
            }
            ids.push(id.to_string());
        }
        Ok(ids)
    }

    pub fn attach_volumes(&mut self, machine: &str, volumes: &[String]) {
        for id in volumes {
            if let Some(volume) = self.volumes.get_mut(id) {
                volume.attached_machine_id = Some(machine.to_string());
            }
        }
    }

    /// Seed a machine directly in a settled state (test setup, no request involved).
    pub fn seed_machine(&mut self, app: &str, region: &str, state: &str, config: Value) -> String {
        let mut machine = self.new_machine(app, None, region, config);
        machine.state = state.to_string();
        if state == "started" {
            machine.push_event("start", "started", "flyd", None);
            let checks = match self.behavior_for(&machine) {
                Behavior::ChecksFail => "critical",
                _ => "passing",
            };
            machine.set_checks(checks);
        }
        let id = machine.id.clone();
        self.machines.insert(id.clone(), machine);
        id
    }

    /// Replace a machine's config as `POST /machines/{id}` does: a new version, `replacing`
    /// (the state flyctl gives a machine being updated, `machines_deploymachinesapp.go`, and
    /// reads in `plan.go`), then started or left stopped.
    pub fn update_machine(
        &mut self,
        id: &str,
        config: Value,
        region: Option<String>,
        skip_launch: bool,
        now: Instant,
    ) {
        let machine = self.machines.get_mut(id).expect("caller checked");
        // An update does not start a machine that was not running, whatever skip_launch says
        // (flyctl preflight `fly_machine_test.go`, `TestFlyMachineRun_standbyFor`: `fly
        // machine update` sends skip_launch false and the stopped machine stays stopped).
        let stays_stopped = skip_launch || matches!(machine.state.as_str(), "stopped" | "created");
        let image_changed = machine.config["image"] != config["image"];
        machine.config_history.push(config.clone());
        machine.config = config;
        if let Some(region) = region {
            machine.region = region;
        }
        machine.version = ulid::Ulid::new().to_string();
        machine.state = "replacing".into();
        machine.updated_at = rfc3339_now();
        machine.checks.clear();
        machine.push_event("update", "replacing", "user", None);
        let steps = if stays_stopped {
            let mut steps = vec![self.stopped_after_start(now)];
            if self.started_by_requests.contains(id) {
                // Started by fly-proxy at the same instant, as a request arrives.
                steps.extend(self.launch_steps(id, now));
            }
            steps
        } else {
            self.launch_steps(id, now)
        };
        let steps = if image_changed {
            self.after_pull(id, steps)
        } else {
            steps
        };
        self.schedule(id, now, steps);
        let end = self.machines[id].pending.back().and_then(|s| s.at).unwrap_or(now);
        for flight in self.flights.iter_mut().filter(|f| f.machine == id) {
            flight.end = flight.end.min(now);
        }
        self.flights.push(Flight {
            machine: id.to_string(),
            start: now,
            end,
        });
    }

    pub fn start_machine(&mut self, id: &str, now: Instant) {
        let machine = self.machines.get_mut(id).expect("caller checked");
        machine.state = "starting".into();
        machine.push_event("start", "starting", "user", None);
        let steps = self.launch_steps(id, now);
        self.schedule(id, now, steps);
    }

    /// `stopping`, then `stopped` with an `exit` event: the fields fly-go decodes
    /// (`machine_types.go`, `MachineExitEvent`); no source found for their values on a
    /// requested stop (exit code 0, signal 15 here).
    pub fn stop_machine(&mut self, id: &str, now: Instant) {
        let machine = self.machines.get_mut(id).expect("caller checked");
        machine.state = "stopping".into();
        machine.push_event("stop", "stopping", "user", None);
        let step = Step {
            at: Some(now + self.timing.wall(self.timing.stop)),
            state: Some("stopped"),
            event: Some(("exit", "stopped", Some(exit_request(0, false, true, 0)))),
            ..Step::default()
        };
        self.schedule(id, now, vec![step]);
    }

    /// Destroyed at once, its volumes detached (no source found for either: Fly may take a
    /// moment, and flyctl's `popVolumeFor` only shows that a destroyed machine's volume can be
    /// mounted again).
    pub fn destroy_machine(&mut self, id: &str) {
        let machine = self.machines.get_mut(id).expect("caller checked");
        machine.pending.clear();
        machine.apply(Step {
            state: Some("destroyed"),
            ..Step::default()
        });
        machine.push_event("destroy", "destroyed", "user", None);
        for volume in self.volumes.values_mut() {
            if volume.attached_machine_id.as_deref() == Some(id) {
                volume.attached_machine_id = None;
            }
        }
    }

    fn stopped_after_start(&self, now: Instant) -> Step {
        Step {
            at: Some(now + self.timing.wall(self.timing.start)),
            state: Some("stopped"),
            ..Step::default()
        }
    }

    /// The steps from "starting now" to wherever this machine's behaviour leads.
    fn launch_steps(&self, id: &str, now: Instant) -> Vec<Step> {
        let machine = &self.machines[id];
        let t = &self.timing;
        let started_at = now + t.wall(t.start);
        let started = |checks: Option<&'static str>| Step {
            at: Some(started_at),
            state: Some("started"),
            checks,
            event: Some(("start", "started", None)),
        };
        let has_checks = !machine.check_names().is_empty();
        let warning = has_checks.then_some("warning");
        if machine.is_one_shot() {
            let exited_at = started_at + t.wall(t.release_command_run);
            let code = if machine.process_group() == TEST_MACHINE_GROUP {
                self.test_command_exit_code
            } else {
                self.release_command_exit_code
            };
            let mut steps = vec![
                started(None),
                Step {
                    at: Some(exited_at),
                    state: Some("stopped"),
                    event: Some(("exit", "stopped", Some(exit_request(code, false, false, 0)))),
                    ..Step::default()
                },
            ];
            if machine.config["auto_destroy"] == true {
                steps.push(Step {
                    at: Some(exited_at + t.wall(t.stop)),
                    state: Some("destroyed"),
                    event: Some(("destroy", "destroyed", None)),
                    ..Step::default()
                });
            }
            return steps;
        }
        let checks_done = started_at + t.wall(t.checks);
        let mut steps = match self.behavior_for(machine) {
            Behavior::Healthy | Behavior::ChecksFail if !has_checks => vec![started(None)],
            Behavior::Healthy => vec![
                started(warning),
                Step {
                    at: Some(checks_done),
                    checks: Some("passing"),
                    ..Step::default()
                },
            ],
            Behavior::ChecksFail => vec![
                started(warning),
                Step {
                    at: Some(checks_done),
                    checks: Some("critical"),
                    ..Step::default()
                },
            ],
            // No source found for how a failed start shows: state `failed` (a state fly-go
            // and flyctl read) and a `start` event with status `failed`.
            Behavior::FailToStart => vec![Step {
                at: Some(started_at),
                state: Some("failed"),
                event: Some(("start", "failed", None)),
                ..Step::default()
            }],
            Behavior::RestartLoop { exit_code, restarts } => {
                let mut steps = vec![started(warning)];
                for count in 1..=restarts {
                    steps.push(Step {
                        at: Some(started_at + t.wall(t.restart_interval) * count),
                        checks: has_checks.then_some("critical"),
                        event: Some((
                            "exit",
                            "started",
                            Some(exit_request(exit_code, true, false, count)),
                        )),
                        ..Step::default()
                    });
                }
                steps.push(Step {
                    at: Some(started_at + t.wall(t.restart_interval) * (restarts + 1)),
                    state: Some("stopped"),
                    event: Some((
                        "exit",
                        "stopped",
                        Some(exit_request(exit_code, false, false, restarts)),
                    )),
                    ..Step::default()
                });
                steps
            }
        };
        // fly-proxy's autostop suspends the machine as soon as it is up (and its checks have
        // reported): the last step's instant, so a machine without checks is `suspended` by
        // the time anyone looks (`FlyApi::suspend_once_up`).
        let up = steps
            .last()
            .is_some_and(|s| s.state != Some("failed") && s.state != Some("stopped"));
        if up && self.suspended_once_up.contains(id) {
            let at = steps.iter().filter_map(|s| s.at).max();
            steps.push(Step {
                at,
                state: Some("suspended"),
                event: Some(("suspend", "suspended", None)),
                ..Step::default()
            });
        }
        steps
    }

    fn schedule(&mut self, id: &str, now: Instant, steps: Vec<Step>) {
        let machine = self.machines.get_mut(id).expect("caller checked");
        machine.pending = steps.into();
        // Steps due already (zero delays) are applied at once, so a zero-delay double
        // answers with the final state.
        machine.apply_due(now);
    }

    /// The largest number of machines that were busy with an update at the same moment.
    pub fn max_concurrent_updates(&self) -> usize {
        let mut edges: Vec<(Instant, i64)> = Vec::new();
        for f in &self.flights {
            if f.end > f.start {
                edges.push((f.start, 1));
                edges.push((f.end, -1));
            }
        }
        // Ends sort before starts at the same instant: back-to-back is not overlap.
        edges.sort();
        let (mut current, mut max) = (0i64, 0i64);
        for (_, delta) in edges {
            current += delta;
            max = max.max(current);
        }
        max as usize
    }
}

fn exit_request(exit_code: i64, restarting: bool, requested_stop: bool, restart_count: u32) -> Value {
    json!({
        "exit_event": {
            "exit_code": exit_code,
            "restarting": restarting,
            "requested_stop": requested_stop,
            "oom_killed": false,
            "guest_exit_code": 0,
            "guest_signal": 0,
            "signal": if requested_stop { 15 } else { -1 },
            "exited_at": rfc3339_now(),
        },
        "restart_count": restart_count,
    })
}

pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

pub fn unix_secs() -> i64 {
    (unix_millis() / 1000) as i64
}

/// One line of an app's logs.
#[derive(Clone, Debug)]
pub struct LogLine {
    pub millis: u64,
    pub timestamp: String,
    pub message: String,
    pub instance: String,
    pub region: String,
}

/// RFC 3339 with milliseconds, as the logs API stamps lines.
fn rfc3339_millis(millis: u64) -> String {
    let seconds = rfc3339((millis / 1000) as i64);
    format!("{}.{:03}Z", seconds.trim_end_matches('Z'), millis % 1000)
}

pub fn rfc3339_now() -> String {
    rfc3339(unix_secs())
}

/// UTC RFC 3339 of a unix time, with second precision, computed without a date crate.
pub fn rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-from-civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
