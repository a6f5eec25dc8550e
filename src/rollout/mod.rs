//! Rolling an image out on a Fly app's Machines, as `flyctl deploy --image` does, plus what
//! flyctl lacks: automatic rollback and a signal-safe end (leases released, release marked).
//!
//! Order: app → machines → preview → release record (running) → release_command → leases →
//! strategy over the process groups → (rollback) → leases released → release
//! complete/failed/interrupted. Nothing at all happens when every machine already runs the image
//! with the config it would get (unless `--force`).

mod bluegreen;
mod canary;
pub mod error;
mod groups;
mod health;
mod immediate;
mod lease;
mod listen;
mod logs;
pub mod machine_checks;
mod one_shot;
mod release_command;
mod rolling;
mod update;
pub mod waves;

#[cfg(test)]
mod launch_input_tests;

pub use release_command::ReleaseCommand;

use crate::error::{EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_ROLLED_BACK, ExitCodeError, chain_text};
use crate::fly::api::MachinesApi;
use crate::fly::appconfig::{AppConfig, MaxUnavailable, Strategy};
use crate::fly::platform::{NewRelease, PlatformApi, ReleaseStatus};
use crate::fly::types::{Machine, Release, config_check_count};
use crate::progress::Reporter;
use crate::registry::reference::PinnedReference;
use error::RolloutError;
use futures::StreamExt;
use groups::GroupChanges;
use lease::Leases;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use update::Ctx;
use waves::{ConfigChange, Fleet};

/// Machines rolled back at once.
const ROLLBACK_CONCURRENCY: usize = 8;
/// Leases requested at once at the start.
const LEASE_CONCURRENCY: usize = 16;

/// Everything a rollout needs, validated and merged from flags, environment and fly.toml.
#[derive(Clone, Debug)]
pub struct RolloutSpec {
    pub app: String,
    /// `host/repo@sha256:...`: machines always get a digest reference.
    pub image: String,
    pub strategy: Strategy,
    pub max_unavailable: MaxUnavailable,
    pub wait_timeout: Duration,
    /// How long a machine without health checks is watched for a crash loop after it starts.
    pub smoke_window: Duration,
    /// How long to wait, at least, for a healthy machine's app to listen on its tcp services'
    /// ports before warning that fly-proxy cannot reach it (`listen`).
    pub listen_window: Duration,
    /// Where the app answers on the web (fly.toml's services), said after a deploy.
    pub url: Option<String>,
    /// How long to wait for a lease someone else holds.
    pub lease_wait: Duration,
    pub lease_ttl: Duration,
    pub release_command: Option<ReleaseCommand>,
    /// fly.toml's machine checks, when it has any.
    pub machine_checks: Option<machine_checks::MachineChecks>,
    /// fly.toml `[env]` when there is a fly.toml.
    pub env: Option<BTreeMap<String, String>>,
    /// `--env NAME=VALUE` flags, set over `env` or the machine's own.
    pub env_flags: BTreeMap<String, String>,
    pub primary_region: Option<String>,
    /// fly.toml's top-level `host_dedication_id`: a machine on another host dedication is
    /// replaced, as flyctl does.
    pub host_dedication_id: Option<String>,
    pub rollback: bool,
    /// fly.toml as JSON, for the release record.
    pub definition: Value,
    pub dry_run: bool,
    /// Destroy the machines of process groups gone from fly.toml (asked on a terminal).
    pub destroy_removed_groups: bool,
    /// Replace machines whose volume fly.toml no longer mounts (asked on a terminal).
    pub detach_volumes: bool,
    /// Roll out even when nothing would change.
    pub force: bool,
    /// Bluegreen: pause before cordoning the blues, and again before stopping them.
    pub bluegreen_wait: Duration,
}

/// Run the rollout. `app` is the app as already read, if it was; `platform` is None with
/// `--skip-release`.
pub async fn run(
    spec: RolloutSpec,
    api: MachinesApi,
    app: Option<crate::fly::types::App>,
    platform: Option<PlatformApi>,
    reporter: Reporter,
    fly_toml: Option<AppConfig>,
) -> anyhow::Result<()> {
    let app = match app {
        Some(app) => app,
        None => api.get_app().await.map_err(|source| RolloutError::AppApi {
            action: "reading the app",
            app: spec.app.clone(),
            source: source.into(),
        })?,
    };
    let machines = api.list_machines().await.map_err(|source| RolloutError::AppApi {
        action: "listing the machines",
        app: spec.app.clone(),
        source: source.into(),
    })?;
    let default_group = fly_toml.as_ref().map_or_else(
        || crate::fly::types::DEFAULT_GROUP.to_string(),
        crate::fly::appconfig::AppConfig::default_group,
    );
    let mut fleet = Fleet::classify_with_default(machines, &default_group);
    // flyctl's test: an app never deployed; the machine count guards against a status it
    // does not know. An app whose machines are all outside Fly Launch (`fly machine run`)
    // counts as never deployed too: flyctl warns and deploys it as a first deploy
    // (`internal/command/deploy/machines.go`, `setMachinesForDeployment`), new machines,
    // volumes and addresses included; the others are left as they are.
    let unmanaged_only = fleet.machine_count() == 0 && !fleet.unmanaged.is_empty();
    let first_deploy = unmanaged_only
        || (!matches!(app.status.as_deref(), Some("deployed" | "suspended")) && fleet.machine_count() == 0);
    if let (true, Some(config)) = (unmanaged_only, &fly_toml) {
        // flyctl refuses bluegreen here when those machines belong to fly.toml's groups: they
        // would go on serving beside the new ones (`validateNoDetachedBluegreenMachines`).
        let groups = config.process_groups();
        let detached: Vec<String> = fleet
            .unmanaged
            .iter()
            .filter(|(_, group)| groups.contains(group))
            .map(|(id, group)| format!("{id} ({group})"))
            .collect();
        if spec.strategy == Strategy::Bluegreen && !detached.is_empty() {
            anyhow::bail!(
                "a bluegreen deploy cannot go on safely: machines outside Fly Launch belong to \
                 fly.toml's process groups: {}; to have deploys manage them, give them \
                 fly_platform_version=v2 and fly_process_group metadata (`fly machine update \
                 --metadata`), else destroy or move them before using bluegreen",
                detached.join(", ")
            );
        }
        let ids: Vec<&str> = fleet.unmanaged.iter().map(|(id, _)| id.as_str()).collect();
        reporter.warn(format!(
            "app {} has no Fly Launch machines ({} {} not, lacking fly_platform_version v2 \
             metadata), so this deploy creates new ones as a first deploy does, as `fly deploy` \
             does; the others are left as they are",
            spec.app,
            ids.join(", "),
            if ids.len() == 1 { "is" } else { "are" }
        ));
    }
    let (mut groups, fly_toml_configs) = match &fly_toml {
        Some(config) => GroupChanges::new(
            config,
            &mut fleet,
            &spec,
            first_deploy,
            |removed| spec.destroy_removed_groups || spec.dry_run || groups::confirm_removal(removed),
            |detached| spec.detach_volumes || spec.dry_run || groups::confirm_detach(detached),
        )?,
        None => Default::default(),
    };
    groups.org_slug = app
        .organization
        .as_ref()
        .map(|o| o.slug.clone())
        .unwrap_or_default();
    let change = ConfigChange {
        image: spec.image.clone(),
        env: spec.env.clone(),
        env_flags: spec.env_flags.clone(),
        release_id: None,
        release_version: None,
        fly_toml: fly_toml_configs,
        host_dedication_id: spec.host_dedication_id.clone(),
        postgres: app.is_postgres(),
    };
    validate(&spec, &fleet, &groups, &change, fly_toml.as_ref())?;
    // flyctl makes no canary on a first deploy (`deployMachinesApp`).
    let canaries = if spec.strategy == Strategy::Canary && !first_deploy {
        canary::plan(fly_toml.as_ref(), &fleet, spec.primary_region.as_ref())?
    } else {
        Vec::new()
    };
    if !spec.force && nothing_to_deploy(&spec, &fleet, &groups, &change) {
        let line = format!(
            "nothing to deploy: the {} machine(s) of app {} already run {} with this config; no \
             machine was touched and no release created (--force rolls them anyway, which also \
             applies secrets staged with `fly secrets set --stage`)",
            fleet.machine_count(),
            spec.app,
            // The digest is what they run; the tag of this push is not one they carry.
            without_tag(&spec.image)
        );
        if spec.dry_run && !reporter.is_json() {
            reporter.result(&line);
        } else {
            reporter.info(line);
        }
        return Ok(());
    }
    if !first_deploy {
        groups.check_volumes_exist(&api).await?;
    }
    let mut preview = describe(&spec, &fleet, &change, platform.is_some());
    preview.extend(canary::describe(&canaries));
    preview.extend(groups.describe(&fleet, &change));
    if spec.dry_run {
        for line in preview {
            // The preview is the command's result: stdout, or info events in JSON mode.
            if reporter.is_json() {
                reporter.info(line);
            } else {
                reporter.result(&line);
            }
        }
        return Ok(());
    }
    for line in preview {
        reporter.info(line);
    }

    // Before the release exists, so that no signal can end the process between here and the
    // release being marked and every lease released.
    let mut signals = crate::signals::Signals::install(&reporter)?;
    let release = match &platform {
        Some(platform) => start_release(platform, &spec, &fleet, &reporter).await?,
        None => None,
    };
    let change = ConfigChange {
        release_id: release.as_ref().map(|r| r.id.clone()),
        release_version: release.as_ref().map(Release::version_string),
        ..change
    };
    let leases = Leases::new(api.clone(), spec.lease_ttl);
    let ctx = Ctx::new(api, reporter.clone(), spec, change, leases).with_platform(platform.clone());
    let outcome = tokio::select! {
        result = deploy(&ctx, &fleet, &groups, &canaries) => Ok(result),
        signal = signals.recv() => Err(signal),
    };
    let cleanup = finish(
        &ctx,
        &fleet,
        &groups,
        platform.as_ref(),
        release.as_ref(),
        outcome,
    );
    tokio::pin!(cleanup);
    // A second Ctrl-C must not look ignored: say what is still being done.
    loop {
        tokio::select! {
            result = &mut cleanup => return result,
            signal = signals.recv() => ctx.reporter.warn(format!(
                "{signal}: still cleaning up (rolling back, releasing leases, marking the release); \
                 nixfly exits as soon as that is done"
            )),
        }
    }
}

/// Refuse what cannot work before creating anything.
fn validate(
    spec: &RolloutSpec,
    fleet: &Fleet,
    groups: &GroupChanges,
    change: &ConfigChange,
    fly_toml: Option<&AppConfig>,
) -> Result<(), anyhow::Error> {
    if fleet.machine_count() == 0 && groups.launches.is_empty() {
        anyhow::bail!(
            "app {} has no machines to deploy to; with a fly.toml (--config) nixfly creates them",
            spec.app
        );
    }
    if let Some((machine, volume, reason)) =
        stuck_with_volume(fleet.machines(), change, spec.host_dedication_id.as_deref())
    {
        return Err(RolloutError::HostUnavailableWithVolume {
            machine: machine.id.clone(),
            volume: volume.to_string(),
            reason,
        }
        .into());
    }
    if fly_toml.is_none()
        && let Some(machine) = fleet.partial_config_machine()
    {
        anyhow::bail!(
            "machine {} is on a host that is {}, so Fly shows only part of its config, and no \
             other machine of process group {} has the whole config to make its replacement \
             from; deploy with the app's fly.toml (--config), which gives the whole config",
            machine.id,
            machine.host_status.as_deref().unwrap_or("unknown"),
            machine.process_group()
        );
    }
    // flyctl builds multi-container machines from fly.toml's machine_config (refused when
    // fly.toml is read); a machine that runs containers would not run the image set on it.
    if let Some(machine) = fleet
        .machines()
        .find(|m| m.config["containers"].as_array().is_some_and(|c| !c.is_empty()))
    {
        anyhow::bail!(
            "machine {} runs {} containers, and nixfly deploys an image as a machine's only \
             container, so the deploy would not change what the machine runs; deploy this app \
             with `fly deploy`",
            machine.id,
            machine.config["containers"].as_array().map_or(0, Vec::len)
        );
    }
    // flyctl (strategy_bluegreen.go) refuses only when there are blues and no machine at all
    // has a check (`totalMachinesWithChecks == 0 && len(bg.blueMachines) != 0`); the checks
    // that count are the ones the machines will have (fly.toml's when there is one). An app
    // without machines has no blues: its first machines are created and checked as any.
    if spec.strategy == Strategy::Bluegreen
        && fleet.machine_count() > 0
        && fleet
            .machines()
            .all(|m| config_check_count(&change.apply(&m.config)) == 0)
    {
        return Err(RolloutError::BluegreenWithoutChecks.into());
    }
    if spec.strategy == Strategy::Canary {
        // flyctl refuses canary with [[mounts]] (appconfig/validation.go): a canary would need
        // a volume of its own. fly.toml's [[mounts]] are refused when it is read; this catches
        // --strategy canary and machines that already mount volumes.
        let mounted = fleet
            .machines()
            .find(|m| m.config["mounts"].as_array().is_some_and(|a| !a.is_empty()));
        if let Some(machine) = mounted {
            anyhow::bail!(
                "the canary strategy does not work with volumes, and machine {} mounts one: \
                 use --strategy rolling (or immediate)",
                machine.id
            );
        }
        if fly_toml.is_some_and(|c| !c.mounts.is_empty()) {
            anyhow::bail!(
                "the canary strategy does not work with volumes, and fly.toml has [[mounts]]: \
                 use --strategy rolling (or immediate)"
            );
        }
    }
    if spec.strategy == Strategy::Bluegreen {
        // A green is created next to its blue with the blue's config (flyctl
        // `strategy_bluegreen.go`, from `launchInputForUpdate`), mounts and all, and a volume
        // mounts on one machine only: Fly refuses the green's create. Refused here instead,
        // before anything changes.
        if let Some((machine, volume)) = fleet.machines().find_map(|m| m.volume().map(|v| (m, v))) {
            anyhow::bail!(
                "the bluegreen strategy does not work with volumes: machine {} mounts volume {volume}, \
                 and its green machine would need that volume while the blue one still has it; use \
                 --strategy rolling (or immediate)",
                machine.id
            );
        }
    }
    Ok(())
}

/// A machine that must leave its host (unreachable, or not on fly.toml's host dedication:
/// `update::replacement`'s `Replacement::Host`) but keeps the volume that ties it there cannot
/// be moved, and flyctl stops before any change (`machines_launchinput.go`,
/// `launchInputForUpdate`, which fails while building every machine's input); so does nixfly,
/// instead of finding it at the machine's turn, after others were replaced. One whose
/// `[[mounts]]` fly.toml dropped or changed is replaced for its volume (`Replacement::Volume`).
fn stuck_with_volume<'a>(
    mut machines: impl Iterator<Item = &'a Machine>,
    change: &ConfigChange,
    host_dedication_id: Option<&str>,
) -> Option<(&'a Machine, &'a str, String)> {
    machines.find_map(
        |m| match update::replacement(m, &change.apply(&m.config), host_dedication_id)? {
            update::Replacement::Host(why) => Some((m, m.volume()?, why)),
            update::Replacement::Volume(_) => None,
        },
    )
}

/// `host/repo@digest` for `host/repo:tag@digest` (a reference without a digest is kept).
fn without_tag(image: &str) -> String {
    PinnedReference::parse(image).map_or_else(|_| image.to_string(), |pinned| pinned.to_string())
}

/// Every machine already runs the image's digest with the config this deploy would give it,
/// and no group is added or removed: there is nothing to do.
fn nothing_to_deploy(
    spec: &RolloutSpec,
    fleet: &Fleet,
    groups: &GroupChanges,
    change: &ConfigChange,
) -> bool {
    let digest = |image: &str| image.rsplit_once('@').map(|(_, d)| d.to_string());
    let wanted = digest(&spec.image);
    groups.launches.is_empty()
        && groups.removed.is_empty()
        && fleet.machine_count() > 0
        && wanted.is_some()
        && fleet.machines().all(|machine| {
            let mut current = machine.config.clone();
            crate::fly::types::normalize_config_for_request(&mut current);
            let mut new = change.apply(&machine.config);
            // The reference may name the digest differently (another tag, another registry
            // host alias); the digest is what runs.
            new["image"] = current["image"].clone();
            // A failed machine is started again by an update, and one that must leave its host
            // (unreachable, or on another host dedication: flyctl's `launchInputForUpdate`
            // replaces it) is replaced: that is something to do.
            machine.state != "failed"
                && update::replacement(machine, &new, spec.host_dedication_id.as_deref()).is_none()
                && digest(machine.image()) == wanted
                && new == current
        })
}

/// The preview as lines: what `--dry-run` prints and what a real run announces first.
fn describe(spec: &RolloutSpec, fleet: &Fleet, change: &ConfigChange, release: bool) -> Vec<String> {
    let mut lines = vec![format!(
        "deploy {} to app {} ({}, {} machines{})",
        spec.image,
        spec.app,
        spec.strategy.as_str(),
        fleet.machine_count(),
        match spec.strategy {
            Strategy::Rolling | Strategy::Canary => format!(
                ", max_unavailable {}",
                match spec.max_unavailable {
                    MaxUnavailable::Count(n) => n.to_string(),
                    MaxUnavailable::Fraction(f) => f.to_string(),
                }
            ),
            _ => String::new(),
        }
    )];
    lines.push(if release {
        format!(
            "release: a new {} release record, marked running, then complete or failed",
            spec.strategy.as_str().to_ascii_uppercase()
        )
    } else {
        "release: none (--skip-release)".to_string()
    });
    if let Some(rc) = &spec.release_command {
        lines.push(format!(
            "release_command: `{}` on a temporary machine{} (timeout {}s), before any app machine changes",
            rc.command,
            spec.primary_region
                .as_deref()
                .map(|r| format!(" in {r}"))
                .unwrap_or_default(),
            rc.timeout.as_secs()
        ));
    }
    if let Some(checks) = &spec.machine_checks {
        match spec.strategy {
            // flyctl: immediate skips every check (`skipHealthChecks`); bluegreen has a TODO
            // where they would run (`machines_deploymachinesapp.go`).
            Strategy::Immediate | Strategy::Bluegreen => lines.push(format!(
                "machine checks: not run with the {} strategy, as `fly deploy` does not run them with it",
                spec.strategy.as_str()
            )),
            Strategy::Rolling | Strategy::Canary => {
                lines.extend(checks.describe(fleet.groups.keys().cloned()));
            }
        }
    }
    for leftover in &fleet.leftover_release_machines {
        lines.push(format!(
            "release_command machine {} from an earlier deploy: destroyed first",
            leftover.id
        ));
    }
    for (id, why) in &fleet.ignored {
        lines.push(format!("machine {id}: left alone ({why})"));
    }
    let leftovers: Vec<&str> = match spec.strategy {
        Strategy::Bluegreen => bluegreen::split_leftovers(fleet)
            .0
            .into_iter()
            .map(|m| m.id.as_str())
            .collect(),
        _ => Vec::new(),
    };
    for leftover in &leftovers {
        lines.push(format!(
            "machine {leftover}: left over from an interrupted bluegreen deploy: destroyed first"
        ));
    }
    for (group, machines) in &fleet.groups {
        let machines: Vec<Machine> = machines
            .iter()
            .filter(|m| !leftovers.contains(&m.id.as_str()))
            .cloned()
            .collect();
        let from = machines.first().map_or("", |m| m.image());
        lines.push(format!(
            "process group {group} ({} machines): {from} -> {}",
            machines.len(),
            spec.image
        ));
        let what = if spec.strategy == Strategy::Bluegreen {
            "a green machine beside each of"
        } else {
            "update"
        };
        let (running, stopped) = waves::waves(spec.strategy, &machines, spec.max_unavailable);
        for (i, wave) in running.iter().enumerate() {
            let ids: Vec<&str> = wave.iter().map(|m| m.id.as_str()).collect();
            lines.push(format!("  wave {}: {what} {}", i + 1, ids.join(" ")));
        }
        for (i, wave) in stopped.iter().enumerate() {
            let ids: Vec<&str> = wave.iter().map(|m| m.id.as_str()).collect();
            lines.push(format!(
                "  stopped wave {} (beside the waves above): update {}",
                i + 1,
                ids.join(" ")
            ));
        }
        for machine in &machines {
            let mut notes = Vec::new();
            if machine.image() != from {
                notes.push(format!("from {}", machine.image()));
            }
            if machine.should_skip_launch() {
                notes.push("stays stopped (skip_launch)".to_string());
            }
            if machine.host_unavailable() {
                notes.push("its host is not ok: replaced by a new machine".to_string());
            }
            let env = change.env_diff(&machine.config);
            if !env.is_empty() {
                notes.push(format!("env {}", env.join(" ")));
            }
            lines.push(format!(
                "  {} ({}, {}){}",
                machine.id,
                machine.region.as_deref().unwrap_or("-"),
                machine.state,
                if notes.is_empty() {
                    String::new()
                } else {
                    format!(": {}", notes.join("; "))
                }
            ));
        }
    }
    lines
}

/// Create the release record and mark it running. Its `definition` is fly.toml, else the
/// config rebuilt from the machines as flyctl does (the platform refuses a release without
/// one); with neither there is no record, and a warning says so.
async fn start_release(
    platform: &PlatformApi,
    spec: &RolloutSpec,
    fleet: &Fleet,
    reporter: &Reporter,
) -> anyhow::Result<Option<Release>> {
    use anyhow::Context as _;
    let definition = if spec.definition.is_object() {
        spec.definition.clone()
    } else {
        let machines: Vec<&crate::fly::types::Machine> = fleet.machines().collect();
        match crate::fly::appconfig::from_machines::definition_from_machines(&spec.app, &machines) {
            Some(definition) => definition,
            None => {
                reporter.warn(format!(
                    "app {} has no fly.toml and no machine to rebuild its config from: no release \
                     record is made for this deploy (pass --config fly.toml to get one)",
                    spec.app
                ));
                return Ok(None);
            }
        }
    };
    let release = platform
        .create_release(NewRelease {
            app: &spec.app,
            image: &spec.image,
            strategy: spec.strategy.as_str(),
            definition,
        })
        .await
        .with_context(|| {
            format!(
                "creating the release record for app {} (no machine was changed; use \
                 --skip-release if this setup has no platform API)",
                spec.app
            )
        })?;
    platform
        .set_status(&release.id, ReleaseStatus::Running, None)
        .await
        .with_context(|| format!("marking release {} running (no machine was changed)", release.id))?;
    Ok(Some(release))
}

/// release_command, leases, the canaries, machines for new process groups, then the strategy over the
/// existing groups, and last the machines of groups gone from fly.toml.
async fn deploy(
    ctx: &Ctx,
    fleet: &Fleet,
    groups: &GroupChanges,
    canaries: &[canary::CanaryPlan],
) -> Result<(), RolloutError> {
    if let Some(rc) = &ctx.spec.release_command {
        release_command::run(ctx, rc, fleet).await?;
    }
    // No lease on a machine whose host Fly cannot reach: it could not answer, and the deploy
    // only replaces or destroys it, with no nonce (flyctl `internal/machine/lease.go` skips
    // them; `strategy_bluegreen.go` destroys them without one). After a failure the leases
    // still being asked for are waited for, not dropped: a request dropped once sent may have
    // taken its lease on Fly with the answer unread, a lease `release_all` would not know to
    // release. Those not asked for yet are not asked for.
    let failed = std::sync::atomic::AtomicBool::new(false);
    let mut acquiring = futures::stream::iter(fleet.machines().filter(|m| !m.host_unavailable()))
        .map(|machine| {
            let failed = &failed;
            async move {
                if failed.load(std::sync::atomic::Ordering::Relaxed) {
                    return Ok(());
                }
                let group = machine.process_group();
                ctx.status(&machine.id, group, "waiting for lease");
                let leased = ctx
                    .leases
                    .acquire(&machine.id, group, ctx.spec.lease_wait, &ctx.reporter)
                    .await?;
                // Every plan of this deploy was made from the machines as listed. One updated
                // since (typically by the deploy whose lease this one waited for) would be
                // updated, or rolled back, from a config that is no longer its own: stop before
                // any change, as flyctl's lease helper reads such a machine again
                // (`internal/machine/lease.go`, `InstanceID == lease.Data.Version`).
                match (&machine.instance_id, leased) {
                    (Some(listed), Some(leased)) if !listed.is_empty() && *listed != leased => {
                        Err(RolloutError::ChangedBeforeLease {
                            machine: machine.id.clone(),
                            listed: listed.clone(),
                            leased,
                        })
                    }
                    _ => Ok(()),
                }
            }
        })
        .buffer_unordered(LEASE_CONCURRENCY);
    let mut first_failure = None;
    while let Some(result) = acquiring.next().await {
        if let Err(err) = result {
            failed.store(true, std::sync::atomic::Ordering::Relaxed);
            first_failure.get_or_insert(err);
        }
    }
    drop(acquiring);
    if let Some(err) = first_failure {
        return Err(err);
    }
    ctx.leases.start_refreshing(ctx.reporter.clone());
    // Leases first (unlike flyctl, which takes them after its canaries): a deploy that another
    // one holds back stops before it creates anything.
    canary::run_all(ctx, canaries).await?;
    groups.create(ctx).await?;
    match ctx.spec.strategy {
        Strategy::Immediate => immediate::run(ctx, fleet.machines()).await?,
        Strategy::Bluegreen => bluegreen::run(ctx, fleet).await?,
        // Groups roll side by side, as in flyctl; the first failing group stops the others.
        Strategy::Rolling | Strategy::Canary => {
            let mut rolling = futures::stream::iter(&fleet.groups)
                .map(|(_, machines)| rolling::run(ctx, machines))
                .buffer_unordered(waves::GROUP_CONCURRENCY);
            while let Some(result) = rolling.next().await {
                result?;
            }
        }
    }
    groups.destroy_removed(ctx).await
}

/// Put every machine this deploy changed back to its previous config, all of them even if some
/// fail. Returns how many were restored and the failures.
///
/// Paced as the deploy was: a rolling or canary deploy keeps at most `max_unavailable` of a
/// group's serving machines down at once (flyctl's pools, `machines_deploymachinesapp.go`,
/// `getPoolSize`), so the rollback restarts them in that many at a time, the last changed (the
/// one that failed) first; machines that were not running take nothing down and go together.
async fn rollback(ctx: &Ctx, fleet: &Fleet) -> (usize, Vec<RolloutError>) {
    let journal = ctx.journal();
    ctx.reporter.warn(format!(
        "rolling back {} machine(s) to their previous config",
        journal.len()
    ));
    let paced = matches!(ctx.spec.strategy, Strategy::Rolling | Strategy::Canary);
    let mut by_group: BTreeMap<&str, (Vec<&Machine>, Vec<&Machine>)> = BTreeMap::new();
    for previous in journal.iter().rev() {
        let (serving, idle) = by_group.entry(previous.process_group()).or_default();
        if paced && previous.state == "started" {
            serving.push(previous);
        } else {
            idle.push(previous);
        }
    }
    let groups = by_group.into_iter().map(|(group, (serving, idle))| {
        let size = fleet.groups.get(group).map_or(serving.len(), Vec::len);
        let pool = ctx
            .spec
            .max_unavailable
            .pool_size(size)
            .clamp(1, ROLLBACK_CONCURRENCY);
        let serving = futures::stream::iter(serving)
            .map(|previous| ctx.restore_machine(previous))
            .buffer_unordered(pool)
            .collect::<Vec<_>>();
        let idle = futures::stream::iter(idle)
            .map(|previous| ctx.restore_machine(previous))
            .buffer_unordered(ROLLBACK_CONCURRENCY)
            .collect::<Vec<_>>();
        async move {
            let (mut serving, idle) = futures::join!(serving, idle);
            serving.extend(idle);
            serving
        }
    });
    let results: Vec<Result<(), RolloutError>> = futures::future::join_all(groups)
        .await
        .into_iter()
        .flatten()
        .collect();
    let restored = results.iter().filter(|r| r.is_ok()).count();
    (restored, results.into_iter().filter_map(Result::err).collect())
}

async fn finish(
    ctx: &Ctx,
    fleet: &Fleet,
    groups: &GroupChanges,
    platform: Option<&PlatformApi>,
    release: Option<&Release>,
    outcome: Result<Result<(), RolloutError>, &'static str>,
) -> anyhow::Result<()> {
    let app = &ctx.spec.app;
    let release_name = release.map_or_else(String::new, |r| format!(" (release v{})", r.version_string()));
    let mut removed = None;
    // Before anything is rolled back or reported: the creates and destroys the deploy stopped
    // waiting for are read to their answers (`Ctx::in_flight`).
    ctx.settle_in_flight().await;
    let mut settled = None;
    let (status, result) = match outcome {
        Ok(Ok(())) => {
            ctx.reporter.info(format!(
                "deployed {} to {} machine(s) of app {app}{release_name}",
                ctx.spec.image,
                fleet.machine_count() + groups.created_count()
            ));
            if let Some(url) = &ctx.spec.url {
                ctx.reporter
                    .info(format!("visit your newly deployed app at {url}"));
            }
            (ReleaseStatus::Complete, Ok(()))
        }
        // The message waits for the cleanup below: it says what that did and did not do.
        Err(signal) => {
            // Canaries, greens that took no traffic and the release_command machine were only
            // there for the deploy (flyctl destroys its greens on Ctrl-C too).
            settled = ctx.settle_unclaimed(false).await;
            removed = ctx.remove_temporaries().await;
            (ReleaseStatus::Interrupted, Err(Err(signal)))
        }
        Ok(Err(err)) => {
            // A machine whose update was refused before it changed leaves the journal: when
            // nothing is left there and nothing was created, nothing changed.
            let unchanged = ctx.journal().is_empty() && groups.created_count() == 0;
            // Destroyed when the deploy rolls back, or when they would be all it changed.
            settled = ctx.settle_unclaimed(ctx.spec.rollback || unchanged).await;
            let (code, summary) = if !ctx.is_changing() || unchanged {
                groups.warn_kept_volumes(ctx, &[]);
                (
                    EXIT_FAILURE,
                    format!("deploy of app {app} failed before any machine changed"),
                )
            } else if !ctx.spec.rollback {
                (
                    EXIT_ROLLED_BACK,
                    format!(
                        "deploy of app {app} failed part-way and was not rolled back (--no-rollback); \
                         machines given the new image: {}",
                        ctx.journal()
                            .into_iter()
                            .map(|m| m.id)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            } else {
                let (restored, mut failures) = rollback(ctx, fleet).await;
                let (destroyed, destroy_failures, undestroyed) = groups.destroy_created(ctx).await;
                failures.extend(destroy_failures);
                for failure in &failures {
                    ctx.reporter.warn(chain_text(failure));
                }
                groups.warn_kept_volumes(ctx, &undestroyed);
                let summary = if failures.is_empty() {
                    format!(
                        "deploy of app {app} failed; rolled back {restored} machine(s) to their previous image{}",
                        if destroyed > 0 {
                            format!(" and destroyed the {destroyed} machine(s) it had created")
                        } else {
                            String::new()
                        }
                    )
                } else {
                    format!(
                        "deploy of app {app} failed and {} of {} machine(s) could not be rolled back (see the warnings above)",
                        failures.len(),
                        restored + destroyed + failures.len()
                    )
                };
                (EXIT_ROLLED_BACK, summary)
            };
            // A canary or green whose destroy failed on the way out: tried once more, and named.
            let summary = match ctx.remove_temporaries().await {
                Some(left) => format!("{summary}; {left}"),
                None => summary,
            };
            let summary = match &settled {
                Some(settled) => format!("{summary}; {settled}"),
                None => summary,
            };
            (
                ReleaseStatus::Failed,
                Err(Ok(anyhow::Error::from(err).context(ExitCodeError {
                    code,
                    message: summary,
                }))),
            )
        }
    };
    let unreleased = ctx.leases.release_all(&ctx.reporter).await;
    // What the release records as its error: the failure, as the command reports it.
    let error = match &result {
        Err(Ok(err)) => Some(format!("{err:#}")),
        _ => None,
    };
    let marked = match (platform, release) {
        (Some(platform), Some(release)) => {
            match platform.set_status(&release.id, status, error.as_deref()).await {
                Ok(()) => Some(true),
                Err(err) => {
                    ctx.reporter.warn(format!(
                        "cannot mark release {} {}: {}",
                        release.id,
                        status.as_str(),
                        chain_text(&err)
                    ));
                    Some(false)
                }
            }
        }
        _ => None,
    };
    match result {
        Ok(()) => Ok(()),
        Err(Ok(err)) => Err(err),
        Err(Err(signal)) => {
            let leases = if unreleased.is_empty() {
                "leases released".to_string()
            } else {
                format!(
                    "the leases on {} could not be released (they expire in {}s)",
                    unreleased.join(", "),
                    ctx.spec.lease_ttl.as_secs()
                )
            };
            let release = match (marked, release) {
                (Some(true), Some(release)) => {
                    format!("release v{} marked interrupted", release.version_string())
                }
                (Some(false), Some(release)) => format!(
                    "release v{} could not be marked interrupted and still shows running",
                    release.version_string()
                ),
                _ => "no release record".to_string(),
            };
            let mut updated: Vec<String> = ctx.journal().into_iter().map(|m| m.id).collect();
            updated.extend(groups.created_ids());
            let lost = ctx.lost();
            updated.retain(|id| !lost.contains(id));
            let mut machines = if updated.is_empty() && lost.is_empty() {
                "no machine had been changed".to_string()
            } else if updated.is_empty() {
                String::new()
            } else {
                format!(
                    "machines already given the new image keep it: {}",
                    updated.join(", ")
                )
            };
            if !lost.is_empty() {
                if !machines.is_empty() {
                    machines.push_str("; ");
                }
                machines.push_str(&format!(
                    "destroyed to be replaced and not replaced yet: {} (deploy again to create them)",
                    lost.join(", ")
                ));
            }
            for also in removed.iter().chain(&settled) {
                machines.push_str("; ");
                machines.push_str(also);
            }
            Err(anyhow::Error::from(ExitCodeError {
                code: EXIT_INTERRUPTED,
                message: format!(
                    "deploy of app {app} interrupted by {signal}; {leases}; {release}; {machines}"
                ),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::without_tag;

    #[test]
    fn the_tag_is_dropped_from_a_digest_reference_only() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            without_tag(&format!("127.0.0.1:5000/demo:deployment-01@{digest}")),
            format!("127.0.0.1:5000/demo@{digest}")
        );
        assert_eq!(
            without_tag(&format!("127.0.0.1:5000/demo@{digest}")),
            format!("127.0.0.1:5000/demo@{digest}")
        );
        assert_eq!(without_tag("registry.fly.io/app:v1"), "registry.fly.io/app:v1");
    }
}
