//! Laying a translated config over a machine's current one, and showing the difference.
//!
//! flyctl's update starts from the machine's config and overwrites what fly.toml owns; the
//! rest (image, dns, schedule, auto_destroy, standbys, containers, rootfs, fields only the
//! platform sets) is kept as the API returned it, except that a standby whose group gained
//! services stops being one. Volumes cannot be swapped on a machine: the
//! attached volume stays, only its mount path and auto-extend settings follow fly.toml; a
//! `[[mounts]]` added or removed replaces the machine, as in flyctl
//! (`internal/command/deploy/machines_launchinput.go`, `launchInputForUpdate`), and a renamed
//! one is refused before that (`machines.go`, `validateVolumeConfig`).

use serde_json::{Map, Value};
use std::fmt;

/// Top-level fields fly.toml owns outright: absent from the translation means removed.
const OWNED: &[&str] = &[
    "env",
    "services",
    "checks",
    "statics",
    "stop_config",
    "files",
    "restart",
    "metrics",
];

/// `init` keys fly.toml owns (`tty`, `kernel_args` stay as they are).
const OWNED_INIT: &[&str] = &["cmd", "entrypoint", "exec", "swap_size_mb"];

/// Metadata the release sets on every deploy: not a config change worth showing.
const RELEASE_METADATA: &[&str] = &["fly_release_id", "fly_release_version", "fly_flyctl_version"];

/// A volume change fly.toml asks for that an update of the machine in place cannot make: the
/// machine is replaced by one with fly.toml's mount (flyctl `launchInputForUpdate`), except
/// that a rename is refused (`validateVolumeConfig` refuses it first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeChange {
    #[error("mounts volume {volume} ({name}) but fly.toml has no [[mounts]] for its group")]
    Removed { volume: String, name: String },
    #[error("mounts volume {volume} named {current:?} but fly.toml mounts {wanted:?}")]
    Renamed {
        volume: String,
        current: String,
        wanted: String,
    },
    #[error("has no volume but fly.toml mounts {name:?}")]
    Added { name: String },
}

impl VolumeChange {
    /// The name of the unattached volume the replacement needs, if it mounts one.
    pub fn needs(&self) -> Option<&str> {
        match self {
            VolumeChange::Removed { .. } => None,
            VolumeChange::Renamed { wanted, .. } => Some(wanted),
            VolumeChange::Added { name } => Some(name),
        }
    }
}

/// `translated` (from `AppConfig::machine_config`) laid over `current` (a machine's config as
/// the API returned it). The image and release metadata are the rollout's to set afterwards.
/// A volume change no update can make is returned as such: the machine must be replaced
/// ([`apply_replacing`]).
pub fn apply(translated: &Value, current: &Value) -> Result<Value, VolumeChange> {
    lay_over(translated, current, false)
}

/// The config of a machine that replaces `current` because of a [`VolumeChange`]: as
/// [`apply`], with fly.toml's `[[mounts]]` as they are (none, or one without a volume id: the
/// replacement gets an unattached volume of that name, as flyctl's `launchInputForUpdate`
/// does with `popVolumeFor`).
pub fn apply_replacing(translated: &Value, current: &Value) -> Value {
    lay_over(translated, current, true).expect("a replacement takes fly.toml's mounts as they are")
}

fn lay_over(translated: &Value, current: &Value, replacing: bool) -> Result<Value, VolumeChange> {
    let mut out = current.as_object().cloned().unwrap_or_default();
    let new = translated.as_object().cloned().unwrap_or_default();

    for key in OWNED {
        match new.get(*key) {
            Some(value) => out.insert((*key).to_string(), value.clone()),
            None => out.remove(*key),
        };
    }

    let mut init = out
        .get("init")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let new_init = new.get("init").and_then(Value::as_object);
    for key in OWNED_INIT {
        match new_init.and_then(|i| i.get(*key)) {
            Some(value) => init.insert((*key).to_string(), value.clone()),
            None => init.remove(*key),
        };
    }
    out.insert("init".into(), Value::Object(init));

    let mut metadata = out
        .get("metadata")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (k, v) in new
        .get("metadata")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        metadata.insert(k.clone(), v.clone());
    }
    out.insert("metadata".into(), Value::Object(metadata));

    // No [[vm]] for the group: flyctl keeps the machine's guest (`fly scale vm` survives).
    if let Some(guest) = new.get("guest") {
        out.insert("guest".into(), guest.clone());
    }

    let mounts = if replacing {
        new.get("mounts").cloned()
    } else {
        mounts(new.get("mounts"), out.get("mounts"))?
    };
    match mounts {
        Some(mounts) => out.insert("mounts".into(), mounts),
        None => out.remove("mounts"),
    };

    // A standby whose group now has services serves itself: it is a standby no more
    // (flyctl `machines_launchinput.go`, `launchInputForUpdate`).
    let non_empty = |v: Option<&Value>| v.and_then(Value::as_array).is_some_and(|a| !a.is_empty());
    let serving_standby = non_empty(out.get("services")) && non_empty(out.get("standbys"));
    let mut out = Value::Object(out);
    if serving_standby {
        super::launch::clear_standby(&mut out);
    }
    Ok(out)
}

/// flyctl's `launchInputForUpdate` rules for the first mount.
fn mounts(wanted: Option<&Value>, current: Option<&Value>) -> Result<Option<Value>, VolumeChange> {
    let wanted: Vec<Value> = wanted.and_then(Value::as_array).cloned().unwrap_or_default();
    let current: Vec<Value> = current.and_then(Value::as_array).cloned().unwrap_or_default();
    let text = |v: &Value, key: &str| v[key].as_str().unwrap_or_default().to_string();
    match (wanted.first(), current.first()) {
        (None, None) => Ok(None),
        (Some(w), None) => Err(VolumeChange::Added {
            name: text(w, "name"),
        }),
        (None, Some(c)) => Err(VolumeChange::Removed {
            volume: text(c, "volume"),
            name: text(c, "name"),
        }),
        (Some(w), Some(c)) => {
            let (current_name, wanted_name) = (text(c, "name"), text(w, "name"));
            let mut mount = if !current_name.is_empty() && current_name != wanted_name {
                return Err(VolumeChange::Renamed {
                    volume: text(c, "volume"),
                    current: current_name,
                    wanted: wanted_name,
                });
            } else if !current_name.is_empty() && text(c, "path") != text(w, "path") {
                // Same volume, new mount path: fly.toml's mount with the attached volume id.
                let mut moved = w.as_object().cloned().unwrap_or_default();
                moved.insert("volume".into(), c["volume"].clone());
                moved
            } else {
                // Nothing moved, or the name is unknown (rare): the machine's mount as it is.
                c.as_object().cloned().unwrap_or_default()
            };
            for key in ["extend_threshold_percent", "add_size_gb", "size_gb_limit"] {
                match w.get(key) {
                    Some(value) => mount.insert(key.into(), value.clone()),
                    None => mount.remove(key),
                };
            }
            let mut all = vec![Value::Object(mount)];
            all.extend(current.into_iter().skip(1));
            Ok(Some(Value::Array(all)))
        }
    }
}

/// One line of a config diff: the JSON path and the value before and after (None = absent).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigChange {
    pub path: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

impl fmt::Display for ConfigChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<Value>| match v {
            None => "(none)".to_string(),
            Some(v) => v.to_string(),
        };
        match (&self.before, &self.after) {
            (None, Some(_)) => write!(f, "+ {}: {}", self.path, show(&self.after)),
            (Some(_), None) => write!(f, "- {}: {}", self.path, show(&self.before)),
            _ => write!(
                f,
                "~ {}: {} → {}",
                self.path,
                show(&self.before),
                show(&self.after)
            ),
        }
    }
}

/// What changes from `before` to `after`, leaf by leaf, ignoring the image (the rollout shows
/// it) and release metadata, and treating what Go's `omitempty` drops (false, 0, "", empty
/// lists and objects) as absent. `autostop` true/false equal "stop"/"off".
pub fn diff(before: &Value, after: &Value) -> Vec<ConfigChange> {
    let mut changes = Vec::new();
    walk(
        "",
        normalize(before, "", true).as_ref(),
        normalize(after, "", true).as_ref(),
        &mut changes,
    );
    changes
}

fn walk(path: &str, before: Option<&Value>, after: Option<&Value>, out: &mut Vec<ConfigChange>) {
    match (before, after) {
        (Some(Value::Object(b)), Some(Value::Object(a))) => {
            let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                walk(&join(path, key), b.get(key), a.get(key), out);
            }
        }
        (Some(Value::Array(b)), Some(Value::Array(a))) if holds_tables(b) || holds_tables(a) => {
            for i in 0..b.len().max(a.len()) {
                walk(&format!("{path}[{i}]"), b.get(i), a.get(i), out);
            }
        }
        // A whole section added or removed: still shown leaf by leaf.
        (Some(b), None) if is_section(b) => walk(path, Some(b), Some(&empty_like(b)), out),
        (None, Some(a)) if is_section(a) => walk(path, Some(&empty_like(a)), Some(a), out),
        (b, a) if b == a => {}
        (b, a) => out.push(ConfigChange {
            path: path.to_string(),
            before: b.cloned(),
            after: a.cloned(),
        }),
    }
}

/// Lists of tables (services, mounts) are compared item by item, lists of scalars (cmd,
/// handlers) as one value.
fn holds_tables(items: &[Value]) -> bool {
    items.iter().any(Value::is_object)
}

fn is_section(value: &Value) -> bool {
    match value {
        Value::Object(_) => true,
        Value::Array(items) => holds_tables(items),
        _ => false,
    }
}

fn empty_like(value: &Value) -> Value {
    match value {
        Value::Array(_) => Value::Array(Vec::new()),
        _ => Value::Object(Map::new()),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Drop what does not count as a difference. `top` is the config's own level, where `env`
/// and `metadata` are free-form maps in which every value counts (an empty env var is a
/// setting).
fn normalize(value: &Value, key: &str, top: bool) -> Option<Value> {
    match value {
        Value::Null => None,
        Value::Bool(b) if key == "autostop" => Some(Value::String(if *b { "stop" } else { "off" }.into())),
        Value::Bool(false) => None,
        Value::String(s) if s.is_empty() => None,
        Value::Number(n) if n.as_f64() == Some(0.0) => None,
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                if top && k == "image" {
                    continue;
                }
                if top && (k == "env" || k == "metadata") {
                    let mut free = v.as_object().cloned().unwrap_or_default();
                    if k == "metadata" {
                        free.retain(|name, _| !RELEASE_METADATA.contains(&name.as_str()));
                    }
                    if !free.is_empty() {
                        out.insert(k.clone(), Value::Object(free));
                    }
                } else if let Some(v) = normalize(v, k, false) {
                    out.insert(k.clone(), v);
                }
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        Value::Array(items) => {
            let out: Vec<Value> = items
                .iter()
                .map(|v| normalize(v, key, false).unwrap_or(Value::Object(Map::new())))
                .collect();
            (!out.is_empty()).then_some(Value::Array(out))
        }
        other => Some(other.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// flyctl `plan_test.go`, `TestCompareConfig`: two configs that differ only in
    /// `fly_flyctl_version` are the same config; a different image is not (here the image is
    /// the rollout's to compare, by digest: `rollout::nothing_to_deploy`).
    #[test]
    fn the_flyctl_version_is_no_config_change() {
        let one = json!({"image": "image1", "metadata": {"fly_flyctl_version": "v1"}});
        let two = json!({"image": "image1", "metadata": {"fly_flyctl_version": "v2"}});
        assert!(diff(&one, &two).is_empty());
        let other = json!({"image": "image1", "metadata": {"fly_flyctl_version": "v1", "team": "x"}});
        assert_eq!(diff(&one, &other).len(), 1);
    }
}
