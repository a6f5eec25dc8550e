//! Updating one machine under its lease, and the shared state every strategy works with.

use super::RolloutSpec;
use super::error::RolloutError;
use super::health::{HealthWait, wait_for_new_machine, wait_for_state, wait_healthy};
use super::lease::Leases;
use super::plan::{ConfigChange, update_body};
use crate::fly::api::MachinesApi;
use crate::fly::types::{Machine, config_check_count};
use crate::progress::{Event, Reporter};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Everything a strategy needs: the API, the spec, the change to apply, the leases held, and
/// the journal of machines changed so far (their previous state, for rollback).
pub struct Ctx {
    pub api: MachinesApi,
    pub reporter: Reporter,
    pub spec: RolloutSpec,
    pub change: ConfigChange,
    pub leases: Arc<Leases>,
    journal: Mutex<Vec<Machine>>,
    changing: AtomicBool,
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
            reporter,
            spec,
            change,
            leases,
            journal: Mutex::new(Vec::new()),
            changing: AtomicBool::new(false),
        }
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

    fn health_wait(&self, expected_checks: usize) -> HealthWait {
        HealthWait {
            expected_checks,
            timeout: self.spec.wait_timeout,
            smoke_window: self.spec.smoke_window,
        }
    }

    /// Put the new image (and env, release metadata) on one machine; with `wait`, wait for it to
    /// start and pass its checks. The machine is journaled before the request goes out, so a
    /// failure at any point rolls it back.
    pub async fn deploy_machine(&self, machine: &Machine, wait: bool) -> Result<(), RolloutError> {
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
        let result = self.put_config(previous, config, true, "rolling back").await;
        let status = match &result {
            Ok(_) => "rolled back",
            Err(_) => "rollback failed",
        };
        self.done(&previous.id, group, status, false);
        result.map(drop)
    }

    /// Update under the lease, launching the machine only if it was running before.
    async fn put_config(
        &self,
        machine: &Machine,
        config: Value,
        wait: bool,
        verb: &str,
    ) -> Result<&'static str, RolloutError> {
        let group = machine.process_group();
        self.status(&machine.id, group, verb);
        let skip_launch = machine.should_skip_launch();
        let expected_checks = config_check_count(&config);
        let body = update_body(machine, config, skip_launch);
        let mut fresh_lease = false;
        let updated = loop {
            let nonce = match self.leases.nonce(&machine.id) {
                Some(nonce) => nonce,
                None => self.reacquire(machine, &mut fresh_lease).await?,
            };
            match self.api.update_machine(&machine.id, &nonce, body.clone()).await {
                Ok(updated) => break updated,
                // Our lease lapsed (a stalled refresh, a suspended laptop): take a new one
                // once rather than fail, which matters most during a rollback.
                Err(err) if err.status() == Some(409) && !fresh_lease => {
                    self.leases.forget(&machine.id);
                }
                Err(source) => {
                    return Err(RolloutError::Api {
                        action: "updating",
                        machine: machine.id.clone(),
                        source: source.into(),
                    });
                }
            }
        };
        if !wait {
            return Ok("updated");
        }
        if skip_launch {
            // Let the update settle, so that the lease is not released mid-replacement.
            wait_for_state(
                &self.api,
                &machine.id,
                "stopped",
                updated.instance_id.as_deref(),
                self.spec.wait_timeout,
            )
            .await?;
            return Ok("updated (left stopped)");
        }
        self.status(&machine.id, group, "starting");
        wait_for_state(
            &self.api,
            &machine.id,
            "started",
            updated.instance_id.as_deref(),
            self.spec.wait_timeout,
        )
        .await?;
        if expected_checks > 0 {
            self.status(&machine.id, group, "started, waiting for checks");
        }
        wait_healthy(
            &self.api,
            &self.reporter,
            &machine.id,
            group,
            self.health_wait(expected_checks),
        )
        .await?;
        Ok("done")
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

    /// Create a machine (canary or green), wait for it to start and pass its checks.
    /// The machine is returned even when waiting failed, so the caller can destroy it.
    pub async fn create_and_check(
        &self,
        body: Value,
        group: &str,
        launch: bool,
    ) -> Result<Machine, (Option<Machine>, RolloutError)> {
        let expected_checks = body.get("config").map_or(0, config_check_count);
        let created = self.api.create_machine(body).await.map_err(|source| {
            (
                None,
                RolloutError::AppApi {
                    action: "creating a machine",
                    app: self.spec.app.clone(),
                    source: source.into(),
                },
            )
        })?;
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
        match waited {
            Ok(()) => Ok(created),
            Err(err) => Err((Some(created), err)),
        }
    }

    /// Destroy a machine this deploy created or replaced; its lease (if any) goes with it.
    pub async fn destroy(&self, machine: &str, group: &str) -> Result<(), RolloutError> {
        let nonce = self.leases.nonce(machine);
        self.status(machine, group, "destroying");
        self.api
            .destroy_machine(machine, nonce.as_deref())
            .await
            .map_err(|source| RolloutError::Api {
                action: "destroying",
                machine: machine.to_string(),
                source: source.into(),
            })?;
        self.leases.forget(machine);
        Ok(())
    }
}
