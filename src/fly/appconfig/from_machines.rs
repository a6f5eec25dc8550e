//! An app config rebuilt from the machines' own configs, for the release record's
//! `definition` when there is no fly.toml, as flyctl's `getAppV2ConfigFromMachines`
//! (`internal/appconfig/remote.go`, `from_machine_set.go`) rebuilds it: each machine's config
//! is turned into a fly.toml, and the one most machines agree on wins.
//!
//! Carried over, as flyctl does: the primary region (from `PRIMARY_REGION`), `[env]`, the
//! command as `[processes] app`, the first mount, statics, top-level checks, and the services
//! of the machines running the most common command.

use crate::fly::types::Machine;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// The most common fly.toml (as JSON) the machines describe; None without machines.
pub fn definition_from_machines(app: &str, machines: &[&Machine]) -> Option<Value> {
    let command = most_common(machines.iter().map(|m| (command_of(&m.config), *m)))?;
    let services = most_common(
        command
            .1
            .iter()
            .map(|m| (m.config.get("services").cloned().unwrap_or(Value::Null), *m)),
    )
    .map(|(services, _)| fly_toml_services(&services, !command.0.is_empty()))
    .unwrap_or_default();
    let per_machine = machines.iter().map(|m| {
        let mut definition = one_machine(app, &m.config);
        if !command.0.is_empty() {
            definition["processes"] = json!({"app": command.0});
        }
        if !services.is_empty() {
            definition["services"] = Value::Array(services.clone());
        }
        (definition, *m)
    });
    most_common(per_machine).map(|(definition, _)| definition)
}

/// The value most items share (ties: the one seen first), with the items that share it.
fn most_common<'m, K: serde::Serialize + Clone>(
    items: impl Iterator<Item = (K, &'m Machine)>,
) -> Option<(K, Vec<&'m Machine>)> {
    let mut counted: Vec<(String, K, Vec<&Machine>)> = Vec::new();
    for (key, machine) in items {
        let text = serde_json::to_string(&key).unwrap_or_default();
        match counted.iter_mut().find(|(t, _, _)| *t == text) {
            Some((_, _, machines)) => machines.push(machine),
            None => counted.push((text, key, vec![machine])),
        }
    }
    let best = counted.iter().map(|(_, _, m)| m.len()).max()?;
    counted
        .into_iter()
        .find(|(_, _, m)| m.len() == best)
        .map(|(_, key, machines)| (key, machines))
}

/// `init.cmd` as one shell line, quoted as flyctl's `quotePosixWords` quotes it.
fn command_of(config: &Value) -> String {
    config
        .pointer("/init/cmd")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(quote_word)
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote_word(word: &str) -> String {
    const SPECIAL: &str = "!\"#$&'()*,;<=>?[]\\^`{}|~";
    if word.chars().any(|c| SPECIAL.contains(c)) {
        format!("'{word}'")
    } else if word.chars().any(char::is_whitespace) {
        format!("\"{word}\"")
    } else {
        word.to_string()
    }
}

/// fly.toml for one machine, without processes and services (decided across machines).
fn one_machine(app: &str, config: &Value) -> Value {
    let env = config
        .get("env")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut definition = json!({"app": app, "env": env});
    if let Some(region) = ["PRIMARY_REGION", "FLY_PRIMARY_REGION"]
        .iter()
        .find_map(|k| env.get(*k).and_then(Value::as_str))
    {
        definition["primary_region"] = json!(region);
    }
    if let Some(mount) = config.pointer("/mounts/0") {
        definition["mounts"] = json!([{"source": mount["name"], "destination": mount["path"]}]);
    }
    let statics: Vec<Value> = config
        .get("statics")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|s| json!({"guest_path": s["guest_path"], "url_prefix": s["url_prefix"]}))
        .collect();
    if !statics.is_empty() {
        definition["statics"] = Value::Array(statics);
    }
    if let Some(checks) = config.get("checks").and_then(Value::as_object) {
        let checks: Map<String, Value> = checks
            .iter()
            .map(|(name, check)| (name.clone(), pick(check, CHECK_KEYS)))
            .collect();
        definition["checks"] = Value::Object(checks);
    }
    definition
}

const CHECK_KEYS: &[&str] = &[
    "type",
    "port",
    "interval",
    "timeout",
    "grace_period",
    "method",
    "path",
    "protocol",
    "tls_skip_verify",
    "headers",
];

fn pick(object: &Value, keys: &[&str]) -> Value {
    let picked: BTreeMap<&str, &Value> = keys
        .iter()
        .filter_map(|k| object.get(*k).filter(|v| !v.is_null()).map(|v| (*k, v)))
        .collect();
    json!(picked)
}

/// Machine services as fly.toml `[[services]]` (flyctl `serviceFromMachineService`): the
/// autostop/autostart names change, the service belongs to the `app` process.
fn fly_toml_services(services: &Value, has_app_process: bool) -> Vec<Value> {
    services
        .as_array()
        .into_iter()
        .flatten()
        .map(|service| {
            let mut out = pick(
                service,
                &[
                    "protocol",
                    "internal_port",
                    "ports",
                    "concurrency",
                    "min_machines_running",
                ],
            );
            if let Some(autostop) = service.get("autostop") {
                out["auto_stop_machines"] = match autostop {
                    Value::Bool(true) => json!("stop"),
                    Value::Bool(false) => json!("off"),
                    other => other.clone(),
                };
            }
            if let Some(autostart) = service.get("autostart") {
                out["auto_start_machines"] = autostart.clone();
            }
            if has_app_process {
                out["processes"] = json!(["app"]);
            }
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(id: &str, config: Value) -> Machine {
        serde_json::from_value(json!({"id": id, "config": config})).unwrap()
    }

    #[test]
    fn the_config_most_machines_share_becomes_the_definition() {
        let common = json!({
            "image": "x", "env": {"PRIMARY_REGION": "ams", "A": "1"},
            "init": {"cmd": ["serve", "--port", "8080", "a b"]},
            "mounts": [{"volume": "vol_1", "name": "data", "path": "/data"}],
            "checks": {"alive": {"type": "tcp", "port": 8080, "interval": "15s", "kind": "x"}},
            "services": [{"protocol": "tcp", "internal_port": 8080, "autostop": true, "autostart": true,
                          "ports": [{"port": 443, "handlers": ["tls", "http"]}]}]
        });
        let mut odd = common.clone();
        odd["env"]["A"] = json!("2");
        let (a, b, c) = (
            machine("a", odd),
            machine("b", common.clone()),
            machine("c", common),
        );
        let definition = definition_from_machines("demo", &[&a, &b, &c]).unwrap();
        assert_eq!(
            definition,
            json!({
                "app": "demo",
                "primary_region": "ams",
                "env": {"PRIMARY_REGION": "ams", "A": "1"},
                "processes": {"app": "serve --port 8080 \"a b\""},
                "mounts": [{"source": "data", "destination": "/data"}],
                "checks": {"alive": {"type": "tcp", "port": 8080, "interval": "15s"}},
                "services": [{"protocol": "tcp", "internal_port": 8080, "auto_stop_machines": "stop",
                              "auto_start_machines": true, "processes": ["app"],
                              "ports": [{"port": 443, "handlers": ["tls", "http"]}]}]
            })
        );
        assert_eq!(definition_from_machines("demo", &[]), None);
    }

    /// flyctl from_machine_set_test.go, TestQuotePosixWords: how a machine's command words
    /// are quoted into the rebuilt fly.toml's [processes] line.
    #[test]
    fn flyctl_quote_posix_words() {
        let cases: [(&[&str], &[&str]); 6] = [
            (&["nginx", "-g", "daemon off;"], &["nginx", "-g", "'daemon off;'"]),
            (&[""], &[""]),
            (&["/app"], &["/app"]),
            (
                &["bundle", "exec", "rake", "db:migrate"],
                &["bundle", "exec", "rake", "db:migrate"],
            ),
            (
                &["/release_cmd.sh", "foo", "bar", "baz", "123", "--six=seven"],
                &["/release_cmd.sh", "foo", "bar", "baz", "123", "'--six=seven'"],
            ),
            (&["echo", "hi there"], &["echo", "\"hi there\""]),
        ];
        for (words, quoted) in cases {
            let got: Vec<String> = words.iter().map(|w| quote_word(w)).collect();
            assert_eq!(got, quoted, "{words:?}");
        }
    }
}
