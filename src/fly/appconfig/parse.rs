//! fly.toml → `AppConfig`, with flyctl's leniencies (legacy spellings, numbers where strings
//! are expected) and without its silences: wrong types and impossible values are errors, keys
//! flyctl would not read are warnings.

use super::model::*;
use super::reader::{Doc, Field, Table, key_name};
use super::sizing;
use super::units::{SizeBase, format_go_duration, parse_go_duration, parse_size};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use toml::de::DeValue;

/// The Machines API's stop signals (`fly.StopConfig.signal`).
const SIGNALS: &[&str] = &[
    "SIGHUP", "SIGINT", "SIGQUIT", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGTERM",
];

/// fly-go's `MachinePresets`: the sizes `[[vm]] size` may name.
pub const VM_SIZES: &[&str] = &[
    "shared-cpu-1x",
    "shared-cpu-2x",
    "shared-cpu-4x",
    "shared-cpu-6x",
    "shared-cpu-8x",
    "performance-1x",
    "performance-2x",
    "performance-4x",
    "performance-6x",
    "performance-8x",
    "performance-10x",
    "performance-12x",
    "performance-14x",
    "performance-16x",
    "a100-40gb",
    "a100-80gb",
    "l40s",
    "a10",
];

/// Top-level keys flyctl knows that a deployer does not use: accepted without a warning.
const IGNORED_TOP_LEVEL: &[&str] = &[
    // Nomad-era keys flyctl still parses and ignores.
    "build_target",
];

pub fn parse_document(doc: &Doc<'_>, root: &Table<'_, '_>, path: &Path) -> AppConfig {
    let mut cfg = AppConfig {
        path: path.to_path_buf(),
        ..AppConfig::default()
    };
    cfg.app = non_empty(root.string("app"));
    cfg.primary_region = non_empty(root.string("primary_region"));
    cfg.kill_signal = root.get("kill_signal").and_then(|f| kill_signal(&f));
    // flyctl reads a bare number as seconds here (checks read it as milliseconds).
    cfg.kill_timeout = root
        .get("kill_timeout")
        .and_then(|f| duration(&f, NumberUnit::Seconds));
    cfg.swap_size_mb = root.uint("swap_size_mb");
    cfg.console_command = non_empty(root.string("console_command"));
    // flyctl's validation (`validation.go`, `validateConsoleCommand`) refuses a console command
    // it cannot split; nixfly never runs it, but records it in the release.
    if let (Some(command), Some(field)) = (&cfg.console_command, root.get("console_command")) {
        split_command(&field, command);
    }
    cfg.host_dedication_id = non_empty(root.string("host_dedication_id"));
    root.ignore(IGNORED_TOP_LEVEL);
    cfg.machine_checks = machine_checks(root);
    refuse_containers(root, &["machine_config", "container"]);

    if let Some(build) = root.table("build") {
        cfg.build.image = non_empty(build.string("image"));
        parse_build_compression(&build, &mut cfg.build);
        build.ignore(&[
            "builder",
            "args",
            "buildpacks",
            "settings",
            "builtin",
            "dockerfile",
            "ignorefile",
            "build-target",
            "build_target",
        ]);
        refuse_containers(&build, &["compose"]);
        build.finish();
    }
    if let Some(deploy) = root.table("deploy") {
        cfg.deploy = parse_deploy(&deploy);
        deploy.finish();
    }
    if let Some(field) = root.get("env") {
        cfg.env = parse_env(&field);
    }
    if let Some(field) = root.get("processes") {
        cfg.processes = parse_processes(&field);
    }
    let has_metrics = root.get("metrics").is_some();
    if let Some(field) = root.get("experimental") {
        cfg.experimental = field.table().map(|t| {
            let experimental = parse_experimental(&t, &mut cfg, has_metrics);
            t.finish();
            experimental
        });
    }
    if let Some(t) = root.table("http_service") {
        cfg.http_service = Some(parse_http_service(&t));
        t.finish();
    }
    cfg.services = each_table(root, &["services"], |t| {
        // flyctl drops a [[services]] entry without any key while loading fly.toml
        // (internal/appconfig/patches.go, patchServices): no service, and no error.
        if t.is_empty() {
            t.doc.warn(
                t.line,
                &format!("[{}]", t.path),
                "empty, ignored (as flyctl ignores it)",
            );
            return None;
        }
        Some(parse_service(t))
    });
    // `[checks.NAME]` tables, or a `[[checks]]` list with a `name` in each, which flyctl reads
    // too (`patches.go`, `patchTopLevelChecks`: a later check of the same name wins).
    if let Some(field) = root.get("checks") {
        let named: Vec<(String, Table<'_, '_>)> = if matches!(field.value.get_ref(), DeValue::Array(_)) {
            field
                .tables()
                .into_iter()
                .filter_map(|t| match non_empty(t.string("name")) {
                    Some(name) => Some((name, t)),
                    None => {
                        t.doc.error(
                            t.line,
                            &key_name(&t.path, "name"),
                            "missing: a check in a [[checks]] list needs a name",
                        );
                        None
                    }
                })
                .collect()
        } else {
            field
                .table()
                .map(|t| {
                    t.entries()
                        .into_iter()
                        .filter_map(|entry| Some((entry.key.clone(), entry.table()?)))
                        .collect()
                })
                .unwrap_or_default()
        };
        for (name, check_table) in named {
            let check = parse_top_level_check(&check_table);
            check_table.finish();
            if let Some(check) = check {
                cfg.checks.insert(name, check);
            }
        }
    }
    // Old spellings flyctl still folds in: `compute`/`computes`, `mount`, `metric`. Their
    // entries come in flyctl's order (internal/appconfig/patches.go, patchCompute,
    // patchMetrics): [[compute]] and [[computes]] before [[vm]], which decides which one a
    // group gets when several apply; [[metric]] before [[metrics]] (or the [experimental]
    // metrics standing in for it), the first applying one being the group's.
    cfg.vms = each_table(root, &["compute", "computes", "vm"], parse_vm);
    cfg.mounts = each_table(root, &["mounts", "mount"], parse_mount);
    cfg.statics = each_listed_table(root, "statics", parse_static);
    let from_experimental = std::mem::take(&mut cfg.metrics);
    cfg.metrics = each_table(root, &["metric", "metrics"], |t| Some(parse_metrics(t)));
    cfg.metrics.extend(from_experimental);
    cfg.restarts = each_listed_table(root, "restart", parse_restart);
    cfg.files = each_listed_table(root, "files", parse_file);
    cross_check(doc, &cfg);
    cfg
}

/// Every entry of the `[[key]]` lists (or single `[key]` tables) under any of `keys`, read by
/// `each_table` for a key flyctl reads only as a list of tables (`Field::table_list`).
fn each_listed_table<T>(
    root: &Table<'_, '_>,
    key: &str,
    read: impl Fn(&Table<'_, '_>) -> Option<T>,
) -> Vec<T> {
    let mut out = Vec::new();
    for t in root.get(key).map(|f| f.table_list()).unwrap_or_default() {
        out.extend(read(&t));
        t.finish();
    }
    out
}

/// `read` and then checked for unknown keys; entries `read` refused are left out.
fn each_table<T>(root: &Table<'_, '_>, keys: &[&str], read: impl Fn(&Table<'_, '_>) -> Option<T>) -> Vec<T> {
    let mut out = Vec::new();
    for key in keys {
        for t in root.get(key).map(|f| f.tables()).unwrap_or_default() {
            out.extend(read(&t));
            t.finish();
        }
    }
    out
}

/// A stop signal, upper-cased; one the Machines API cannot send is an error.
fn kill_signal(field: &Field<'_, '_>) -> Option<String> {
    field.string().and_then(|signal| {
        let upper = signal.to_ascii_uppercase();
        if SIGNALS.contains(&upper.as_str()) {
            Some(upper)
        } else {
            field.error(format!(
                "{signal:?} is not a signal the Machines API can send (one of {})",
                SIGNALS.join(", ")
            ));
            None
        }
    })
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|s| !s.trim().is_empty())
}

#[derive(Clone, Copy)]
enum NumberUnit {
    Seconds,
    Milliseconds,
    /// flyctl would read a bare number as nanoseconds: surely not what was meant.
    Refused,
}

/// A duration in fly.toml. The settings flyctl reads through its own patches (kill_timeout,
/// check durations: internal/appconfig/patches.go, `_castDuration`) take a bare number in
/// `unit` and read an empty string as unset; the others (`NumberUnit::Refused`) go to
/// fly-go's duration parser, for which "" is no duration.
fn duration(field: &Field<'_, '_>, unit: NumberUnit) -> Option<Duration> {
    match field.value.get_ref() {
        DeValue::String(s) if s.is_empty() && !matches!(unit, NumberUnit::Refused) => None,
        DeValue::String(s) => match parse_go_duration(s) {
            Ok(d) => Some(d),
            Err(message) => {
                field.error(message);
                None
            }
        },
        // flyctl's `_castDuration` (`patches.go`) takes a float's whole part, then the unit.
        DeValue::Float(f) if !matches!(unit, NumberUnit::Refused) => {
            let x = f
                .as_str()
                .replace('_', "")
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0);
            let Some(x) = x else {
                field.error(format!("expected a duration like \"10s\", got {}", f.as_str()));
                return None;
            };
            let n = x.trunc() as u64;
            let (duration, shown) = match unit {
                NumberUnit::Milliseconds => (Duration::from_millis(n), format!("{n}ms")),
                _ => (Duration::from_secs(n), format!("{n}s")),
            };
            if x.fract() != 0.0 {
                field.warn(format!("{} is read as {shown}, as flyctl reads it", f.as_str()));
            }
            Some(duration)
        }
        DeValue::Integer(_) => {
            let n = field.uint()?;
            match unit {
                NumberUnit::Seconds => Some(Duration::from_secs(n)),
                NumberUnit::Milliseconds => Some(Duration::from_millis(n)),
                NumberUnit::Refused => {
                    field.error(format!(
                        "a bare number has no unit (flyctl would read {n} as nanoseconds); \
                         write it like \"{n}s\" or \"5m\""
                    ));
                    None
                }
            }
        }
        _ => {
            field.wrong_type("a duration like \"10s\" or \"5m\"");
            None
        }
    }
}

fn parse_deploy(t: &Table<'_, '_>) -> Deploy {
    let mut deploy = Deploy::default();
    if let Some(field) = t.get("strategy") {
        // An empty strategy is none (flyctl's `validateDeploySection` checks only a non-empty
        // one, and its deploy then rolls).
        deploy.strategy = field
            .string()
            .filter(|s| !s.is_empty())
            .and_then(|s| s.parse::<Strategy>().map_err(|message| field.error(message)).ok());
    }
    if let Some(field) = t.get("max_unavailable") {
        deploy.max_unavailable = field.number().and_then(|n| {
            let value = MaxUnavailable::from_number(n)
                .map_err(|message| field.error(message))
                .ok()?;
            if n > 1.0 && n.fract() != 0.0 {
                field.warn(format!(
                    "{n} is read as {} machines, as flyctl reads it (counts are whole numbers)",
                    n.trunc()
                ));
            }
            Some(value)
        });
    }
    deploy.wait_timeout = t
        .get("wait_timeout")
        .and_then(|f| duration(&f, NumberUnit::Refused));
    deploy.release_command = non_empty(t.string("release_command"));
    // flyctl runs a release command whenever the string is not "" (`machines_releasecommand.go`):
    // one of blanks alone would be an empty `cmd`, the image's own command, run as the release
    // command until it timed out. Refused rather than run or ignored.
    if let Some(field) = t.get("release_command")
        && deploy.release_command.is_none()
        && matches!(field.value.get_ref(), DeValue::String(s) if !s.is_empty())
    {
        field.error(
            "holds only blanks: give the command to run before the machines are updated, or remove it",
        );
    }
    if let (Some(command), Some(field)) = (&deploy.release_command, t.get("release_command")) {
        split_command(&field, command);
    }
    deploy.release_command_timeout = t
        .get("release_command_timeout")
        .and_then(|f| duration(&f, NumberUnit::Refused));
    if let Some(vm) = t.table("release_command_vm") {
        deploy.release_command_vm = parse_vm(&vm);
        vm.finish();
    }
    t.ignore(&["seed_command"]);
    deploy
}

/// Split a command line as flyctl does (google/shlex, `super::shlex`); a syntax error is
/// reported on `field`.
pub fn split_command(field: &Field<'_, '_>, command: &str) -> Option<Vec<String>> {
    match super::shlex::split(command) {
        Ok(words) => Some(words),
        Err(err) => {
            field.error(format!("cannot split {command:?} into arguments: {err}"));
            None
        }
    }
}

fn parse_env(field: &Field<'_, '_>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    // flyctl also reads `[[env]]` lists of tables, merged in order.
    for t in field.tables() {
        for entry in t.entries() {
            let value = match entry.value.get_ref() {
                DeValue::String(s) => Some(s.to_string()),
                // flyctl formats other scalars with %v: PORT = 8080 becomes "8080".
                DeValue::Integer(_) => entry.int().map(|n| n.to_string()),
                DeValue::Float(_) => entry.number().map(go_float),
                DeValue::Boolean(b) => Some(b.to_string()),
                _ => {
                    entry.wrong_type("a string");
                    None
                }
            };
            if let Some(value) = value {
                if looks_like_secret(&entry.key) {
                    entry.warn(
                        "may hold a sensitive value, which [env] shows to anyone who can read \
                         fly.toml or the app's config: set it as a secret (`fly secrets set`) and \
                         remove it from [env]",
                    );
                }
                env.insert(entry.key.clone(), value);
            }
        }
    }
    env
}

/// A float as Go's `fmt.Sprintf("%v", f)` writes it, which flyctl's `_patchEnv` uses for a
/// non-string `[env]` value (`castToString`, internal/appconfig/patches.go): the shortest
/// digits that read back as `f` (Rust and Go both print those), in `%e` form when the decimal
/// exponent is below -4 or at least 6 (strconv's `%g` with the shortest precision), the
/// exponent signed and of two digits at least (`1e+06`, `1.5e-07`), and `+Inf`, `-Inf`, `NaN`.
pub(super) fn go_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    let sign = if f.is_sign_negative() { "-" } else { "" };
    let scientific = format!("{:e}", f.abs());
    let (mantissa, exponent) = scientific.split_once('e').expect("{:e} writes an exponent");
    let exponent: i32 = exponent.parse().expect("{:e} writes an integer exponent");
    if f != 0.0 && !(-4..6).contains(&exponent) {
        let exponent_sign = if exponent < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{exponent_sign}{:02}", exponent.abs())
    } else {
        format!("{sign}{}", f.abs())
    }
}

/// Whether an `[env]` name looks like one of a secret, as flyctl warns about it at deploy
/// (`internal/command/deploy/common_secrets.go`, `containsCommonSecretSubstring`): it contains
/// KEY, PRIVATE, DATABASE_URL, PASSWORD or SECRET, and is not one of the access key ids that
/// are not secret.
pub(super) fn looks_like_secret(name: &str) -> bool {
    if matches!(name, "AWS_ACCESS_KEY_ID" | "TIGRIS_ACCESS_KEY_ID") {
        return false;
    }
    ["KEY", "PRIVATE", "DATABASE_URL", "PASSWORD", "SECRET"]
        .iter()
        .any(|part| name.contains(part))
}

fn parse_processes(field: &Field<'_, '_>) -> BTreeMap<String, String> {
    let mut processes = BTreeMap::new();
    // The old list form, `processes = [{ name = "web", command = "..." }]` (often empty).
    // flyctl turns it into the table form (`patchProcesses`, internal/appconfig/patches.go)
    // and then checks the same things of it (`validateProcessesSection`, validation.go).
    if let DeValue::Array(_) = field.value.get_ref() {
        for t in field.tables() {
            if let Some(name_field) = t.get("name")
                && let Some(name) = name_field.string()
            {
                if !valid_group_name(&name) {
                    name_field.error(GROUP_NAME_RULE);
                    t.finish();
                    continue;
                }
                let command = match t.get("command") {
                    Some(command_field) => match command_field.string() {
                        Some(command) => {
                            split_command(&command_field, &command);
                            command
                        }
                        None => String::new(),
                    },
                    None => String::new(),
                };
                processes.insert(name, command);
            }
            t.finish();
        }
        return processes;
    }
    let Some(t) = field.table() else {
        return processes;
    };
    for entry in t.entries() {
        if !valid_group_name(&entry.key) {
            entry.error(GROUP_NAME_RULE);
            continue;
        }
        if let Some(command) = entry.string() {
            split_command(&entry, &command);
            processes.insert(entry.key.clone(), command);
        }
    }
    processes
}

const GROUP_NAME_RULE: &str =
    "a process group name may only hold letters, digits, '-' and '_' (it becomes metadata and env)";

fn valid_group_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// `[build] compression` and `compression_level`, checked as flyctl's validateCompression
/// checks them (`internal/appconfig/validation.go`, with `internal/flag/validation/
/// compression.go`): "gzip", "zstd" or empty (unset), and a level from 0 to 9.
fn parse_build_compression(build: &Table, out: &mut Build) {
    if let Some(field) = build.get("compression")
        && let Some(text) = field.string()
    {
        match text.as_str() {
            "" => {}
            "gzip" => out.compression = Some(crate::blob::Algorithm::Gzip),
            "zstd" => out.compression = Some(crate::blob::Algorithm::Zstd),
            other => field.error(format!(
                "{other:?} is not a compression fly deploy takes: use \"gzip\" or \"zstd\", or leave it out"
            )),
        }
    }
    if let Some(field) = build.get("compression_level")
        && let Some(level) = field.int()
    {
        match i32::try_from(level) {
            Ok(level @ 0..=9) => out.compression_level = Some(level),
            _ => field.error(format!(
                "{level} is not a compression level fly deploy takes: use an integer from 0 to 9, or leave it out"
            )),
        }
    }
}

/// flyctl builds multi-container machines from `machine_config`, `container` and
/// `[build] compose` (internal/appconfig/machines.go, internal/containerconfig/parse.go);
/// nixfly deploys one image as the machine's only container. Ignoring them would deploy a
/// different machine than flyctl, so they are refused.
fn refuse_containers(t: &Table<'_, '_>, keys: &[&str]) {
    for key in keys {
        if let Some(field) = t.get(key) {
            field.error(
                "nixfly does not build multi-container machines; deploy this app with \
                 `fly deploy`, or remove the key to deploy the image as the machine's only \
                 container",
            );
        }
    }
}

fn parse_experimental(t: &Table<'_, '_>, cfg: &mut AppConfig, has_metrics: bool) -> Experimental {
    let mut experimental = Experimental::default();
    for (key, slot) in [
        ("cmd", &mut experimental.cmd),
        ("entrypoint", &mut experimental.entrypoint),
        ("exec", &mut experimental.exec),
    ] {
        if let Some(field) = t.get(key) {
            *slot = match field.value.get_ref() {
                // flyctl makes a one-element list of a string: it is not split.
                DeValue::String(s) => {
                    if s.contains(' ') {
                        field.warn(format!(
                            "a string is passed as one argument, as flyctl does; write [\"{}\"] \
                             as a list to split it",
                            s.split_whitespace().collect::<Vec<_>>().join("\", \"")
                        ));
                    }
                    vec![s.to_string()]
                }
                _ => field.strings().unwrap_or_default(),
            };
        }
    }
    refuse_containers(t, &["machine_config"]);
    // Legacy homes of settings that now live elsewhere: flyctl moves them.
    if let Some(field) = t.get("kill_timeout")
        && cfg.kill_timeout.is_none()
    {
        cfg.kill_timeout = duration(&field, NumberUnit::Seconds);
    }
    let metrics_port = t.port("metrics_port");
    let metrics_path = t.string("metrics_path");
    // flyctl (patches.go, patchExperimental) makes them [metrics] only when fly.toml has no
    // [metrics] of its own.
    if has_metrics {
        for key in ["metrics_port", "metrics_path"] {
            if let Some(field) = t.get(key) {
                field.warn("ignored: [metrics] is set, and it wins (as in flyctl)");
            }
        }
    } else if metrics_port.is_some() || metrics_path.is_some() {
        cfg.metrics.push(Metrics {
            port: metrics_port,
            path: metrics_path,
            ..Metrics::default()
        });
    }
    t.ignore(&[
        "auto_rollback",
        "enable_consul",
        "enable_etcd",
        "lazy_load_images",
        "attached",
        "use_zstd",
        "private_network",
        "allowed_public_ports",
    ]);
    experimental
}

fn autostop(field: &Field<'_, '_>) -> Option<Autostop> {
    match field.value.get_ref() {
        DeValue::Boolean(true) => Some(Autostop::Stop),
        DeValue::Boolean(false) => Some(Autostop::Off),
        // fly-go reads a string only as a mode (`machine_types.go`, `MachineAutostop`'s
        // `UnmarshalJSON`, which flyctl's `mapToConfig` goes through): "true" in quotes makes
        // `fly deploy` refuse the whole fly.toml.
        DeValue::String(s) => match s.as_ref() {
            "off" => Some(Autostop::Off),
            "stop" => Some(Autostop::Stop),
            "suspend" => Some(Autostop::Suspend),
            quoted @ ("true" | "false") => {
                field.error(format!(
                    "{quoted:?} is a string: flyctl refuses it (write {quoted} without quotes, \
                     or \"off\", \"stop\" or \"suspend\")"
                ));
                None
            }
            other => {
                field.error(format!(
                    "{other:?} is not an auto-stop mode (true, false, \"off\", \"stop\", \"suspend\")"
                ));
                None
            }
        },
        _ => {
            field.wrong_type("true, false, \"off\", \"stop\" or \"suspend\"");
            None
        }
    }
}

/// `internal_port`; `quoted`: a number written as a string is read too, as flyctl reads it in
/// `[[services]]` only (`patches.go`, `_patchService`).
fn internal_port(t: &Table<'_, '_>, section: &str, quoted: bool) -> u16 {
    match t.get("internal_port") {
        Some(field) => match if quoted { field.quoted_port() } else { field.port() } {
            Some(0) => {
                field.error("must be a port between 1 and 65535, got 0");
                0
            }
            Some(port) => port,
            None => 0,
        },
        None => {
            t.doc.error(
                t.line,
                &key_name(&t.path, "internal_port"),
                format!("missing: {section} needs the port the app listens on"),
            );
            0
        }
    }
}

fn parse_http_service(t: &Table<'_, '_>) -> HttpService {
    HttpService {
        line: t.line,
        internal_port: internal_port(t, "[http_service]", false),
        force_https: t.bool("force_https").unwrap_or(false),
        auto_stop_machines: t.get("auto_stop_machines").and_then(|f| autostop(&f)),
        auto_start_machines: t.bool("auto_start_machines"),
        min_machines_running: t.uint("min_machines_running"),
        processes: t.strings("processes"),
        concurrency: t
            .get("concurrency")
            .and_then(|f| parse_concurrency(&f, OldConcurrency::Refused)),
        tls_options: t.table("tls_options").map(|o| tls_options(&o)),
        http_options: t.table("http_options").map(|o| http_options(&o)),
        checks: t
            .get("checks")
            .map(|f| {
                f.table_list()
                    .iter()
                    .map(|c| parse_http_check(c, NumberUnit::Refused))
                    .collect()
            })
            .unwrap_or_default(),
        machine_checks: machine_checks(t),
    }
}

/// The `[[machine_checks]]` of a section, with flyctl's fields (`internal/appconfig/service.go`,
/// `ServiceMachineCheck`). flyctl finds a check without `command` only when it builds the
/// test machine, after the first machine's update (`internal/appconfig/machines.go`,
/// `ToTestMachineConfig`: `MissingCommand`); nixfly refuses it before any change.
fn machine_checks(t: &Table<'_, '_>) -> Vec<MachineCheck> {
    let Some(field) = t.get("machine_checks") else {
        return Vec::new();
    };
    field
        .table_list()
        .iter()
        .filter_map(|check| {
            let field = check.get("command");
            let command = field.as_ref().and_then(|f| f.strings());
            // A command of the wrong type has its error already.
            if field.is_none() || command.as_ref().is_some_and(Vec::is_empty) {
                check.doc.error(
                    check.line,
                    &key_name(&check.path, "command"),
                    "missing: a machine check runs command = [\"...\", ...] on its test machine \
                     (flyctl stops the deploy without one)",
                );
            }
            let parsed = MachineCheck {
                line: check.line,
                command: command.unwrap_or_default(),
                image: non_empty(check.string("image")),
                entrypoint: check.get("entrypoint").and_then(|f| f.strings()),
                kill_signal: check.get("kill_signal").and_then(|f| kill_signal(&f)),
                // fly-go's Duration reads a bare number as nanoseconds: no patch here.
                kill_timeout: check
                    .get("kill_timeout")
                    .and_then(|f| duration(&f, NumberUnit::Refused)),
            };
            check.finish();
            (!parsed.command.is_empty()).then_some(parsed)
        })
        .collect()
}

fn parse_service(t: &Table<'_, '_>) -> Service {
    let protocol = match t.get("protocol") {
        Some(field) => field
            .string()
            .map(|p| p.to_ascii_lowercase())
            .filter(|p| {
                let ok = p == "tcp" || p == "udp";
                if !ok {
                    field.error(format!("{p:?} is not a protocol (tcp or udp)"));
                }
                ok
            })
            .unwrap_or_default(),
        None => {
            t.doc.error(
                t.line,
                &key_name(&t.path, "protocol"),
                "missing: a service needs protocol = \"tcp\" or \"udp\"",
            );
            String::new()
        }
    };
    let ports: Vec<Port> = t
        .get("ports")
        .map(|f| f.tables().iter().filter_map(parse_port).collect())
        .unwrap_or_default();
    // flyctl's validation.go (validateServicesSection) warns about a service without ports
    // on every `fly deploy`; the machine config is made all the same.
    if ports.is_empty() {
        let line = t.get("ports").map_or(t.line, |f| f.line());
        t.doc.warn(
            line,
            &key_name(&t.path, "ports"),
            "missing: without [[services.ports]] the service exposes no port (`fly deploy` warns too)",
        );
    }
    Service {
        line: t.line,
        protocol,
        internal_port: internal_port(t, "a [[services]] entry", true),
        auto_stop_machines: t.get("auto_stop_machines").and_then(|f| autostop(&f)),
        auto_start_machines: t.bool("auto_start_machines"),
        min_machines_running: t.uint("min_machines_running"),
        ports,
        concurrency: t
            .get("concurrency")
            .and_then(|f| parse_concurrency(&f, OldConcurrency::Read)),
        tcp_checks: t
            .get("tcp_checks")
            .map(|f| f.tables().iter().map(parse_tcp_check).collect())
            .unwrap_or_default(),
        http_checks: t
            .get("http_checks")
            .map(|f| {
                f.tables()
                    .iter()
                    .map(|c| parse_http_check(c, NumberUnit::Milliseconds))
                    .collect()
            })
            .unwrap_or_default(),
        machine_checks: machine_checks(t),
        processes: t.strings("processes"),
    }
}

fn parse_port(t: &Table<'_, '_>) -> Option<Port> {
    let port = Port {
        port: t.quoted_port("port"),
        start_port: t.port("start_port"),
        end_port: t.port("end_port"),
        handlers: t.strings("handlers"),
        force_https: t.bool("force_https").unwrap_or(false),
        tls_options: t.table("tls_options").map(|o| tls_options(&o)),
        http_options: t.table("http_options").map(|o| http_options(&o)),
        proxy_proto_options: t.table("proxy_proto_options").map(|o| {
            let mut map = Map::new();
            if let Some(version) = o.string("version") {
                map.insert("version".into(), version.into());
            }
            o.finish();
            Value::Object(map)
        }),
    };
    if let (Some(start), Some(end)) = (port.start_port, port.end_port)
        && start > end
    {
        t.doc.error(
            t.line,
            &key_name(&t.path, "start_port"),
            format!("start_port {start} is above end_port {end}"),
        );
    }
    if port.port.is_none() && port.start_port.is_none() && port.end_port.is_none() {
        t.doc.error(
            t.line,
            &key_name(&t.path, "port"),
            "missing: a port entry needs port, or start_port and end_port",
        );
    }
    t.finish();
    Some(port)
}

fn tls_options(t: &Table<'_, '_>) -> Value {
    let mut map = Map::new();
    for key in ["alpn", "versions"] {
        if let Some(field) = t.get(key)
            && let Some(list) = field.strings()
        {
            map.insert(key.into(), list.into());
        }
    }
    if let Some(b) = t.bool("default_self_signed") {
        map.insert("default_self_signed".into(), b.into());
    }
    t.finish();
    Value::Object(map)
}

fn http_options(t: &Table<'_, '_>) -> Value {
    let mut map = Map::new();
    for key in ["compress", "h2_backend"] {
        if let Some(b) = t.bool(key) {
            map.insert(key.into(), b.into());
        }
    }
    for key in ["idle_timeout", "headers_read_timeout"] {
        if let Some(n) = t.uint(key) {
            map.insert(key.into(), n.into());
        }
    }
    if let Some(response) = t.table("response") {
        let mut out = Map::new();
        if let Some(headers) = response.get("headers") {
            out.insert("headers".into(), super::reader::to_json(headers.value.get_ref()));
        }
        if let Some(pristine) = response.bool("pristine") {
            out.insert("pristine".into(), pristine.into());
        }
        response.finish();
        map.insert("response".into(), Value::Object(out));
    }
    if let Some(field) = t.get("replay_cache") {
        let caches: Vec<Value> = field
            .table_list()
            .iter()
            .map(|c| {
                let mut out = Map::new();
                for key in ["path_prefix", "type", "name"] {
                    if let Some(s) = c.string(key) {
                        out.insert(key.into(), s.into());
                    }
                }
                if let Some(n) = c.uint("ttl_seconds") {
                    out.insert("ttl_seconds".into(), n.into());
                }
                if let Some(b) = c.bool("allow_bypass") {
                    out.insert("allow_bypass".into(), b.into());
                }
                c.finish();
                Value::Object(out)
            })
            .collect();
        map.insert("replay_cache".into(), caches.into());
    }
    t.finish();
    Value::Object(map)
}

/// Whether a concurrency may be written in the old "soft,hard" string form.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OldConcurrency {
    Read,
    Refused,
}

fn parse_concurrency(field: &Field<'_, '_>, old_form: OldConcurrency) -> Option<Concurrency> {
    let concurrency = match field.value.get_ref() {
        DeValue::String(_) if old_form == OldConcurrency::Refused => {
            field.error(
                "flyctl reads the old \"<soft>,<hard>\" string only in [[services]] \
                 (internal/appconfig/patches.go); write a table with type, soft_limit and hard_limit",
            );
            return None;
        }
        // The old "soft,hard" form flyctl still reads in [[services]] (as type "requests"), its
        // numbers read by Go's strconv.Atoi, which takes no spaces (`patches.go`,
        // `_patchService`).
        DeValue::String(s) => {
            let parsed = s
                .split_once(',')
                .and_then(|(soft, hard)| Some((soft.parse().ok()?, hard.parse().ok()?)));
            let Some((soft, hard)) = parsed else {
                field.error(format!(
                    "{:?} is not \"<soft>,<hard>\"; write a table with type, soft_limit and hard_limit",
                    s.as_ref()
                ));
                return None;
            };
            Concurrency {
                kind: Some("requests".into()),
                hard_limit: Some(hard),
                soft_limit: Some(soft),
            }
        }
        _ => {
            let t = field.table()?;
            let kind = t.get("type").and_then(|f| {
                let kind = f.string()?;
                if kind != "connections" && kind != "requests" {
                    f.error(format!(
                        "{kind:?} is not a concurrency type (connections or requests)"
                    ));
                    return None;
                }
                Some(kind)
            });
            let concurrency = Concurrency {
                kind,
                hard_limit: t.uint("hard_limit"),
                soft_limit: t.uint("soft_limit"),
            };
            t.finish();
            concurrency
        }
    };
    // flyctl's validation has no such rule (`internal/appconfig/validation.go`): `fly deploy`
    // sends it as given, and so does nixfly, with a warning.
    if let (Some(soft), Some(hard)) = (concurrency.soft_limit, concurrency.hard_limit)
        && soft > hard
    {
        field.warn(format!(
            "soft_limit {soft} is above hard_limit {hard}: the proxy never reaches it (deployed as given, as `fly deploy` does)"
        ));
    }
    Some(concurrency)
}

/// A check's durations. flyctl reads bare numbers as milliseconds in the checks its patches
/// reach: `[checks]` and `[[services]]`' (`internal/appconfig/patches.go`,
/// `patchTopLevelChecks`, `patchServices`, `_patchCheck`). `[http_service]` has no patch, so
/// its checks' bare numbers go to fly-go's duration parser as nanoseconds (`15000` is 15µs,
/// which Fly raises to 1s): those are refused (`NumberUnit::Refused`).
fn check_durations(t: &Table<'_, '_>, unit: NumberUnit) -> [Option<Duration>; 3] {
    ["interval", "timeout", "grace_period"].map(|key| t.get(key).and_then(|f| duration(&f, unit)))
}

/// A service check's durations outside 1s-1m: Fly moves them into that range, and flyctl
/// (`internal/appconfig/validation.go`, `validateSingleServiceCheckDuration`) warns about it, as
/// this does. A zero grace period is fine.
fn warn_service_check_durations(t: &Table<'_, '_>, durations: [Option<Duration>; 3]) {
    let keys = ["interval", "timeout", "grace_period"];
    for (key, value) in keys.into_iter().zip(durations) {
        let (Some(d), Some(field)) = (value, t.get(key)) else {
            continue;
        };
        let zero_ok = key == "grace_period";
        let text = format_go_duration(d);
        if d < Duration::from_secs(1) && !(zero_ok && d.is_zero()) {
            field.warn(format!("{text} is under 1s: Fly raises it to 1s"));
        } else if d > Duration::from_secs(60) {
            field.warn(format!("{text} is over 1m: Fly lowers it to 1m"));
        }
    }
}

fn parse_tcp_check(t: &Table<'_, '_>) -> TcpCheck {
    let [interval, timeout, grace_period] = check_durations(t, NumberUnit::Milliseconds);
    warn_service_check_durations(t, [interval, timeout, grace_period]);
    t.ignore(&["restart_limit"]);
    warn_restart_limit(t);
    t.finish();
    TcpCheck {
        interval,
        timeout,
        grace_period,
    }
}

fn warn_restart_limit(t: &Table<'_, '_>) {
    if let Some(field) = t.get("restart_limit") {
        field.warn("restart_limit is a Nomad-era setting the Machines platform ignores");
    }
}

fn parse_http_check(t: &Table<'_, '_>, unit: NumberUnit) -> HttpCheck {
    let check = http_check_fields(t, unit);
    warn_service_check_durations(t, [check.interval, check.timeout, check.grace_period]);
    warn_restart_limit(t);
    t.finish();
    check
}

fn http_check_fields(t: &Table<'_, '_>, unit: NumberUnit) -> HttpCheck {
    let [interval, timeout, grace_period] = check_durations(t, unit);
    let headers = t.get("headers").map(|f| headers(&f)).unwrap_or_default();
    let protocol = t.get("protocol").and_then(|f| {
        let p = f.string()?;
        if p != "http" && p != "https" {
            f.error(format!("{p:?} is not a check protocol (http or https)"));
            return None;
        }
        Some(p)
    });
    HttpCheck {
        interval,
        timeout,
        grace_period,
        method: t.string("method"),
        path: t.string("path"),
        protocol,
        tls_skip_verify: t.bool("tls_skip_verify"),
        tls_server_name: t.string("tls_server_name"),
        headers,
    }
}

fn headers(field: &Field<'_, '_>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    match field.value.get_ref() {
        // Also the old list form: [{ name = "X", value = "y" }].
        DeValue::Array(_) => {
            for t in field.tables() {
                if let Some(name) = t.string("name") {
                    out.insert(name, t.string("value").unwrap_or_default());
                }
                t.finish();
            }
        }
        _ => {
            if let Some(t) = field.table() {
                for entry in t.entries() {
                    let value = match entry.value.get_ref() {
                        DeValue::String(s) => Some(s.to_string()),
                        DeValue::Integer(_) => entry.int().map(|n| n.to_string()),
                        DeValue::Boolean(b) => Some(b.to_string()),
                        _ => {
                            entry.wrong_type("a string");
                            None
                        }
                    };
                    if let Some(value) = value {
                        out.insert(entry.key.clone(), value);
                    }
                }
            }
        }
    }
    out
}

fn parse_top_level_check(t: &Table<'_, '_>) -> Option<TopLevelCheck> {
    let kind = match t.get("type") {
        Some(field) => field.string().filter(|k| {
            let ok = k == "http" || k == "tcp";
            if !ok {
                field.error(format!("{k:?} is not a check type (http or tcp)"));
            }
            ok
        }),
        None => {
            t.doc.error(
                t.line,
                &key_name(&t.path, "type"),
                "missing: a check needs type = \"http\" or \"tcp\"",
            );
            None
        }
    };
    let port = t.port("port");
    let mut http = http_check_fields(t, NumberUnit::Milliseconds);
    // flyctl `internal/appconfig/validation.go` (validateChecksSection): flaps refuses machine
    // checks polled more often than every 2 seconds or allowed more than 60 to answer, so
    // flyctl refuses them before deploying; so does nixfly, before the upload.
    let too_often = http.interval.filter(|d| *d < Duration::from_secs(2));
    let too_long = http.timeout.filter(|d| *d > Duration::from_secs(60));
    let out_of_range = [
        too_often.map(|d| ("interval", d, "at least 2s (Fly's minimum)")),
        too_long.map(|d| ("timeout", d, "at most 60s (Fly's maximum)")),
    ];
    for (key, d, rule) in out_of_range.into_iter().flatten() {
        if let Some(field) = t.get(key) {
            field.error(format!(
                "{} is out of range for a machine check: use {rule}",
                format_go_duration(d)
            ));
        }
    }
    // Top-level checks (unlike service checks) have their method upper-cased by flyctl.
    http.method = http.method.map(|m| m.to_ascii_uppercase());
    let check = TopLevelCheck {
        line: t.line,
        kind: kind.unwrap_or_default(),
        port,
        http,
        processes: t.strings("processes"),
    };
    t.ignore(&["kind"]);
    Some(check)
}

fn parse_vm(t: &Table<'_, '_>) -> Option<Vm> {
    // An empty string is unset, as flyctl reads these: `computeToGuest`
    // (internal/appconfig/machines.go) tests `Size != ""` and `Memory != ""`, and copies the
    // guest's other fields with copier's IgnoreEmpty.
    let size = t.get("size").and_then(|f| {
        let size = f.string().filter(|s| !s.is_empty())?;
        if !VM_SIZES.contains(&size.as_str()) {
            f.error(format!(
                "{size:?} is not a machine size (one of {})",
                VM_SIZES.join(", ")
            ));
            return None;
        }
        Some(size)
    });
    let memory_mb_from_size = t.get("memory").and_then(|f| {
        let text = match f.value.get_ref() {
            DeValue::String(s) if s.is_empty() => return None,
            DeValue::String(s) => s.to_string(),
            DeValue::Integer(_) => f.int()?.to_string(),
            _ => {
                f.wrong_type("a size like \"1gb\" or \"512mb\"");
                return None;
            }
        };
        match parse_size(&text, SizeBase::Binary, 1024 * 1024) {
            Ok(0) => {
                f.error("memory cannot be zero");
                None
            }
            Ok(mb) => Some(mb),
            Err(message) => {
                f.error(message);
                None
            }
        }
    });
    let cpu_kind = t.get("cpu_kind").and_then(|f| {
        let kind = f.string().filter(|s| !s.is_empty())?;
        if kind != "shared" && kind != "performance" {
            f.error(format!("{kind:?} is not a cpu kind (shared or performance)"));
            return None;
        }
        Some(kind)
    });
    let positive = |key: &str| {
        t.get(key).and_then(|f| {
            let n = f.uint()?;
            if n == 0 {
                // flyctl copies only the values that are set (`computeToGuest`,
                // `internal/appconfig/machines.go`: copier's IgnoreEmpty): 0 keeps the size's.
                f.warn("0 is ignored, as flyctl ignores it: the size's default stays");
                return None;
            }
            Some(n)
        })
    };
    let persist_rootfs = t.get("persist_rootfs").and_then(|f| {
        let value = f.string().filter(|s| !s.is_empty())?;
        if !["never", "always", "restart"].contains(&value.as_str()) {
            f.error(format!(
                "{value:?} is not a rootfs persistence (never, always, restart)"
            ));
            return None;
        }
        Some(value)
    });
    Some(Vm {
        line: t.line,
        size,
        memory_mb_from_size,
        cpu_kind,
        cpus: positive("cpus"),
        memory_mb: positive("memory_mb"),
        max_memory_mb: positive("max_memory_mb"),
        gpus: positive("gpus"),
        gpu_kind: non_empty(t.string("gpu_kind")),
        host_dedication_id: non_empty(t.string("host_dedication_id")),
        kernel_args: t.strings("kernel_args"),
        persist_rootfs,
        processes: t.strings("processes"),
    })
}

/// A volume size; an empty string is unset, as flyctl's `validateMounts` and its volume
/// settings test `!= ""` (internal/appconfig/validation.go).
fn gb_size(field: &Field<'_, '_>) -> Option<u64> {
    let text = match field.value.get_ref() {
        DeValue::String(s) if s.is_empty() => return None,
        DeValue::String(s) => s.to_string(),
        DeValue::Integer(_) => field.uint()?.to_string(),
        _ => {
            field.wrong_type("a size like \"10gb\"");
            return None;
        }
    };
    match parse_size(&text, SizeBase::Decimal, 1_000_000_000) {
        Ok(gb) => Some(gb),
        Err(message) => {
            field.error(message);
            None
        }
    }
}

/// A size flyctl reads only as a string ("10gb").
fn gb_size_text(field: &Field<'_, '_>) -> Option<u64> {
    if let DeValue::Integer(i) = field.value.get_ref() {
        field.error(format!(
            "expected a size like \"{}gb\": flyctl reads this one only as a string and refuses a number",
            i.as_str()
        ));
        return None;
    }
    gb_size(field)
}

fn required_string(t: &Table<'_, '_>, key: &str, what: &str) -> Option<String> {
    match non_empty(t.string(key)) {
        Some(s) => Some(s),
        None => {
            let line = t.get(key).map_or(t.line, |f| f.line());
            t.doc
                .error(line, &key_name(&t.path, key), format!("missing: {what}"));
            None
        }
    }
}

fn parse_mount(t: &Table<'_, '_>) -> Option<Mount> {
    let source = required_string(t, "source", "the volume name to mount");
    let destination = required_string(t, "destination", "the path to mount the volume at");
    let threshold = t.get("auto_extend_size_threshold").and_then(|f| f.uint());
    // Strings in flyctl's `Mount` (`internal/appconfig/config.go`), which converts only
    // `initial_size` from a number (`patches.go`, `patchMounts`): a number here makes
    // `fly deploy` refuse the whole fly.toml.
    let increment = t.get("auto_extend_size_increment").and_then(|f| gb_size_text(&f));
    let limit = t.get("auto_extend_size_limit").and_then(|f| gb_size_text(&f));
    check_auto_extend(t, threshold, increment, limit);
    let mount = Mount {
        line: t.line,
        source: source?,
        destination: destination?,
        initial_size_gb: t.get("initial_size").and_then(|f| {
            let gb = gb_size(&f)?;
            if gb == 0 {
                f.error("a volume is at least 1 GB");
                return None;
            }
            Some(gb)
        }),
        // flyctl's validation.go: 1 to 60 days.
        snapshot_retention: t.get("snapshot_retention").and_then(|f| {
            let days = f.uint()?;
            if !(1..=60).contains(&days) {
                f.error(format!("days of snapshots to keep, 1-60, got {days}"));
                return None;
            }
            Some(days)
        }),
        scheduled_snapshots: t.bool("scheduled_snapshots"),
        auto_extend_size_threshold: threshold,
        auto_extend_size_increment_gb: increment,
        auto_extend_size_limit_gb: limit,
        processes: t.strings("processes"),
    };
    Some(mount)
}

/// flyctl's `internal/appconfig/validation.go` (`validateMounts`): auto-extension needs a
/// threshold of 50-99% and an increment of 1-100 GB, and its limit, when given, is 1-500 GB.
/// A threshold alone is "all or none". `fly deploy` refuses the rest before deploying; so does
/// nixfly.
fn check_auto_extend(t: &Table<'_, '_>, threshold: Option<u64>, increment: Option<u64>, limit: Option<u64>) {
    let (threshold_n, increment_n, limit_n) =
        (threshold.unwrap_or(0), increment.unwrap_or(0), limit.unwrap_or(0));
    if threshold_n == 0 && increment_n == 0 && limit_n == 0 {
        return;
    }
    let report = |key: &str, message: String| match t.get(key) {
        Some(field) => field.error(message),
        None => t.doc.error(t.line, &key_name(&t.path, key), message),
    };
    if threshold_n != 0 && increment_n == 0 && limit_n == 0 {
        report(
            "auto_extend_size_threshold",
            "auto_extend_size_threshold, auto_extend_size_increment and auto_extend_size_limit \
             go together: set the other two, or none"
                .into(),
        );
        return;
    }
    // A value given but unreadable was reported where it was read: not "missing" again.
    let unreadable = |key: &str, value: Option<u64>| value.is_none() && t.get(key).is_some();
    if !(50..=99).contains(&threshold_n) && !unreadable("auto_extend_size_threshold", threshold) {
        report(
            "auto_extend_size_threshold",
            match threshold {
                Some(n) => format!("the percentage full that extends the volume is 50-99, got {n}"),
                None => "missing: auto-extension needs a threshold, 50-99 (percent full)".into(),
            },
        );
    }
    if !(1..=100).contains(&increment_n) && !unreadable("auto_extend_size_increment", increment) {
        report(
            "auto_extend_size_increment",
            match increment {
                Some(n) => format!("each extension adds 1-100 GB, got {n} GB"),
                None => "missing: auto-extension needs an increment, 1-100 GB (like \"1gb\")".into(),
            },
        );
    }
    if limit.is_some() && !(1..=500).contains(&limit_n) {
        report(
            "auto_extend_size_limit",
            format!("volumes extend up to 1-500 GB, got {limit_n} GB"),
        );
    }
}

fn parse_static(t: &Table<'_, '_>) -> Option<Static> {
    let guest_path = required_string(t, "guest_path", "the directory in the image to serve");
    let url_prefix = required_string(t, "url_prefix", "the URL path to serve it under");
    let tigris_bucket = t.string("tigris_bucket").unwrap_or_default();
    // A relative guest_path without a bucket is a local directory that `fly deploy` uploads to
    // a Tigris bucket it manages and takes out of the machine's statics (flyctl
    // `internal/command/deploy/statics/deployer.go`, `StaticIsCandidateForTigrisPush`).
    if let (Some(path), Some(field)) = (&guest_path, t.get("guest_path"))
        && tigris_bucket.is_empty()
        && !path.is_empty()
        && !path.starts_with('/')
    {
        field.error(format!(
            "{path:?} is relative: `fly deploy` uploads such a local directory to a Tigris bucket \
             it manages, which nixfly does not do; give the directory's absolute path inside \
             the image (/{path}), or a tigris_bucket you fill yourself"
        ));
        return None;
    }
    Some(Static {
        guest_path: guest_path?,
        url_prefix: url_prefix?,
        tigris_bucket,
        index_document: t.string("index_document").unwrap_or_default(),
    })
}

fn parse_metrics(t: &Table<'_, '_>) -> Metrics {
    Metrics {
        port: t.port("port"),
        path: t.string("path"),
        https: t.bool("https").unwrap_or(false),
        processes: t.strings("processes"),
    }
}

fn parse_restart(t: &Table<'_, '_>) -> Option<Restart> {
    let policy = match t.get("policy") {
        Some(field) => field.string().and_then(|p| match p.as_str() {
            "always" => Some(RestartPolicy::Always),
            "never" => Some(RestartPolicy::Never),
            "on-failure" => Some(RestartPolicy::OnFailure),
            other => {
                field.error(format!(
                    "{other:?} is not a restart policy (always, never, on-failure)"
                ));
                None
            }
        }),
        None => {
            t.doc.error(
                t.line,
                &key_name(&t.path, "policy"),
                "missing: always, never or on-failure",
            );
            None
        }
    };
    let retries = t.uint("retries");
    Some(Restart {
        line: t.line,
        policy: policy?,
        retries,
        processes: t.strings("processes"),
    })
}

fn parse_file(t: &Table<'_, '_>) -> Option<FileEntry> {
    let guest_path = required_string(t, "guest_path", "the absolute path of the file in the machine");
    if let (Some(path), Some(field)) = (&guest_path, t.get("guest_path"))
        && !path.starts_with('/')
    {
        field.error(format!("{path:?} must be an absolute path"));
    }
    let local = non_empty(t.string("local_path"));
    let secret = non_empty(t.string("secret_name"));
    let raw = t.string("raw_value");
    let given = [local.is_some(), secret.is_some(), raw.is_some()]
        .iter()
        .filter(|&&b| b)
        .count();
    if given != 1 {
        t.doc.error(
            t.line,
            &key_name(&t.path, "local_path"),
            "give exactly one of local_path, secret_name or raw_value",
        );
        return None;
    }
    let source = if let Some(local) = local {
        FileSource::LocalPath(local.into())
    } else if let Some(secret) = secret {
        FileSource::SecretName(secret)
    } else {
        FileSource::RawValue(raw.unwrap_or_default())
    };
    Some(FileEntry {
        line: t.line,
        guest_path: guest_path?,
        source,
        processes: t.strings("processes"),
    })
}

/// Checks across sections: process groups named in `processes = [...]` must exist, each group
/// gets at most one volume, and a check without a port needs the group's http_service.
fn cross_check(doc: &Doc<'_>, cfg: &AppConfig) {
    let groups = cfg.process_groups();
    // flyctl's `internal/appconfig/validation.go` refuses a group [processes] does not define
    // in a service (validateServicesSection) or a restart policy (validateRestartPolicy). In
    // [checks], [[vm]], [[mounts]] and [[files]] it lets one pass, to apply to no machine: a
    // warning then, so that a fly.toml `fly deploy` takes is taken.
    let report = |line: usize, section: &str, names: &[String], refused: bool| {
        for name in names {
            if !groups.contains(name) {
                let message = format!(
                    "no process group {name:?}; [processes] defines {}",
                    groups.join(", ")
                );
                let key = format!("[{section}] processes");
                if refused {
                    doc.error(line, &key, message);
                } else {
                    doc.warn(line, &key, format!("{message}: it applies to no machine"));
                }
            }
        }
    };
    let unknown = |line: usize, section: &str, names: &[String]| report(line, section, names, true);
    let ignored = |line: usize, section: &str, names: &[String]| report(line, section, names, false);
    if let Some(http) = &cfg.http_service {
        unknown(http.line, "http_service", &http.processes);
    }
    // flyctl's `internal/appconfig/validation.go` (validateServicesSection) refuses a service
    // without `processes` once [processes] exists, although its machine configs give it to the
    // default group. nixfly deploys it that way and says so, since `fly deploy` would stop.
    if !cfg.processes.is_empty() {
        let services = cfg
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("services[{i}]"), s.line, &s.processes));
        let http = cfg
            .http_service
            .iter()
            .map(|h| ("http_service".to_string(), h.line, &h.processes));
        for (section, line, processes) in http.chain(services) {
            if processes.is_empty() {
                let group = cfg.default_group();
                doc.warn(
                    line,
                    &format!("[{section}] processes"),
                    format!(
                        "missing: nixfly serves it on process group {group:?} (the default), but \
                         `fly deploy` refuses a service without processes once [processes] exists; \
                         add processes = [\"{group}\"]"
                    ),
                );
            }
        }
    }
    for (i, s) in cfg.services.iter().enumerate() {
        unknown(s.line, &format!("services[{i}]"), &s.processes);
    }
    for (name, c) in &cfg.checks {
        ignored(c.line, &format!("checks.{name}"), &c.processes);
    }
    for (i, v) in cfg.vms.iter().enumerate() {
        ignored(v.line, &format!("vm[{i}]"), &v.processes);
    }
    // A size Fly refuses would only show as a 400 on the first machine change, after the push.
    let vms = cfg.vms.iter().enumerate().map(|(i, vm)| (format!("vm[{i}]"), vm));
    for (section, vm) in vms.chain(
        cfg.deploy
            .release_command_vm
            .iter()
            .map(|vm| ("deploy.release_command_vm".to_string(), vm)),
    ) {
        if let Some((field, message)) = sizing::guest_problem(&cfg.guest(vm)) {
            doc.error(vm.line, &format!("[{section}] {field}"), message);
        }
    }
    for (i, m) in cfg.mounts.iter().enumerate() {
        ignored(m.line, &format!("mounts[{i}]"), &m.processes);
    }
    for (i, f) in cfg.files.iter().enumerate() {
        ignored(f.line, &format!("files[{i}]"), &f.processes);
    }
    // flyctl's validation.go (validateRestartPolicy) refuses these too.
    for (i, r) in cfg.restarts.iter().enumerate() {
        unknown(r.line, &format!("restart[{i}]"), &r.processes);
    }
    // flyctl's validation.go refuses canary with volumes: a canary would need a volume of its
    // own.
    if let (Some(Strategy::Canary), Some(mount)) = (cfg.deploy.strategy, cfg.mounts.first()) {
        doc.error(
            mount.line,
            "[deploy] strategy",
            "the canary strategy does not work with [[mounts]] (flyctl refuses it too): use \
             rolling or immediate",
        );
    }
    for group in &groups {
        let mounts: Vec<&Mount> = cfg
            .mounts
            .iter()
            .filter(|m| cfg.applies_to(&m.processes, group))
            .collect();
        if mounts.len() > 1 {
            doc.error(
                mounts[1].line,
                "[mounts] source",
                format!(
                    "process group {group:?} gets {} volumes ({}); a machine mounts at most one",
                    mounts.len(),
                    mounts
                        .iter()
                        .map(|m| m.source.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        let has_http_service = cfg
            .http_service
            .as_ref()
            .is_some_and(|h| cfg.applies_to(&h.processes, group));
        for (name, check) in &cfg.checks {
            if check.port.is_none() && !has_http_service && cfg.applies_to(&check.processes, group) {
                doc.error(
                    check.line,
                    &format!("[checks.{name}] port"),
                    format!("missing: process group {group:?} has no [http_service] to take the port from"),
                );
            }
        }
    }
}
