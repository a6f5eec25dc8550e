//! fly.toml: parsed and validated before any network call, then translated into one Machines
//! API config per process group the way flyctl's `internal/appconfig` does it, so that a
//! machine deployed by nixfly is the machine flyctl would have made.
//!
//! - `AppConfig::load` / `AppConfig::parse`: fly.toml → `AppConfig` plus warnings (unknown
//!   keys, legacy settings). Wrong types and impossible values are errors naming file, line and
//!   key; every problem in the file is reported at once.
//! - `AppConfig::machine_config(group)`: the config flyctl would build for a new machine of the
//!   group (no image, no release metadata: those belong to the rollout).
//! - `apply`: lay that over a machine's current config, keeping what fly.toml does not own.
//! - `diff`: what would change, for `--dry-run`.

pub mod apply;
pub mod from_machines;
pub mod launch;
pub mod machine;
mod model;
mod parse;
mod reader;
pub mod shlex;
pub mod sizing;
pub mod units;

pub use model::*;

use std::fmt;
use std::path::{Path, PathBuf};

/// A problem that stops the deploy: `fly.toml:12: [deploy] max_unavailable: must be above 0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub line: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Line 0: a config that was not read from a fly.toml (a release record, a fly.json).
        match self.line {
            0 => write!(f, "{}: {}: {}", self.file, self.key, self.message),
            line => write!(f, "{}:{line}: {}: {}", self.file, self.key, self.message),
        }
    }
}

/// Something worth telling the user that does not stop the deploy (an unknown key, a legacy
/// setting). Returned to the caller, which decides how to show it.
pub type Warning = Problem;

#[derive(Debug, thiserror::Error)]
pub enum AppConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin} cannot be read as a fly.toml: {problem}")]
    Definition { origin: String, problem: String },
    #[error("{file}:{line}: not valid TOML: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file} has {} problem{}:\n{}", problems.len(), if problems.len() == 1 { "" } else { "s" }, list(problems))]
    Invalid { file: String, problems: Vec<Problem> },
    #[error(
        "{file}:{line}: [machine_checks]: the check names no image and there is no machine to \
         take one from; add image = \"...\" to it"
    )]
    MachineCheckImage { file: String, line: usize },
    #[error("{file}:{line}: [[files]] local_path: cannot read {path}")]
    LocalFile {
        file: String,
        line: usize,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl AppConfig {
    /// `fly deploy -e NAME=VALUE` and `--primary-region`: set over `[env]` and
    /// `primary_region`, in the config and in its `definition` (the release's record), as
    /// flyctl's `determineAppConfigForMachines` (`internal/command/deploy/machines.go`) sets
    /// them on the app config.
    pub fn override_from_flags(&mut self, env: &[(String, String)], primary_region: Option<&str>) {
        for (name, value) in env {
            self.env.insert(name.clone(), value.clone());
            if let Some(definition) = self.definition.as_object_mut() {
                let section = definition.entry("env").or_insert_with(|| serde_json::json!({}));
                if let Some(section) = section.as_object_mut() {
                    section.insert(name.clone(), value.clone().into());
                }
            }
        }
        if let Some(region) = primary_region {
            self.primary_region = Some(region.to_string());
            if let Some(definition) = self.definition.as_object_mut() {
                definition.insert("primary_region".into(), region.into());
            }
        }
    }

    /// Read and validate fly.toml at `path`. As flyctl's `LoadConfig` (`internal/appconfig/
    /// serde.go`), a path ending in `.json` is read as JSON, the same config (problems then name
    /// keys, not lines); `.yaml`, which flyctl also reads, is refused with the conversion.
    pub fn load(path: &Path) -> Result<(AppConfig, Vec<Warning>), AppConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| AppConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let origin = path.display().to_string();
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => {
                let value: serde_json::Value =
                    serde_json::from_str(&text).map_err(|err| AppConfigError::Definition {
                        origin: origin.clone(),
                        problem: format!("not valid JSON: {err}"),
                    })?;
                if !value.is_object() {
                    return Err(AppConfigError::Definition {
                        origin,
                        problem: "not a JSON object".into(),
                    });
                }
                Self::from_definition(&value, &origin)
            }
            Some("yaml") => Err(AppConfigError::Definition {
                origin: origin.clone(),
                problem: format!(
                    "nixfly reads fly.toml and fly.json, not YAML; convert it with \
                     `fly config show --local --toml -c {origin} > fly.toml`"
                ),
            }),
            _ => Self::parse(&text, path),
        }
    }

    /// Validate fly.toml given as text; `path` names it in messages and anchors relative
    /// `[[files]] local_path` entries.
    /// An app config recorded as a release's `definition` (fly.toml as JSON), read as the
    /// fly.toml it was: flyctl's `FromDefinition`. JSON nulls (no TOML value) are left out;
    /// `origin` names where it came from in errors.
    pub fn from_definition(
        definition: &serde_json::Value,
        origin: &str,
    ) -> Result<(AppConfig, Vec<Warning>), AppConfigError> {
        fn without_nulls(value: &serde_json::Value) -> serde_json::Value {
            match value {
                serde_json::Value::Object(map) => map
                    .iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), without_nulls(v)))
                    .collect(),
                serde_json::Value::Array(items) => {
                    items.iter().filter(|v| !v.is_null()).map(without_nulls).collect()
                }
                other => other.clone(),
            }
        }
        let path = Path::new(origin);
        let text = toml::Value::try_from(without_nulls(definition))
            .and_then(|value| toml::to_string(&value))
            .map_err(|err| AppConfigError::Definition {
                origin: origin.to_string(),
                problem: err.to_string(),
            })?;
        // Lines of the TOML written here would point nowhere the user can look: none are given.
        let lineless = |problems: Vec<Problem>| -> Vec<Problem> {
            problems.into_iter().map(|p| Problem { line: 0, ..p }).collect()
        };
        match Self::parse(&text, path) {
            Ok((config, warnings)) => Ok((config, lineless(warnings))),
            Err(AppConfigError::Invalid { file, problems }) => Err(AppConfigError::Invalid {
                file,
                problems: lineless(problems),
            }),
            Err(other) => Err(other),
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<(AppConfig, Vec<Warning>), AppConfigError> {
        let file = path.display().to_string();
        let doc = reader::Doc::new(file.clone(), text);
        let root = toml::de::DeTable::parse(text).map_err(|err| AppConfigError::Syntax {
            file: file.clone(),
            line: err.span().map_or(1, |span| doc.line_of(span.start)),
            message: err.message().trim().to_string(),
        })?;
        let table = reader::Table::root(&doc, root.get_ref());
        let mut config = parse::parse_document(&doc, &table, path);
        table.finish();
        config.definition = reader::to_json(&toml::de::DeValue::Table(root.get_ref().clone()));
        let mut errors = doc.errors.into_inner();
        let mut warnings = doc.warnings.into_inner();
        if errors.is_empty() {
            errors = config.translation_problems();
        }
        if !errors.is_empty() {
            errors.sort_by_key(|p| p.line);
            return Err(AppConfigError::Invalid {
                file,
                problems: errors,
            });
        }
        warnings.sort_by_key(|w| w.line);
        Ok((config, warnings))
    }

    /// The process groups, sorted: the `[processes]` names, or `app` when there are none.
    pub fn process_groups(&self) -> Vec<String> {
        if self.processes.is_empty() {
            vec![DEFAULT_GROUP.to_string()]
        } else {
            self.processes.keys().cloned().collect()
        }
    }

    /// The group that sections without `processes = [...]` belong to: `app` when it exists,
    /// else the first group by name (flyctl's `DefaultProcessName`).
    pub fn default_group(&self) -> String {
        let groups = self.process_groups();
        if groups.iter().any(|g| g == DEFAULT_GROUP) {
            DEFAULT_GROUP.to_string()
        } else {
            groups[0].clone()
        }
    }

    /// Does a section with this `processes` list apply to `group`? An empty list means the
    /// default group only — except for `[[vm]]` and `[[files]]`, which `machine_config` handles
    /// itself.
    pub fn applies_to(&self, processes: &[String], group: &str) -> bool {
        if processes.is_empty() {
            group == self.default_group()
        } else {
            processes.iter().any(|p| p == group)
        }
    }

    /// Every translation error, found before any network call: a `[[files]] local_path` that
    /// cannot be read, for instance.
    fn translation_problems(&self) -> Vec<Problem> {
        self.process_groups()
            .iter()
            .filter_map(|group| match self.machine_config(group) {
                Ok(_) => None,
                Err(AppConfigError::LocalFile {
                    file,
                    line,
                    path,
                    source,
                }) => Some(Problem {
                    file,
                    line,
                    key: "[files] local_path".into(),
                    message: format!("cannot read {}: {source}", path.display()),
                }),
                Err(other) => Some(Problem {
                    file: self.path.display().to_string(),
                    line: 1,
                    key: format!("process group {group}"),
                    message: other.to_string(),
                }),
            })
            .collect()
    }
}

/// The group of machines with no `fly_process_group` metadata, and of apps without
/// `[processes]`.
pub const DEFAULT_GROUP: &str = "app";

#[cfg(test)]
mod tests;
