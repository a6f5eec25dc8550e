//! New machines for a process group that has none (first deploy, or a group just added to
//! `[processes]`), as flyctl's `deployCreateMachinesForGroups` makes them with `--ha` (its
//! default): one machine for a group with a volume, two for a group with services, and for a
//! group without services one machine plus a standby that takes over on host failure.

use super::machine::default_guest;
use super::{AppConfig, AppConfigError, Port};
use serde_json::{Value, json};

/// What to create for one group.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupLaunch {
    pub group: String,
    /// Each new machine's config: the translation plus flyctl's default guest when no
    /// `[[vm]]` applies. Image and release metadata are the rollout's to add.
    pub config: Value,
    /// Machines that run (1 or 2); a standby comes on top.
    pub count: usize,
    /// One stopped standby for the first machine (groups without services).
    pub standby: bool,
    /// The volume the single machine mounts.
    pub volume: Option<VolumeNeed>,
}

/// A `[[mounts]]` volume a new machine needs: an unattached one of that name in the region,
/// or a new one of `size_gb` (`initial_size`, 1 GB by default as in flyctl).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeNeed {
    pub name: String,
    pub size_gb: u64,
    pub snapshot_retention: Option<u64>,
    /// `scheduled_snapshots`.
    pub auto_backup_enabled: Option<bool>,
}

impl VolumeNeed {
    /// The `POST /volumes` body for a new volume in `region` that a machine with `guest`
    /// running `image` will mount: the fields flyctl's `deploy_first.go` sends (encrypted, and
    /// the guest and image so that Fly places the volume on a host that can run the machine).
    /// Unset options are left out for the platform's defaults.
    pub fn create_request(&self, region: &str, guest: &Value, image: &str) -> Value {
        let mut body = json!({
            "name": self.name,
            "region": region,
            "size_gb": self.size_gb,
            "encrypted": true,
            "compute": guest,
            "compute_image": image,
        });
        if let Some(days) = self.snapshot_retention {
            body["snapshot_retention"] = json!(days);
        }
        if let Some(enabled) = self.auto_backup_enabled {
            body["auto_backup_enabled"] = json!(enabled);
        }
        body
    }
}

impl GroupLaunch {
    #[cfg(test)]
    pub fn total(&self) -> usize {
        self.count + usize::from(self.standby)
    }
}

/// The public addresses flyctl gives an app with services on its first deploy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PublicIps {
    /// No service: no public address.
    #[default]
    None,
    /// Only HTTP on 80 and HTTPS on 443: a dedicated IPv6 and a shared IPv4.
    Shared,
    /// Other ports or UDP: a dedicated IPv4 is needed, which costs money; flyctl asks, so
    /// nixfly leaves it to `fly ips allocate-v4` and says so.
    Dedicated,
}

impl AppConfig {
    /// flyctl's `Config.DetermineIPType` (internal/appconfig/config.go), which its first deploy
    /// asks (`deploy_first.go`): any service at all gets addresses; a UDP `[[services]]` entry,
    /// or a TCP one with a port other than HTTP on 80 and HTTP+TLS on 443, needs a dedicated
    /// IPv4. `[http_service]` is always standard.
    pub fn public_ips(&self) -> PublicIps {
        if self.http_service.is_none() && self.services.is_empty() {
            return PublicIps::None;
        }
        let dedicated = self.services.iter().any(|s| match s.protocol.as_str() {
            "udp" => true,
            "tcp" => s.ports.iter().any(|port| {
                let handlers: Vec<&str> = port.handlers.iter().map(String::as_str).collect();
                has_non_http_ports(port)
                    || (contains_port(port, 80) && handlers != ["http"])
                    || (contains_port(port, 443)
                        && handlers != ["http", "tls"]
                        && handlers != ["tls", "http"])
            }),
            _ => false,
        });
        if dedicated {
            PublicIps::Dedicated
        } else {
            PublicIps::Shared
        }
    }

    /// Where the app answers on the web, as flyctl prints it after a deploy
    /// (`internal/appconfig/config.go`, `URL`): https on 443 for an `[http_service]` or a
    /// service with a tls+http port 443, else http on 80, else the lowest https port, else the
    /// lowest http port; none without an http handler.
    pub fn url(&self, app: &str) -> Option<String> {
        if self.http_service.as_ref().is_some_and(|s| s.internal_port > 0) {
            return Some(format!("https://{app}.fly.dev/"));
        }
        let (mut https, mut http): (Vec<u16>, Vec<u16>) = (Vec::new(), Vec::new());
        for port in self.services.iter().flat_map(|s| &s.ports) {
            let Some(number) = port.port else { continue };
            if !port.handlers.iter().any(|h| h == "http") {
                continue;
            }
            if port.handlers.iter().any(|h| h == "tls") {
                https.push(number);
            } else {
                http.push(number);
            }
        }
        if https.contains(&443) {
            Some(format!("https://{app}.fly.dev/"))
        } else if http.contains(&80) {
            Some(format!("http://{app}.fly.dev/"))
        } else if let Some(port) = https.iter().min() {
            Some(format!("https://{app}.fly.dev:{port}/"))
        } else {
            http.iter()
                .min()
                .map(|port| format!("http://{app}.fly.dev:{port}/"))
        }
    }

    pub fn launch(&self, group: &str) -> Result<GroupLaunch, AppConfigError> {
        let config = self.new_machine_config(group, default_guest())?;
        let volume = self
            .mounts
            .iter()
            .find(|m| self.applies_to(&m.processes, group))
            .map(|m| VolumeNeed {
                name: m.source.clone(),
                size_gb: m
                    .initial_size_gb
                    .unwrap_or_else(|| default_volume_gb(&config["guest"])),
                snapshot_retention: m.snapshot_retention,
                auto_backup_enabled: m.scheduled_snapshots,
            });
        let has_services = config
            .get("services")
            .and_then(Value::as_array)
            .is_some_and(|s| !s.is_empty());
        let (count, standby) = match (&volume, has_services) {
            (Some(_), _) => (1, false),
            (None, true) => (2, false),
            (None, false) => (1, true),
        };
        Ok(GroupLaunch {
            group: group.to_string(),
            config,
            count,
            standby,
            volume,
        })
    }

    /// A new machine's config for `group`, as flyctl's `launchInputForLaunch`
    /// (`internal/command/deploy/machines_launchinput.go`) makes it: fly.toml's translation,
    /// `guest` when no `[[vm]]` applies, and the top-level `host_dedication_id` on every new
    /// machine, `[[vm]]` or not.
    pub fn new_machine_config(&self, group: &str, guest: Value) -> Result<Value, AppConfigError> {
        let mut config = self.machine_config(group)?;
        if config.get("guest").is_none() {
            config["guest"] = guest;
        }
        if let Some(host) = &self.host_dedication_id {
            config["guest"]["host_dedication_id"] = host.as_str().into();
        }
        Ok(config)
    }
}

/// The bounds of a port entry's range, as fly-go's `MachinePort` reads a missing bound.
fn port_range(port: &Port) -> Option<(u32, u32)> {
    if port.start_port.is_none() && port.end_port.is_none() {
        return None;
    }
    Some((
        port.start_port.map_or(0, u32::from),
        port.end_port.map_or(65535, u32::from),
    ))
}

/// fly-go's `MachinePort.ContainsPort`.
fn contains_port(port: &Port, wanted: u16) -> bool {
    port.port == Some(wanted)
        || port_range(port).is_some_and(|(start, end)| (start..=end).contains(&u32::from(wanted)))
}

/// fly-go's `MachinePort.HasNonHttpPorts`: a port other than 80 and 443, or a range reaching
/// beyond them.
fn has_non_http_ports(port: &Port) -> bool {
    if port.port.is_some_and(|p| p != 80 && p != 443) {
        return true;
    }
    let Some((start, end)) = port_range(port) else {
        return false;
    };
    let count = i64::from(end) - i64::from(start) + 1;
    let http = (start..=end).contains(&80);
    let https = (start..=end).contains(&443);
    match count {
        c if c > 2 => true,
        2 => !http || !https,
        1 => !http && !https,
        _ => false,
    }
}

/// The config of a standby for machine `primary`: flyctl lists the machine in `standbys` and
/// tells the standby's processes in `FLY_STANDBY_FOR`. Standbys are created stopped.
pub fn standby_config(config: &Value, primary: &str) -> Value {
    let mut standby = config.clone();
    standby["standbys"] = json!([primary]);
    standby["env"]["FLY_STANDBY_FOR"] = json!(primary);
    standby
}

/// What `standby_config` adds, taken away: a machine of this config stands by for none.
pub fn clear_standby(config: &mut Value) {
    if let Some(fields) = config.as_object_mut() {
        fields.remove("standbys");
    }
    if let Some(env) = config.get_mut("env").and_then(Value::as_object_mut) {
        env.remove("FLY_STANDBY_FOR");
    }
}

/// A new volume's size when `[[mounts]]` gives no `initial_size`: flyctl's defaults
/// (`deploy_first.go`; `machines.go`: 1 GB, 100 GB for a machine with a GPU).
fn default_volume_gb(guest: &Value) -> u64 {
    let gpu = guest
        .get("gpu_kind")
        .and_then(Value::as_str)
        .is_some_and(|kind| !kind.is_empty());
    if gpu { 100 } else { 1 }
}

#[cfg(test)]
mod url_tests {
    use crate::fly::appconfig::AppConfig;
    use std::path::Path;

    fn url(services: &str) -> Option<String> {
        let text = format!("app = \"test\"\n{services}");
        let (config, _) = AppConfig::parse(&text, Path::new("fly.toml")).unwrap();
        config.url("test")
    }

    fn ports(ports: &[(u16, &str)]) -> String {
        let mut text = "[[services]]\nprotocol = \"tcp\"\ninternal_port = 8080\n".to_string();
        for (port, handlers) in ports {
            text.push_str(&format!(
                "[[services.ports]]\nport = {port}\nhandlers = [{handlers}]\n"
            ));
        }
        text
    }

    /// The cases of flyctl's `TestURL` (`internal/appconfig/config_test.go`).
    #[test]
    fn the_url_is_the_one_flyctl_prints() {
        let https = Some("https://test.fly.dev/".to_string());
        let http = Some("http://test.fly.dev/".to_string());
        assert_eq!(url("[http_service]\ninternal_port = 8080\n"), https);
        // https on 443 before http on 80
        assert_eq!(
            url(&ports(&[(80, "\"http\""), (443, "\"http\", \"tls\"")])),
            https
        );
        // 443 without http is no web port
        assert_eq!(url(&ports(&[(80, "\"http\""), (443, "\"tls\"")])), http);
        // http on 80 before https on another port
        assert_eq!(
            url(&ports(&[(80, "\"http\""), (3443, "\"tls\", \"http\"")])),
            http
        );
        // https on another port before http on another port
        assert_eq!(
            url(&ports(&[(8080, "\"http\""), (3443, "\"tls\", \"http\"")])),
            Some("https://test.fly.dev:3443/".to_string())
        );
        assert_eq!(
            url(&ports(&[(8080, "\"http\"")])),
            Some("http://test.fly.dev:8080/".to_string())
        );
        // no http handler: no URL
        assert_eq!(url(&ports(&[(80, "\"fancy\""), (443, "\"foo\"")])), None);
        assert_eq!(url(""), None);
    }
}
