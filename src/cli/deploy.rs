//! `nixfly deploy`: push, then roll the pushed digest out. What `nix run .#deploy` runs.
//!
//! Flags ⊕ environment ⊕ the mkFlyDeploy settings file ⊕ fly.toml become one `ResolvedDeploy`
//! first (fly.toml parsed and validated once, the token read once), then it is checked against
//! the world (the app exists, the token works for the Machines API, the registry accepts the
//! credentials), and only then is anything pushed. The image is opened meanwhile: a stream
//! script generates while the checks go to Fly and the registry, and is stopped if they fail.

use super::DeployArgs;
use super::push::{PushOptions, ResolvedPush};
use super::rollout::ResolvedRollout;
use crate::blob::Algorithm;
use crate::fly::appconfig::Build;
use crate::progress::Reporter;
use crate::push::ManifestFormat;
use crate::registry::reference::Reference;
use crate::settings::Settings;
use anyhow::Context;

/// A deploy with everything decided.
pub struct ResolvedDeploy {
    pub push: ResolvedPush,
    pub rollout: ResolvedRollout,
}

impl ResolvedDeploy {
    /// No network: reads the settings file, fly.toml and the Fly token.
    pub fn resolve(mut args: DeployArgs, reporter: &Reporter) -> anyhow::Result<Self> {
        if let Some(path) = args.settings.take() {
            let settings = Settings::load(&path).context("reading the settings from mkFlyDeploy")?;
            fill_from_settings(settings, &mut args);
        }
        let fly_toml = args.app.fly_toml(reporter)?;
        let app = args.app.app_name(fly_toml.as_ref())?;
        if let Some(config) = &fly_toml {
            fill_from_build(&config.build, &mut args.push, reporter);
        }
        let token = args.app.fly_token()?;
        let push = args
            .push
            .resolve(&args.source, Some(&app), || Ok(token.clone()), reporter)?;
        let rollout = ResolvedRollout::new(&app, fly_toml, &args.rollout, token, reporter)?;
        Ok(ResolvedDeploy { push, rollout })
    }

    /// Everything that can be refused, refused before the upload: Fly first (app, token),
    /// then the registry.
    pub async fn check(&self) -> anyhow::Result<()> {
        self.rollout.check_app().await?;
        self.push.check_access().await
    }
}

/// Fill every option the command line (and its environment variables) left unset from the
/// mkFlyDeploy settings; flags always win.
fn fill_from_settings(settings: Settings, args: &mut DeployArgs) {
    args.app.app.get_or_insert(settings.app);
    if args.app.config.is_none() {
        args.app.config = settings.config;
    }
    if args.push.to.is_none() {
        args.push.to = settings.push.to;
    }
    if args.push.tag.is_none() {
        args.push.tag = settings.push.tag;
    }
    let (flags, r) = (&mut args.rollout, settings.rollout);
    flags.strategy = flags.strategy.or(r.strategy);
    flags.max_unavailable = flags.max_unavailable.or(r.max_unavailable);
    flags.wait_timeout = flags.wait_timeout.or(r.wait_timeout);
    flags.release_command_timeout = flags.release_command_timeout.or(r.release_command_timeout);
    // These flags can only switch a behaviour off, so the settings can too, never back on.
    flags.no_rollback |= r.rollback == Some(false);
    flags.skip_release |= r.skip_release == Some(true);
}

/// fly.toml's `[build] compression` and `compression_level` where `--compression` and
/// `--level` (and their environment variables) left them unset, as `fly deploy` lets flags
/// override fly.toml and fly.toml its defaults (flyctl `internal/appconfig/config.go`,
/// DetermineCompression). flyctl's builders push OCI media types (`oci-mediatypes`,
/// `internal/build/imgsrc/depot.go`), which zstd layers need: zstd from fly.toml brings
/// `--format oci` unless `--format` is given. A level flyctl takes (0-9) that is not one of
/// nixfly's for the compression (0, for either) is left to nixfly's default, with a warning.
fn fill_from_build(build: &Build, push: &mut PushOptions, reporter: &Reporter) {
    if push.compression.is_none() && build.compression.is_some() {
        push.compression = build.compression;
        if build.compression == Some(Algorithm::Zstd) && push.format.is_none() {
            push.format = Some(ManifestFormat::Oci);
        }
    }
    if push.level.is_none()
        && let Some(level) = build.compression_level
    {
        let algorithm = push.compression.unwrap_or_default();
        if algorithm.levels().contains(&level) {
            push.level = Some(level);
        } else {
            reporter.warn(format!(
                "fly.toml: [build] compression_level = {level} is not a {} level nixfly compresses \
                 at ({}-{}): using its default, {}",
                algorithm.name(),
                algorithm.levels().start(),
                algorithm.levels().end(),
                algorithm.default_level()
            ));
        }
    }
}

pub async fn run(args: DeployArgs, reporter: Reporter) -> anyhow::Result<()> {
    let deploy = ResolvedDeploy::resolve(args, &reporter)?;
    if deploy.rollout.dry_run() {
        deploy.check().await?;
        let ResolvedDeploy { push, rollout } = deploy;
        // A push would change the registry: show where the image would go and preview the
        // rollout against that tag instead of a digest.
        let target = push.target();
        reporter.info(format!(
            "dry run: would push {} to {target} (nothing pushed)",
            push.source
        ));
        return rollout.run(target, reporter).await;
    }
    // The checks, and the images the machines run now (their layers need no upload), while
    // the image is opened and a stream script starts generating. The machines are listed
    // beside the registry's check: both only read, and Fly has accepted the token by then.
    let checked = async {
        deploy.rollout.check_app().await?;
        let (access, images) = tokio::join!(
            deploy.push.check_access(),
            deploy.rollout.current_images(&reporter)
        );
        access?;
        Ok(images)
    };
    let pushed = deploy.push.run_after(&reporter, checked).await?;
    let ResolvedDeploy { push, rollout } = deploy;
    // Machines and the release record get the tag with the digest: the digest decides what
    // runs, and the tag is what `fly status`, `fly releases` and `fly image show` name (flyctl
    // gives machines the tag, `deploy.go`). The API takes that form: flyctl's `machine clone`
    // creates machines with fly-go's `Machine.FullImageRef()`, `registry/repo:tag@digest`
    // (`internal/command/machine/clone.go`).
    let deployed = Reference {
        registry: pushed.reference.registry.clone(),
        repository: pushed.reference.repository.clone(),
        tag: push.spec.tag.clone(),
        digest: Some(pushed.reference.digest.clone()),
    }
    .to_string();
    rollout.run(deployed, reporter.clone()).await?;
    reporter.result(&pushed.reference.to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use crate::fly::appconfig::{MaxUnavailable, Strategy};
    use clap::Parser;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    fn settings() -> Settings {
        let text = crate::settings::tests::full().to_string();
        Settings::parse(Path::new("settings.json"), &text).unwrap()
    }

    fn deploy_args(argv: &[&str]) -> DeployArgs {
        let cli = Cli::parse_from(["nixfly", "deploy", "./image"].iter().chain(argv));
        let Command::Deploy(args) = cli.command else {
            panic!("not a deploy")
        };
        args
    }

    /// flyctl's DetermineCompression order (internal/appconfig/config.go): flags, then fly.toml,
    /// then the defaults; zstd from fly.toml brings the OCI format its layers need.
    #[test]
    fn fly_toml_build_compression_fills_only_what_flags_left_unset() {
        let zstd = Build {
            compression: Some(Algorithm::Zstd),
            compression_level: Some(5),
            ..Build::default()
        };
        let reporter = Reporter::plain();
        let mut args = deploy_args(&[]);
        fill_from_build(&zstd, &mut args.push, &reporter);
        assert_eq!(args.push.compression, Some(Algorithm::Zstd));
        assert_eq!(args.push.format, Some(ManifestFormat::Oci));
        assert_eq!(args.push.level, Some(5));

        let mut args = deploy_args(&["--compression", "gzip", "--level", "1"]);
        fill_from_build(&zstd, &mut args.push, &reporter);
        assert_eq!(args.push.compression, Some(Algorithm::Gzip));
        assert_eq!(args.push.format, None);
        assert_eq!(args.push.level, Some(1));

        let mut args = deploy_args(&["--format", "docker"]);
        fill_from_build(&zstd, &mut args.push, &reporter);
        assert_eq!(
            args.push.format,
            Some(ManifestFormat::Docker),
            "--format wins; the push then refuses zstd in it"
        );

        // A level flyctl takes but nixfly has not (0) leaves nixfly's default.
        let level_zero = Build {
            compression_level: Some(0),
            ..Build::default()
        };
        let mut args = deploy_args(&[]);
        fill_from_build(&level_zero, &mut args.push, &reporter);
        assert_eq!((args.push.compression, args.push.level), (None, None));
        let mut args = deploy_args(&[]);
        fill_from_build(&Build::default(), &mut args.push, &reporter);
        assert_eq!(
            (args.push.compression, args.push.format, args.push.level),
            (None, None, None)
        );
    }

    #[test]
    fn settings_fill_only_what_flags_left_unset() {
        let mut args = deploy_args(&["--tag", "from-flag"]);
        fill_from_settings(settings(), &mut args);
        assert_eq!(args.push.tag.as_deref(), Some("from-flag"));
        assert_eq!(args.push.to.as_deref(), Some("registry.example/demo"));
        assert_eq!(args.app.app.as_deref(), Some("demo"));
        assert_eq!(args.app.config, Some(PathBuf::from("/nix/store/aaaa-fly.toml")));
        assert_eq!(args.rollout.strategy, Some(Strategy::Canary));
        assert_eq!(args.rollout.max_unavailable, Some(MaxUnavailable::Fraction(0.5)));
        assert_eq!(args.rollout.wait_timeout, Some(Duration::from_secs(90)));
        assert_eq!(
            args.rollout.release_command_timeout,
            Some(Duration::from_secs(300))
        );
        assert!(args.rollout.no_rollback && args.rollout.skip_release);
    }

    #[test]
    fn rollout_flags_win_over_settings() {
        let mut args = deploy_args(&["--strategy", "immediate", "--wait-timeout", "10s"]);
        fill_from_settings(settings(), &mut args);
        assert_eq!(args.rollout.strategy, Some(Strategy::Immediate));
        assert_eq!(args.rollout.wait_timeout, Some(Duration::from_secs(10)));
        assert_eq!(args.rollout.max_unavailable, Some(MaxUnavailable::Fraction(0.5)));
    }
}
