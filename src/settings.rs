//! The settings file `mkFlyDeploy` writes and passes as `nixfly deploy --settings FILE`: one JSON
//! object whose schema is `docs/settings.schema.json`. These structs mirror that schema field for
//! field and reject anything else, so a typo or a newer mkFlyDeploy fails loudly instead of being
//! ignored. Settings only fill what flags (and their environment variables) left unset; that
//! merge is the command layer's (`cli::deploy`), so this module knows nothing of the CLI.

use crate::fly::appconfig::units::parse_go_duration;
use crate::fly::appconfig::{MaxUnavailable, Strategy};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The only settings version this nixfly reads.
pub const VERSION: u32 = 1;

/// The file as written, before the values in it are checked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    version: u32,
    app: String,
    #[serde(default, deserialize_with = "present")]
    config: Option<PathBuf>,
    #[serde(default)]
    push: PushSettings,
    #[serde(default)]
    rollout: RawRollout,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollout {
    #[serde(default, deserialize_with = "present")]
    strategy: Option<String>,
    #[serde(default, deserialize_with = "present")]
    max_unavailable: Option<f64>,
    #[serde(default, deserialize_with = "present")]
    wait_timeout: Option<String>,
    #[serde(default, deserialize_with = "present")]
    release_command_timeout: Option<String>,
    #[serde(default, deserialize_with = "present")]
    rollback: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    skip_release: Option<bool>,
}

/// An optional field that is there: its value, never `null` (the schema's types have no null;
/// mkFlyDeploy leaves an unset field out).
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// Whether `text` is a duration as the schema writes one (`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`,
/// μs too, as Go reads it): units on every number, no sign, no spaces, no bare `0`.
fn schema_duration(text: &str) -> bool {
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        if let Some(fraction) = rest.strip_prefix('.') {
            let digits = fraction
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(fraction.len());
            if digits == 0 {
                return false;
            }
            rest = &fraction[digits..];
        }
        // Longest units first: "ms" before "m", "ns"/"us" before "s".
        match ["ns", "us", "µs", "μs", "ms", "s", "m", "h"]
            .iter()
            .filter(|unit| rest.starts_with(**unit))
            .max_by_key(|unit| unit.len())
        {
            Some(unit) => rest = &rest[unit.len()..],
            None => return false,
        }
    }
    !text.is_empty()
}

/// Checked settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub version: u32,
    /// The Fly app.
    pub app: String,
    /// fly.toml: absolute (a store path) or relative to the directory nixfly runs in.
    pub config: Option<PathBuf>,
    pub push: PushSettings,
    pub rollout: RolloutSettings,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushSettings {
    /// `host/repository` to push to.
    #[serde(default, deserialize_with = "present")]
    pub to: Option<String>,
    /// The tag to set.
    #[serde(default, deserialize_with = "present")]
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RolloutSettings {
    pub strategy: Option<Strategy>,
    pub max_unavailable: Option<MaxUnavailable>,
    pub wait_timeout: Option<Duration>,
    pub release_command_timeout: Option<Duration>,
    /// `Some(false)` turns automatic rollback off, as `--no-rollback` does.
    pub rollback: Option<bool>,
    pub skip_release: Option<bool>,
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
        let raw: RawSettings = serde_json::from_str(text).map_err(|source| SettingsError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |field, problem: String| SettingsError::Invalid {
            path: path.to_path_buf(),
            field,
            problem,
        };
        if raw.app.is_empty() {
            return Err(invalid("app", "must not be empty".into()));
        }
        if raw.config.as_ref().is_some_and(|c| c.as_os_str().is_empty()) {
            return Err(invalid(
                "config",
                "must not be empty (leave it out for ./fly.toml)".into(),
            ));
        }
        if let Some(to) = &raw.push.to
            && (to.is_empty() || to.contains("://"))
        {
            return Err(invalid(
                "push.to",
                "must be host/repository, without a scheme".into(),
            ));
        }
        if let Some(tag) = &raw.push.tag
            && tag.parse::<crate::registry::reference::Tag>().is_err()
        {
            return Err(invalid(
                "push.tag",
                "must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127} (the OCI tag grammar)".into(),
            ));
        }
        let r = raw.rollout;
        let duration = |field, text: Option<String>| {
            text.map(|t| {
                if !schema_duration(&t) {
                    return Err(invalid(
                        field,
                        format!("{t:?} is not a duration like \"90s\", \"5m\" or \"1h30m\" (a number and a unit, ns to h, nothing else)"),
                    ));
                }
                match parse_go_duration(&t) {
                    Ok(d) if d.is_zero() => Err(invalid(field, format!("{t:?} must be above 0"))),
                    Ok(d) => Ok(d),
                    Err(e) => Err(invalid(field, e)),
                }
            })
            .transpose()
        };
        let rollout = RolloutSettings {
            strategy: r
                .strategy
                .map(|s| s.parse().map_err(|e| invalid("rollout.strategy", e)))
                .transpose()?,
            max_unavailable: r
                .max_unavailable
                .map(|n| MaxUnavailable::from_number(n).map_err(|e| invalid("rollout.max_unavailable", e)))
                .transpose()?,
            wait_timeout: duration("rollout.wait_timeout", r.wait_timeout)?,
            release_command_timeout: duration("rollout.release_command_timeout", r.release_command_timeout)?,
            rollback: r.rollback,
            skip_release: r.skip_release,
        };
        Ok(Settings {
            version: raw.version,
            app: raw.app,
            config: raw.config,
            push: raw.push,
            rollout,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
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

    /// Settings with every field set, as a test fixture.
    pub(crate) fn full() -> serde_json::Value {
        json!({
            "version": 1,
            "app": "demo",
            "config": "/nix/store/aaaa-fly.toml",
            "push": { "to": "registry.example/demo", "tag": "v1" },
            "rollout": {
                "strategy": "canary",
                "max_unavailable": 0.5,
                "wait_timeout": "90s",
                "release_command_timeout": "300s",
                "rollback": false,
                "skip_release": true,
            },
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
            (
                json!({ "version": 1, "app": "demo", "rollout": { "max_unavailable": 2 } }),
                true,
            ),
            (
                json!({ "version": 1, "app": "demo", "rollout": { "max_unavailable": 1.5 } }),
                true,
            ),
            (
                json!({ "version": 1, "app": "demo", "rollout": { "max_unavailable": 0 } }),
                false,
            ),
            (
                json!({ "version": 1, "app": "demo", "rollout": { "wait_timeout": "300" } }),
                false,
            ),
            (
                json!({ "version": 1, "app": "demo", "rollout": { "strategy": "sideways" } }),
                false,
            ),
            (
                json!({ "version": 1, "app": "demo", "rollout": { "wait_timeout": "1h30m" } }),
                true,
            ),
            (
                json!({ "version": 1, "app": "demo", "rollout": { "wait_timeout": "soon" } }),
                false,
            ),
            (
                json!({ "version": 1, "app": "demo", "rollout": { "rollback": "no" } }),
                false,
            ),
            (json!({ "version": 1, "app": "demo", "config": "" }), false),
            (json!({ "version": 1, "app": "demo", "config": null }), false),
            (
                json!({ "version": 1, "app": "demo", "rollout": { "strategy": null } }),
                false,
            ),
            (
                json!({ "version": 1, "app": "demo", "push": { "tag": null } }),
                false,
            ),
        ];
        for text in ["0", "+5s", ".5s", " 5s", "5s ", "5", "5x", "1.s", "", "1h30"] {
            let value = json!({ "version": 1, "app": "demo", "rollout": { "wait_timeout": text } });
            assert!(!schema_accepts(&value), "schema on {value}");
            assert!(parse(&value).is_err(), "structs on {value}");
        }
        for text in ["90s", "1.5h", "1h30m", "300ms", "10us", "10µs", "2h45m0.5s"] {
            let value = json!({ "version": 1, "app": "demo", "rollout": { "wait_timeout": text } });
            assert!(schema_accepts(&value), "schema on {value}");
            assert!(parse(&value).is_ok(), "structs on {value}");
        }
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
    fn a_bad_rollout_value_names_its_field() {
        let err = parse(&json!({ "version": 1, "app": "demo", "rollout": { "wait_timeout": "soon" } }))
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("settings.json: `rollout.wait_timeout`"), "{text}");
    }
}
