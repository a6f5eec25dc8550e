//! A loopback fault proxy between nixfly and the registry, scripted per test: cut a
//! connection after N bytes of a request body, answer a request itself (429 with
//! `Retry-After`, 503, a 401 that makes a token look expired), or never answer it.
//! Counts requests and bytes.
//! Every upstream request is sent with `Connection: close`, so each client request uses its
//! own connection and faults hit exactly one request. Also a recording server for redirect tests.

use super::registry::read_head;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a proxy or server runs at most: a hung test ends instead of hanging the suite.
const LIFETIME: Duration = Duration::from_secs(300);

#[derive(Clone, Debug)]
pub enum Fault {
    /// Forward the request, then close both connections after this many body bytes.
    CutAfter(u64),
    /// Accept the request and never answer it, nor read its body (a registry that hangs).
    Hang,
    /// Read the body, then answer this redirect status with `Location:` the request's own
    /// path (a registry sending uploads elsewhere; here, back to itself).
    Redirect(u16),
    /// Forward the request after this long (a registry far away, or slow to answer it).
    Delay(Duration),
    /// Forward the request and let the registry do it, then drop its answer and answer this
    /// status instead (a proxy's 502 or timeout after the work was done).
    LoseAnswer(u16),
    /// Forward the request, and answer the registry's answer with its `Range` header saying
    /// `0-N` (ECR's, which stops moving after the first chunk).
    StaleRange(u64),
    /// Answer without forwarding (the request body is read and dropped first).
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
}

impl Fault {
    pub fn status(status: u16, headers: &[(&str, &str)]) -> Fault {
        Fault::Respond {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: format!(
                r#"{{"errors":[{{"code":"INJECTED","message":"fault injected by the test proxy ({status})"}}]}}"#
            ),
        }
    }
}

/// Fire `fault` on the `nth` (1-based) request whose method is `method` (`*`: any) and whose
/// path contains `path`; `nth == 0` fires on every such request, and with `repeat` on every
/// `nth`-th one.
#[derive(Clone, Debug)]
pub struct Rule {
    pub method: String,
    pub path: String,
    pub nth: usize,
    pub repeat: bool,
    pub fault: Fault,
}

impl Rule {
    pub fn new(method: &str, path: &str, nth: usize, fault: Fault) -> Rule {
        Rule {
            method: method.into(),
            path: path.into(),
            nth,
            repeat: false,
            fault,
        }
    }

    /// Fire on every `n`-th matching request.
    pub fn every(method: &str, path: &str, n: usize, fault: Fault) -> Rule {
        Rule {
            repeat: true,
            ..Rule::new(method, path, n, fault)
        }
    }
}

#[derive(Default)]
pub struct Stats {
    /// `METHOD path` of every request, in arrival order.
    pub requests: Mutex<Vec<String>>,
    /// Faults that fired, as `METHOD path`.
    pub fired: Mutex<Vec<String>>,
    /// Bytes after the request heads, client → registry.
    pub body_bytes: AtomicU64,
    /// `Authorization` values the registry itself answered 401 (an expired token, say).
    pub rejected_authorizations: Mutex<Vec<String>>,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    upstream: SocketAddr,
    pub stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    pub fn start(upstream: SocketAddr, rules: Vec<Rule>) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).expect("nonblocking proxy");
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let rules = Arc::new(Mutex::new(
            rules.into_iter().map(|r| (r, 0usize)).collect::<Vec<_>>(),
        ));
        let thread = {
            let (stats, stop) = (stats.clone(), stop.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + LIFETIME;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let (stats, rules) = (stats.clone(), rules.clone());
                            std::thread::spawn(move || {
                                let _ = client.set_nonblocking(false);
                                handle(client, upstream, &rules, &stats);
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        FaultProxy {
            addr,
            upstream,
            stats,
            stop,
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:<port>`: use as the registry host.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `reference` (pushed through this proxy) as the registry behind it names it, for reading
    /// the image back without the faults.
    pub fn direct(&self, reference: &str) -> String {
        reference.replace(&self.host(), &self.upstream.to_string())
    }

    pub fn fired(&self) -> Vec<String> {
        self.stats.fired.lock().unwrap().clone()
    }

    pub fn requests(&self) -> Vec<String> {
        self.stats.requests.lock().unwrap().clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

fn handle(mut client: TcpStream, upstream: SocketAddr, rules: &Mutex<Vec<(Rule, usize)>>, stats: &Stats) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(60)));
    let Some(head) = read_head(&mut client) else {
        return;
    };
    let mut words = head.split_whitespace();
    let (method, path) = (
        words.next().unwrap_or("").to_string(),
        words.next().unwrap_or("").to_string(),
    );
    let request = format!("{method} {path}");
    stats.requests.lock().unwrap().push(request.clone());
    let fault = {
        let mut rules = rules.lock().unwrap();
        rules.iter_mut().find_map(|(rule, seen)| {
            if (rule.method == "*" || rule.method.eq_ignore_ascii_case(&method)) && path.contains(&rule.path)
            {
                *seen += 1;
                let fires = match (rule.nth, rule.repeat) {
                    (0, _) => true,
                    (n, true) => *seen % n == 0,
                    (n, false) => *seen == n,
                };
                fires.then(|| rule.fault.clone())
            } else {
                None
            }
        })
    };
    if fault.is_some() {
        stats.fired.lock().unwrap().push(request);
    }
    match fault {
        Some(Fault::Respond {
            status,
            headers,
            body,
        }) => {
            drain_body(&mut client, &head);
            let mut response = format!(
                "HTTP/1.1 {status} Injected\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (k, v) in headers {
                response.push_str(&format!("{k}: {v}\r\n"));
            }
            response.push_str("\r\n");
            response.push_str(&body);
            let _ = client.write_all(response.as_bytes());
            let _ = client.shutdown(Shutdown::Both);
        }
        Some(Fault::Redirect(status)) => {
            drain_body(&mut client, &head);
            let response = format!(
                "HTTP/1.1 {status} Redirect\r\nLocation: {path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = client.write_all(response.as_bytes());
            let _ = client.shutdown(Shutdown::Both);
        }
        Some(Fault::Hang) => {
            // Hold the connection until the client gives up (or the proxy's lifetime ends).
            let _ = client.set_read_timeout(Some(Duration::from_secs(1)));
            let deadline = Instant::now() + LIFETIME;
            let mut probe = [0u8; 1];
            while Instant::now() < deadline {
                match client.peek(&mut probe) {
                    Ok(0) => break,
                    Err(e)
                        if !matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        break;
                    }
                    _ => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        }
        Some(Fault::CutAfter(limit)) => forward(client, upstream, &head, Some(limit), None, stats),
        Some(Fault::LoseAnswer(status)) => forward(client, upstream, &head, None, Some(status), stats),
        Some(Fault::StaleRange(end)) => forward_with_range(client, upstream, &head, end, stats),
        Some(Fault::Delay(delay)) => {
            std::thread::sleep(delay);
            forward(client, upstream, &head, None, None, stats)
        }
        None => forward(client, upstream, &head, None, None, stats),
    }
}

/// Read and drop the request body, so the client sees the injected answer, not a reset.
fn drain_body(client: &mut TcpStream, head: &str) {
    // Long enough for a loaded machine to send a whole test body; a complete body ends it sooner.
    let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 64 << 10];
    if let Some(len) = header_value(head, "content-length").and_then(|v| v.parse::<u64>().ok()) {
        let mut left = len;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            match client.read(&mut buf[..want]) {
                Ok(0) | Err(_) => return,
                Ok(n) => left -= n as u64,
            }
        }
    } else if header_value(head, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut tail = Vec::new();
        loop {
            match client.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    tail.extend_from_slice(&buf[..n]);
                    if tail.ends_with(b"0\r\n\r\n") {
                        return;
                    }
                    let keep = tail.len().saturating_sub(8);
                    tail.drain(..keep);
                }
            }
        }
    }
}

/// The request head as sent upstream: its own `Connection` header replaced by
/// `Connection: close`, so that each request has its connection.
fn upstream_head(head: &str) -> String {
    let mut rewritten = String::new();
    for (i, line) in head.trim_end_matches("\r\n").split("\r\n").enumerate() {
        if i > 0 && line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        rewritten.push_str(line);
        rewritten.push_str("\r\n");
    }
    rewritten.push_str("Connection: close\r\n\r\n");
    rewritten
}

/// Forward one request whole, and hand back the registry's answer with `Range: 0-{end}`.
fn forward_with_range(mut client: TcpStream, upstream: SocketAddr, head: &str, end: u64, stats: &Stats) {
    let Ok(mut server) = TcpStream::connect(upstream) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    if server.write_all(upstream_head(head).as_bytes()).is_err() {
        return;
    }
    // The body, whole, then the answer, whole.
    let mut body = Vec::new();
    if let Some(len) = header_value(head, "content-length").and_then(|v| v.parse::<u64>().ok()) {
        let _ = (&mut client).take(len).read_to_end(&mut body);
    } else if header_value(head, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        // Passed on still chunked, as its head says; it ends with the empty chunk.
        let _ = client.set_read_timeout(Some(Duration::from_secs(30)));
        let mut buf = [0u8; 64 << 10];
        while !body.ends_with(b"0\r\n\r\n") {
            match client.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&buf[..n]),
            }
        }
    }
    stats.body_bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    if server.write_all(&body).is_err() {
        return;
    }
    let mut answer = Vec::new();
    let _ = server.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (answer_head, answer_body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut out = String::new();
    for line in answer_head.split("\r\n") {
        if line.to_ascii_lowercase().starts_with("range:") {
            out.push_str(&format!("Range: 0-{end}\r\n"));
        } else {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("\r\n");
    out.push_str(answer_body);
    let _ = client.write_all(out.as_bytes());
    let _ = client.shutdown(Shutdown::Both);
}

/// Forward one request; with `cut`, close both ways after that many body bytes; with `lose`,
/// read the registry's whole answer and answer that status instead.
fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    head: &str,
    cut: Option<u64>,
    lose: Option<u16>,
    stats: &Stats,
) {
    let Ok(mut server) = TcpStream::connect(upstream) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    if server.write_all(upstream_head(head).as_bytes()).is_err() {
        return;
    }
    let cut_done = Arc::new(AtomicBool::new(false));
    let upload = {
        let (mut client, mut server) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        let cut_done = cut_done.clone();
        let (tx, rx) = std::sync::mpsc::channel::<u64>();
        let handle = std::thread::spawn(move || {
            let mut buf = [0u8; 64 << 10];
            let mut sent = 0u64;
            loop {
                let n = match client.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let allowed = cut.map_or(n as u64, |limit| (limit - sent).min(n as u64)) as usize;
                if server.write_all(&buf[..allowed]).is_err() {
                    break;
                }
                sent += allowed as u64;
                if cut.is_some_and(|limit| sent >= limit) {
                    cut_done.store(true, Ordering::Relaxed);
                    // Give the registry a moment to take in what it got, then cut both ways.
                    std::thread::sleep(Duration::from_millis(100));
                    let _ = server.shutdown(Shutdown::Both);
                    let _ = client.shutdown(Shutdown::Both);
                    break;
                }
            }
            let _ = tx.send(sent);
        });
        (handle, rx)
    };
    let mut buf = [0u8; 64 << 10];
    let mut first = true;
    loop {
        match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if std::mem::take(&mut first)
                    && buf[..n].starts_with(b"HTTP/1.1 401")
                    && let Some(auth) = header_value(head, "authorization")
                {
                    stats
                        .rejected_authorizations
                        .lock()
                        .unwrap()
                        .push(auth.to_string());
                }
                if lose.is_some() {
                    continue;
                }
                if cut_done.load(Ordering::Relaxed) || client.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    if let Some(status) = lose {
        let body = format!(
            r#"{{"errors":[{{"code":"INJECTED","message":"answer lost by the test proxy ({status})"}}]}}"#
        );
        let _ = client.write_all(
            format!(
                "HTTP/1.1 {status} Injected\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
    let (handle, rx) = upload;
    let _ = handle.join();
    if let Ok(sent) = rx.recv_timeout(Duration::from_secs(1)) {
        stats.body_bytes.fetch_add(sent, Ordering::Relaxed);
    }
}

/// A tiny HTTP server that answers every request from a script and records what it received
/// (request line and headers), e.g. to check a redirect does not carry `Authorization`.
pub struct RecordingServer {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RecordingServer {
    /// `respond` gets the request head and returns the raw response head and body.
    pub fn start(bind: &str, respond: impl Fn(&str) -> (String, String) + Send + 'static) -> RecordingServer {
        let listener = TcpListener::bind(bind).expect("bind recording server");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, stop) = (received.clone(), stop.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + LIFETIME;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let Ok((mut stream, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    let Some(head) = read_head(&mut stream) else {
                        continue;
                    };
                    received.lock().unwrap().push(head.clone());
                    let (status_and_headers, body) = respond(&head);
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status_and_headers}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.shutdown(Shutdown::Both);
                }
            })
        };
        RecordingServer {
            addr,
            received,
            stop,
            thread: Some(thread),
        }
    }

    pub fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for RecordingServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
