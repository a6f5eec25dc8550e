//! The warning flyctl gives when a machine's app listens on loopback only, where fly-proxy
//! cannot reach it (`internal/command/deploy/machines_deploymachinesapp.go`,
//! `warnAboutIncorrectListenAddress`): the most common reason a first deploy's health checks
//! fail. Once per process group and deploy, after a machine's health wait, whether it passed or
//! not, the machine's processes (`GET .../ps`) are read: every tcp service's `internal_port`
//! needs a listener on an address other than loopback. A machine whose health wait passed
//! is given time to bind (polled with flyctl's backoff, for the longer of the window and the
//! checks' grace periods), and the last look is judged; one whose checks failed already had
//! the whole wait, so one look does (flyctl polls then too: nixfly does not hold the rollback
//! up for it). Any error from the API, or no socket at all in the look judged (an old init that
//! does not report them), means no warning, as in flyctl.

use super::update::Ctx;
use crate::fly::api::ApiError;
use crate::fly::appconfig::units::parse_go_duration;
use crate::fly::types::{ProcessStat, config_checks};
use serde_json::Value;
use std::collections::BTreeSet;
use std::future::Future;
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
    config_checks(config)
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

/// flyctl's `waitForExpectedListenAddresses`: look at the processes until every expected port
/// has a reachable listener or the window is over, and judge the last look. A machine that is
/// not `healthy` gets one look. `None` when there is nothing to warn about, or a look failed.
async fn watch<F, Fut>(
    mut look: F,
    expected: &BTreeSet<u64>,
    window: Duration,
    healthy: bool,
    machine: &str,
) -> Option<String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Vec<ProcessStat>, ApiError>>,
{
    let deadline = Instant::now() + window;
    // flyctl's backoff: 0.5 s, growing by half, at most 2 s.
    let mut pause = Duration::from_millis(500);
    loop {
        let processes = look().await.ok()?;
        // No socket at all is judged only at the end too: it may be the app not up yet as well
        // as an init that does not report sockets.
        if uncovered(&processes, expected).0.is_empty() {
            return None;
        }
        if !healthy || Instant::now() >= deadline {
            return warning(&processes, expected, machine);
        }
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        pause = (pause * 3 / 2).min(Duration::from_secs(2));
    }
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
        let window = window(config, self.spec.listen_window);
        let look = || self.api.processes(machine);
        if let Some(text) = watch(look, &expected, window, healthy, machine).await {
            self.reporter.warn(text);
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

    /// `GET .../ps` as flaps sends it from Go: a process listening on nothing has `null`
    /// sockets (fly-go `ProcessStat.ListenSockets`, no `omitempty`). Read strictly, that one
    /// process failed the whole answer and the warning was never given.
    #[test]
    fn a_process_without_sockets_does_not_hide_the_others() {
        let answer = json!([
            {"pid": 1, "command": "/bin/worker", "listen_sockets": null},
            {"pid": 2, "command": "/bin/server", "listen_sockets": [
                {"proto": "tcp", "address": "127.0.0.1:8080"}
            ]},
        ]);
        let processes: Vec<ProcessStat> = serde_json::from_value(answer).expect("decodes");
        let warning = warning(&processes, &BTreeSet::from([8080]), "m1").expect("a warning");
        assert!(
            warning
                .ends_with("make it listen on 0.0.0.0:8080 (listening now: /bin/server on 127.0.0.1:8080)"),
            "{warning}"
        );
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

    /// The app of flyctl's `warn_listen_address_test.go`: one tcp service on 3000.
    fn port_3000() -> BTreeSet<u64> {
        [3000].into()
    }

    /// flyctl's `processesWithoutListener`: init's own ssh socket, on loopback, and nothing on
    /// the app's port.
    fn not_bound_yet() -> Vec<ProcessStat> {
        vec![process(&["127.0.0.1:22"])]
    }

    fn bound() -> Vec<ProcessStat> {
        vec![process(&["0.0.0.0:3000"])]
    }

    type Look = std::future::Ready<Result<Vec<ProcessStat>, ApiError>>;
    type Counter = std::sync::Arc<std::sync::atomic::AtomicUsize>;

    /// A `look` that answers `answers` in turn, then the last one forever, and counts the looks.
    fn scripted(answers: Vec<Vec<ProcessStat>>) -> (impl FnMut() -> Look, Counter) {
        let looks = Counter::default();
        let counter = Counter::clone(&looks);
        let look = move || {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::ready(Ok(answers[n.min(answers.len() - 1)].clone()))
        };
        (look, looks)
    }

    fn looks(counter: &std::sync::atomic::AtomicUsize) -> usize {
        counter.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// flyctl `TestWarnAboutIncorrectListenAddress_WaitsForSlowBind` (flyctl issue 3358): an
    /// app that binds on the third look gets no warning.
    #[tokio::test]
    async fn a_slow_binder_is_looked_at_again_and_not_warned_about() {
        let (look, counter) = scripted(vec![not_bound_yet(), not_bound_yet(), bound()]);
        let warned = watch(look, &port_3000(), Duration::from_secs(5), true, "m1").await;
        assert_eq!(warned, None);
        assert_eq!(looks(&counter), 3);
    }

    /// flyctl `TestWarnAboutIncorrectListenAddress_SucceedsImmediately`: one look, no wait.
    #[tokio::test]
    async fn an_app_already_listening_costs_one_quick_look() {
        let (look, counter) = scripted(vec![bound()]);
        let started = Instant::now();
        let warned = watch(look, &port_3000(), Duration::from_secs(5), true, "m1").await;
        assert_eq!(warned, None);
        assert_eq!(looks(&counter), 1);
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    /// flyctl `TestWarnAboutIncorrectListenAddress_WarnsAfterTimeout`: an app that never binds
    /// is warned about once the window is over, naming the address it should listen on.
    #[tokio::test]
    async fn an_app_that_never_binds_is_warned_about_after_the_window() {
        let (look, counter) = scripted(vec![not_bound_yet()]);
        let started = Instant::now();
        let warned = watch(look, &port_3000(), Duration::from_millis(300), true, "m1").await;
        let warned = warned.expect("a warning");
        assert!(
            warned.contains("not listening on the expected address"),
            "{warned}"
        );
        assert!(warned.contains("0.0.0.0:3000"), "{warned}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(looks(&counter) >= 2, "polled {} times", looks(&counter));
    }

    /// flyctl `waitForExpectedListenAddresses` judges the last look: a first look without any
    /// socket (the app not up yet) is no reason to stop looking. nixfly stopped at it and
    /// never warned about an app that then bound loopback only.
    #[tokio::test]
    async fn a_look_without_sockets_is_not_the_last_word() {
        let (look, _) = scripted(vec![vec![process(&[])], vec![process(&["127.0.0.1:3000"])]]);
        let warned = watch(look, &port_3000(), Duration::from_millis(800), true, "m1").await;
        assert!(warned.is_some_and(|w| w.contains("0.0.0.0:3000")));
        // Still no socket when the window closes: an init that does not report them.
        let (look, counter) = scripted(vec![vec![process(&[])]]);
        let warned = watch(look, &port_3000(), Duration::from_millis(300), true, "m1").await;
        assert_eq!(warned, None);
        assert!(looks(&counter) >= 2);
    }

    /// A machine whose health wait failed had the whole wait to bind: one look (flyctl looks
    /// for the window again; nixfly does not hold the rollback up for it), and no look at all
    /// is no warning.
    #[tokio::test]
    async fn an_unhealthy_machine_gets_one_look() {
        let (look, counter) = scripted(vec![not_bound_yet(), bound()]);
        let warned = watch(look, &port_3000(), Duration::from_secs(5), false, "m1").await;
        assert!(warned.is_some());
        assert_eq!(looks(&counter), 1);
        let failing = || {
            std::future::ready(Err(ApiError::Status {
                method: reqwest::Method::GET,
                url: "/v1/apps/demo/machines/m1/ps".into(),
                status: 500,
                message: "boom".into(),
                code: None,
            }))
        };
        assert_eq!(
            watch(failing, &port_3000(), Duration::from_secs(5), true, "m1").await,
            None
        );
    }

    /// flyctl `TestWarnAboutIncorrectListenAddress_HonorsGracePeriod`: with a window of
    /// almost nothing, a check's 2 s grace period lets an app that binds after 1 s go unwarned.
    #[tokio::test]
    async fn a_grace_period_gives_a_slow_binder_its_time() {
        let config = json!({"services": [{"protocol": "tcp", "internal_port": 3000,
            "checks": [{"type": "http", "grace_period": "2s"}]}]});
        let started = Instant::now();
        let look = || {
            let answer = if started.elapsed() < Duration::from_secs(1) {
                not_bound_yet()
            } else {
                bound()
            };
            std::future::ready(Ok(answer))
        };
        let window = window(&config, Duration::from_millis(5));
        assert_eq!(
            watch(look, &expected_ports(&config), window, true, "m1").await,
            None
        );
    }

    /// flyctl `TestWarnAboutIncorrectListenAddress_HonorsContextCancellation`: an interrupted
    /// deploy drops the deploy future (`rollout`'s `select!` on signals), and the polling with it.
    #[tokio::test]
    async fn dropping_the_watch_stops_it_at_once() {
        let (look, counter) = scripted(vec![not_bound_yet()]);
        let expected = port_3000();
        let watching = watch(look, &expected, Duration::from_secs(30), true, "m1");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), watching)
                .await
                .is_err()
        );
        // Past the 0.5 s pause before the next look: none comes once the watch is dropped.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(looks(&counter), 1);
    }

    /// flyctl `TestListenAddressCheckTimeoutFor_UsesLongestGracePeriod`: the window is the
    /// default unless a check (top-level, a service's tcp or http check, http_service's)
    /// has a longer grace period; the longest one wins, a shorter one changes nothing.
    #[test]
    fn the_window_is_the_longest_grace_period_when_longer_than_the_default() {
        let default = Duration::from_secs(5);
        let http_service = |periods: &[&str]| {
            let checks: Vec<Value> = periods
                .iter()
                .map(|p| json!({"type": "http", "grace_period": p}))
                .collect();
            json!({"services": [{"protocol": "tcp", "internal_port": 3000, "checks": checks}]})
        };
        assert_eq!(window(&json!({}), default), default);
        assert_eq!(window(&http_service(&[]), default), default);
        assert_eq!(window(&http_service(&["2s"]), default), default);
        assert_eq!(window(&http_service(&["45s"]), default), Duration::from_secs(45));
        let top_level = json!({"services": [{"protocol": "tcp", "internal_port": 3000}],
            "checks": {"alive": {"type": "tcp", "port": 3000, "grace_period": "1m30s"}}});
        assert_eq!(window(&top_level, default), Duration::from_secs(90));
        let tcp_check = json!({"services": [{"protocol": "tcp", "internal_port": 5432,
            "checks": [{"type": "tcp", "grace_period": "30s"}]}]});
        assert_eq!(window(&tcp_check, default), Duration::from_secs(30));
        let mut largest = http_service(&["20s", "1m"]);
        largest["checks"] = json!({"alive": {"type": "tcp", "port": 3000, "grace_period": "40s"}});
        assert_eq!(window(&largest, default), Duration::from_secs(60));
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
