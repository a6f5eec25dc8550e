//! fly.toml's process groups against the app's machines: a group without machines gets new
//! ones (on a first deploy every group is new), a group gone from fly.toml loses its machines
//! once everything else is healthy, and every other machine gets fly.toml's config laid over
//! its own. All of it is decided before the first request that changes anything.

use super::RolloutSpec;
use super::error::RolloutError;
use super::update::{Ctx, Purpose};
use super::waves::{ConfigChange, Fleet};
use crate::fly::api::ApiError;
use crate::fly::appconfig::Strategy;
use crate::fly::appconfig::apply::{VolumeChange, apply, diff};
use crate::fly::appconfig::launch::{GroupLaunch, PublicIps, VolumeNeed, standby_config};
use crate::fly::appconfig::{AppConfig, AppConfigError};
use crate::fly::types::{Machine, Volume};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("translating fly.toml for process group {group}")]
    Translate {
        group: String,
        #[source]
        source: AppConfigError,
    },
    #[error("{0}")]
    VolumeRenamed(Box<RenamedMount>),
    #[error(
        "fly.toml no longer mounts a volume for machine(s) {machines}, so they would be replaced by \
         machines without one (the volumes stay, unattached, with their data): pass \
         --detach-volumes to do that, or put the [[mounts]] back"
    )]
    DetachNotConfirmed { machines: String },
    #[error(
        "machine {machine} (process group {group}) {change}, so it must be replaced by a new \
         machine, which the bluegreen strategy does not do: deploy with --strategy rolling (or \
         immediate), or keep its [[mounts]] as they are"
    )]
    BluegreenVolumeChange {
        machine: String,
        group: String,
        change: VolumeChange,
    },
    #[error(
        "the first deploy creates a volume for process group(s) {groups}, and a volume needs a \
         region: set primary_region in fly.toml (or pass --primary-region)"
    )]
    NoRegion { groups: String },
    #[error(
        "{what} in process group {group} requires an unattached volume {volume:?} in {place}, \
         and the app has {free_text}: create {create_text} with `fly volume create {volume} \
         --region {flag}{count}` and deploy again (after an app's first deploy, new volumes are \
         made by hand, as with `fly deploy`)",
        place = if region.is_empty() { "any region" } else { region },
        flag = if region.is_empty() { "REGION" } else { region },
        free_text = if *free == 0 { "none".to_string() } else { format!("only {free} for {needed} machines") },
        create_text = if needed - free == 1 { "it".to_string() } else { format!("{} more", needed - free) },
        count = if needed - free == 1 { String::new() } else { format!(" --count {}", needed - free) },
    )]
    VolumeMissing {
        /// "creating a new machine", or "replacing machine ID (its [[mounts]] changed)".
        what: String,
        group: String,
        volume: String,
        /// Empty: any region (new machines without a primary_region).
        region: String,
        needed: usize,
        free: usize,
    },
    #[error(
        "fly.toml no longer has process group(s) {groups}, so their {count} machine(s) ({machines}) \
         would be destroyed: pass --destroy-removed-groups to destroy them once the new config is \
         deployed and healthy, or put the group(s) back in [processes]"
    )]
    RemovalNotConfirmed {
        groups: String,
        count: usize,
        machines: String,
    },
}

/// A machine whose `[[mounts]]` changed in fly.toml: an update cannot attach, detach or swap
/// a volume, so it is replaced (flyctl `machines_launchinput.go`, `launchInputForUpdate`).
#[derive(Debug, Clone)]
pub struct VolumeReplacement {
    pub machine: String,
    pub group: String,
    pub region: String,
    pub change: VolumeChange,
}

/// A machine whose `[[mounts]]` source fly.toml renamed: refused, as `fly deploy` refuses it
/// (`machines.go`, `validateVolumeConfig`).
#[derive(Debug, thiserror::Error)]
#[error(
    "machine {machine} (process group {group}) mounts volume {volume} named {current:?}, and \
     fly.toml mounts {wanted:?}: an attached volume cannot be swapped for another, and `fly \
     deploy` refuses this too; set source back to {current:?}, or destroy the machine (`fly \
     machine destroy {machine}`) and deploy again with an unattached volume {wanted:?} in \
     {region}"
)]
pub struct RenamedMount {
    machine: String,
    group: String,
    volume: String,
    current: String,
    wanted: String,
    region: String,
}

/// What this deploy does to process groups besides updating machines.
#[derive(Debug, Default)]
pub struct GroupChanges {
    /// Groups in fly.toml with no machine yet, by name.
    pub launches: Vec<GroupLaunch>,
    /// Machines replaced because their volume changes.
    pub replacements: Vec<VolumeReplacement>,
    /// Groups with machines but gone from fly.toml.
    pub removed: BTreeMap<String, Vec<Machine>>,
    /// Where new machines go: fly.toml's primary_region. Empty without one: the create names
    /// no region and Fly places the machine (with its volume, if it mounts one), as flyctl's
    /// `launchInputForLaunch` sends `md.appConfig.PrimaryRegion` as it is.
    pub region: String,
    /// Addresses to allocate: only on the app's first deploy, as flyctl does.
    pub public_ips: PublicIps,
    /// The organization of the app (`GET /v1/apps/{app}`, read before the rollout), which the
    /// addresses are asked for in, as flyctl's first deploy asks.
    pub org_slug: String,
    app: String,
    /// The machines this deploy created, for rollback: id, group, and the volumes their config
    /// mounts.
    created: Mutex<Vec<(String, String, Vec<String>)>>,
    /// Volumes this deploy created (or found made by a create that seemed to fail), for the
    /// message after a rollback.
    created_volumes: Mutex<Vec<Volume>>,
}

impl GroupChanges {
    /// Compare fly.toml with the fleet. Removed groups are taken out of `fleet` (their machines
    /// are not updated, only destroyed at the end, and only if `confirm` says so). Returns
    /// fly.toml's config for every group, which `ConfigChange` lays over each machine.
    ///
    /// Volume changes follow flyctl's `validateVolumeConfig` (`internal/command/deploy/
    /// machines.go`): a machine gaining a volume is replaced; one losing it is replaced only
    /// when `confirm_detach` says so (flyctl asks); a renamed source is refused.
    pub fn new(
        config: &AppConfig,
        fleet: &mut Fleet,
        spec: &RolloutSpec,
        first_deploy: bool,
        confirm: impl FnOnce(&BTreeMap<String, Vec<Machine>>) -> bool,
        confirm_detach: impl FnOnce(&[VolumeReplacement]) -> bool,
    ) -> Result<(GroupChanges, BTreeMap<String, Value>), GroupError> {
        let groups = config.process_groups();
        let mut translated = BTreeMap::new();
        for group in &groups {
            let machine_config = config
                .machine_config(group)
                .map_err(|source| GroupError::Translate {
                    group: group.clone(),
                    source,
                })?;
            translated.insert(group.clone(), machine_config);
        }
        let removed: BTreeMap<String, Vec<Machine>> = fleet
            .groups
            .keys()
            .filter(|g| !groups.contains(g))
            .cloned()
            .collect::<Vec<_>>()
            .into_iter()
            .filter_map(|g| fleet.groups.remove_entry(&g))
            .collect();
        if !removed.is_empty() && !confirm(&removed) {
            let machines: Vec<&str> = removed.values().flatten().map(|m| m.id.as_str()).collect();
            return Err(GroupError::RemovalNotConfirmed {
                groups: removed.keys().cloned().collect::<Vec<_>>().join(", "),
                count: machines.len(),
                machines: machines.join(", "),
            });
        }
        let mut replacements = Vec::new();
        for (group, machines) in &fleet.groups {
            for machine in machines {
                let region = machine.region.clone().unwrap_or_default();
                match apply(&translated[group], &machine.config) {
                    Ok(_) => {}
                    Err(VolumeChange::Renamed {
                        volume,
                        current,
                        wanted,
                    }) => {
                        return Err(GroupError::VolumeRenamed(Box::new(RenamedMount {
                            machine: machine.id.clone(),
                            group: group.clone(),
                            volume,
                            current,
                            wanted,
                            region,
                        })));
                    }
                    Err(change) => replacements.push(VolumeReplacement {
                        machine: machine.id.clone(),
                        group: group.clone(),
                        region,
                        change,
                    }),
                }
            }
        }
        let detached: Vec<VolumeReplacement> = replacements
            .iter()
            .filter(|r| r.change.needs().is_none())
            .cloned()
            .collect();
        if !detached.is_empty() && !confirm_detach(&detached) {
            return Err(GroupError::DetachNotConfirmed {
                machines: detached
                    .iter()
                    .map(|r| r.machine.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        if let (Strategy::Bluegreen, Some(first)) = (spec.strategy, replacements.first()) {
            return Err(GroupError::BluegreenVolumeChange {
                machine: first.machine.clone(),
                group: first.group.clone(),
                change: first.change.clone(),
            });
        }
        let mut launches = Vec::new();
        for group in groups.iter().filter(|g| !fleet.groups.contains_key(*g)) {
            launches.push(config.launch(group).map_err(|source| GroupError::Translate {
                group: group.clone(),
                source,
            })?);
        }
        let region = spec.primary_region.clone().unwrap_or_default();
        // A first deploy creates the volumes new machines mount (`volume_for`), and a volume is
        // made in a region. flyctl would send the create with an empty one (`deploy_first.go`);
        // what Fly does with that is not known, so nixfly asks for primary_region instead.
        let creating: Vec<&str> = launches
            .iter()
            .filter(|l| l.volume.is_some())
            .map(|l| l.group.as_str())
            .collect();
        if region.is_empty() && first_deploy && !creating.is_empty() {
            return Err(GroupError::NoRegion {
                groups: creating.join(", "),
            });
        }
        let changes = GroupChanges {
            launches,
            replacements,
            removed,
            region,
            public_ips: if first_deploy {
                config.public_ips()
            } else {
                PublicIps::None
            },
            org_slug: String::new(),
            app: spec.app.clone(),
            created: Mutex::new(Vec::new()),
            created_volumes: Mutex::new(Vec::new()),
        };
        Ok((changes, translated))
    }

    /// The preview's lines: new groups, removed groups, and per group the config changes fly.toml
    /// makes on the machines (env is listed per machine by the rollout preview).
    pub fn describe(&self, fleet: &Fleet, change: &ConfigChange) -> Vec<String> {
        let mut lines = Vec::new();
        match self.public_ips {
            PublicIps::None => {}
            PublicIps::Shared => lines.push(
                "first deploy: a dedicated IPv6 and a shared IPv4 address, unless the app has some"
                    .to_string(),
            ),
            PublicIps::Dedicated => lines.push(format!(
                "first deploy: services beyond HTTP/HTTPS need a dedicated IPv4, which nixfly does \
                 not buy: run `fly ips allocate-v4 -a {}`",
                self.app
            )),
        }
        for launch in &self.launches {
            let guest = &launch.config["guest"];
            lines.push(format!(
                "process group {}: no machines yet: {} new machine(s){} in {} ({} cpu x{}, {} MB){}",
                launch.group,
                launch.count,
                if launch.standby { " and 1 standby" } else { "" },
                if self.region.is_empty() {
                    "a region Fly picks (no primary_region)"
                } else {
                    &self.region
                },
                guest["cpu_kind"].as_str().unwrap_or("shared"),
                guest["cpus"],
                guest["memory_mb"],
                launch
                    .volume
                    .as_ref()
                    .map(|v| format!(
                        ", volume {} (an unattached one, else a new {} GB one)",
                        v.name, v.size_gb
                    ))
                    .unwrap_or_default()
            ));
        }
        for replacement in &self.replacements {
            lines.push(format!(
                "machine {} (process group {}) {}: an update cannot change a machine's volume, so a \
                 new machine replaces it{}",
                replacement.machine,
                replacement.group,
                replacement.change,
                match replacement.change.needs() {
                    Some(name) => format!(", mounting an unattached volume {name} in {}", replacement.region),
                    None => ", without a volume".to_string(),
                }
            ));
        }
        for (group, machines) in &self.removed {
            lines.push(format!(
                "process group {group}: gone from fly.toml: machines {} destroyed once the rest is deployed and healthy",
                machines.iter().map(|m| m.id.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        for (group, machines) in &fleet.groups {
            // Machines of a group usually change alike: one block per distinct change list.
            let mut blocks: Vec<(Vec<String>, Vec<&str>)> = Vec::new();
            for machine in machines {
                let changes: Vec<String> = diff(&machine.config, &change.apply(&machine.config))
                    .into_iter()
                    .filter(|c| c.path != "env" && !c.path.starts_with("env."))
                    .map(|c| format!("    {c}"))
                    .collect();
                if changes.is_empty() {
                    continue;
                }
                match blocks.iter_mut().find(|(c, _)| *c == changes) {
                    Some((_, ids)) => ids.push(&machine.id),
                    None => blocks.push((changes, vec![&machine.id])),
                }
            }
            for (changes, ids) in blocks {
                lines.push(format!(
                    "process group {group}: fly.toml changes the config of {}:",
                    ids.join(", ")
                ));
                lines.extend(changes);
            }
        }
        lines
    }

    /// Create the machines of every new group, each started and health-checked like an
    /// update; a standby is created stopped. Everything created is remembered for rollback.
    pub async fn create(&self, ctx: &Ctx) -> Result<(), RolloutError> {
        self.provision_ips(ctx).await;
        for launch in &self.launches {
            ctx.mark_changing();
            let mut config = ctx.change.apply(&launch.config);
            if let Some(need) = &launch.volume {
                let volume = self.volume_for(ctx, need, &config).await?;
                config["mounts"][0]["volume"] = json!(volume);
            }
            let mut first = None;
            for _ in 0..launch.count {
                let machine = self.create_one(ctx, &launch.group, &config, true).await?;
                first.get_or_insert(machine);
            }
            if let (true, Some(first)) = (launch.standby, first) {
                let standby = standby_config(&config, &first.id);
                self.create_one(ctx, &launch.group, &standby, false).await?;
            }
        }
        Ok(())
    }

    async fn create_one(
        &self,
        ctx: &Ctx,
        group: &str,
        config: &Value,
        launch: bool,
    ) -> Result<Machine, RolloutError> {
        let mut body = json!({
            "config": config,
            "skip_launch": !launch,
            "skip_secrets": false,
        });
        if !self.region.is_empty() {
            body["region"] = json!(self.region);
        }
        // Recorded for rollback as soon as it exists, not once it is healthy: a deploy stopped
        // during the wait (a signal, another group's failure) destroys it too.
        let record = |machine: &Machine| {
            let volumes = config["mounts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|mount| mount["volume"].as_str().map(str::to_owned))
                .collect();
            self.created.lock().unwrap_or_else(|e| e.into_inner()).push((
                machine.id.clone(),
                group.to_string(),
                volumes,
            ));
        };
        let result = ctx
            .create_and_check(body, group, launch, Purpose::NewGroup, record)
            .await;
        match result {
            Ok(machine) => {
                let status = if launch { "created" } else { "created (standby)" };
                ctx.done(&machine.id, group, status, true);
                Ok(machine)
            }
            Err((_, err)) => Err(err),
        }
    }

    /// flyctl's first-deploy addresses. A failure is a warning, as in flyctl: the machines
    /// work, only public traffic waits for `fly ips allocate-*`.
    async fn provision_ips(&self, ctx: &Ctx) {
        if self.public_ips != PublicIps::Shared {
            return;
        }
        let allocated = async {
            if !ctx.api.list_ips().await?.is_empty() {
                return Ok(Vec::new());
            }
            let v6 = ctx.api.assign_ip("v6", &self.org_slug).await?;
            let v4 = ctx.api.assign_ip("shared_v4", &self.org_slug).await?;
            Ok::<_, crate::fly::api::ApiError>(vec![
                format!("dedicated IPv6 {v6}"),
                format!("shared IPv4 {v4}"),
            ])
        }
        .await;
        match allocated {
            Ok(ips) if ips.is_empty() => {}
            Ok(ips) => ctx
                .reporter
                .info(format!("app {}: allocated {}", ctx.spec.app, ips.join(" and "))),
            Err(err) => ctx.reporter.warn(format!(
                "cannot allocate public IP addresses for app {} ({err}); allocate them with \
                 `fly ips allocate-v6` and `fly ips allocate-v4 --shared`",
                ctx.spec.app
            )),
        }
    }

    /// After an app's first deploy flyctl creates no volume: every new machine that mounts one
    /// needs an unattached volume of that name in the region already
    /// (`internal/command/deploy/machines.go`, `validateVolumeConfig`; `deploy_first.go`
    /// creates them only on the first deploy), and so does every machine replaced because its
    /// `[[mounts]]` changed (`launchInputForUpdate`, `popVolumeFor`: one volume per machine).
    /// Checked before anything changes.
    pub async fn check_volumes_exist(&self, api: &crate::fly::api::MachinesApi) -> anyhow::Result<()> {
        // (name, region) -> (what needs it, group, how many)
        let mut needs: BTreeMap<(String, String), (String, String, usize)> = BTreeMap::new();
        for launch in &self.launches {
            if let Some(need) = &launch.volume {
                let entry = needs
                    .entry((need.name.clone(), self.region.clone()))
                    .or_insert_with(|| ("creating a new machine".into(), launch.group.clone(), 0));
                entry.2 += 1;
            }
        }
        for replacement in &self.replacements {
            if let Some(name) = replacement.change.needs() {
                let entry = needs
                    .entry((name.to_string(), replacement.region.clone()))
                    .or_insert_with(|| {
                        (
                            format!(
                                "replacing machine {} (its [[mounts]] changed)",
                                replacement.machine
                            ),
                            replacement.group.clone(),
                            0,
                        )
                    });
                entry.2 += 1;
            }
        }
        if needs.is_empty() {
            return Ok(());
        }
        let volumes = api.list_volumes().await.map_err(|source| RolloutError::AppApi {
            action: "listing the volumes",
            app: self.app.clone(),
            source: Box::new(source),
        })?;
        for ((name, region), (what, group, needed)) in needs {
            let free = volumes.iter().filter(|v| v.is_ready_for(&name, &region)).count();
            if free < needed {
                return Err(GroupError::VolumeMissing {
                    what,
                    group,
                    volume: name,
                    region,
                    needed,
                    free,
                }
                .into());
            }
        }
        Ok(())
    }

    /// An unattached volume of that name in the region, else a new one (flyctl makes them on
    /// a first deploy) for a machine of `config`.
    async fn volume_for(&self, ctx: &Ctx, need: &VolumeNeed, config: &Value) -> Result<String, RolloutError> {
        let app_error = |action, source| RolloutError::AppApi {
            action,
            app: ctx.spec.app.clone(),
            source: Box::new(source),
        };
        let volumes = ctx
            .api
            .list_volumes()
            .await
            .map_err(|e| app_error("listing the volumes", e))?;
        if let Some(free) = volumes.iter().find(|v| v.is_ready_for(&need.name, &self.region)) {
            return Ok(free.id.clone());
        }
        ctx.reporter.info(format!(
            "creating volume {} ({} GB) in {}",
            need.name, need.size_gb, self.region
        ));
        let created = ctx
            .api
            .create_volume(need.create_request(&self.region, &config["guest"], &ctx.spec.image))
            .await;
        let remember = |volume: &Volume| {
            self.created_volumes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(volume.clone());
        };
        match created {
            Ok(volume) => {
                remember(&volume);
                Ok(volume.id)
            }
            // flaps may have made it all the same (see `MachinesApi::create_machine`): a free
            // volume of that name and region that was not there before is this one. Volumes
            // carry no metadata to tag them with, so it is adopted but not created again.
            Err(err) if err.create_may_have_happened() => {
                match ctx.api.find_new_volume(&volumes, &need.name, &self.region).await {
                    Ok(Some(volume)) => {
                        ctx.reporter.warn(format!(
                            "{err}; volume {} ({}) was created all the same, going on with it",
                            volume.id, volume.name
                        ));
                        remember(&volume);
                        Ok(volume.id)
                    }
                    Ok(None) => Err(app_error("creating a volume", err)),
                    Err(lookup) => Err(app_error(
                        "creating a volume",
                        ApiError::CreateUncertain {
                            create: Box::new(err),
                            lookup: Box::new(lookup),
                            look_for: format!(
                                "an unattached volume {} in {} (`fly volumes list`) and destroy it if \
                                 it is not wanted (`fly volumes destroy ID`)",
                                need.name, self.region
                            ),
                        },
                    )),
                }
            }
            Err(err) => Err(app_error("creating a volume", err)),
        }
    }

    pub fn created_count(&self) -> usize {
        self.created.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The machines created for groups that had none, in creation order.
    pub fn created_ids(&self) -> Vec<String> {
        self.created
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, _, _)| id.clone())
            .collect()
    }

    /// Destroy the machines of the groups fly.toml dropped, under their leases, once the new
    /// config serves. This
    /// comes last, and the deploy has succeeded by then: a machine that cannot be leased or
    /// destroyed is a warning naming it and the command that removes it (the next deploy with
    /// the same fly.toml tries again), not a failure that would roll back a healthy deploy.
    /// (flyctl destroys them first, `machines_deploymachinesapp.go`, so that a failure there
    /// comes before any update; nixfly keeps them until the groups that replace them serve.)
    pub async fn destroy_removed(&self, ctx: &Ctx) -> Result<(), RolloutError> {
        for (group, machines) in &self.removed {
            for machine in machines {
                ctx.mark_changing();
                // One on a host Fly cannot reach is destroyed without a lease (as `deploy`
                // leases none there).
                let destroyed = async {
                    if !machine.host_unavailable() {
                        ctx.leases
                            .acquire(&machine.id, group, ctx.spec.lease_wait, &ctx.reporter)
                            .await?;
                    }
                    ctx.destroy(&machine.id, group).await
                };
                match destroyed.await {
                    Ok(_) => ctx.done(&machine.id, group, "destroyed (group gone from fly.toml)", true),
                    Err(err) => {
                        ctx.done(
                            &machine.id,
                            group,
                            "not destroyed (group gone from fly.toml)",
                            false,
                        );
                        ctx.reporter.warn(format!(
                            "machine {} of process group {group}, which fly.toml no longer has, \
                             was not destroyed: {}; the deploy itself succeeded. Destroy it with \
                             `fly machine destroy --force {}`, or deploy again",
                            machine.id,
                            crate::error::chain_text(&err),
                            machine.id
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// After a failed deploy (rolled back, or failed before any machine changed): the volumes
    /// this deploy created stay (a volume is storage, and a machine may have written to it
    /// before it was destroyed; flyctl destroys none either), so the next deploy mounts them
    /// (`volume_for`). Each is named with how to destroy it, so that none is left unnoticed; one
    /// still mounted by a created machine the rollback could not destroy (`undestroyed`, from
    /// `destroy_created`) is named with that machine, which must go first.
    pub fn warn_kept_volumes(&self, ctx: &Ctx, undestroyed: &[(String, Vec<String>)]) {
        let volumes = std::mem::take(&mut *self.created_volumes.lock().unwrap_or_else(|e| e.into_inner()));
        for volume in volumes {
            let holder = undestroyed
                .iter()
                .find(|(_, mounts)| mounts.contains(&volume.id))
                .map(|(machine, _)| machine);
            let state = match holder {
                Some(machine) => format!(
                    "is kept, still attached to machine {machine}, which this deploy created \
                     and could not destroy (above): `fly machine destroy --force {machine}`, then"
                ),
                None => "is kept, unattached: the next deploy mounts it;".to_string(),
            };
            ctx.reporter.warn(format!(
                "volume {} ({}, in {}) was created by this deploy and {state} `fly volumes \
                 destroy {}` if it is not wanted",
                volume.id, volume.name, volume.region, volume.id
            ));
        }
    }

    /// Rollback of the new groups: destroy every machine this deploy created. Returns how many
    /// went, the failures, and the machines that did not go with the volumes they mount.
    pub async fn destroy_created(&self, ctx: &Ctx) -> (usize, Vec<RolloutError>, Vec<(String, Vec<String>)>) {
        let created = std::mem::take(&mut *self.created.lock().unwrap_or_else(|e| e.into_inner()));
        let mut destroyed = 0;
        let mut failures = Vec::new();
        let mut undestroyed = Vec::new();
        for (id, group, volumes) in created.into_iter().rev() {
            match ctx.destroy(&id, &group).await {
                Ok(()) => {
                    ctx.done(&id, &group, "destroyed (rolled back)", false);
                    destroyed += 1;
                }
                Err(err) => {
                    failures.push(err);
                    undestroyed.push((id, volumes));
                }
            }
        }
        (destroyed, failures, undestroyed)
    }
}

/// On a terminal, ask before destroying the machines of removed groups; elsewhere only
/// `--destroy-removed-groups` says yes.
pub fn confirm_removal(removed: &BTreeMap<String, Vec<Machine>>) -> bool {
    let count: usize = removed.values().map(Vec::len).sum();
    let names: Vec<&str> = removed.keys().map(String::as_str).collect();
    ask_on_terminal(&format!(
        "fly.toml no longer has process group(s) {}: destroy their {count} machine(s) once the \
         deploy is healthy?",
        names.join(", ")
    ))
}

/// Ask on a terminal whether machines whose volume fly.toml no longer mounts may be replaced
/// by machines without one, as flyctl asks ("Do you still want to continue and detach the
/// volume? This will replace the machine."); elsewhere only `--detach-volumes` says yes.
pub fn confirm_detach(detached: &[VolumeReplacement]) -> bool {
    let machines: Vec<&str> = detached.iter().map(|r| r.machine.as_str()).collect();
    ask_on_terminal(&format!(
        "fly.toml no longer mounts a volume for machine(s) {}: replace them by machines without \
         one (the volumes stay, unattached)?",
        machines.join(", ")
    ))
}

/// A yes/no question on stderr, answered on stdin; no without a terminal on both.
fn ask_on_terminal(question: &str) -> bool {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return false;
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).is_ok()
        && matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}
