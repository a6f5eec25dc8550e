//! The settings file `mkFlyDeploy` writes and passes as `nixfly deploy --settings FILE`: one JSON
//! object whose schema is `docs/settings.schema.json`. These structs mirror that schema field for
//! field and reject anything else, so a typo or a newer mkFlyDeploy fails loudly instead of being
//! ignored. Settings only fill what flags (and their environment variables) left unset.

use crate::cli::DeployArgs;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The only settings version this nixfly reads.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub version: u32,
    /// The Fly app.
    pub app: String,
    /// fly.toml: absolute (a store path) or relative to the directory nixfly runs in.
    #[serde(default)]
    pub config: Option<PathBuf>,
    #[serde(default)]
    pub push: PushSettings,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushSettings {
    /// `host/repository` to push to.
    #[serde(default)]
    pub to: Option<String>,
    /// The tag to set.
    #[serde(default)]
    pub tag: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read settings file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid nixfly settings (schema: docs/settings.schema.json)")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{path}: settings version {found} is not supported by this nixfly (it reads version {VERSION}); \
         use the nixfly from the same flake as mkFlyDeploy"
    )]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: `{field}` {problem}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        problem: String,
    },
}

impl Settings {
    pub fn load(path: &Path) -> Result<Settings, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Settings::parse(path, &text)
    }

    /// `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Settings, SettingsError> {
        // The version is checked first so that a newer file gets the version message, not a
        // complaint about the first field this nixfly does not know.
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        if let Ok(Versioned { version }) = serde_json::from_str::<Versioned>(text)
            && version != VERSION
        {
            return Err(SettingsError::Version {
                path: path.to_path_buf(),
                found: version,
            });
        }
        let settings: Settings = serde_json::from_str(text).map_err(|source| SettingsError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        settings.validate(path)?;
        Ok(settings)
    }

    fn validate(&self, path: &Path) -> Result<(), SettingsError> {
        let invalid = |field, problem: &str| SettingsError::Invalid {
            path: path.to_path_buf(),
            field,
            problem: problem.to_string(),
        };
        if self.app.is_empty() {
            return Err(invalid("app", "must not be empty"));
        }
        if let Some(to) = &self.push.to
            && (to.is_empty() || to.contains("://"))
        {
            return Err(invalid("push.to", "must be host/repository, without a scheme"));
        }
        if let Some(tag) = &self.push.tag
            && !is_valid_tag(tag)
        {
            return Err(invalid(
                "push.tag",
                "must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127} (the OCI tag grammar)",
            ));
        }
        Ok(())
    }

    /// Fill every option the command line left unset; flags always win.
    pub fn fill(self, args: &mut DeployArgs) {
        args.app.app.get_or_insert(self.app);
        if args.app.config.is_none() {
            args.app.config = self.config;
        }
        if args.push.to.is_none() {
            args.push.to = self.push.to;
        }
        if args.push.tag.is_none() {
            args.push.tag = self.push.tag;
        }
    }
}

fn is_valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    first_ok && tag.len() <= 128 && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;
    use serde_json::json;

    const SCHEMA: &str = include_str!("../docs/settings.schema.json");

    fn parse(value: &serde_json::Value) -> Result<Settings, SettingsError> {
        Settings::parse(Path::new("settings.json"), &value.to_string())
    }

    fn schema_accepts(value: &serde_json::Value) -> bool {
        let schema: serde_json::Value = serde_json::from_str(SCHEMA).expect("schema is JSON");
        jsonschema::validator_for(&schema)
            .expect("schema compiles")
            .is_valid(value)
    }

    fn full() -> serde_json::Value {
        json!({
            "version": 1,
            "app": "demo",
            "config": "/nix/store/aaaa-fly.toml",
            "push": { "to": "registry.example/demo", "tag": "v1" },
        })
    }

    #[test]
    fn schema_and_structs_agree_on_what_is_valid() {
        let mut unknown_top = full();
        unknown_top["token"] = json!("x");
        let mut unknown_push = full();
        unknown_push["push"]["registry"] = json!("x");
        let cases = [
            (full(), true),
            (json!({ "version": 1, "app": "demo" }), true),
            (json!({ "version": 1, "app": "demo", "push": {} }), true),
            (unknown_top, false),
            (unknown_push, false),
            (json!({ "version": 1 }), false),
            (json!({ "app": "demo" }), false),
            (json!({ "version": 1, "app": 3 }), false),
            (json!({ "version": 1, "app": "" }), false),
            (
                json!({ "version": 1, "app": "demo", "push": { "tag": "-bad" } }),
                false,
            ),
            (json!({ "version": 2, "app": "demo" }), false),
        ];
        for (value, valid) in cases {
            assert_eq!(schema_accepts(&value), valid, "schema on {value}");
            assert_eq!(parse(&value).is_ok(), valid, "structs on {value}");
        }
    }

    #[test]
    fn unknown_field_is_named_in_the_error() {
        let mut value = full();
        value["push"]["registry"] = json!("x");
        let err = parse(&value).unwrap_err();
        let chain = format!("{:#}", anyhow::Error::from(err));
        assert!(chain.contains("settings.json"), "{chain}");
        assert!(chain.contains("unknown field `registry`"), "{chain}");
    }

    #[test]
    fn newer_version_gets_a_version_message() {
        let err = parse(&json!({ "version": 2, "app": "demo", "new_field": true })).unwrap_err();
        assert!(matches!(err, SettingsError::Version { found: 2, .. }), "{err}");
    }

    #[test]
    fn settings_fill_only_what_flags_left_unset() {
        let cli = Cli::parse_from(["nixfly", "deploy", "./image", "--tag", "from-flag"]);
        let crate::cli::Command::Deploy(mut args) = cli.command else {
            panic!("not a deploy")
        };
        parse(&full()).unwrap().fill(&mut args);
        assert_eq!(args.push.tag.as_deref(), Some("from-flag"));
        assert_eq!(args.push.to.as_deref(), Some("registry.example/demo"));
        assert_eq!(args.app.app.as_deref(), Some("demo"));
        assert_eq!(args.app.config, Some(PathBuf::from("/nix/store/aaaa-fly.toml")));
    }
}
