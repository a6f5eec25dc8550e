//! Raw command-line arguments (clap). Each command turns these, plus environment, fly.toml and
//! the Nix settings file, into one resolved command (`ResolvedPush`, `ResolvedRollout`,
//! `ResolvedDeploy`) before any network call, as ripgrep's LowArgs → HiArgs does.

pub mod deploy;
pub mod layer;
pub mod push;
pub mod registry;
pub mod registry_debug;
pub mod rollout;
pub mod settings;
mod usage;

pub use usage::usage_error;

use crate::fly::appconfig::AppConfig;
use crate::progress::{OutputMode, Reporter};
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "nixfly",
    version,
    about = "Push Nix-built container images to a registry and roll them out on Fly Machines",
    long_about = "Push Nix-built container images to an OCI registry (registry.fly.io by default) \
with no Docker daemon, then roll them out on a Fly app's Machines, health-gated, with automatic \
rollback.\n\nOn stdout: the pushed reference (host/repo@sha256:...), a dry run's preview, or with \
--output json one JSON event per line; progress and messages go to stderr. Exit codes: 0 done, 1 \
failed (a rollout that changed machines rolled them back, or says which it left), 2 a command line \
nixfly cannot parse, 130 interrupted.",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Output")]
pub struct GlobalArgs {
    /// More detail on stderr: -v shows every HTTP request and a stream script's output, -vv also
    /// the registry's request and response headers. Tokens are never printed (an Authorization
    /// header shows only its scheme).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// How progress is shown: bars on a terminal (auto), plain lines, or JSON lines on stdout.
    #[arg(long, global = true, value_enum, default_value_t = OutputMode::Auto, env = "NIXFLY_OUTPUT")]
    pub output: OutputMode,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Push an image to a registry; prints host/repo@sha256:... on stdout.
    Push(push::PushArgs),
    /// Roll an image that is already in a registry out on a Fly app's Machines.
    Rollout(rollout::RolloutArgs),
    /// Push an image, then roll it out on a Fly app's Machines (what `nix run .#deploy` runs).
    Deploy(DeployArgs),
    /// Work with the settings file mkFlyDeploy writes.
    #[command(subcommand)]
    Settings(settings::SettingsCommand),
    /// Low-level registry calls, for debugging a registry and for tests.
    #[command(hide = true)]
    Registry(registry_debug::RegistryCommand),
    /// Print shell completions for bash, zsh, fish, elvish or powershell.
    Completions {
        /// The shell to print a completion script for (on stdout).
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Build-time steps of layer plans, run by mkFlyDeploy's Nix code.
    #[command(hide = true)]
    Layer(layer::LayerArgs),
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// The image: a docker-archive (.tar, .tar.gz, .tar.zst), a streamLayeredImage script, an
    /// OCI layout directory, a nixfly layer plan, or - for stdin.
    pub source: String,
    #[command(flatten)]
    pub app: AppOptions,
    #[command(flatten)]
    pub push: push::PushOptions,
    #[command(flatten)]
    pub rollout: rollout::RolloutOptions,
    /// JSON settings written by mkFlyDeploy (schema: docs/settings.schema.json). They fill
    /// only what flags and environment variables left unset. Default: none (mkFlyDeploy's
    /// deploy script passes its own).
    #[arg(long, value_name = "FILE", help_heading = "Fly app")]
    pub settings: Option<PathBuf>,
}

/// Options every command that talks about a Fly app shares.
#[derive(Args, Clone, Default)]
#[command(next_help_heading = "Fly app")]
pub struct AppOptions {
    /// Fly app name. Default: FLY_APP, then `app` in fly.toml.
    #[arg(short, long, env = "FLY_APP")]
    pub app: Option<String>,
    /// Path to fly.toml (a directory: its fly.toml; a .json file: the same config as JSON).
    /// Default: ./fly.toml when it exists.
    #[arg(short, long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Fly API token. Default: FLY_ACCESS_TOKEN, FLY_API_TOKEN, FLY_AUTH_TOKEN (the first one
    /// that is set and not empty; flyctl reads the first two in that order), then access_token
    /// in ~/.fly/config.yml (FLY_CONFIG_DIR moves it).
    #[arg(short = 't', long, value_name = "TOKEN", hide_env_values = true)]
    pub access_token: Option<String>,
}

/// By hand, so that a `{:?}` of the command line never prints the token.
impl std::fmt::Debug for AppOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppOptions")
            .field("app", &self.app)
            .field("config", &self.config)
            .field("access_token", &self.access_token.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

impl AppOptions {
    /// The Fly token, from the flag or wherever flyctl would find it.
    pub fn fly_token(&self) -> Result<crate::fly::FlyToken, crate::fly::token::TokenError> {
        crate::fly::FlyToken::discover(self.access_token.as_deref())
    }

    /// `--config` (a directory means its fly.toml, as flyctl's `ResolveConfigFileFromPath`
    /// reads it, `internal/appconfig/file.go`), else `./fly.toml` when it exists.
    pub fn fly_toml_path(&self) -> Option<PathBuf> {
        match &self.config {
            Some(path) if path.is_dir() => Some(path.join("fly.toml")),
            Some(path) => Some(path.clone()),
            None => Some(PathBuf::from("fly.toml")).filter(|default| default.exists()),
        }
    }

    /// fly.toml from `fly_toml_path`; its warnings are reported.
    pub fn fly_toml(&self, reporter: &Reporter) -> anyhow::Result<Option<AppConfig>> {
        let Some(path) = self.fly_toml_path() else {
            return Ok(None);
        };
        let (config, warnings) = AppConfig::load(&path)?;
        for warning in warnings {
            reporter.warn(warning.to_string());
        }
        Ok(Some(config))
    }

    /// `--app` / FLY_APP, else `app` in fly.toml.
    pub fn app_name(&self, fly_toml: Option<&AppConfig>) -> anyhow::Result<String> {
        self.app
            .clone()
            .or_else(|| fly_toml.and_then(|c| c.app.clone()))
            .filter(|name| !name.trim().is_empty())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no Fly app given: pass --app NAME, set FLY_APP, or set app in fly.toml \
                     (looked for {})",
                    self.config
                        .as_deref()
                        .unwrap_or(std::path::Path::new("./fly.toml"))
                        .display()
                )
            })
    }
}

pub async fn run(cli: Cli, reporter: Reporter) -> anyhow::Result<()> {
    match cli.command {
        Command::Push(args) => push::run(args, reporter).await,
        Command::Rollout(args) => rollout::run(args, reporter).await,
        Command::Deploy(args) => deploy::run(args, reporter).await,
        Command::Settings(command) => settings::run(command, reporter),
        Command::Layer(args) => layer::run(args, reporter).await,
        Command::Registry(command) => registry_debug::run(command, reporter).await,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "nixfly", &mut std::io::stdout());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// `{:?}` of a parsed command line (what a panic or a debug log would print) holds no
    /// credential.
    #[test]
    fn debug_of_the_command_line_shows_no_credential() {
        let cli = Cli::try_parse_from([
            "nixfly",
            "deploy",
            "./result",
            "-t",
            "FlyV1 fm2_debugsecretmacaroon",
            "--creds",
            "user:debugsecretpassword",
        ])
        .unwrap();
        let shown = format!("{cli:?}");
        assert!(!shown.contains("debugsecret"), "{shown}");
        assert!(
            shown.contains("[REDACTED]") && shown.contains("./result"),
            "{shown}"
        );
    }
}
