//! Machine leases: acquired before a machine is touched, refreshed in the background while the
//! deploy runs, and released at the end whatever happened (success, failure, rollback, signal).

use super::error::RolloutError;
use crate::fly::api::{ApiError, MachinesApi};
use crate::progress::{Event, Reporter};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often to ask again for a lease someone else holds.
const LEASE_RETRY: Duration = Duration::from_millis(500);

pub struct Leases {
    api: MachinesApi,
    ttl: Duration,
    /// machine id → nonce of the lease we hold.
    held: Mutex<BTreeMap<String, String>>,
    refresher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Leases {
    pub fn new(api: MachinesApi, ttl: Duration) -> Arc<Self> {
        Arc::new(Leases {
            api,
            ttl,
            held: Mutex::new(BTreeMap::new()),
            refresher: Mutex::new(None),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn nonce(&self, machine: &str) -> Option<String> {
        self.held().get(machine).cloned()
    }

    /// Take the machine's lease, waiting up to `patience` while someone else holds it. Returns
    /// the machine's version the lease was granted on, when the API says.
    pub async fn acquire(
        &self,
        machine: &str,
        group: &str,
        patience: Duration,
        reporter: &Reporter,
    ) -> Result<Option<String>, RolloutError> {
        let started = Instant::now();
        let mut announced = false;
        loop {
            match self.api.lease(machine, self.ttl, None).await {
                Ok(lease) => {
                    self.held().insert(machine.to_string(), lease.nonce);
                    return Ok(lease.version.filter(|v| !v.is_empty()));
                }
                Err(err) if err.status() == Some(409) => {
                    let holder = self.api.current_lease(machine).await.ok().flatten();
                    let owner = holder
                        .as_ref()
                        .and_then(|l| l.owner.clone())
                        .unwrap_or_else(|| "someone else".to_string());
                    let expires = holder
                        .as_ref()
                        .and_then(|l| l.expires_at)
                        .map_or_else(|| "at an unknown time".to_string(), describe_expiry);
                    if started.elapsed() >= patience {
                        return Err(RolloutError::LeaseHeld {
                            machine: machine.to_string(),
                            owner,
                            expires,
                            waited: started.elapsed(),
                        });
                    }
                    if !announced {
                        announced = true;
                        reporter.emit(Event::Machine {
                            machine: machine.to_string(),
                            group: group.to_string(),
                            status: format!("waiting for lease held by {owner} (expires {expires})"),
                        });
                    }
                    tokio::time::sleep(LEASE_RETRY.min(patience.saturating_sub(started.elapsed()))).await;
                }
                Err(source) => return Err(RolloutError::api("acquiring the lease on", machine, source)),
            }
        }
    }

    /// Keep every held lease alive until `release_all`: refresh each at a third of the TTL.
    pub fn start_refreshing(self: &Arc<Self>, reporter: Reporter) {
        let leases = Arc::clone(self);
        let every = (self.ttl / 3).max(Duration::from_millis(200));
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let snapshot: Vec<(String, String)> = leases
                    .held()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let refreshes = snapshot.iter().map(|(machine, nonce)| {
                    let leases = &leases;
                    async move { (machine, leases.api.lease(machine, leases.ttl, Some(nonce)).await) }
                });
                for (machine, result) in futures::future::join_all(refreshes).await {
                    match result {
                        // Fly keeps the nonce on a refresh (flyctl's `RefreshLease`,
                        // `internal/machine/leasable_machine.go`, fails on a new one); taking
                        // whatever comes back keeps the lease usable either way.
                        Ok(lease) => {
                            if let Some(nonce) = leases.held().get_mut(machine) {
                                *nonce = lease.nonce;
                            }
                        }
                        // The machine is gone, and its lease with it: refreshing it again would
                        // only warn again (flyctl's `refreshLeaseUntilCanceled` stops on
                        // "machine not found", `internal/machine/leasable_machine.go`; a 404 is
                        // what a lease call on a missing machine gets, a stale nonce is 409).
                        Err(err)
                            if err.status() == Some(404)
                                || err.message().is_some_and(|m| m.contains("machine not found")) =>
                        {
                            leases.forget(machine);
                        }
                        Err(err) => {
                            reporter.warn(format!("cannot refresh the lease on machine {machine}: {err}"))
                        }
                    }
                }
            }
        });
        *self.refresher.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
    }

    /// The machine is gone (destroyed by the deploy): its lease went with it.
    pub fn forget(&self, machine: &str) {
        self.held().remove(machine);
    }

    /// Stop refreshing and release every lease still held. Failures are reported, not fatal:
    /// a lease left behind expires after its TTL.
    /// Returns the machines whose lease could not be released (it expires on its own).
    pub async fn release_all(&self, reporter: &Reporter) -> Vec<String> {
        if let Some(task) = self.refresher.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        let held: Vec<(String, String)> = std::mem::take(&mut *self.held()).into_iter().collect();
        let releases = held
            .iter()
            .map(|(machine, nonce)| async move { (machine, self.api.release_lease(machine, nonce).await) });
        let mut unreleased = Vec::new();
        for (machine, result) in futures::future::join_all(releases).await {
            match result {
                Ok(()) => {}
                // Gone already (it expired, or the machine was destroyed): flyctl ignores an
                // error that says "lease not found", whatever its status
                // (`internal/machine/lease.go`, `releaseLease`).
                Err(ApiError::Status { status, message, .. })
                    if status == 404 || message.contains("lease not found") => {}
                Err(err) => {
                    reporter.warn(format!(
                        "cannot release the lease on machine {machine} (it expires in {}s): {err}",
                        self.ttl.as_secs()
                    ));
                    unreleased.push(machine.clone());
                }
            }
        }
        unreleased
    }
}

fn describe_expiry(unix: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let left = unix - now;
    if left > 0 {
        format!("in {left}s")
    } else {
        "now".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fly::api::FlyHttp;
    use crate::fly::token::{FlyToken, TokenSource};
    use fly_api_double::{FaultKind, FlyApi, MachineSpec};

    fn api(fly: &FlyApi, reporter: &Reporter) -> MachinesApi {
        let token = FlyToken::parse(fly.token(), TokenSource::Flag).unwrap();
        MachinesApi::new(FlyHttp::new(fly.url(), token, reporter.clone()).unwrap(), "demo")
    }

    /// A double with two machines of app `demo`, leased for `ttl`.
    async fn two_leased(ttl: Duration) -> (FlyApi, Vec<String>, Reporter, Arc<Leases>) {
        let fly = FlyApi::start();
        fly.add_app("demo");
        let ids = fly.add_machines("demo", &MachineSpec::new("app").count(2));
        let reporter = Reporter::plain();
        let leases = Leases::new(api(&fly, &reporter), ttl);
        for id in &ids {
            leases.acquire(id, "app", ttl, &reporter).await.unwrap();
        }
        (fly, ids, reporter, leases)
    }

    /// flyctl `internal/machine/leasable_machine.go`, `refreshLeaseUntilCanceled`: a refresh
    /// answered "machine not found" ends that machine's refreshes; the others go on. nixfly
    /// kept refreshing it, with a warning each time, until the end of the deploy.
    #[tokio::test]
    async fn a_machine_gone_is_no_longer_refreshed() {
        // A 1 s lease is refreshed every third of a second.
        let (fly, ids, reporter, leases) = two_leased(Duration::from_secs(1)).await;
        let gone = format!("/machines/{}/lease", ids[0]);
        let message = "machine not found".to_string();
        fly.inject_fault("POST", &gone, 100, FaultKind::Status { status: 404, message });
        leases.start_refreshing(reporter.clone());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(leases.nonce(&ids[0]), None);
        assert!(leases.nonce(&ids[1]).is_some());
        let kept = format!("/machines/{}/lease", ids[1]);
        // The acquire, then one refresh each third of a second, for the machine still there.
        assert!(fly.requests_to("POST", &kept).len() >= 4);
        assert_eq!(
            fly.requests_to("POST", &gone).len(),
            2,
            "the acquire and one refresh"
        );
        assert!(leases.release_all(&reporter).await.is_empty());

        // Destroyed behind the refresher's back: the double answers its 404.
        let leases = Leases::new(api(&fly, &reporter), Duration::from_secs(1));
        leases
            .acquire(&ids[1], "app", Duration::from_secs(1), &reporter)
            .await
            .unwrap();
        leases.start_refreshing(reporter.clone());
        let nonce = leases.nonce(&ids[1]).unwrap();
        api(&fly, &reporter)
            .destroy_machine(&ids[1], Some(&nonce))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(leases.nonce(&ids[1]), None);
        assert!(leases.release_all(&reporter).await.is_empty());
    }

    /// flyctl `internal/machine/lease.go`, `releaseLease`: an error saying "lease not found"
    /// is a lease already gone, whatever its status; any other is reported as unreleased.
    #[tokio::test]
    async fn a_release_answered_lease_not_found_is_released() {
        let (fly, ids, reporter, leases) = two_leased(Duration::from_secs(30)).await;
        let status = |message: &str| FaultKind::Status {
            status: 409,
            message: message.to_string(),
        };
        let path = |id: &str| format!("/machines/{id}/lease");
        fly.inject_fault("DELETE", &path(&ids[0]), 1, status("aborted: lease not found"));
        fly.inject_fault("DELETE", &path(&ids[1]), 1, status("aborted: lease held by x"));
        assert_eq!(leases.release_all(&reporter).await, vec![ids[1].clone()]);
    }
}
