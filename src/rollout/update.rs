//! Updating one machine under its lease, and the shared state every strategy works with.

use super::RolloutSpec;
use super::error::RolloutError;
use super::health::{HealthWait, wait_for_new_machine, wait_for_new_machine_state, wait_healthy};
use super::lease::Leases;
use super::waves::{ConfigChange, update_body};
use crate::fly::api::MachinesApi;
use crate::fly::types::{Machine, config_check_count};
use crate::progress::{Event, Reporter};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Everything a strategy needs: the API, the spec, the change to apply, the leases held, and
/// the journal of machines changed so far (their previous state, for rollback).
pub struct Ctx {
    pub api: MachinesApi,
    /// api.fly.io, when the deploy uses it (not with `--skip-release`): the release command's
    /// logs come from there.
    pub platform: Option<crate::fly::platform::PlatformApi>,
    pub reporter: Reporter,
    pub spec: RolloutSpec,
    pub change: ConfigChange,
    pub leases: Arc<Leases>,
    journal: Mutex<Vec<Machine>>,
    /// Machines destroyed to be replaced whose replacement could not be created: a rollback
    /// creates them again.
    lost: Arc<Mutex<Vec<String>>>,
    /// Machines created in place of one whose volume changed: a rollback replaces them again.
    swapped: Mutex<Vec<String>>,
    /// Unattached volumes this deploy gave to replacements, so that no two get the same one.
    claimed: Mutex<Vec<String>>,
    changing: AtomicBool,
    /// Machines this deploy created that are only there for it (canaries, greens before they
    /// take traffic, the release_command machine), until destroyed or kept: a signal that
    /// ends the deploy mid-way destroys them (`Ctx::remove_temporaries`).
    temporaries: Arc<Mutex<Vec<Temporary>>>,
    /// Creates and destroys sent and not answered yet, each on a task of its own: one the
    /// deploy stops waiting for (a signal, a failure in another group or pool) is still read
    /// to its answer, and `settle_in_flight` waits for them before anything is rolled back.
    /// Dropped with its answer unread, a create Fly carried out would leave a machine nobody
    /// knows of, and a destroy a journaled machine that is gone.
    in_flight: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Machines created whose create's caller was gone when the answer came (see
    /// `in_flight`), with what they were made for: nothing else records them
    /// (`settle_unclaimed`).
    unclaimed: Arc<Mutex<Vec<(String, Purpose)>>>,
    /// Process groups whose listen addresses were checked (`listen`): once per group.
    listen_checked: Mutex<BTreeSet<String>>,
}

impl Ctx {
    pub fn new(
        api: MachinesApi,
        reporter: Reporter,
        spec: RolloutSpec,
        change: ConfigChange,
        leases: Arc<Leases>,
    ) -> Self {
        Ctx {
            api,
            platform: None,
            reporter,
            spec,
            change,
            leases,
            journal: Mutex::new(Vec::new()),
            lost: Arc::new(Mutex::new(Vec::new())),
            swapped: Mutex::new(Vec::new()),
            claimed: Mutex::new(Vec::new()),
            changing: AtomicBool::new(false),
            temporaries: Arc::new(Mutex::new(Vec::new())),
            in_flight: Mutex::new(Vec::new()),
            unclaimed: Arc::new(Mutex::new(Vec::new())),
            listen_checked: Mutex::new(BTreeSet::new()),
        }
    }

    /// A machine created only for this deploy (a canary, a green, the release_command
    /// machine), to destroy if a signal ends the deploy before it does.
    pub fn add_temporary(&self, machine: &str, group: &str, what: &'static str) {
        self.temporaries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Temporary {
                id: machine.to_string(),
                group: group.to_string(),
                what,
                running: false,
            });
    }

    /// The release_command machine runs its command: a signal leaves it to finish (it
    /// destroys itself then, `auto_destroy`), as flyctl does, rather than cut a migration short.
    pub fn temporary_running(&self, machine: &str) {
        for t in self
            .temporaries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
        {
            if t.id == machine {
                t.running = true;
            }
        }
    }

    /// A one-shot machine's watch ended: once started, it destroys itself (or its watch
    /// destroyed it), so it is forgotten; one that never started stays, for the failure's
    /// cleanup to destroy.
    pub fn forget_if_started(&self, machine: &str) {
        self.temporaries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|t| t.id != machine || !t.running);
    }

    /// `machines` stay: greens that took the traffic.
    pub fn keep(&self, machines: &[Machine]) {
        self.temporaries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|t| !machines.iter().any(|m| m.id == t.id));
    }

    /// Machines destroyed to be replaced whose replacement was never created.
    pub fn lost(&self) -> Vec<String> {
        self.lost.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// When the deploy ends early (a signal, or a failure whose own cleanup missed one):
    /// destroy the temporary machines still there, except a release_command machine running
    /// its command. Returns what to tell the user: those destroyed, the running one, and those
    /// that could not be destroyed (with the command that removes them).
    pub async fn remove_temporaries(&self) -> Option<String> {
        let temporaries = std::mem::take(&mut *self.temporaries.lock().unwrap_or_else(|e| e.into_inner()));
        if temporaries.is_empty() {
            return None;
        }
        let mut destroyed = Vec::new();
        let mut left = Vec::new();
        let mut running = Vec::new();
        for t in &temporaries {
            if t.running {
                running.push(format!(
                    "the {} {} still runs its command and destroys itself when it ends \
                     (`fly machine destroy --force {}` stops it now)",
                    t.what, t.id, t.id
                ));
                continue;
            }
            match self.destroy(&t.id, &t.group).await {
                Ok(()) => {
                    self.done(&t.id, &t.group, format!("{} destroyed", t.what), false);
                    destroyed.push(format!("{} {}", t.what, t.id));
                }
                Err(err) => {
                    self.reporter
                        .warn(format!("cannot destroy {} {}: {err}", t.what, t.id));
                    left.push(t.id.clone());
                }
            }
        }
        let mut text = running;
        if !destroyed.is_empty() {
            text.push(format!(
                "destroyed the machines it had created for the deploy: {}",
                destroyed.join(", ")
            ));
        }
        if !left.is_empty() {
            text.push(could_not_destroy(&left, ""));
        }
        Some(text.join("; "))
    }

    pub fn with_platform(self, platform: Option<crate::fly::platform::PlatformApi>) -> Self {
        Ctx { platform, ..self }
    }

    /// From now on a failure leaves (or left) a trace on the app's machines.
    pub fn mark_changing(&self) {
        self.changing.store(true, Ordering::SeqCst);
    }

    pub fn is_changing(&self) -> bool {
        self.changing.load(Ordering::SeqCst)
    }

    /// The machines updated so far, as they were before, in update order.
    pub fn journal(&self) -> Vec<Machine> {
        self.journal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn status(&self, machine: &str, group: &str, status: impl Into<String>) {
        self.reporter.emit(Event::Machine {
            machine: machine.to_string(),
            group: group.to_string(),
            status: status.into(),
        });
    }

    pub fn done(&self, machine: &str, group: &str, status: impl Into<String>, ok: bool) {
        self.reporter.emit(Event::MachineDone {
            machine: machine.to_string(),
            group: group.to_string(),
            status: status.into(),
            ok,
        });
    }

    /// True the first time it is asked for `group`.
    pub fn first_listen_check(&self, group: &str) -> bool {
        self.listen_checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(group.to_string())
    }

    fn health_wait(&self, expected_checks: usize) -> HealthWait {
        HealthWait {
            expected_checks,
            timeout: self.spec.wait_timeout,
            smoke_window: self.spec.smoke_window,
        }
    }

    /// Put the new image (and env, release metadata) on one machine; with `wait`, wait for it to
    /// start and pass fly.toml's machine checks and its health checks. The machine is journaled
    /// before the request goes out, so a failure at any point rolls it back.
    pub async fn deploy_machine(&self, machine: &Machine, wait: bool) -> Result<(), RolloutError> {
        let wait = if wait { Wait::Checked } else { Wait::No };
        let group = machine.process_group();
        self.mark_changing();
        self.journal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(machine.clone());
        let config = self.change.apply(&machine.config);
        match self.put_config(machine, config, wait, "updating").await {
            Ok(outcome) => {
                self.done(&machine.id, group, outcome, true);
                Ok(())
            }
            Err(err) => {
                self.done(&machine.id, group, "failed", false);
                Err(err)
            }
        }
    }

    /// Put a machine back to the config it had before this deploy, health-checked the same way.
    pub async fn restore_machine(&self, previous: &Machine) -> Result<(), RolloutError> {
        let group = previous.process_group();
        let mut config = previous.config.clone();
        crate::fly::types::normalize_config_for_request(&mut config);
        let lost = self
            .lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&previous.id);
        let swapped = self
            .swapped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&previous.id);
        let result = if lost {
            self.create_replacement(previous, config, Wait::Healthy, false)
                .await
        } else if swapped {
            // The machine that replaced it mounts another volume (or none): replaced in turn
            // by one with the volume it had, which its destruction left unattached.
            self.destroy_and_replace(previous, config, Wait::Healthy, false)
                .await
        } else {
            // The previous image is not tested again: it ran before this deploy.
            self.put_config(previous, config, Wait::Healthy, "rolling back")
                .await
        };
        let status = match &result {
            Ok(_) => "rolled back",
            Err(_) => "rollback failed",
        };
        self.done(&previous.id, group, status, false);
        result.map(drop)
    }

    /// Update under the lease, launching the machine only if it was running before. A machine
    /// its host cannot take (unreachable, no room, deploys paused) is replaced instead.
    async fn put_config(
        &self,
        machine: &Machine,
        config: Value,
        wait: Wait,
        verb: &str,
    ) -> Result<&'static str, RolloutError> {
        let group = machine.process_group();
        self.status(&machine.id, group, verb);
        match replacement(machine, &config, self.spec.host_dedication_id.as_deref()) {
            Some(Replacement::Volume(why)) => {
                return self.replace_for_volume(machine, config, wait, why).await;
            }
            Some(Replacement::Host(why)) => return self.replace(machine, config, wait, why).await,
            None => {}
        }
        let skip_launch = machine.should_skip_launch();
        let body = update_body(machine, config.clone(), skip_launch);
        let mut fresh_lease = false;
        let updated = loop {
            let nonce = match self.leases.nonce(&machine.id) {
                Some(nonce) => nonce,
                None => self.reacquire(machine, &mut fresh_lease).await?,
            };
            match self.api.update_machine(&machine.id, &nonce, body.clone()).await {
                Ok(updated) => break updated,
                // Before the lease case: Fly has answered "could not reserve resource" with 409.
                Err(err) if err.is_host_refusal() => {
                    let why = err.message().unwrap_or_default().to_string();
                    return self.replace(machine, config, wait, why).await;
                }
                // Our lease lapsed (a stalled refresh, a suspended laptop): take a new one
                // once rather than fail, which matters most during a rollback.
                Err(err) if err.status() == Some(409) && !fresh_lease => {
                    self.leases.forget(&machine.id);
                }
                Err(source) => return Err(RolloutError::api("updating", &machine.id, source)),
            }
        };
        if wait == Wait::No {
            return Ok("updated");
        }
        self.settle(&updated, group, skip_launch, &config, wait).await
    }

    /// Wait for an updated or created machine (`answer`, the API's answer to the request):
    /// stopped when it was left stopped, else started, through fly.toml's machine
    /// checks (`Wait::Checked`) and healthy, in flyctl's order (`machines_deploymachinesapp.go`
    /// `waitForMachine`; `plan.go` `updateMachineWChecks`). Either way the API may not show the
    /// new version everywhere yet, so a 404 is waited out, as flyctl waits after updates too
    /// (`WaitForState` with `WithJustCreated`).
    async fn settle(
        &self,
        answer: &Machine,
        group: &str,
        skip_launch: bool,
        config: &Value,
        wait: Wait,
    ) -> Result<&'static str, RolloutError> {
        let id = answer.id.as_str();
        let version = answer.instance_id.as_deref();
        let expected_checks = config_check_count(config);
        let timeout = self.spec.wait_timeout;
        if skip_launch {
            // Let the update settle, so that the lease is not released mid-replacement. A
            // request may start the machine (the proxy's autostart) as the update lands, and it
            // may suspend again before the wait answers: flyctl waits for any of the three
            // (`internal/command/deploy/plan.go` `updateMachineWChecks`, one wait per state
            // side by side), and so does this, in one wait for the three.
            let reached =
                wait_for_new_machine_state(&self.api, id, "stopped,started,suspended", version, timeout)
                    .await?;
            return Ok(match reached.as_deref() {
                Some("started") => "updated (left stopped; it has since started)",
                Some("suspended") => "updated (left stopped; it has since started and suspended)",
                _ => "updated (left stopped)",
            });
        }
        self.status(id, group, "starting");
        self.wait_started(id, group, version, timeout).await?;
        if wait == Wait::Checked {
            super::machine_checks::run(self, answer).await?;
        }
        if expected_checks > 0 {
            self.status(id, group, "started, waiting for checks");
        }
        let waited = wait_healthy(
            &self.api,
            &self.reporter,
            id,
            group,
            self.health_wait(expected_checks),
        )
        .await;
        self.check_listen_addresses(id, group, config, waited.is_ok())
            .await;
        if let Err(err) = waited {
            return Err(self.with_crash_logs(err).await);
        }
        Ok("done")
    }

    /// Wait for a machine the update meant to launch to run. Fly launches on update only a
    /// machine that was running when the update landed (flyctl preflight
    /// `TestFlyMachineRun_standbyFor`), so one stopped since it was listed (autostopped by the
    /// proxy, or crashed before its rollback) settles `stopped`: it is started here, as the
    /// update meant. One that started and already exited is left to the health wait. One the
    /// proxy's autostop suspended as soon as it was up never shows `started` to the wait:
    /// `suspended` counts, as flyctl waits for stopped, started or suspended
    /// (`internal/command/deploy/plan.go` `updateMachineWChecks`), and its checks are then
    /// waited for as any other's.
    async fn wait_started(
        &self,
        id: &str,
        group: &str,
        version: Option<&str>,
        timeout: Duration,
    ) -> Result<(), RolloutError> {
        let reached =
            wait_for_new_machine_state(&self.api, id, "started,stopped,suspended", version, timeout)
                .await
                .map_err(|err| match err {
                    RolloutError::WaitTimeout { machine, timeout, .. } => RolloutError::WaitTimeout {
                        machine,
                        state: "started",
                        timeout,
                    },
                    err => err,
                })?;
        match reached.as_deref() {
            Some("started") => return Ok(()),
            Some("suspended") => {
                self.status(id, group, "started (suspended since, by its autostop)");
                return Ok(());
            }
            _ => {}
        }
        let machine = self
            .api
            .get_machine(id)
            .await
            .map_err(|e| RolloutError::api("reading the state of", id, e))?;
        if !machine.left_stopped_by_change() {
            return Ok(());
        }
        let nonce = self.leases.nonce(id);
        self.api
            .machine_action(id, "start", nonce.as_deref())
            .await
            .map_err(|e| RolloutError::api("starting", id, e))?;
        wait_for_new_machine(&self.api, id, "started", version, timeout).await
    }

    /// A crash loop with what the machine logged since it last changed (`logs::since_update`).
    /// Other errors pass as they are.
    async fn with_crash_logs(&self, err: RolloutError) -> RolloutError {
        let RolloutError::CrashLoop {
            machine,
            exit_code,
            restarts,
            oom_killed,
            since,
            logs: _,
        } = err
        else {
            return err;
        };
        let logs = super::logs::since_update(self.platform.as_ref(), &self.spec.app, &machine, &since).await;
        RolloutError::CrashLoop {
            machine,
            exit_code,
            restarts,
            oom_killed,
            since,
            logs,
        }
    }

    /// What flyctl does when a machine's host cannot take an update
    /// (`machines_deploymachinesapp.go` `updateMachineByReplace`, `machines_launchinput.go`):
    /// without a volume, destroy it and create a machine with the new config in the same
    /// region and process group; with one, stop with an error naming both, since the volume
    /// keeps the machine on that host.
    async fn replace(
        &self,
        machine: &Machine,
        config: Value,
        wait: Wait,
        why: String,
    ) -> Result<&'static str, RolloutError> {
        if let Some(volume) = machine.volume() {
            // Refused before any change: nothing of this machine to roll back.
            self.journal
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|m| m.id != machine.id);
            return Err(RolloutError::HostUnavailableWithVolume {
                machine: machine.id.clone(),
                volume: volume.to_string(),
                reason: why,
            });
        }
        self.reporter.warn(format!(
            "machine {} cannot be updated where it runs ({why}): replacing it with a new machine in {}",
            machine.id,
            machine.region.as_deref().unwrap_or("the same region")
        ));
        self.destroy_and_replace(machine, config, wait, false).await
    }

    /// Replace a machine whose `[[mounts]]` changed, as flyctl does: destroy it, then create
    /// one with fly.toml's config in its region, mounting an unattached volume of fly.toml's
    /// name there (`popVolumeFor`; checked to exist before the deploy began) or none. The old
    /// volume stays, unattached, with its data.
    async fn replace_for_volume(
        &self,
        machine: &Machine,
        mut config: Value,
        wait: Wait,
        why: String,
    ) -> Result<&'static str, RolloutError> {
        let region = machine.region.clone().unwrap_or_default();
        let attach = config
            .pointer("/mounts/0")
            .filter(|mount| mount["volume"].as_str().is_none())
            .map(|mount| mount["name"].as_str().unwrap_or_default().to_string());
        let mounting = match &attach {
            Some(name) => {
                let volume = self.claim_volume(machine, name, &region).await?;
                config["mounts"][0]["volume"] = json!(volume);
                format!(" mounting volume {volume} ({name})")
            }
            None => match config.pointer("/mounts/0/volume").and_then(Value::as_str) {
                Some(volume) => format!(" mounting volume {volume}"),
                None => " without a volume".to_string(),
            },
        };
        // Planned (the preview listed it): said as it happens, not warned about.
        self.reporter.info(format!(
            "machine {} {why}: an update cannot change a machine's volume, so it is replaced by a \
             new machine in {region}{mounting}{}",
            machine.id,
            match machine.volume() {
                Some(old) => format!("; volume {old} stays, unattached"),
                None => String::new(),
            }
        ));
        self.destroy_and_replace(machine, config, wait, true).await
    }

    /// Destroy `machine` and create its replacement with `config`. Between the two it is
    /// `lost`: a rollback creates it again if the replacement never came.
    async fn destroy_and_replace(
        &self,
        machine: &Machine,
        config: Value,
        wait: Wait,
        volume_swap: bool,
    ) -> Result<&'static str, RolloutError> {
        self.destroy_recorded(&machine.id, machine.process_group(), true)
            .await?;
        self.create_replacement(machine, config, wait, volume_swap).await
    }

    /// An unattached volume `name` in `region` that no other replacement of this deploy took.
    async fn claim_volume(
        &self,
        machine: &Machine,
        name: &str,
        region: &str,
    ) -> Result<String, RolloutError> {
        let volumes = self
            .api
            .list_volumes()
            .await
            .map_err(|source| RolloutError::AppApi {
                action: "listing the volumes",
                app: self.spec.app.clone(),
                source: Box::new(source),
            })?;
        let mut claimed = self.claimed.lock().unwrap_or_else(|e| e.into_inner());
        let free = volumes
            .iter()
            .find(|v| v.is_ready_for(name, region) && !claimed.contains(&v.id))
            .ok_or_else(|| RolloutError::VolumeGone {
                machine: machine.id.clone(),
                volume: name.to_string(),
                region: region.to_string(),
            })?;
        claimed.push(free.id.clone());
        Ok(free.id.clone())
    }

    /// Create a machine in `old`'s place (its region, its launch state) with `config`, and
    /// point the journal at it so that a rollback restores the new machine.
    async fn create_replacement(
        &self,
        old: &Machine,
        config: Value,
        wait: Wait,
        volume_swap: bool,
    ) -> Result<&'static str, RolloutError> {
        let group = old.process_group();
        let skip_launch = old.should_skip_launch();
        let mut body = json!({"config": &config, "skip_launch": skip_launch, "skip_secrets": false});
        if let Some(region) = &old.region {
            body["region"] = json!(region);
        }
        let created = self
            .create_machine(body, Purpose::Replaces(old.id.clone()))
            .await
            .map_err(|source| RolloutError::api("creating the replacement for", &old.id, source))?;
        self.lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id| *id != old.id);
        for entry in self
            .journal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
            .filter(|m| m.id == old.id)
        {
            entry.id = created.id.clone();
            entry.host_status = None;
        }
        {
            let mut swapped = self.swapped.lock().unwrap_or_else(|e| e.into_inner());
            swapped.retain(|id| *id != old.id);
            if volume_swap {
                swapped.push(created.id.clone());
            }
        }
        self.status(&created.id, group, format!("replaces {}", old.id));
        if wait == Wait::No {
            return Ok("replaced");
        }
        self.settle(&created, group, skip_launch, &config, wait).await?;
        Ok("replaced by a new machine")
    }

    async fn reacquire(&self, machine: &Machine, fresh: &mut bool) -> Result<String, RolloutError> {
        *fresh = true;
        self.leases
            .acquire(
                &machine.id,
                machine.process_group(),
                self.spec.lease_wait,
                &self.reporter,
            )
            .await?;
        Ok(self.leases.nonce(&machine.id).unwrap_or_default())
    }

    /// Create a machine (canary, green, a new group's), wait for it to start and pass its
    /// checks. `record` takes the machine into the caller's records as soon as it exists, so
    /// that a deploy stopped during the wait still knows of it. The machine is returned even
    /// when waiting failed, so the caller can destroy it.
    pub async fn create_and_check(
        &self,
        body: Value,
        group: &str,
        launch: bool,
        purpose: Purpose,
        record: impl FnOnce(&Machine),
    ) -> Result<Machine, (Option<Machine>, RolloutError)> {
        let expected_checks = body.get("config").map_or(0, config_check_count);
        let config = body.get("config").cloned();
        let temporary = body.pointer("/config/metadata").and_then(|m| {
            if m.get(crate::fly::types::META_CANARY).is_some() {
                Some("canary")
            } else if m.get(crate::fly::types::META_BLUEGREEN_TAG).is_some() {
                Some("green")
            } else {
                None
            }
        });
        let created = self.create_machine(body, purpose).await.map_err(|source| {
            (
                None,
                RolloutError::AppApi {
                    action: "creating a machine",
                    app: self.spec.app.clone(),
                    source: source.into(),
                },
            )
        })?;
        if let Some(what) = temporary {
            self.add_temporary(&created.id, group, what);
        }
        record(&created);
        if !launch {
            return Ok(created);
        }
        self.status(&created.id, group, "starting");
        let waited = async {
            wait_for_new_machine(
                &self.api,
                &created.id,
                "started",
                created.instance_id.as_deref(),
                self.spec.wait_timeout,
            )
            .await?;
            wait_healthy(
                &self.api,
                &self.reporter,
                &created.id,
                group,
                self.health_wait(expected_checks),
            )
            .await
        }
        .await;
        if let Some(config) = &config {
            self.check_listen_addresses(&created.id, group, config, waited.is_ok())
                .await;
        }
        match waited {
            Ok(()) => Ok(created),
            Err(err) => Err((Some(created), self.with_crash_logs(err).await)),
        }
    }

    /// Destroy a machine this deploy created or replaced; its lease (if any) goes with it.
    pub async fn destroy(&self, machine: &str, group: &str) -> Result<(), RolloutError> {
        self.destroy_recorded(machine, group, false).await
    }

    /// `destroy`, and with `lost` the machine is recorded as destroyed to be replaced. What a
    /// destroy changes in the deploy's records is written when Fly answers, even if the
    /// deploy stopped waiting meanwhile (`in_flight`).
    async fn destroy_recorded(&self, machine: &str, group: &str, lost: bool) -> Result<(), RolloutError> {
        let nonce = self.leases.nonce(machine);
        self.status(machine, group, "destroying");
        let (api, leases, temporaries, lost_list) = (
            self.api.clone(),
            self.leases.clone(),
            self.temporaries.clone(),
            self.lost.clone(),
        );
        let id = machine.to_string();
        self.to_the_answer(async move {
            api.destroy_machine(&id, nonce.as_deref()).await?;
            leases.forget(&id);
            temporaries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|t| t.id != id);
            if lost {
                lost_list.lock().unwrap_or_else(|e| e.into_inner()).push(id);
            }
            Ok(())
        })
        .await
        .map_err(|source| RolloutError::api("destroying", machine, source))
    }

    /// `MachinesApi::create_machine`, read to its answer even if the deploy stops waiting
    /// (`in_flight`). The caller takes the machine into its own records (journal, temporaries,
    /// created) before it next awaits anything; one whose caller is gone stays `unclaimed`.
    pub async fn create_machine(
        &self,
        body: Value,
        purpose: Purpose,
    ) -> Result<Machine, crate::fly::api::ApiError> {
        let (api, unclaimed) = (self.api.clone(), self.unclaimed.clone());
        let created = self
            .to_the_answer(async move {
                let created = api.create_machine(body).await;
                if let Ok(machine) = &created {
                    unclaimed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((machine.id.clone(), purpose));
                }
                created
            })
            .await?;
        self.unclaimed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(id, _)| *id != created.id);
        Ok(created)
    }

    /// Run `request` on a task of its own, kept in `in_flight`, and wait for its answer.
    async fn to_the_answer<T: Send + 'static>(
        &self,
        request: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let _ = tx.send(request.await);
        });
        {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            in_flight.retain(|t| !t.is_finished());
            in_flight.push(task);
        }
        match rx.await {
            Ok(answer) => answer,
            // The task ended without answering: it panicked, and so does its caller.
            Err(_) => panic!("a machine request's task ended without an answer"),
        }
    }

    /// Wait for every create and destroy still on its way: the deploy stopped waiting for
    /// them, and what they did must be known before anything is rolled back or reported.
    pub async fn settle_in_flight(&self) {
        let tasks = std::mem::take(&mut *self.in_flight.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }

    /// The machines created with nobody left to record them (after `settle_in_flight`). When
    /// the deploy rolls back, every one is destroyed (the rollback creates again what a
    /// replacement replaced). When it does not (a signal, `--no-rollback`), a replacement or a
    /// new group's machine stays, as the machines already updated do, and only those made for
    /// the deploy alone (canaries, greens, release and test machines) are destroyed. Returns
    /// what to tell the user, when there was any.
    pub async fn settle_unclaimed(&self, rolling_back: bool) -> Option<String> {
        let unclaimed = std::mem::take(&mut *self.unclaimed.lock().unwrap_or_else(|e| e.into_inner()));
        if unclaimed.is_empty() {
            return None;
        }
        let late = "created by a request answered after the deploy had stopped waiting for it";
        let mut text = Vec::new();
        let mut left = Vec::new();
        for (id, purpose) in unclaimed {
            if !rolling_back && purpose != Purpose::ForTheDeploy {
                if let Purpose::Replaces(old) = &purpose {
                    self.lost
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .retain(|lost| lost != old);
                }
                let what = match &purpose {
                    Purpose::Replaces(old) => format!("it replaces {old}"),
                    _ => "a new process group's".to_string(),
                };
                text.push(format!("machine {id} ({what}), {late}, keeps the new image"));
                continue;
            }
            match self.api.destroy_machine(&id, None).await {
                Ok(()) => text.push(format!("destroyed machine {id}, {late}")),
                Err(err) => {
                    self.reporter.warn(format!(
                        "cannot destroy machine {id}: {}",
                        crate::error::chain_text(&err)
                    ));
                    left.push(id);
                }
            }
        }
        if !left.is_empty() {
            text.push(could_not_destroy(&left, &format!(", {late}")));
        }
        Some(text.join("; "))
    }
}

/// The end of a stopped deploy's message for machines it could not destroy, with the command
/// that removes them; `why` follows their IDs.
fn could_not_destroy(left: &[String], why: &str) -> String {
    format!(
        "could not destroy {}{why}: remove them with `fly machine destroy --force {}`",
        left.join(", "),
        left.join(" ")
    )
}

/// What a machine is created for (see `Ctx::settle_unclaimed`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// In place of this machine, destroyed to be replaced.
    Replaces(String),
    /// A process group new to the app.
    NewGroup,
    /// The deploy alone: a canary, a green, the release_command machine, a check's test
    /// machine.
    ForTheDeploy,
}

/// A machine the deploy created only for itself (see `Ctx::temporaries`).
struct Temporary {
    id: String,
    group: String,
    /// "canary", "green", "release_command machine".
    what: &'static str,
    /// Started on a command of its own, left to end by itself.
    running: bool,
}

/// How far an update or replacement waits for its machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    /// Not at all (the immediate strategy, as flyctl's skips every check).
    No,
    /// Until it is started (or left stopped) and healthy: a rollback, whose image ran before.
    Healthy,
    /// Through fly.toml's machine checks too: an update.
    Checked,
}

/// Why a machine is replaced rather than updated: flyctl's `RequiresReplacement`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Replacement {
    /// The new config mounts another volume than the machine (or one, or none): the
    /// replacement mounts fly.toml's.
    Volume(String),
    /// The machine cannot stay where it is (its host, or its host dedication): without a
    /// volume it moves, with one the deploy stops (`Ctx::replace`).
    Host(String),
}

/// Whether `machine` is replaced by a new machine with `config` instead of updated into it,
/// as flyctl's `launchInputForUpdate` (`internal/command/deploy/machines_launchinput.go`) sets
/// `RequiresReplacement`: an update cannot attach, detach or swap a volume (whatever the
/// host's state), cannot reach a machine whose host is not `ok`, and cannot move one to
/// fly.toml's `host_dedication_id` (`ConfigChange::apply` puts that in `config`).
pub(super) fn replacement(
    machine: &Machine,
    config: &Value,
    host_dedication_id: Option<&str>,
) -> Option<Replacement> {
    if let Some(why) = volume_swap(machine, config) {
        return Some(Replacement::Volume(why));
    }
    if machine.host_unavailable() {
        return Some(Replacement::Host(format!(
            "its host is {}",
            machine.host_status.as_deref().unwrap_or("unknown")
        )));
    }
    match host_dedication_id {
        Some(wanted) if machine.host_dedication_id() != Some(wanted) => Some(Replacement::Host(format!(
            "fly.toml's host_dedication_id is {wanted}"
        ))),
        _ => None,
    }
}

/// Why an update cannot turn `machine` into `config`: `config` mounts another volume than the
/// machine has, or one when it has none, or none when it has one.
fn volume_swap(machine: &Machine, config: &Value) -> Option<String> {
    let name = |m: &Value| format!("{:?}", m["name"].as_str().unwrap_or_default());
    let volume = |m: &Value| m["volume"].as_str().map(str::to_string);
    match (machine.config.pointer("/mounts/0"), config.pointer("/mounts/0")) {
        (None, None) => None,
        (Some(c), Some(w)) if volume(c).is_some() && volume(c) == volume(w) => None,
        (None, Some(w)) => Some(format!("has no volume but the new config mounts {}", name(w))),
        (Some(c), None) => Some(format!(
            "mounts volume {} ({}) but the new config mounts none",
            volume(c).unwrap_or_default(),
            name(c)
        )),
        (Some(c), Some(w)) => Some(format!(
            "mounts volume {} ({}) but the new config mounts {}",
            volume(c).unwrap_or_default(),
            name(c),
            match volume(w) {
                Some(id) => format!("volume {id} ({})", name(w)),
                None => name(w),
            }
        )),
    }
}
