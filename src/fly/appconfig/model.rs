//! The typed fly.toml. Field names follow fly.toml; values are already validated and
//! normalised (durations parsed, legacy spellings folded in) by `parse`. Items that can be
//! named in an error after parsing carry the line they came from.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// A parsed, validated fly.toml.
#[derive(Clone, Debug, Default)]
pub struct AppConfig {
    /// The path used in messages (`fly.toml:12: ...`); relative `[[files]] local_path` entries
    /// are read from the current directory, else from its directory.
    pub path: PathBuf,
    pub app: Option<String>,
    pub primary_region: Option<String>,
    pub kill_signal: Option<String>,
    pub kill_timeout: Option<Duration>,
    pub swap_size_mb: Option<u64>,
    pub console_command: Option<String>,
    pub host_dedication_id: Option<String>,
    pub build: Build,
    pub deploy: Deploy,
    pub env: BTreeMap<String, String>,
    /// `[processes]`: group name → command line (shell syntax, split when translated).
    pub processes: BTreeMap<String, String>,
    pub http_service: Option<HttpService>,
    pub services: Vec<Service>,
    pub checks: BTreeMap<String, TopLevelCheck>,
    /// Top-level `[[machine_checks]]`: run for the machines of every process group.
    pub machine_checks: Vec<MachineCheck>,
    pub vms: Vec<Vm>,
    pub mounts: Vec<Mount>,
    pub statics: Vec<Static>,
    pub metrics: Vec<Metrics>,
    pub restarts: Vec<Restart>,
    pub files: Vec<FileEntry>,
    pub experimental: Option<Experimental>,
    /// The whole file as JSON, for the release record's `definition`.
    pub definition: Value,
}

#[derive(Clone, Debug, Default)]
pub struct Build {
    pub image: Option<String>,
    /// `compression`: how `fly deploy` has its builders compress the image's layers, which
    /// nixfly's push follows unless `--compression` says otherwise (flyctl
    /// `internal/appconfig/config.go`, DetermineCompression).
    pub compression: Option<crate::blob::Algorithm>,
    /// `compression_level`: 0-9, as flyctl takes it (`internal/flag/validation/compression.go`).
    pub compression_level: Option<i32>,
}

#[derive(Clone, Debug, Default)]
pub struct Deploy {
    pub strategy: Option<Strategy>,
    pub max_unavailable: Option<MaxUnavailable>,
    pub wait_timeout: Option<Duration>,
    pub release_command: Option<String>,
    pub release_command_timeout: Option<Duration>,
    pub release_command_vm: Option<Vm>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    Rolling,
    Immediate,
    Canary,
    Bluegreen,
}

/// The one reading of a strategy name, for the flag, fly.toml and the mkFlyDeploy settings.
impl std::str::FromStr for Strategy {
    type Err = String;

    /// Case-sensitive, as flyctl's `internal/appconfig/validation.go` compares a fly.toml
    /// strategy with `MachinesDeployStrategies`; its deploy takes a `--strategy Immediate` it
    /// does not know for rolling (`machines_deploymachinesapp.go`, the `default` case), so
    /// nixfly refuses the spelling rather than guess either way.
    fn from_str(text: &str) -> Result<Strategy, String> {
        let named = |name: &str| match name {
            "rolling" => Some(Strategy::Rolling),
            "immediate" => Some(Strategy::Immediate),
            "canary" => Some(Strategy::Canary),
            "bluegreen" => Some(Strategy::Bluegreen),
            _ => None,
        };
        match (named(text), named(&text.to_ascii_lowercase())) {
            (Some(strategy), _) => Ok(strategy),
            (None, Some(meant)) => Err(format!(
                "{text:?} is not a strategy: flyctl compares them case-sensitively; write {:?}",
                meant.as_str()
            )),
            (None, None) => Err(format!(
                "{text:?} is not a strategy (rolling, immediate, canary, bluegreen)"
            )),
        }
    }
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Rolling => "rolling",
            Strategy::Immediate => "immediate",
            Strategy::Canary => "canary",
            Strategy::Bluegreen => "bluegreen",
        }
    }
}

/// `max_unavailable`: flyctl reads one float; ≥ 1 is a machine count, below 1 a fraction of
/// the group.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MaxUnavailable {
    Count(u32),
    Fraction(f64),
}

impl MaxUnavailable {
    /// The one meaning of a number, wherever it comes from (flag, fly.toml, mkFlyDeploy
    /// settings), as flyctl's `getPoolSize` (internal/command/deploy/machines_deploymachinesapp.go)
    /// gives it: below 1 a fraction of the group, from 1 a count of machines with the fraction
    /// dropped (`int(mu)`), so 1.5 is 1 machine.
    pub fn from_number(value: f64) -> Result<MaxUnavailable, String> {
        if !value.is_finite() || value <= 0.0 {
            Err(format!(
                "must be above 0 (a machine count like 2, or a fraction of each group like 0.33), got {value}"
            ))
        } else if value < 1.0 {
            Ok(MaxUnavailable::Fraction(value))
        } else {
            Ok(MaxUnavailable::Count(
                value.trunc().min(f64::from(u32::MAX)) as u32
            ))
        }
    }

    /// How many machines of a group of `group_size` may be down at once (at least 1).
    pub fn pool_size(self, group_size: usize) -> usize {
        match self {
            MaxUnavailable::Count(n) => n.max(1) as usize,
            MaxUnavailable::Fraction(f) => ((group_size as f64 * f).ceil() as usize).max(1),
        }
    }
}

impl std::str::FromStr for MaxUnavailable {
    type Err = String;

    fn from_str(text: &str) -> Result<MaxUnavailable, String> {
        let value: f64 = text
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a number; use a count (2) or a fraction (0.25)"))?;
        MaxUnavailable::from_number(value)
    }
}

/// `auto_stop_machines`: a bool (old form) or "off" / "stop" / "suspend".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Autostop {
    Off,
    Stop,
    Suspend,
}

impl Autostop {
    pub fn as_str(self) -> &'static str {
        match self {
            Autostop::Off => "off",
            Autostop::Stop => "stop",
            Autostop::Suspend => "suspend",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct HttpService {
    pub line: usize,
    pub internal_port: u16,
    pub force_https: bool,
    pub auto_stop_machines: Option<Autostop>,
    pub auto_start_machines: Option<bool>,
    pub min_machines_running: Option<u64>,
    pub processes: Vec<String>,
    pub concurrency: Option<Concurrency>,
    /// `tls_options` and `http_options` as the API spells them (known keys only).
    pub tls_options: Option<Value>,
    pub http_options: Option<Value>,
    pub checks: Vec<HttpCheck>,
    pub machine_checks: Vec<MachineCheck>,
}

#[derive(Clone, Debug, Default)]
pub struct Service {
    pub line: usize,
    pub protocol: String,
    pub internal_port: u16,
    pub auto_stop_machines: Option<Autostop>,
    pub auto_start_machines: Option<bool>,
    pub min_machines_running: Option<u64>,
    pub ports: Vec<Port>,
    pub concurrency: Option<Concurrency>,
    pub tcp_checks: Vec<TcpCheck>,
    pub http_checks: Vec<HttpCheck>,
    pub machine_checks: Vec<MachineCheck>,
    pub processes: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Port {
    pub port: Option<u16>,
    pub start_port: Option<u16>,
    pub end_port: Option<u16>,
    pub handlers: Vec<String>,
    pub force_https: bool,
    pub tls_options: Option<Value>,
    pub http_options: Option<Value>,
    pub proxy_proto_options: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Concurrency {
    pub kind: Option<String>,
    pub hard_limit: Option<u64>,
    pub soft_limit: Option<u64>,
}

#[derive(Clone, Debug, Default)]
pub struct TcpCheck {
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub grace_period: Option<Duration>,
}

#[derive(Clone, Debug, Default)]
pub struct HttpCheck {
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub grace_period: Option<Duration>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub protocol: Option<String>,
    pub tls_skip_verify: Option<bool>,
    pub tls_server_name: Option<String>,
    pub headers: BTreeMap<String, String>,
}

/// A `[[machine_checks]]` entry (top level, in `[http_service]` or in `[[services]]`): a
/// command `fly deploy` runs on a throwaway test machine after each machine's update, the
/// deploy failing if it exits non-zero (flyctl `internal/appconfig/service.go`,
/// `ServiceMachineCheck`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MachineCheck {
    pub line: usize,
    /// Never empty: fly.toml is refused without one.
    pub command: Vec<String>,
    /// The test machine's image; None: the image of the machine under test (the new one).
    pub image: Option<String>,
    /// None: the entrypoint of the machine under test.
    pub entrypoint: Option<Vec<String>>,
    pub kill_signal: Option<String>,
    pub kill_timeout: Option<Duration>,
}

/// A `[checks.<name>]` entry: a machine-level check.
#[derive(Clone, Debug, Default)]
pub struct TopLevelCheck {
    pub line: usize,
    pub kind: String,
    pub port: Option<u16>,
    pub http: HttpCheck,
    pub processes: Vec<String>,
}

/// A `[[vm]]` entry (also `[vm]`, `[[compute]]`, `[deploy.release_command_vm]`).
#[derive(Clone, Debug, Default)]
pub struct Vm {
    pub line: usize,
    pub size: Option<String>,
    /// `memory` in MiB (from "1gb", "512mb", 1024 ...).
    pub memory_mb_from_size: Option<u64>,
    pub cpu_kind: Option<String>,
    pub cpus: Option<u64>,
    pub memory_mb: Option<u64>,
    pub max_memory_mb: Option<u64>,
    pub gpus: Option<u64>,
    pub gpu_kind: Option<String>,
    pub host_dedication_id: Option<String>,
    pub kernel_args: Vec<String>,
    pub persist_rootfs: Option<String>,
    pub processes: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Mount {
    pub line: usize,
    pub source: String,
    pub destination: String,
    /// GB, from `initial_size`: the size of a volume nixfly creates for a new machine.
    pub initial_size_gb: Option<u64>,
    /// Days of snapshots kept (1-60) for a volume nixfly creates.
    pub snapshot_retention: Option<u64>,
    /// `scheduled_snapshots`: daily snapshots of a volume nixfly creates (the platform's
    /// default, on, when absent).
    pub scheduled_snapshots: Option<bool>,
    pub auto_extend_size_threshold: Option<u64>,
    /// GB, from `auto_extend_size_increment`.
    pub auto_extend_size_increment_gb: Option<u64>,
    /// GB, from `auto_extend_size_limit`.
    pub auto_extend_size_limit_gb: Option<u64>,
    pub processes: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Static {
    pub guest_path: String,
    pub url_prefix: String,
    pub tigris_bucket: String,
    pub index_document: String,
}

#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub port: Option<u16>,
    pub path: Option<String>,
    pub https: bool,
    pub processes: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    Never,
    OnFailure,
}

impl RestartPolicy {
    /// The Machines API spelling: fly.toml's "never" is the API's "no".
    pub fn api_name(self) -> &'static str {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::Never => "no",
            RestartPolicy::OnFailure => "on-failure",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Restart {
    pub line: usize,
    pub policy: RestartPolicy,
    pub retries: Option<u64>,
    pub processes: Vec<String>,
}

#[derive(Clone, Debug)]
pub enum FileSource {
    /// Read at translation time, relative to fly.toml's directory.
    LocalPath(PathBuf),
    SecretName(String),
    RawValue(String),
}

#[derive(Clone, Debug)]
pub struct FileEntry {
    pub line: usize,
    pub guest_path: String,
    pub source: FileSource,
    pub processes: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Experimental {
    pub cmd: Vec<String>,
    pub entrypoint: Vec<String>,
    pub exec: Vec<String>,
}
