//! The warning flyctl gives when a machine's app listens on loopback only, where fly-proxy
//! cannot reach it (`internal/command/deploy/machines_deploymachinesapp.go`,
//! `warnAboutIncorrectListenAddress`): the most common reason a first deploy's health checks
//! fail. Once per process group and deploy, after a machine's health wait, whether it passed or
//! not, the machine's processes (`GET .../ps`) are read: every tcp service's `internal_port`
//! needs a listener on an address other than loopback. A machine whose health wait passed
//! is given time to bind (polled with flyctl's backoff, for the longer of the window and the
//! checks' grace periods); one whose checks failed already had the whole wait, so one look
//! does. Any error from the API, or no socket at all (an old init that does not report them),
//! means no warning, as in flyctl.

use super::update::Ctx;
use crate::fly::appconfig::units::parse_go_duration;
use crate::fly::types::ProcessStat;
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// The tcp ports the machine's services expect its app to listen on.
fn expected_ports(config: &Value) -> BTreeSet<u64> {
    config["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|service| service["protocol"] == "tcp")
        .filter_map(|service| service["internal_port"].as_u64())
        .collect()
}

/// flyctl's `listenAddressCheckTimeoutFor`: the window, or the longest grace period of the
/// machine's checks and its services' checks when that is longer.
fn window(config: &Value, at_least: Duration) -> Duration {
    let top = config["checks"].as_object().into_iter().flat_map(|c| c.values());
    let services = config["services"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["checks"].as_array().into_iter().flatten());
    top.chain(services)
        .filter_map(|check| check["grace_period"].as_str())
        .filter_map(|text| parse_go_duration(text).ok())
        .fold(at_least, Duration::max)
}

/// Whether a socket address is a loopback one. As flyctl's `net.SplitHostPort` and
/// `net.ParseIP`: a host that is no IP address (`*`) counts as reachable.
fn port_and_loopback(address: &str) -> Option<(u64, bool)> {
    if let Ok(socket) = address.parse::<SocketAddr>() {
        return Some((u64::from(socket.port()), socket.ip().is_loopback()));
    }
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((port, host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())))
}

/// The expected ports no process listens on other than on loopback, and how many sockets
/// there are in all.
fn uncovered(processes: &[ProcessStat], expected: &BTreeSet<u64>) -> (BTreeSet<u64>, usize) {
    let mut uncovered = expected.clone();
    let mut sockets = 0;
    for socket in processes.iter().flat_map(|p| &p.listen_sockets) {
        sockets += 1;
        if let Some((port, false)) = port_and_loopback(&socket.address) {
            uncovered.remove(&port);
        }
    }
    (uncovered, sockets)
}

/// The warning's text, or none.
fn warning(processes: &[ProcessStat], expected: &BTreeSet<u64>, machine: &str) -> Option<String> {
    let (uncovered, sockets) = uncovered(processes, expected);
    if uncovered.is_empty() || sockets == 0 {
        return None;
    }
    let mut text = format!(
        "machine {machine}: the app is not listening on the expected address, so fly-proxy \
         cannot reach it; make it listen on {}",
        uncovered
            .iter()
            .map(|port| format!("0.0.0.0:{port}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let listening: Vec<String> = processes
        .iter()
        .filter_map(|p| {
            let tcp: Vec<&str> = p
                .listen_sockets
                .iter()
                .filter(|s| s.proto == "tcp")
                .map(|s| s.address.as_str())
                .collect();
            (!tcp.is_empty()).then(|| format!("{} on {}", p.command, tcp.join(", ")))
        })
        .collect();
    if !listening.is_empty() {
        text.push_str(&format!(" (listening now: {})", listening.join("; ")));
    }
    Some(text)
}

impl Ctx {
    /// Warn, once per process group, when the app of `machine` (whose config is `config`) does
    /// not listen where fly-proxy sends its services' traffic. `healthy`: its health wait passed,
    /// so it may still be binding and is given time.
    pub async fn check_listen_addresses(&self, machine: &str, group: &str, config: &Value, healthy: bool) {
        let expected = expected_ports(config);
        if expected.is_empty() || !self.first_listen_check(group) {
            return;
        }
        let deadline = Instant::now() + window(config, self.spec.listen_window);
        // flyctl's backoff: 0.5 s, growing by half, at most 2 s.
        let mut pause = Duration::from_millis(500);
        loop {
            let Ok(processes) = self.api.processes(machine).await else {
                return;
            };
            let found = warning(&processes, &expected, machine);
            let Some(text) = found else { return };
            if !healthy || Instant::now() >= deadline {
                self.reporter.warn(text);
                return;
            }
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
            pause = (pause * 3 / 2).min(Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fly::types::ListenSocket;
    use serde_json::json;

    fn process(addresses: &[&str]) -> ProcessStat {
        ProcessStat {
            command: "/bin/server".into(),
            listen_sockets: addresses
                .iter()
                .map(|a| ListenSocket {
                    proto: "tcp".into(),
                    address: a.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn loopback_listeners_leave_a_port_uncovered() {
        let expected: BTreeSet<u64> = [8080, 9090].into();
        let warned = warning(&[process(&["127.0.0.1:8080", "[::]:9090"])], &expected, "m1").unwrap();
        assert!(warned.contains("make it listen on 0.0.0.0:8080"), "{warned}");
        assert!(!warned.contains("0.0.0.0:9090"), "{warned}");
        assert!(
            warned.contains("/bin/server on 127.0.0.1:8080, [::]:9090"),
            "{warned}"
        );
        for covering in ["0.0.0.0:8080", "[::]:8080", "172.19.0.2:8080", "*:8080"] {
            let processes = [process(&[covering, "0.0.0.0:9090"])];
            assert_eq!(warning(&processes, &expected, "m1"), None, "{covering}");
        }
        assert!(warning(&[process(&["[::1]:8080", "0.0.0.0:9090"])], &expected, "m1").is_some());
        // No socket at all: an init that does not report them, so no warning (flyctl).
        assert_eq!(warning(&[process(&[])], &expected, "m1"), None);
    }

    #[test]
    fn only_tcp_services_count_and_grace_periods_lengthen_the_window() {
        let config = json!({
            "services": [
                {"protocol": "tcp", "internal_port": 8080,
                 "checks": [{"type": "http", "grace_period": "40s"}]},
                {"protocol": "udp", "internal_port": 5353},
            ],
            "checks": {"alive": {"type": "tcp", "port": 8080, "grace_period": "20s"}},
        });
        assert_eq!(expected_ports(&config), [8080].into());
        let at_least = Duration::from_secs(15);
        assert_eq!(window(&config, at_least), Duration::from_secs(40));
        assert_eq!(window(&json!({}), at_least), at_least);
    }
}
