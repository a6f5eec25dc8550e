//! `nixfly rollout`: options, and turning flags + environment + fly.toml into one
//! `ResolvedRollout` before any network call. Flags win over fly.toml, fly.toml over defaults.

use super::AppOptions;
use super::registry::RegistryOptions;
use crate::fly::FlyToken;
use crate::fly::api::{DEFAULT_MACHINES_URL, DEFAULT_PLATFORM_URL, FlyHttp, MachinesApi};
use crate::fly::appconfig::units::parse_go_duration;
use crate::fly::appconfig::{AppConfig, MaxUnavailable, Strategy};
use crate::fly::platform::PlatformApi;
use crate::progress::Reporter;
use crate::registry::reference::PinnedReference;
use crate::registry::{Reference, RegistryClient};
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
    #[arg(long, help_heading = "Image")]
    pub image: Option<String>,
    #[command(flatten)]
    pub app: AppOptions,
    #[command(flatten)]
    pub options: RolloutOptions,
    /// For the tag lookup of `--image host/repo:tag`.
    #[command(flatten)]
    pub registry: RegistryOptions,
}

/// Options shared by `rollout` and `deploy`.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Rollout")]
pub struct RolloutOptions {
    /// Check everything and print what the deploy would do (release, release_command,
    /// machines, waves, images), changing nothing: no push, no machine touched.
    #[arg(long, alias = "plan")]
    pub dry_run: bool,
    /// Set an environment variable on every machine, over fly.toml's [env] (repeatable), as
    /// `fly deploy -e NAME=VALUE` does. Not for secrets: use `fly secrets set`.
    #[arg(short = 'e', long = "env", value_name = "NAME=VALUE", value_parser = parse_env_flag)]
    pub env: Vec<(String, String)>,
    /// Where new machines, canaries and the release_command machine go, over fly.toml's
    /// primary_region, as `fly deploy --primary-region` does. Default: primary_region in
    /// fly.toml, else Fly places them.
    #[arg(long, value_name = "REGION")]
    pub primary_region: Option<String>,
    /// How machines are replaced, as `fly deploy --strategy`: rolling (max_unavailable of a
    /// group at a time, each started and health-checked before the next); immediate (every
    /// machine at once, no waiting); canary (one extra machine per group first, health-checked
    /// and destroyed, then rolling); bluegreen (a new machine beside every one, traffic moved
    /// once all pass their health checks, then the old ones cordoned, stopped and destroyed;
    /// needs a health check, refused with volumes). The README has the details.
    /// Default: [deploy] strategy, else rolling.
    #[arg(long)]
    pub strategy: Option<Strategy>,
    /// Machines of a group updated at once (rolling, canary): below 1 a fraction of the group
    /// (0.25), from 1 a count (2; a fraction is dropped as flyctl does, 1.5 is 1). Default:
    /// [deploy] max_unavailable, else 0.33.
    #[arg(long)]
    pub max_unavailable: Option<MaxUnavailable>,
    /// How long a machine may take to start, and then again to pass its checks (e.g. 90s, 5m).
    /// Default: [deploy] wait_timeout, else 5m.
    #[arg(long, value_parser = positive_duration, value_name = "DURATION")]
    pub wait_timeout: Option<Duration>,
    /// How long to watch a machine without health checks for a crash loop once it started.
    #[arg(long, value_parser = parse_go_duration, value_name = "DURATION", default_value = "10s")]
    pub smoke_check_window: Duration,
    /// How long to wait for a healthy machine's app to listen on 0.0.0.0 (not only loopback)
    /// on each tcp service's internal_port before warning that fly-proxy cannot reach it; a
    /// longer check grace_period counts instead, as in flyctl.
    #[arg(long, value_parser = parse_go_duration, value_name = "DURATION", default_value = "15s")]
    pub listen_check_window: Duration,
    /// How long release_command may run. Default: [deploy] release_command_timeout, else 5m.
    #[arg(long, value_parser = positive_duration, value_name = "DURATION")]
    pub release_command_timeout: Option<Duration>,
    /// How long to wait for a machine lease held by someone else before giving up.
    #[arg(long, value_parser = parse_go_duration, value_name = "DURATION", default_value = "30s")]
    pub lease_wait: Duration,
    /// Lease time-to-live; leases are refreshed at a third of it while the deploy runs.
    #[arg(long, value_parser = parse_go_duration, value_name = "DURATION", hide = true)]
    pub lease_ttl: Option<Duration>,
    /// Leave machines as they are when the rollout fails, instead of restoring their previous
    /// config. The exit code is still non-zero.
    #[arg(long)]
    pub no_rollback: bool,
    /// Destroy the machines of process groups no longer in fly.toml's [processes], once the
    /// rest of the deploy is healthy. Asked on a terminal; required elsewhere.
    #[arg(long)]
    pub destroy_removed_groups: bool,
    /// Replace the machines whose volume fly.toml no longer mounts ([[mounts]] removed) with
    /// machines without one; the volumes stay, unattached, with their data. Asked on a
    /// terminal; required elsewhere (flyctl asks too, and wants --yes without a terminal).
    #[arg(long)]
    pub detach_volumes: bool,
    /// Roll the machines out even when every one already runs this image with this config.
    #[arg(long)]
    pub force: bool,
    /// Bluegreen: the pause after the greens take traffic before the blues are cordoned, and
    /// again before they are stopped (flyctl's 10 s), for Fly's proxy to catch up.
    #[arg(long, value_parser = parse_go_duration, value_name = "DURATION", default_value = "10s", hide = true)]
    pub bluegreen_cutover_wait: Duration,
    /// Do not create a release record (for setups without Fly's platform API).
    #[arg(long)]
    pub skip_release: bool,
    /// Machines API base URL: change it for the sandbox (`examples/fly_api_double`) or a
    /// proxy; flyctl reads the same FLY_FLAPS_BASE_URL.
    #[arg(long, env = "FLY_FLAPS_BASE_URL", default_value = DEFAULT_MACHINES_URL, value_name = "URL")]
    pub api_url: String,
    /// Platform API base URL: release records, the current release's config and the logs of
    /// failed machines; flyctl reads the same FLY_API_BASE_URL.
    #[arg(long, env = "FLY_API_BASE_URL", default_value = DEFAULT_PLATFORM_URL, value_name = "URL")]
    pub platform_url: String,
}

/// A rollout with everything decided but the image: the app, fly.toml, the merged options
/// and the API clients (made, not yet used). Shared by `rollout` and `deploy`.
pub struct ResolvedRollout {
    pub app: String,
    fly_toml: Option<AppConfig>,
    options: RolloutOptions,
    api: MachinesApi,
    platform: Option<PlatformApi>,
    /// The app as `check_app` read it: the rollout needs no second read.
    checked: std::sync::OnceLock<crate::fly::types::App>,
}

impl ResolvedRollout {
    /// No network: the clients are only built.
    pub fn new(
        app: &str,
        fly_toml: Option<AppConfig>,
        options: &RolloutOptions,
        token: FlyToken,
        reporter: &Reporter,
    ) -> anyhow::Result<Self> {
        let machines_http = FlyHttp::new(&options.api_url, token.clone(), reporter.clone())?;
        let platform = if options.skip_release {
            None
        } else {
            Some(
                PlatformApi::new(FlyHttp::platform(
                    &options.platform_url,
                    token.clone(),
                    reporter.clone(),
                )?)
                .with_logs(FlyHttp::bubblegum(
                    &options.platform_url,
                    token,
                    reporter.clone(),
                )?),
            )
        };
        // The flags change the app config itself, as flyctl's `determineAppConfigForMachines`
        // does: new machines, updates, the release command and the release's definition all
        // see them.
        let fly_toml = fly_toml.map(|mut config| {
            config.override_from_flags(&options.env, options.primary_region.as_deref());
            config
        });
        Ok(ResolvedRollout {
            app: app.to_string(),
            fly_toml,
            options: options.clone(),
            api: MachinesApi::new(machines_http, app)
                .with_min_secrets_version(crate::fly::token::secrets_min_version(app)),
            platform,
            checked: std::sync::OnceLock::new(),
        })
    }

    pub fn dry_run(&self) -> bool {
        self.options.dry_run
    }

    /// The first Fly request: the app exists and the token may use it (Machines API
    /// `GET /v1/apps/{app}`). flaps looks the name up across all of Fly before it checks the
    /// token's access (fly-go `flaps/flaps_apps_test.go`, `TestAppNameAvailable`): 404 means
    /// no app has that name, 403 that one has and this token may not read it, often another
    /// organization's app, as app names are global.
    pub async fn check_app(&self) -> anyhow::Result<()> {
        match self.api.get_app().await {
            Ok(app) => {
                let _ = self.checked.set(app);
                Ok(())
            }
            Err(err) if err.status() == Some(404) => Err(anyhow::Error::new(err).context(format!(
                "Fly app {app} does not exist: check --app (or app in fly.toml), or create it \
                 with `fly apps create {app}`",
                app = self.app
            ))),
            Err(err) if err.status() == Some(403) => Err(anyhow::Error::new(err).context(format!(
                "Fly app {app} exists, but this token may not use it: app names are unique \
                 across all of Fly.io, so it may be another organization's app (check --app, or \
                 app in fly.toml), or the token was made for another app or organization",
                app = self.app
            ))),
            Err(err) => Err(anyhow::Error::new(err).context(format!("checking Fly app {}", self.app))),
        }
    }

    /// The images the app's machines run now; on failure a warning and none (the push only
    /// reuses their layers).
    pub async fn current_images(&self, reporter: &Reporter) -> Vec<String> {
        running_images(&self.api, reporter).await
    }

    /// Without a fly.toml, the app config of the app's current release, as `fly deploy` takes
    /// it (`internal/appconfig/remote.go`, `FromRemoteApp`: the release first, the machines
    /// only when it has none), for its [deploy] release_command and strategy. When there is
    /// none, a warning says what the machines alone cannot tell.
    async fn current_release_config(&self, reporter: &Reporter) -> Option<AppConfig> {
        let app = &self.app;
        let unknown = |why: String| {
            reporter.warn(format!(
                "no fly.toml, and {why}: the machines of app {app} keep their config, and a \
                 [deploy] release_command (migrations), strategy or wait_timeout of its last \
                 `fly deploy` is not run or applied; pass --config fly.toml (mkFlyDeploy: \
                 flyToml) to have them"
            ));
            None
        };
        let Some(platform) = &self.platform else {
            return unknown("--skip-release leaves the app's releases unread".into());
        };
        let definition = match platform.current_release_config(app).await {
            Ok(Some(definition)) => definition,
            Ok(None) => return unknown("the app has no release with a config".into()),
            Err(err) => {
                return unknown(format!(
                    "its current release's config cannot be read ({})",
                    crate::error::chain_text(err.as_ref())
                ));
            }
        };
        match AppConfig::from_definition(&definition, &format!("the config of app {app}'s current release")) {
            Ok((config, warnings)) => {
                reporter.info(format!(
                    "no fly.toml: the [deploy] settings (release_command, strategy, ...){} of app \
                     {app}'s current release apply, as `fly deploy` takes them; the machines keep \
                     their config",
                    if config.has_machine_checks() {
                        " and machine checks"
                    } else {
                        ""
                    }
                ));
                for warning in warnings {
                    reporter.warn(warning.to_string());
                }
                Some(config)
            }
            Err(err) => unknown(format!("its current release's config is not usable ({err})")),
        }
    }

    /// Roll `image` out (a digest reference; a tag only in a dry run).
    pub async fn run(self, image: String, reporter: Reporter) -> anyhow::Result<()> {
        let spec = match &self.fly_toml {
            Some(fly_toml) => spec(&self.app, image, &self.options, Some(fly_toml)),
            None => {
                // Only [deploy] is taken from the release: flyctl would lay its whole config
                // over the machines, but a config nixfly rebuilt from them earlier does not
                // give every machine back exactly (a platform default restart policy, say),
                // and a deploy without a fly.toml has always left the machines' config alone.
                let current = self.current_release_config(&reporter).await;
                let mut spec = spec(&self.app, image, &self.options, current.as_ref());
                spec.env = None;
                // Only the flag: the release's primary_region is not applied either.
                spec.primary_region = self.options.primary_region.clone();
                spec.host_dedication_id = None;
                spec.definition = serde_json::Value::Null;
                spec
            }
        };
        let app = self.app;
        crate::rollout::run(
            spec,
            self.api,
            self.checked.into_inner(),
            self.platform,
            reporter,
            self.fly_toml,
        )
        .await
        .with_context(|| format!("deploying to Fly app {app}"))
    }
}

pub async fn run(args: RolloutArgs, reporter: Reporter) -> anyhow::Result<()> {
    let fly_toml = args.app.fly_toml(&reporter)?;
    let app = args.app.app_name(fly_toml.as_ref())?;
    let image = match args.image {
        Some(image) => image,
        None => {
            let image = fly_toml.as_ref().and_then(|c| c.build.image.clone()).context(
                "no image to deploy: pass --image host/repo@sha256:... or set [build] image in fly.toml",
            )?;
            refuse_docker_hub_name(&image)?;
            image
        }
    };
    let token = args.app.fly_token()?;
    let dry_run = args.options.dry_run;
    // A dry run touches no machine, so it may show a tag; a real rollout needs the digest,
    // which the registry gives for a tag.
    let lookup = if dry_run || image.contains('@') {
        None
    } else {
        let reference =
            Reference::parse(&image).with_context(|| format!("--image {image} is not an image reference"))?;
        let options = args
            .registry
            .client_options(&reference.registry, || Ok(token.clone()))?;
        let client = RegistryClient::new(&reference.registry, options, reporter.clone())?;
        Some((reference, client))
    };
    let rollout = ResolvedRollout::new(&app, fly_toml, &args.options, token, &reporter)?;
    // The app first, as `nixfly deploy` checks it: a wrong name is said as such, not as a
    // release config that cannot be read and a 404 after it.
    rollout.check_app().await?;
    let image = match lookup {
        Some((reference, client)) => resolve_tag(&reference, &client, &reporter).await?.to_string(),
        None if dry_run => image,
        None => PinnedReference::parse(&image)?.to_string(),
    };
    rollout.run(image, reporter).await
}

/// The images `api`'s app's machines run now, for a push to reuse their layers; on failure a
/// warning and none (the push only reuses them).
pub(crate) async fn running_images(api: &MachinesApi, reporter: &Reporter) -> Vec<String> {
    api.current_images().await.unwrap_or_else(|err| {
        reporter.warn(format!(
            "not reusing the layers of the running image: listing the machines of {} failed: {}",
            api.app(),
            crate::error::chain_text(&err)
        ));
        Vec::new()
    })
}

/// fly.toml is flyctl's, and in `[build] image` a name without a registry host is a Docker Hub
/// image there (`image = "flyio/hellofly:latest"` in Fly's docs; flyctl has Fly's API resolve
/// it, `internal/build/imgsrc/remote_image_resolver.go`). nixfly's own default host for such a
/// name is registry.fly.io, where it would look up, or pin, another image: refused instead.
fn refuse_docker_hub_name(image: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        crate::registry::reference::names_registry(image),
        "[build] image {image:?} names no registry, so `fly deploy` takes it from Docker Hub, \
         which nixfly does not look up: write the registry in fly.toml (registry.fly.io/<app>:<tag>, \
         or docker.io/<repo>@sha256:<digest>), or pass --image"
    );
    Ok(())
}

/// `host/repo:tag` → `host/repo@sha256:...` as the registry has it now, so that the machines
/// (and a rollback) get an immutable reference.
async fn resolve_tag(
    reference: &Reference,
    client: &RegistryClient,
    reporter: &Reporter,
) -> anyhow::Result<PinnedReference> {
    let tag = reference.tag.as_deref().unwrap_or("latest");
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
    reporter.info(format!("{reference} is {pinned}"));
    Ok(pinned)
}

/// `NAME=VALUE` of `--env`, as flyctl's `ParseKVStringsToMap` splits it: at the first `=`.
/// A timeout that a machine or the release_command must beat: 0 would fail every deploy.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match parse_go_duration(text)? {
        d if d.is_zero() => Err(format!("{text:?} must be above 0, like 90s or 5m")),
        d => Ok(d),
    }
}

fn parse_env_flag(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

fn spec(app: &str, image: String, options: &RolloutOptions, fly_toml: Option<&AppConfig>) -> RolloutSpec {
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
            default_group: fly_toml.map_or_else(
                || crate::fly::types::DEFAULT_GROUP.to_string(),
                AppConfig::default_group,
            ),
            fly_toml: fly_toml.and_then(|c| c.release_command_config().ok().flatten()),
        });
    RolloutSpec {
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
        listen_window: options.listen_check_window,
        url: fly_toml.and_then(|config| config.url(app)),
        lease_wait: options.lease_wait,
        lease_ttl: options.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL),
        release_command,
        machine_checks: fly_toml.and_then(crate::rollout::machine_checks::MachineChecks::from_config),
        env: fly_toml.map(|c| c.env.clone()),
        env_flags: options.env.iter().cloned().collect(),
        primary_region: options
            .primary_region
            .clone()
            .or_else(|| fly_toml.and_then(|c| c.primary_region.clone())),
        host_dedication_id: fly_toml.and_then(|c| c.host_dedication_id.clone()),
        rollback: !options.no_rollback,
        definition: fly_toml.map_or(serde_json::Value::Null, |c| c.definition.clone()),
        dry_run: options.dry_run,
        destroy_removed_groups: options.destroy_removed_groups,
        detach_volumes: options.detach_volumes,
        force: options.force,
        bluegreen_wait: options.bluegreen_cutover_wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    /// A hostless `[build] image` is Docker Hub's for flyctl; one with a host is taken.
    #[test]
    fn a_build_image_without_a_registry_is_refused() {
        for image in [
            "flyio/hellofly:latest",
            "nginx",
            "nginx@sha256:abc",
            "library/nginx:1",
        ] {
            let err = refuse_docker_hub_name(image).unwrap_err().to_string();
            assert!(err.contains("Docker Hub"), "{image}: {err}");
        }
        for image in [
            "registry.fly.io/app:v1",
            "docker.io/library/nginx@sha256:abc",
            "localhost/app",
            "127.0.0.1:5000/app:v1",
        ] {
            assert!(refuse_docker_hub_name(image).is_ok(), "{image}");
        }
    }

    /// `fly deploy -e` splits at the first `=` (flyctl's `ParseKVStringsToMap`).
    #[test]
    fn env_flags_are_name_value_pairs_split_at_the_first_equals_sign() {
        assert_eq!(parse_env_flag("A=b=c"), Ok(("A".to_string(), "b=c".to_string())));
        assert_eq!(parse_env_flag("EMPTY="), Ok(("EMPTY".to_string(), String::new())));
        assert!(parse_env_flag("=x").is_err());
        assert!(parse_env_flag("NOVALUE").unwrap_err().contains("NAME=VALUE"));
        let cli = Cli::try_parse_from([
            "nixfly",
            "deploy",
            "img.tar",
            "-e",
            "A=1",
            "--env",
            "B=2",
            "--primary-region",
            "fra",
        ])
        .unwrap();
        let Command::Deploy(args) = cli.command else {
            panic!("not a deploy");
        };
        assert_eq!(
            args.rollout.env,
            [
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), "2".to_string())
            ]
        );
        assert_eq!(args.rollout.primary_region.as_deref(), Some("fra"));
    }

    #[test]
    fn flag_fly_toml_and_settings_read_max_unavailable_and_durations_alike() {
        let toml = "[deploy]\nmax_unavailable = 1.5\nwait_timeout = \"90s\"\n";
        let (config, _) = AppConfig::parse(toml, std::path::Path::new("fly.toml")).unwrap();
        let settings = crate::settings::Settings::parse(
            std::path::Path::new("settings.json"),
            r#"{"version": 1, "app": "demo", "rollout": {"max_unavailable": 1.5, "wait_timeout": "90s"}}"#,
        )
        .unwrap();
        let flag = Cli::parse_from([
            "nixfly",
            "rollout",
            "--max-unavailable",
            "1.5",
            "--wait-timeout",
            "90s",
        ]);
        let Command::Rollout(flag) = flag.command else {
            panic!("not a rollout")
        };
        // flyctl: a number from 1 on is a count with its fraction dropped.
        let one = Some(MaxUnavailable::Count(1));
        assert_eq!(config.deploy.max_unavailable, one);
        assert_eq!(settings.rollout.max_unavailable, one);
        assert_eq!(flag.options.max_unavailable, one);
        let ninety = Some(Duration::from_secs(90));
        assert_eq!(config.deploy.wait_timeout, ninety);
        assert_eq!(settings.rollout.wait_timeout, ninety);
        assert_eq!(flag.options.wait_timeout, ninety);

        // A bare number has no unit anywhere (flyctl's flag and fly.toml refuse it too).
        assert!(Cli::try_parse_from(["nixfly", "rollout", "--wait-timeout", "90"]).is_err());
        for flag in ["--registry-timeout", "--stream-timeout"] {
            assert!(
                Cli::try_parse_from(["nixfly", "push", "x", flag, "90"]).is_err(),
                "{flag}"
            );
            assert!(
                Cli::try_parse_from(["nixfly", "push", "x", flag, "90s"]).is_ok(),
                "{flag}"
            );
        }
        assert!(crate::cli::push::positive("--stream-timeout", Duration::ZERO).is_err());
        // A timeout of 0 would fail every machine: refused on the flags, as in settings.
        for flag in ["--wait-timeout", "--release-command-timeout"] {
            assert!(
                Cli::try_parse_from(["nixfly", "rollout", flag, "0s"]).is_err(),
                "{flag}"
            );
            assert!(
                Cli::try_parse_from(["nixfly", "rollout", flag, "1ms"]).is_ok(),
                "{flag}"
            );
        }
        assert!(AppConfig::parse("[deploy]\nwait_timeout = \"90\"\n", std::path::Path::new("f")).is_err());
        assert!(
            crate::settings::Settings::parse(
                std::path::Path::new("s.json"),
                r#"{"version": 1, "app": "demo", "rollout": {"wait_timeout": "90"}}"#,
            )
            .is_err()
        );
        for bad in ["0", "-1", "x", "NaN", "inf"] {
            assert!(bad.parse::<MaxUnavailable>().is_err(), "{bad}");
        }
        assert_eq!("0.25".parse(), Ok(MaxUnavailable::Fraction(0.25)));
        assert_eq!("2".parse(), Ok(MaxUnavailable::Count(2)));
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
        let spec = spec("demo", "img@sha256:x".into(), &options, Some(&config));
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
        spec("demo", "img@sha256:x".into(), &RolloutOptions::default(), None)
    }
}
