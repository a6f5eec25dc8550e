//! fly.toml → one Machines API config per process group, following flyctl's
//! `Config.ToMachineConfig` (flatten the file for the group, then build the config) field by
//! field. Sections without `processes = [...]` belong to the default group only, `[[vm]]`
//! without it to every group, `[env]` and `[[statics]]` to all groups.

use super::model::*;
use super::units::format_go_duration;
use super::{AppConfig, AppConfigError};
use base64::Engine;
use serde_json::{Map, Value, json};
#[cfg(test)]
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The process group flyctl gives the release-command machine.
pub const RELEASE_COMMAND_GROUP: &str = "fly_app_release_command";

/// fly-go's default size for a `[[vm]]` that names none, and for GPU machines.
const DEFAULT_VM_SIZE: &str = "shared-cpu-1x";
const DEFAULT_GPU_VM_SIZE: &str = "performance-8x";

/// fly-go's `MachinePresets`: cpu kind, cpus, memory (MiB), gpu kind.
pub fn preset(size: &str) -> Option<(&'static str, u64, u64, Option<&'static str>)> {
    let shared = |cpus: u64| ("shared", cpus, cpus * 256, None);
    let performance = |cpus: u64| ("performance", cpus, cpus * 2048, None);
    let gpu = |kind: &'static str| ("performance", 8, 16 * 2048, Some(kind));
    Some(match size {
        "shared-cpu-1x" => shared(1),
        "shared-cpu-2x" => shared(2),
        "shared-cpu-4x" => shared(4),
        "shared-cpu-6x" => shared(6),
        "shared-cpu-8x" => shared(8),
        "performance-1x" => performance(1),
        "performance-2x" => performance(2),
        "performance-4x" => performance(4),
        "performance-6x" => performance(6),
        "performance-8x" => performance(8),
        "performance-10x" => performance(10),
        "performance-12x" => performance(12),
        "performance-14x" => performance(14),
        "performance-16x" => performance(16),
        "a100-40gb" => gpu("a100-pcie-40gb"),
        "a100-80gb" => gpu("a100-sxm4-80gb"),
        "l40s" => gpu("l40s"),
        "a10" => gpu("a10"),
        _ => return None,
    })
}

/// The guest flyctl gives a new machine when fly.toml has no `[[vm]]` for its group.
pub fn default_guest() -> Value {
    json!({"cpu_kind": "shared", "cpus": 1, "memory_mb": 256})
}

impl AppConfig {
    /// The machine config for every process group, by group name (the golden tests' view).
    #[cfg(test)]
    pub fn machine_configs(&self) -> Result<BTreeMap<String, Value>, AppConfigError> {
        self.process_groups()
            .into_iter()
            .map(|group| Ok((group.clone(), self.machine_config(&group)?)))
            .collect()
    }

    /// The config flyctl builds for a machine of `group` (as `fly.MachineConfig` JSON), without
    /// image and release metadata, which the rollout sets. `guest` is absent when no `[[vm]]`
    /// applies: flyctl then keeps whatever the machine has (`fly scale vm` survives deploys).
    pub fn machine_config(&self, group: &str) -> Result<Value, AppConfigError> {
        let mut config = Map::new();
        config.insert("init".into(), Value::Object(self.init(group)));
        config.insert(
            "metadata".into(),
            json!({"fly_platform_version": "v2", "fly_process_group": group}),
        );

        let services = self.services_for(group);
        if !services.is_empty() {
            config.insert("services".into(), Value::Array(services));
        }
        let checks = self.checks_for(group);
        if !checks.is_empty() {
            config.insert("checks".into(), Value::Object(checks));
        }

        let env = self.group_env(group, None);
        config.insert("env".into(), Value::Object(env));

        if !self.statics.is_empty() {
            let statics = self
                .statics
                .iter()
                .map(|s| {
                    json!({
                        "guest_path": s.guest_path,
                        "url_prefix": s.url_prefix,
                        "tigris_bucket": s.tigris_bucket,
                        "index_document": s.index_document,
                    })
                })
                .collect();
            config.insert("statics".into(), Value::Array(statics));
        }

        let mounts: Vec<Value> = self
            .mounts
            .iter()
            .filter(|m| self.applies_to(&m.processes, group))
            .map(mount_json)
            .collect();
        if !mounts.is_empty() {
            config.insert("mounts".into(), Value::Array(mounts));
        }

        if let Some(stop) = self.stop_config() {
            config.insert("stop_config".into(), stop);
        }

        // flyctl's deploy gives every machine every file (`internal/appconfig/config.go`,
        // `MergeFiles`, whose `MergedFiles` the machine config takes, `machines.go`, while
        // `Flatten` filters only `Files`). So an entry without `processes` goes to every group,
        // not only the default one as other sections do; an entry that names groups goes only
        // to those, a deliberate difference listed in the README.
        let files = self.files(|f| f.processes.is_empty() || f.processes.iter().any(|p| p == group))?;
        if !files.is_empty() {
            config.insert("files".into(), Value::Array(files));
        }

        if let Some(vm) = self.vm_for(group) {
            config.insert("guest".into(), self.guest(vm));
        }

        // The last matching [[restart]] wins, as in flyctl's loop.
        if let Some(restart) = self
            .restarts
            .iter()
            .rfind(|r| self.applies_to(&r.processes, group))
        {
            let mut policy = Map::new();
            policy.insert("policy".into(), restart.policy.api_name().into());
            if let Some(retries) = restart.retries.filter(|&n| n > 0) {
                policy.insert("max_retries".into(), retries.into());
            }
            config.insert("restart".into(), Value::Object(policy));
        }

        // flyctl's `Metrics` embeds `*fly.MachineMetrics`, which stays nil when the entry sets
        // none of its keys (only `processes`): then no metrics are sent
        // (internal/appconfig/machines.go, `mConfig.Metrics = c.Metrics[0].MachineMetrics`).
        if let Some(metrics) = self
            .metrics
            .iter()
            .find(|m| self.applies_to(&m.processes, group))
            .filter(|m| m.port.is_some() || m.path.is_some() || m.https)
        {
            let mut out = Map::new();
            if let Some(port) = metrics.port.filter(|&p| p > 0) {
                out.insert("port".into(), port.into());
            }
            if let Some(path) = metrics.path.as_deref().filter(|p| !p.is_empty()) {
                out.insert("path".into(), path.into());
            }
            if metrics.https {
                out.insert("https".into(), true.into());
            }
            config.insert("metrics".into(), Value::Object(out));
        }

        Ok(Value::Object(config))
    }

    /// The temporary machine `[deploy] release_command` runs on, as flyctl's
    /// `ToReleaseMachineConfig` builds it, without image, guest and release metadata (the
    /// rollout's). None without a release_command.
    pub fn release_command_config(&self) -> Result<Option<Value>, AppConfigError> {
        let Some(command) = &self.deploy.release_command else {
            return Ok(None);
        };
        // parse() refuses a command that cannot be split.
        let mut init = Map::new();
        init.insert(
            "cmd".into(),
            super::shlex::split(command).unwrap_or_default().into(),
        );
        if let Some(entrypoint) = self
            .experimental
            .as_ref()
            .map(|e| &e.entrypoint)
            .filter(|e| !e.is_empty())
        {
            init.insert("entrypoint".into(), entrypoint.clone().into());
        }
        if let Some(swap) = self.swap_size_mb {
            init.insert("swap_size_mb".into(), swap.into());
        }
        let mut env = self.group_env(RELEASE_COMMAND_GROUP, None);
        env.insert("RELEASE_COMMAND".into(), "1".into());
        let mut config = Map::new();
        config.insert("init".into(), Value::Object(init));
        config.insert("restart".into(), json!({"policy": "no"}));
        config.insert("auto_destroy".into(), true.into());
        config.insert("dns".into(), json!({"skip_registration": true}));
        config.insert(
            "metadata".into(),
            json!({"fly_platform_version": "v2", "fly_process_group": RELEASE_COMMAND_GROUP}),
        );
        config.insert("env".into(), Value::Object(env));
        if let Some(stop) = self.stop_config() {
            config.insert("stop_config".into(), stop);
        }
        // flyctl hands it every [[files]] entry, whatever its processes.
        let files = self.files(|_| true)?;
        if !files.is_empty() {
            config.insert("files".into(), Value::Array(files));
        }
        Ok(Some(Value::Object(config)))
    }

    /// The env of a machine fly.toml makes for `group` (flyctl `internal/appconfig/machines.go`):
    /// `[env]`, under `machine_env` when given (a test machine takes its tested machine's,
    /// `ToTestMachineConfig`), then `FLY_PROCESS_GROUP` and, from `primary_region`,
    /// `PRIMARY_REGION`.
    fn group_env(&self, group: &str, machine_env: Option<&Map<String, Value>>) -> Map<String, Value> {
        let mut env: Map<String, Value> = self
            .env
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        if let Some(machine_env) = machine_env {
            env.extend(machine_env.clone());
        }
        env.insert("FLY_PROCESS_GROUP".into(), group.into());
        if let Some(region) = &self.primary_region {
            env.insert("PRIMARY_REGION".into(), region.as_str().into());
        }
        env
    }

    /// The machine checks flyctl runs for a machine of `group` (`machinebasedtest.go`,
    /// `runTestMachines`): those of `[http_service]` and `[[services]]` whose `processes`
    /// name the group or are empty (any group, unlike the services themselves), in that
    /// order, then the top-level ones.
    pub fn machine_checks_for(&self, group: &str) -> Vec<&MachineCheck> {
        let applies = |processes: &[String]| processes.is_empty() || processes.iter().any(|p| p == group);
        let http = self
            .http_service
            .iter()
            .filter(|h| applies(&h.processes))
            .flat_map(|h| &h.machine_checks);
        let services = self
            .services
            .iter()
            .filter(|s| applies(&s.processes))
            .flat_map(|s| &s.machine_checks);
        http.chain(services).chain(&self.machine_checks).collect()
    }

    /// Does any process group have a machine check?
    pub fn has_machine_checks(&self) -> bool {
        self.process_groups()
            .iter()
            .any(|group| !self.machine_checks_for(group).is_empty())
    }

    /// The test machine of `check` for the machine `tested` (its config and private IP, after
    /// its update), as flyctl's `ToTestMachineConfig` (`internal/appconfig/machines.go`) builds
    /// it, without guest and release metadata (the rollout's, `machinebasedtest.go`
    /// `launchInputForTestMachine`) and without `fly_flyctl_version` (nixfly is not flyctl).
    /// The check's command and entrypoint (else the tested machine's, else none; fly.toml's
    /// `[experimental] entrypoint` wins over both), its image (else the tested machine's),
    /// fly.toml's `[env]` under the tested machine's env with the test variables set, no
    /// restart, destroyed when done, out of DNS; `stop_config` always, from the check's kill
    /// settings, falling back to fly.toml's only when the check runs the tested machine's image.
    pub fn test_machine_config(
        &self,
        check: &MachineCheck,
        tested: Option<&crate::fly::types::Machine>,
    ) -> Result<Value, AppConfigError> {
        use crate::fly::types::TEST_MACHINE_GROUP;
        let tested_config = tested.map(|m| &m.config);
        let image = match (&check.image, tested.map(|m| m.image()).filter(|i| !i.is_empty())) {
            (Some(image), _) => image.clone(),
            (None, Some(image)) => image.to_string(),
            (None, None) => {
                return Err(AppConfigError::MachineCheckImage {
                    file: self.path.display().to_string(),
                    line: check.line,
                });
            }
        };
        let mut init = Map::new();
        init.insert("cmd".into(), check.command.clone().into());
        if let Some(swap) = self.swap_size_mb {
            init.insert("swap_size_mb".into(), swap.into());
        }
        let entrypoint = self
            .experimental
            .as_ref()
            .map(|e| e.entrypoint.clone())
            .filter(|e| !e.is_empty())
            .or_else(|| check.entrypoint.clone())
            .or_else(|| {
                let from_machine = tested_config?.pointer("/init/entrypoint")?.as_array()?;
                Some(
                    from_machine
                        .iter()
                        .filter_map(|v| Some(v.as_str()?.to_string()))
                        .collect(),
                )
            })
            .filter(|e: &Vec<String>| !e.is_empty());
        if let Some(entrypoint) = entrypoint {
            init.insert("entrypoint".into(), entrypoint.into());
        }
        let machine_env = tested_config
            .and_then(|c| c.get("env"))
            .and_then(Value::as_object);
        let mut env = self.group_env(TEST_MACHINE_GROUP, machine_env);
        env.insert("FLY_TEST_COMMAND".into(), "1".into());
        let ip = tested.and_then(|m| m.private_ip.clone()).unwrap_or_default();
        env.insert("FLY_TEST_MACHINE_IP".into(), ip.into());
        // An image of its own stops as that image says unless the check says otherwise.
        let (timeout, signal) = if check.image.is_some() {
            (check.kill_timeout, check.kill_signal.as_ref())
        } else {
            (
                check.kill_timeout.or(self.kill_timeout),
                check.kill_signal.as_ref().or(self.kill_signal.as_ref()),
            )
        };
        let stop = stop_map(timeout, signal);
        Ok(json!({
            "init": init,
            "image": image,
            "restart": {"policy": "no"},
            "auto_destroy": true,
            "dns": {"skip_registration": true},
            "metadata": {"fly_platform_version": "v2", "fly_process_group": TEST_MACHINE_GROUP},
            "env": env,
            "stop_config": stop,
        }))
    }

    fn stop_config(&self) -> Option<Value> {
        if self.kill_signal.is_none() && self.kill_timeout.is_none() {
            return None;
        }
        Some(Value::Object(stop_map(
            self.kill_timeout,
            self.kill_signal.as_ref(),
        )))
    }

    fn init(&self, group: &str) -> Map<String, Value> {
        let mut init = Map::new();
        let mut cmd = self
            .processes
            .get(group)
            .filter(|c| !c.trim().is_empty())
            .and_then(|c| super::shlex::split(c).ok());
        if let Some(experimental) = &self.experimental {
            if cmd.is_none() && !experimental.cmd.is_empty() {
                cmd = Some(experimental.cmd.clone());
            }
            if !experimental.entrypoint.is_empty() {
                init.insert("entrypoint".into(), experimental.entrypoint.clone().into());
            }
            if !experimental.exec.is_empty() {
                init.insert("exec".into(), experimental.exec.clone().into());
            }
        }
        if let Some(cmd) = cmd.filter(|c| !c.is_empty()) {
            init.insert("cmd".into(), cmd.into());
        }
        if let Some(swap) = self.swap_size_mb {
            init.insert("swap_size_mb".into(), swap.into());
        }
        init
    }

    /// `[http_service]` first (as a TCP service on 80 and 443), then `[[services]]` in order.
    fn services_for(&self, group: &str) -> Vec<Value> {
        let mut out = Vec::new();
        if let Some(http) = self
            .http_service
            .as_ref()
            .filter(|h| self.applies_to(&h.processes, group))
        {
            let mut plain = Map::new();
            plain.insert("port".into(), 80.into());
            plain.insert("handlers".into(), json!(["http"]));
            if http.force_https {
                plain.insert("force_https".into(), true.into());
            }
            if let Some(options) = &http.http_options {
                plain.insert("http_options".into(), options.clone());
            }
            let mut tls = Map::new();
            tls.insert("port".into(), 443.into());
            tls.insert("handlers".into(), json!(["http", "tls"]));
            if let Some(options) = &http.http_options {
                tls.insert("http_options".into(), options.clone());
            }
            if let Some(options) = &http.tls_options {
                tls.insert("tls_options".into(), options.clone());
            }
            out.push(service_json(
                "tcp",
                http.internal_port,
                ServiceExtras {
                    autostop: http.auto_stop_machines,
                    autostart: http.auto_start_machines,
                    min_machines_running: http.min_machines_running,
                    concurrency: http.concurrency.as_ref(),
                },
                vec![Value::Object(plain), Value::Object(tls)],
                http.checks.iter().map(http_check_json).collect(),
            ));
        }
        for service in self
            .services
            .iter()
            .filter(|s| self.applies_to(&s.processes, group))
        {
            let checks = service
                .tcp_checks
                .iter()
                .map(tcp_check_json)
                .chain(service.http_checks.iter().map(http_check_json))
                .collect();
            out.push(service_json(
                &service.protocol,
                service.internal_port,
                ServiceExtras {
                    autostop: service.auto_stop_machines,
                    autostart: service.auto_start_machines,
                    min_machines_running: service.min_machines_running,
                    concurrency: service.concurrency.as_ref(),
                },
                service.ports.iter().map(port_json).collect(),
                checks,
            ));
        }
        out
    }

    fn checks_for(&self, group: &str) -> Map<String, Value> {
        let http_port = self
            .http_service
            .as_ref()
            .filter(|h| self.applies_to(&h.processes, group))
            .map(|h| h.internal_port);
        self.checks
            .iter()
            .filter(|(_, c)| self.applies_to(&c.processes, group))
            .map(|(name, check)| {
                let mut out = Map::new();
                out.insert("type".into(), check.kind.as_str().into());
                // parse() refuses a check with neither a port nor an http_service.
                if let Some(port) = check.port.or(http_port) {
                    out.insert("port".into(), port.into());
                }
                http_check_fields(&check.http, &mut out);
                (name.clone(), Value::Object(out))
            })
            .collect()
    }

    /// A `[[files]] local_path`'s bytes. A relative path is read from the current directory,
    /// as flyctl reads it (`os.ReadFile(f.LocalPath)`, `toMachineFile` in
    /// `internal/appconfig/config.go`; `fly deploy DIR` changes into DIR first). Where that
    /// finds nothing, it is read from fly.toml's directory, where flyctl would have failed:
    /// `nixfly deploy -c sub/fly.toml` still finds `sub/app.conf`. A fly.toml that mkFlyDeploy
    /// copied to the store has no neighbours there, so `nix run .#deploy` from the project
    /// finds the project's files, as `fly deploy` does. The error names the path flyctl reads.
    fn read_local_file(&self, local: &Path) -> Result<Vec<u8>, (PathBuf, std::io::Error)> {
        let first = std::fs::read(local);
        let next_to_fly_toml = self
            .path
            .parent()
            .filter(|dir| local.is_relative() && !dir.as_os_str().is_empty())
            .map(|dir| dir.join(local));
        match (first, next_to_fly_toml) {
            (Ok(bytes), _) => Ok(bytes),
            (Err(err), Some(other)) if err.kind() == std::io::ErrorKind::NotFound => {
                std::fs::read(&other).map_err(|other_err| match other_err.kind() {
                    // Missing in both places: the message names flyctl's path and this one.
                    std::io::ErrorKind::NotFound => (
                        local.to_path_buf(),
                        std::io::Error::new(
                            err.kind(),
                            format!("neither in the current directory nor at {}", other.display()),
                        ),
                    ),
                    _ => (other, other_err),
                })
            }
            (Err(err), _) => Err((local.to_path_buf(), err)),
        }
    }

    fn files(&self, wanted: impl Fn(&FileEntry) -> bool) -> Result<Vec<Value>, AppConfigError> {
        let mut files: Vec<(String, Value)> = Vec::new();
        for entry in self.files.iter().filter(|f| wanted(f)) {
            let mut file = Map::new();
            file.insert("guest_path".into(), entry.guest_path.as_str().into());
            match &entry.source {
                FileSource::LocalPath(local) => {
                    let bytes =
                        self.read_local_file(local)
                            .map_err(|(path, source)| AppConfigError::LocalFile {
                                file: self.path.display().to_string(),
                                line: entry.line,
                                path,
                                source,
                            })?;
                    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
                    file.insert("raw_value".into(), encoded.into());
                }
                FileSource::SecretName(name) => {
                    file.insert("secret_name".into(), name.as_str().into());
                }
                FileSource::RawValue(raw) => {
                    let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
                    file.insert("raw_value".into(), encoded.into());
                }
            }
            // A later entry for the same path replaces the earlier one.
            let value = Value::Object(file);
            match files.iter_mut().find(|(p, _)| *p == entry.guest_path) {
                Some(slot) => slot.1 = value,
                None => files.push((entry.guest_path.clone(), value)),
            }
        }
        Ok(files.into_iter().map(|(_, v)| v).collect())
    }

    /// The `[[vm]]` for `group`: the last one naming it, else the first one without
    /// `processes` (flyctl's `ComputeForGroup`).
    pub fn vm_for(&self, group: &str) -> Option<&Vm> {
        let candidates: Vec<&Vm> = self
            .vms
            .iter()
            .filter(|vm| vm.processes.is_empty() || vm.processes.iter().any(|p| p == group))
            .collect();
        candidates
            .iter()
            .rev()
            .find(|vm| vm.processes.iter().any(|p| p == group))
            .or(candidates.first())
            .copied()
    }

    /// A `[[vm]]` as `fly.MachineGuest`: the size preset, then `memory`, then any explicit
    /// field (flyctl's `computeToGuest`).
    pub fn guest(&self, vm: &Vm) -> Value {
        let size = match (&vm.size, &vm.gpu_kind) {
            (Some(size), _) => size.as_str(),
            (None, Some(_)) => DEFAULT_GPU_VM_SIZE,
            (None, None) => DEFAULT_VM_SIZE,
        };
        // parse() only lets known sizes through.
        let (cpu_kind, cpus, memory_mb, gpu_kind) = preset(size).unwrap_or(("shared", 1, 256, None));
        let mut guest = Map::new();
        guest.insert(
            "cpu_kind".into(),
            vm.cpu_kind.as_deref().unwrap_or(cpu_kind).into(),
        );
        guest.insert("cpus".into(), vm.cpus.unwrap_or(cpus).into());
        let memory = vm.memory_mb.or(vm.memory_mb_from_size).unwrap_or(memory_mb);
        guest.insert("memory_mb".into(), memory.into());
        if let Some(kind) = vm.gpu_kind.as_deref().or(gpu_kind) {
            guest.insert("gpu_kind".into(), kind.into());
            let gpus = vm.gpus.unwrap_or(if gpu_kind.is_some() { 1 } else { 0 });
            if gpus > 0 {
                guest.insert("gpus".into(), gpus.into());
            }
        } else if let Some(gpus) = vm.gpus {
            guest.insert("gpus".into(), gpus.into());
        }
        if let Some(max) = vm.max_memory_mb {
            guest.insert("max_memory_mb".into(), max.into());
        }
        if let Some(id) = vm
            .host_dedication_id
            .as_deref()
            .or(self.host_dedication_id.as_deref())
        {
            guest.insert("host_dedication_id".into(), id.into());
        }
        if !vm.kernel_args.is_empty() {
            guest.insert("kernel_args".into(), vm.kernel_args.clone().into());
        }
        if let Some(persist) = &vm.persist_rootfs {
            guest.insert("persist_rootfs".into(), persist.as_str().into());
        }
        Value::Object(guest)
    }
}

struct ServiceExtras<'a> {
    autostop: Option<Autostop>,
    autostart: Option<bool>,
    min_machines_running: Option<u64>,
    concurrency: Option<&'a Concurrency>,
}

fn service_json(
    protocol: &str,
    internal_port: u16,
    extras: ServiceExtras<'_>,
    ports: Vec<Value>,
    checks: Vec<Value>,
) -> Value {
    let mut service = Map::new();
    service.insert("protocol".into(), protocol.into());
    service.insert("internal_port".into(), internal_port.into());
    // flyctl sends true/false for stop/off (the API's old form); the schema and the API take
    // the strings, which read back as the same machine.
    if let Some(autostop) = extras.autostop {
        service.insert("autostop".into(), autostop.as_str().into());
    }
    if let Some(autostart) = extras.autostart {
        service.insert("autostart".into(), autostart.into());
    }
    if let Some(min) = extras.min_machines_running {
        service.insert("min_machines_running".into(), min.into());
    }
    if !ports.is_empty() {
        service.insert("ports".into(), Value::Array(ports));
    }
    if !checks.is_empty() {
        service.insert("checks".into(), Value::Array(checks));
    }
    if let Some(concurrency) = extras.concurrency {
        let mut out = Map::new();
        if let Some(kind) = &concurrency.kind {
            out.insert("type".into(), kind.as_str().into());
        }
        if let Some(hard) = concurrency.hard_limit.filter(|&n| n > 0) {
            out.insert("hard_limit".into(), hard.into());
        }
        if let Some(soft) = concurrency.soft_limit.filter(|&n| n > 0) {
            out.insert("soft_limit".into(), soft.into());
        }
        service.insert("concurrency".into(), Value::Object(out));
    }
    Value::Object(service)
}

fn port_json(port: &Port) -> Value {
    let mut out = Map::new();
    for (key, value) in [
        ("port", port.port),
        ("start_port", port.start_port),
        ("end_port", port.end_port),
    ] {
        if let Some(value) = value {
            out.insert(key.into(), value.into());
        }
    }
    if !port.handlers.is_empty() {
        out.insert("handlers".into(), port.handlers.clone().into());
    }
    if port.force_https {
        out.insert("force_https".into(), true.into());
    }
    for (key, value) in [
        ("tls_options", &port.tls_options),
        ("http_options", &port.http_options),
        ("proxy_proto_options", &port.proxy_proto_options),
    ] {
        if let Some(value) = value {
            out.insert(key.into(), value.clone());
        }
    }
    Value::Object(out)
}

fn durations_json(
    out: &mut Map<String, Value>,
    interval: Option<std::time::Duration>,
    timeout: Option<std::time::Duration>,
    grace_period: Option<std::time::Duration>,
) {
    for (key, value) in [
        ("interval", interval),
        ("timeout", timeout),
        ("grace_period", grace_period),
    ] {
        if let Some(value) = value {
            out.insert(key.into(), format_go_duration(value).into());
        }
    }
}

fn tcp_check_json(check: &TcpCheck) -> Value {
    let mut out = Map::new();
    out.insert("type".into(), "tcp".into());
    durations_json(&mut out, check.interval, check.timeout, check.grace_period);
    Value::Object(out)
}

fn http_check_json(check: &HttpCheck) -> Value {
    let mut out = Map::new();
    out.insert("type".into(), "http".into());
    http_check_fields(check, &mut out);
    Value::Object(out)
}

fn http_check_fields(check: &HttpCheck, out: &mut Map<String, Value>) {
    durations_json(out, check.interval, check.timeout, check.grace_period);
    for (key, value) in [
        ("method", &check.method),
        ("path", &check.path),
        ("protocol", &check.protocol),
        ("tls_server_name", &check.tls_server_name),
    ] {
        if let Some(value) = value {
            out.insert(key.into(), value.as_str().into());
        }
    }
    if let Some(skip) = check.tls_skip_verify {
        out.insert("tls_skip_verify".into(), skip.into());
    }
    if !check.headers.is_empty() {
        let headers = check
            .headers
            .iter()
            .map(|(name, value)| json!({"name": name, "values": [value]}))
            .collect();
        out.insert("headers".into(), Value::Array(headers));
    }
}

fn mount_json(mount: &Mount) -> Value {
    let mut out = Map::new();
    out.insert("path".into(), mount.destination.as_str().into());
    out.insert("name".into(), mount.source.as_str().into());
    for (key, value) in [
        ("extend_threshold_percent", mount.auto_extend_size_threshold),
        ("add_size_gb", mount.auto_extend_size_increment_gb),
        ("size_gb_limit", mount.auto_extend_size_limit_gb),
    ] {
        if let Some(value) = value.filter(|&n| n > 0) {
            out.insert(key.into(), value.into());
        }
    }
    Value::Object(out)
}

/// The name the platform gives a service check in a machine's `checks[]` status:
/// `servicecheck-<NN>-<type>-<internal_port>`, NN counting the service's checks from 00.
/// Top-level checks keep their `[checks.<name>]` key.
#[cfg(test)]
pub fn service_check_names(config: &Value) -> Vec<String> {
    let mut names = Vec::new();
    for service in config["services"].as_array().into_iter().flatten() {
        let port = service["internal_port"].as_u64().unwrap_or(0);
        for (index, check) in service["checks"].as_array().into_iter().flatten().enumerate() {
            let kind = check["type"].as_str().unwrap_or("tcp");
            names.push(format!("servicecheck-{index:02}-{kind}-{port}"));
        }
    }
    names
}

/// A machine's `stop_config` from kill settings: `timeout` as a Go duration, `signal`, each
/// only when given.
fn stop_map(timeout: Option<std::time::Duration>, signal: Option<&String>) -> Map<String, Value> {
    let mut stop = Map::new();
    if let Some(timeout) = timeout {
        stop.insert("timeout".into(), format_go_duration(timeout).into());
    }
    if let Some(signal) = signal {
        stop.insert("signal".into(), signal.as_str().into());
    }
    stop
}
