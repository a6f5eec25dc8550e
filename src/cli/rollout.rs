//! `nixfly rollout`: options, and turning flags + environment + fly.toml into one validated
//! `RolloutSpec` before any network call. Flags win over fly.toml, fly.toml over defaults.

use super::AppOptions;
use crate::fly::api::{DEFAULT_MACHINES_URL, DEFAULT_PLATFORM_URL, FlyHttp, MachinesApi};
use crate::fly::appconfig::{self, AppConfig, MaxUnavailable, Strategy};
use crate::fly::platform::PlatformApi;
use crate::progress::Reporter;
use crate::registry::reference::PinnedReference;
use crate::rollout::{ReleaseCommand, RolloutSpec};
use anyhow::Context as _;
use clap::Args;
use std::time::Duration;

const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_RELEASE_COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_MAX_UNAVAILABLE: MaxUnavailable = MaxUnavailable::Fraction(0.33);
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(13);

#[derive(Args, Debug)]
pub struct RolloutArgs {
    /// The image to deploy, already in a registry: host/repo@sha256:... or host/repo:tag (looked
    /// up in the registry). Default: [build] image in fly.toml. Machines always get the digest.
    #[arg(long)]
    pub image: Option<String>,
    #[command(flatten)]
    pub app: AppOptions,
    #[command(flatten)]
    pub options: RolloutOptions,
}

/// Options shared by `rollout` and `deploy`.
#[derive(Args, Debug, Clone, Default)]
pub struct RolloutOptions {
    /// Print what the deploy would do (release, release_command, machines, waves, images) and
    /// change nothing.
    #[arg(long)]
    pub plan: bool,
    /// rolling, immediate, canary or bluegreen. Default: [deploy] strategy, else rolling.
    #[arg(long, value_parser = parse_strategy)]
    pub strategy: Option<Strategy>,
    /// Machines of a group updated at once (rolling, canary): a count (2) or a fraction of the
    /// group (0.25). Default: [deploy] max_unavailable, else 0.33.
    #[arg(long, value_parser = parse_max_unavailable)]
    pub max_unavailable: Option<MaxUnavailable>,
    /// How long a machine may take to start and pass its checks (e.g. 90s, 5m). Default:
    /// [deploy] wait_timeout, else 5m.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub wait_timeout: Option<Duration>,
    /// How long to watch a machine without health checks for a crash loop once it started.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION", default_value = "10s")]
    pub smoke_check_window: Duration,
    /// How long release_command may run. Default: [deploy] release_command_timeout, else 5m.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub release_command_timeout: Option<Duration>,
    /// How long to wait for a machine lease held by someone else before giving up.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION", default_value = "30s")]
    pub lease_wait: Duration,
    /// Lease time-to-live; leases are refreshed at a third of it while the deploy runs.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION", hide = true)]
    pub lease_ttl: Option<Duration>,
    /// Leave machines as they are when the rollout fails, instead of restoring their previous
    /// config. The exit code is still non-zero.
    #[arg(long)]
    pub no_rollback: bool,
    /// Destroy the machines of process groups no longer in fly.toml's [processes], once the
    /// rest of the deploy is healthy. Asked on a terminal; required elsewhere.
    #[arg(long)]
    pub destroy_removed_groups: bool,
    /// Do not create a release record (for setups without Fly's platform API).
    #[arg(long)]
    pub skip_release: bool,
    /// Machines API base URL.
    #[arg(long, env = "FLY_FLAPS_BASE_URL", default_value = DEFAULT_MACHINES_URL, value_name = "URL")]
    pub api_url: String,
    /// Platform API base URL (release records).
    #[arg(long, env = "FLY_API_BASE_URL", default_value = DEFAULT_PLATFORM_URL, value_name = "URL")]
    pub platform_url: String,
}

pub(crate) fn parse_strategy(text: &str) -> Result<Strategy, String> {
    Strategy::parse(text)
        .ok_or_else(|| format!("unknown strategy {text:?}; use rolling, immediate, canary or bluegreen"))
}

/// flyctl reads one number: ≥ 1 is a count, between 0 and 1 a fraction of the group.
pub(crate) fn parse_max_unavailable(text: &str) -> Result<MaxUnavailable, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number; use a count (2) or a fraction (0.25)"))?;
    if value <= 0.0 || !value.is_finite() {
        Err(format!("{text:?} must be above 0"))
    } else if value < 1.0 {
        Ok(MaxUnavailable::Fraction(value))
    } else if value.fract() == 0.0 && value <= f64::from(u32::MAX) {
        Ok(MaxUnavailable::Count(value as u32))
    } else {
        Err(format!("{text:?}: a count of machines must be a whole number"))
    }
}

/// A Go duration (`90s`, `5m`) as in fly.toml, or plain seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => appconfig::units::parse_go_duration(text),
    }
}

pub async fn run(args: RolloutArgs, reporter: Reporter) -> anyhow::Result<()> {
    rollout_image(&args.app, &args.options, args.image, reporter).await
}

/// Roll `image` (or fly.toml's `[build] image`) out: shared by `rollout` and `deploy`.
pub async fn rollout_image(
    app: &AppOptions,
    options: &RolloutOptions,
    image: Option<String>,
    reporter: Reporter,
) -> anyhow::Result<()> {
    let fly_toml = app.fly_toml(&reporter)?;
    let app_name = app.app_name(fly_toml.as_ref())?;
    let image = image
        .or_else(|| fly_toml.as_ref().and_then(|c| c.build.image.clone()))
        .context("no image to deploy: pass --image host/repo@sha256:... or set [build] image in fly.toml")?;
    // A plan touches no machine, so it may show a tag; a real rollout needs the digest.
    let image = if options.plan {
        image
    } else if image.contains('@') {
        PinnedReference::parse(&image)?.to_string()
    } else {
        resolve_tag(&image, app, &reporter).await?.to_string()
    };
    let spec = spec(&app_name, image, options, fly_toml.as_ref())?;
    let token = app.fly_token()?;
    let machines_http = FlyHttp::new(&options.api_url, token.clone(), reporter.clone())?;
    let api = MachinesApi::new(machines_http, &app_name);
    let platform = if options.skip_release {
        None
    } else {
        Some(PlatformApi::new(FlyHttp::new(
            &options.platform_url,
            token,
            reporter.clone(),
        )?))
    };
    crate::rollout::run(spec, api, platform, reporter, fly_toml)
        .await
        .with_context(|| format!("deploying to Fly app {app_name}"))
}

/// `host/repo:tag` → `host/repo@sha256:...` as the registry has it now, so that the machines
/// (and a rollback) get an immutable reference. The Fly token is the password for the Fly
/// registry; other registries use the Docker/podman auth files.
async fn resolve_tag(image: &str, app: &AppOptions, reporter: &Reporter) -> anyhow::Result<PinnedReference> {
    use crate::registry::auth::CredentialLookup;
    use crate::registry::client::ClientOptions;
    use crate::registry::reference::default_registry_host;
    let reference = crate::registry::Reference::parse(image)
        .with_context(|| format!("--image {image} is not an image reference"))?;
    let tag = reference.tag.as_deref().unwrap_or("latest");
    let fly_host = default_registry_host();
    let fly_token = if reference.registry.eq_ignore_ascii_case(&fly_host) {
        Some(app.fly_token()?)
    } else {
        None
    };
    let lookup = CredentialLookup {
        flag: None,
        auth_files: CredentialLookup::standard_auth_files(),
        fly_credentials: fly_token.map(|token| token.registry_credentials()),
        fly_registry_host: fly_host,
    };
    let options = ClientOptions {
        credentials: lookup.find(&reference.registry)?,
        ..ClientOptions::default()
    };
    let client = crate::registry::RegistryClient::new(&reference.registry, options, reporter.clone())?;
    let manifest = client
        .get_manifest(&reference.repository, tag)
        .await?
        .with_context(|| {
            format!(
                "{}/{} has no tag {tag}: push the image first (`nixfly push`), or pass its digest",
                reference.registry, reference.repository
            )
        })?;
    let pinned = reference.pinned(manifest.digest);
    reporter.info(format!("{image} is {pinned}"));
    Ok(pinned)
}

fn spec(
    app: &str,
    image: String,
    options: &RolloutOptions,
    fly_toml: Option<&AppConfig>,
) -> anyhow::Result<RolloutSpec> {
    let deploy = fly_toml.map(|c| &c.deploy);
    let release_command = deploy
        .and_then(|d| d.release_command.clone())
        .map(|command| ReleaseCommand {
            command,
            timeout: options
                .release_command_timeout
                .or(deploy.and_then(|d| d.release_command_timeout))
                .unwrap_or(DEFAULT_RELEASE_COMMAND_TIMEOUT),
            guest: fly_toml.and_then(|c| c.deploy.release_command_vm.as_ref().map(|vm| c.guest(vm))),
            fly_toml: fly_toml.and_then(|c| c.release_command_config().ok().flatten()),
        });
    Ok(RolloutSpec {
        app: app.to_string(),
        image,
        strategy: options
            .strategy
            .or(deploy.and_then(|d| d.strategy))
            .unwrap_or(Strategy::Rolling),
        max_unavailable: options
            .max_unavailable
            .or(deploy.and_then(|d| d.max_unavailable))
            .unwrap_or(DEFAULT_MAX_UNAVAILABLE),
        wait_timeout: options
            .wait_timeout
            .or(deploy.and_then(|d| d.wait_timeout))
            .unwrap_or(DEFAULT_WAIT_TIMEOUT),
        smoke_window: options.smoke_check_window,
        lease_wait: options.lease_wait,
        lease_ttl: options.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL),
        release_command,
        env: fly_toml.map(|c| c.env.clone()),
        primary_region: fly_toml.and_then(|c| c.primary_region.clone()),
        rollback: !options.no_rollback,
        definition: fly_toml.map_or(serde_json::Value::Null, |c| c.definition.clone()),
        plan_only: options.plan,
        destroy_removed_groups: options.destroy_removed_groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_unavailable_is_a_count_from_one_and_a_fraction_below() {
        assert_eq!(parse_max_unavailable("2"), Ok(MaxUnavailable::Count(2)));
        assert_eq!(parse_max_unavailable("1"), Ok(MaxUnavailable::Count(1)));
        assert_eq!(parse_max_unavailable("0.25"), Ok(MaxUnavailable::Fraction(0.25)));
        for bad in ["0", "-1", "1.5", "x", "NaN"] {
            assert!(parse_max_unavailable(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_are_go_style_or_seconds() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn flags_override_fly_toml_which_overrides_defaults() {
        let toml = r#"
app = "demo"
primary_region = "ams"
[deploy]
strategy = "canary"
max_unavailable = 3
wait_timeout = "2m"
release_command = "bin/migrate --all"
[env]
A = "1"
"#;
        let (config, _) = AppConfig::parse(toml, std::path::Path::new("fly.toml")).unwrap();
        let options = RolloutOptions {
            strategy: Some(Strategy::Immediate),
            lease_wait: Duration::from_secs(30),
            ..RolloutOptions::default()
        };
        let spec = spec("demo", "img@sha256:x".into(), &options, Some(&config)).unwrap();
        assert_eq!(spec.strategy, Strategy::Immediate);
        assert_eq!(spec.max_unavailable, MaxUnavailable::Count(3));
        assert_eq!(spec.wait_timeout, Duration::from_secs(120));
        assert_eq!(spec.release_command.unwrap().command, "bin/migrate --all");
        assert_eq!(spec.env.unwrap().get("A").map(String::as_str), Some("1"));
        assert_eq!(spec.primary_region.as_deref(), Some("ams"));

        let spec = spec_without_toml();
        assert_eq!(spec.strategy, Strategy::Rolling);
        assert_eq!(spec.max_unavailable, DEFAULT_MAX_UNAVAILABLE);
        assert_eq!(spec.wait_timeout, DEFAULT_WAIT_TIMEOUT);
        assert!(spec.env.is_none() && spec.release_command.is_none());
    }

    fn spec_without_toml() -> RolloutSpec {
        spec("demo", "img@sha256:x".into(), &RolloutOptions::default(), None).unwrap()
    }
}
