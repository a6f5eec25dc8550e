//! `nixfly settings check FILE`: validate a settings file offline, as `nix flake check` does
//! for the files mkFlyDeploy writes.

use crate::progress::Reporter;
use crate::settings::Settings;
use anyhow::Context;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum SettingsCommand {
    /// Check a settings file (what mkFlyDeploy passes to `nixfly deploy --settings`) against
    /// the schema, without any network access.
    Check {
        /// The settings JSON, e.g. the `passthru.settingsFile` of a mkFlyDeploy result.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

pub fn run(command: SettingsCommand, reporter: Reporter) -> anyhow::Result<()> {
    match command {
        SettingsCommand::Check { file } => {
            let settings = Settings::load(&file).context("checking nixfly settings")?;
            reporter.info(format!(
                "{}: valid nixfly settings (version {}) for app {}",
                file.display(),
                settings.version,
                settings.app
            ));
            Ok(())
        }
    }
}
