//! Blue-green, as flyctl's `internal/command/deploy/strategy_bluegreen.go` does it, over the
//! whole fleet at once: a green machine beside every blue one, out of service until all greens
//! are started and healthy; then greens are uncordoned, blues tagged safe to destroy, and after
//! a pause cordoned; after another pause stopped gracefully, waited for, and destroyed. A
//! failure before the greens take traffic destroys them and leaves the blues serving, untouched.
//!
//! Machines left by an earlier bluegreen deploy that was interrupted are found by flyctl's
//! marks and destroyed first: greens that never took traffic (still cordoned, with a tag no
//! serving machine carries), and blues that had already handed traffic over (tagged
//! `safe_to_destroy`).
//!
//! flyctl also refuses an app whose reachable machines run different images
//! (`DetectMultipleImageVersions`), its guard against such leftovers; nixfly, which tells
//! leftovers by those marks, replaces every blue whatever image it runs (README: where nixfly
//! differs on purpose).

use super::error::RolloutError;
use super::health::wait_for_state;
use super::update::{Ctx, Purpose};
use super::waves::Fleet;
use crate::fly::types::{META_BLUEGREEN_TAG, Machine, config_check_count};
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// Greens created (and blues torn down) at once at most; flyctl also creates at most a third
/// of the greens at once, to avoid a resource allocation race on the hosts.
const CONCURRENCY: usize = 8;
/// flyctl's tag on blues whose greens have taken over (`safeToDestroyValue`).
const SAFE_TO_DESTROY: &str = "safe_to_destroy";

/// Machines of the fleet left over from an interrupted bluegreen deploy, and the blues of this
/// one. A group whose machines would all count as leftovers keeps them as blues instead: they
/// are then replaced like any blue.
pub fn split_leftovers(fleet: &Fleet) -> (Vec<&Machine>, Vec<&Machine>) {
    let mut leftovers = Vec::new();
    let mut blues = Vec::new();
    for machines in fleet.groups.values() {
        // Greens are created cordoned (`skip_service_registration`) and all uncordoned once
        // every one is healthy: cordoned machines whose tag no serving machine carries are
        // greens that never took traffic (a machine cordoned by hand keeps its deploy's tag,
        // which the machines still serving beside it carry too).
        let serving: BTreeSet<&str> = machines
            .iter()
            .filter(|m| !m.cordoned)
            .filter_map(|m| m.metadata(META_BLUEGREEN_TAG))
            .collect();
        let is_leftover = |m: &Machine| match m.metadata(META_BLUEGREEN_TAG) {
            Some(SAFE_TO_DESTROY) => true,
            Some(tag) => m.cordoned && !serving.contains(tag),
            None => false,
        };
        let (stale, live): (Vec<&Machine>, Vec<&Machine>) = machines.iter().partition(|m| is_leftover(m));
        if live.is_empty() {
            blues.extend(stale);
        } else {
            leftovers.extend(stale);
            blues.extend(live);
        }
    }
    (leftovers, blues)
}

pub async fn run(ctx: &Ctx, fleet: &Fleet) -> Result<(), RolloutError> {
    let (leftovers, blues) = split_leftovers(fleet);
    for machine in leftovers {
        ctx.mark_changing();
        let group = machine.process_group();
        ctx.destroy(&machine.id, group).await?;
        ctx.done(
            &machine.id,
            group,
            "destroyed (left over from an interrupted bluegreen deploy)",
            true,
        );
    }
    let greens = create_greens(ctx, &blues).await?;
    ctx.mark_changing();
    if let Err(err) = uncordon(ctx, &greens).await {
        destroy_greens(ctx, &greens).await;
        return Err(err);
    }
    // The greens serve now: a signal no longer destroys them (flyctl `strategy_bluegreen.go`
    // clears `canDeleteGreenMachines` once they are marked ready for traffic).
    ctx.keep(&greens);
    cut_over(ctx, &blues).await;
    Ok(())
}

/// Every green, started and healthy (those whose blue was stopped are created stopped, except
/// one per group with checks when all its machines are stopped, so that the new config is
/// health-checked at least once: flyctl's `forceStartRepresentatives`). On failure the greens
/// made so far are destroyed.
async fn create_greens(ctx: &Ctx, blues: &[&Machine]) -> Result<Vec<Machine>, RolloutError> {
    let tag = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .to_string();
    let forced = force_started(ctx, blues);
    let concurrency = blues.len().div_ceil(3).clamp(1, CONCURRENCY);
    let mut created = futures::stream::iter(blues)
        .map(|blue| create_green(ctx, blue, &tag, forced.contains(blue.id.as_str())))
        .buffer_unordered(concurrency);
    let mut greens = Vec::new();
    let mut failure = None;
    while let Some(result) = created.next().await {
        match result {
            Ok(green) => greens.push(green),
            Err((green, err)) => {
                greens.extend(green);
                failure.get_or_insert(err);
            }
        }
    }
    drop(created);
    match failure {
        Some(err) => {
            destroy_greens(ctx, &greens).await;
            Err(err)
        }
        None => Ok(greens),
    }
}

/// Ids of the blues whose greens start although the blue is stopped: the first machine of each
/// group that has checks and no running machine.
fn force_started<'a>(ctx: &Ctx, blues: &[&'a Machine]) -> BTreeSet<&'a str> {
    let entries: Vec<GreenStart<'_>> = blues
        .iter()
        .map(|m| GreenStart {
            group: m.process_group(),
            launches: launches(m),
            has_checks: config_check_count(&ctx.change.apply(&m.config)) > 0,
        })
        .collect();
    representatives(&entries)
        .into_iter()
        .map(|i| blues[i].id.as_str())
        .collect()
}

/// A green starts when its blue runs, a running standby's too (one that took over for its
/// machine): flyctl's greens take `launchInputForUpdate`'s `SkipLaunch`, and `shouldSkipLaunch`
/// launches a `started`, `starting` or `failed` machine before it looks at `standbys`
/// (`machines_launchinput.go`). A stopped standby's green stays a stopped standby.
fn launches(blue: &Machine) -> bool {
    !blue.should_skip_launch()
}

/// What `representatives` needs to know of a blue.
struct GreenStart<'a> {
    group: &'a str,
    /// Its green starts on its own (`launches`).
    launches: bool,
    /// Its new config has checks.
    has_checks: bool,
}

/// flyctl's `forceStartRepresentatives` (`strategy_bluegreen.go`): for each process group
/// with checks where no green would start, the index of its first blue, whose green is
/// started to put the new config to its checks; the other greens mirror their blues.
fn representatives(blues: &[GreenStart<'_>]) -> BTreeSet<usize> {
    let mut groups: Vec<&str> = blues.iter().map(|b| b.group).collect();
    groups.sort_unstable();
    groups.dedup();
    groups
        .into_iter()
        .filter_map(|group| {
            let members = || blues.iter().enumerate().filter(|(_, b)| b.group == group);
            let has_checks = members().any(|(_, b)| b.has_checks);
            let any_starts = members().any(|(_, b)| b.launches);
            let first = members().map(|(i, _)| i).next()?;
            (has_checks && !any_starts).then_some(first)
        })
        .collect()
}

async fn create_green(
    ctx: &Ctx,
    blue: &Machine,
    tag: &str,
    force_start: bool,
) -> Result<Machine, (Option<Machine>, RolloutError)> {
    let group = blue.process_group();
    let mut config = ctx.change.apply(&blue.config);
    config["metadata"][META_BLUEGREEN_TAG] = Value::String(tag.to_string());
    let launch = force_start || launches(blue);
    let mut body = json!({
        "config": config,
        "skip_launch": !launch,
        "skip_service_registration": true,
    });
    if let Some(region) = &blue.region {
        body["region"] = Value::String(region.clone());
    }
    ctx.status(&blue.id, group, "creating green machine");
    ctx.create_and_check(body, group, launch, Purpose::ForTheDeploy, |_| ())
        .await
}

async fn destroy_greens(ctx: &Ctx, greens: &[Machine]) {
    for green in greens {
        let group = green.process_group();
        if let Err(cleanup) = ctx.destroy(&green.id, group).await {
            ctx.reporter.warn(format!("{cleanup:#}"));
        }
        ctx.done(&green.id, group, "green destroyed", false);
    }
}

async fn uncordon(ctx: &Ctx, greens: &[Machine]) -> Result<(), RolloutError> {
    let mut uncordoned = futures::stream::iter(greens)
        .map(|green| async move {
            machine_action(ctx, &green.id, "uncordon").await?;
            ctx.done(&green.id, green.process_group(), "green serving", true);
            Ok::<_, RolloutError>(())
        })
        .buffer_unordered(CONCURRENCY);
    while let Some(result) = uncordoned.next().await {
        result?;
    }
    Ok(())
}

/// The greens serve: tag the blues, then with flyctl's pauses (to let Fly's proxy see the
/// greens, then forget the blues) cordon, stop gracefully, wait for stopped, destroy. Nothing
/// here fails the deploy, as in flyctl: a blue that cannot be cordoned or stopped is still
/// destroyed, and one that cannot be destroyed is named with the command that removes it.
/// A blue whose host Fly cannot reach could not answer a cordon or a stop: it is only
/// destroyed, with force and without a lease (flyctl `strategy_bluegreen.go`,
/// `CordonBlueMachines`, `StopBlueMachines`, `DestroyBlueMachines`: `hostIsOk`).
async fn cut_over(ctx: &Ctx, blues: &[&Machine]) {
    let reachable: Vec<&Machine> = blues.iter().copied().filter(|b| !b.host_unavailable()).collect();
    each_blue(ctx, blues, "tagging", |blue| async move {
        let nonce = ctx.leases.nonce(&blue.id);
        ctx.api
            .set_metadata(&blue.id, META_BLUEGREEN_TAG, SAFE_TO_DESTROY, nonce.as_deref())
            .await
            .map_err(|source| RolloutError::api("tagging", &blue.id, source))
    })
    .await;
    tokio::time::sleep(ctx.spec.bluegreen_wait).await;
    each_blue(ctx, &reachable, "cordoning", |blue| {
        machine_action(ctx, &blue.id, "cordon")
    })
    .await;
    tokio::time::sleep(ctx.spec.bluegreen_wait).await;
    let running: Vec<&Machine> = reachable
        .iter()
        .copied()
        .filter(|b| b.state != "stopped")
        .collect();
    each_blue(ctx, &running, "stopping", |blue| async move {
        ctx.status(&blue.id, blue.process_group(), "stopping");
        machine_action(ctx, &blue.id, "stop").await?;
        wait_for_state(
            &ctx.api,
            &blue.id,
            "stopped",
            blue.instance_id.as_deref(),
            ctx.spec.wait_timeout,
        )
        .await
    })
    .await;
    let hanging = each_blue(ctx, blues, "destroying", |blue| async move {
        ctx.destroy(&blue.id, blue.process_group()).await?;
        ctx.done(&blue.id, blue.process_group(), "blue destroyed", true);
        Ok(())
    })
    .await;
    if !hanging.is_empty() {
        ctx.reporter.warn(format!(
            "{} blue machine(s) could not be destroyed; remove them with `fly machine destroy \
             --force -a {} {}`",
            hanging.len(),
            ctx.spec.app,
            hanging.join(" ")
        ));
    }
}

/// Run `step` on every blue, some at once; a failure is a warning. Returns the ids that failed.
async fn each_blue<'a, F, Fut>(ctx: &Ctx, blues: &[&'a Machine], what: &str, step: F) -> Vec<String>
where
    F: Fn(&'a Machine) -> Fut,
    Fut: Future<Output = Result<(), RolloutError>>,
{
    let mut steps = futures::stream::iter(blues.iter().copied())
        .map(|blue| {
            let run = step(blue);
            async move { (blue, run.await) }
        })
        .buffer_unordered(CONCURRENCY);
    let mut failed = Vec::new();
    while let Some((blue, result)) = steps.next().await {
        if let Err(err) = result {
            ctx.reporter.warn(format!(
                "{what} blue machine {}: {}",
                blue.id,
                super::chain_text(&err)
            ));
            failed.push(blue.id.clone());
        }
    }
    failed
}

async fn machine_action(ctx: &Ctx, machine: &str, action: &'static str) -> Result<(), RolloutError> {
    let nonce = ctx.leases.nonce(machine);
    ctx.api
        .machine_action(machine, action, nonce.as_deref())
        .await
        .map_err(|source| RolloutError::api(action, machine, source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn machine(id: &str, tag: Option<&str>, cordoned: bool) -> Machine {
        let mut metadata = json!({"fly_platform_version": "v2", "fly_process_group": "app"});
        if let Some(tag) = tag {
            metadata[META_BLUEGREEN_TAG] = json!(tag);
        }
        serde_json::from_value(json!({
            "id": id, "state": "started", "cordoned": cordoned,
            "config": {"image": "old", "metadata": metadata}
        }))
        .unwrap()
    }

    fn ids(machines: &[&Machine]) -> Vec<String> {
        machines.iter().map(|m| m.id.clone()).collect()
    }

    #[test]
    fn leftovers_are_unserved_greens_and_blues_tagged_safe_to_destroy() {
        let fleet = Fleet::classify(vec![
            machine("a1", Some("100"), false),
            machine("a2", Some("100"), true),
            machine("a3", Some("200"), true),
            machine("a4", Some("safe_to_destroy"), false),
            machine("a5", None, false),
        ]);
        let (leftovers, blues) = split_leftovers(&fleet);
        // a2 was cordoned by hand: its deploy's tag still serves on a1.
        assert_eq!(ids(&leftovers), ["a3", "a4"]);
        assert_eq!(ids(&blues), ["a1", "a2", "a5"]);
    }

    fn entry(group: &str, stopped: bool, has_checks: bool) -> GreenStart<'_> {
        GreenStart {
            group,
            launches: !stopped,
            has_checks,
        }
    }

    fn forced(blues: &[GreenStart<'_>]) -> Vec<usize> {
        representatives(blues).into_iter().collect()
    }

    /// flyctl `strategy_bluegreen_test.go`, `TestForceStartRepresentatives`, case by case, and
    /// `TestCreateGreenMachinesMirrorsBlueSkipLaunchForNonRepresentatives` (three stopped
    /// blues with checks: exactly one green started).
    #[test]
    fn one_green_per_stopped_group_with_checks_is_started() {
        // A stopped group with checks: its first machine.
        assert_eq!(forced(&[entry("app", true, true)]), [0]);
        // Without checks: none, the green mirrors the stopped blue.
        assert!(forced(&[entry("worker", true, false)]).is_empty());
        // A machine that starts anyway is enough.
        assert!(forced(&[entry("app", true, true), entry("app", false, true)]).is_empty());
        // Several stopped in one group: only the first.
        assert_eq!(
            forced(&[
                entry("app", true, true),
                entry("app", true, true),
                entry("app", true, true)
            ]),
            [0]
        );
        // One per group, each group's first.
        assert_eq!(
            forced(&[
                entry("app", true, true),
                entry("worker", true, true),
                entry("app", true, true),
                entry("worker", true, true),
            ]),
            [0, 1]
        );
        // Only the groups with checks.
        assert_eq!(
            forced(&[entry("app", true, true), entry("worker", true, false)]),
            [0]
        );
    }

    #[test]
    fn a_group_of_leftovers_only_is_kept_as_blues() {
        let fleet = Fleet::classify(vec![
            machine("a1", Some("safe_to_destroy"), false),
            machine("a2", Some("200"), true),
        ]);
        let (leftovers, blues) = split_leftovers(&fleet);
        assert!(leftovers.is_empty());
        assert_eq!(ids(&blues), ["a1", "a2"]);
    }
}
