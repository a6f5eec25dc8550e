//! The real registry (CNCF distribution: Debian's `docker-registry`, or nixpkgs' `registry`) on a free loopback
//! port, with htpasswd Basic auth, token auth (the token service runs in this process and
//! signs JWTs with a key whose certificate the registry trusts), or no auth; and skopeo
//! helpers that read back what was pushed.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const USER: &str = "nixfly-user";
pub const PASSWORD: &str = "correct-horse-battery-staple-42";
const SERVICE: &str = "nixfly-test-registry";
/// The identity token (OAuth2 refresh token) the token server accepts, as `docker login` to a
/// registry with OAuth support stores it in `auths.<host>.identitytoken`.
pub const IDENTITY_TOKEN: &str = "nixfly-identity-refresh-token-0123456789";
const ISSUER: &str = "nixfly-test-issuer";
const REGISTRY_LEEWAY_SECS: u64 = 60;

#[derive(Clone, Debug)]
pub enum AuthMode {
    None,
    /// htpasswd (bcrypt) with one user.
    Htpasswd {
        user: String,
        password: String,
    },
    /// Tokens the registry accepts for `lifetime` (short ones expire mid-push); clients are
    /// told `advertised` in `expires_in`, which may differ to test a registry-side expiry.
    Token {
        lifetime: Duration,
        advertised: Duration,
        /// The token service grants no token spanning two repositories, as a credential for
        /// one app's repository (a Fly deploy token) may read no other: a cross-repository
        /// mount is refused (403).
        one_repository: bool,
    },
}

pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub auth: AuthMode,
    pub token_server: Option<TokenServer>,
    /// Served over TLS (`start_tls`): the CA that signed its certificate, in `ca_file`, and
    /// skopeo trusts it through `--cert-dir`.
    pub tls: bool,
}

/// A free port on 127.0.0.1 (the listener is dropped right away; a clash is retried by `start`).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free loopback port")
        .port()
}

fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

impl AuthMode {
    /// Token auth whose tokens live `lifetime`, as the client is told.
    pub fn token(lifetime: Duration) -> AuthMode {
        AuthMode::Token {
            lifetime,
            advertised: lifetime,
            one_repository: false,
        }
    }

    /// htpasswd as registry.fly.io takes a Fly token: user `x`, the token as password.
    pub fn fly(token: &str) -> AuthMode {
        AuthMode::Htpasswd {
            user: "x".into(),
            password: token.into(),
        }
    }

    /// htpasswd with the default test user (`USER`/`PASSWORD`).
    pub fn htpasswd() -> AuthMode {
        AuthMode::Htpasswd {
            user: USER.into(),
            password: PASSWORD.into(),
        }
    }
}

/// The distribution registry on `path`: Debian's package installs it as `docker-registry`,
/// nixpkgs' `distribution` (the dev shell) as `registry`.
pub fn registry_binary(path: &std::ffi::OsStr) -> Option<PathBuf> {
    ["docker-registry", "registry"].iter().find_map(|name| {
        std::env::split_paths(path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// This machine's IPv4 address on its default route: a host nixfly does not take for loopback
/// (which it talks plain HTTP to), for a registry served over TLS. No packet is sent.
pub fn non_loopback_ipv4() -> std::net::Ipv4Addr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind a UDP socket");
    let found = socket
        .connect("198.51.100.1:9")
        .and_then(|()| socket.local_addr())
        .ok()
        .and_then(|addr| match addr.ip() {
            std::net::IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_unspecified() => Some(ip),
            _ => None,
        });
    found.expect(
        "this test needs an IPv4 address other than loopback (a default route): nixfly talks plain \
         HTTP to loopback registries, and this registry serves TLS",
    )
}

/// A CA and a server certificate it signs for `ip`, made by openssl: `ca.pem`, `server.pem`
/// and `server.key` in `dir`.
fn make_certificates(dir: &Path, ip: std::net::Ipv4Addr) {
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    run_ok(
        Command::new("openssl")
            .args(["req", "-x509", "-days", "2", "-subj", "/CN=nixfly test CA"])
            .args(ec)
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign"])
            .args(["-keyout", &path("ca.key"), "-out", &path("ca.pem")]),
    );
    run_ok(
        Command::new("openssl")
            .args(["req", "-subj", "/CN=nixfly test registry"])
            .args(ec)
            .args(["-keyout", &path("server.key"), "-out", &path("server.csr")]),
    );
    std::fs::write(
        dir.join("server.ext"),
        format!("subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\n"),
    )
    .expect("write certificate extensions");
    run_ok(Command::new("openssl").args([
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        &path("server.csr"),
        "-CA",
        &path("ca.pem"),
        "-CAkey",
        &path("ca.key"),
        "-CAcreateserial",
        "-extfile",
        &path("server.ext"),
        "-out",
        &path("server.pem"),
    ]));
}

impl Registry {
    pub fn start(auth: AuthMode) -> Registry {
        Registry::start_with(auth, false)
    }

    /// The registry served over TLS (HTTP/2 offered, as distribution offers it by default) on
    /// this machine's non-loopback address, with a certificate from a CA of its own
    /// (`ca_file`), and its access log on (`access_log_protocols`).
    pub fn start_tls(auth: AuthMode) -> Registry {
        Registry::start_with(auth, true)
    }

    fn start_with(auth: AuthMode, tls: bool) -> Registry {
        let dir = tempfile::tempdir().expect("registry temp dir");
        let token_server = match &auth {
            AuthMode::Token {
                lifetime,
                advertised,
                one_repository,
            } => Some(TokenServer::start(
                dir.path(),
                *lifetime,
                *advertised,
                *one_repository,
            )),
            _ => None,
        };
        let auth_yaml = match &auth {
            AuthMode::None => String::new(),
            AuthMode::Htpasswd { user, password } => {
                let line = run_ok(Command::new("htpasswd").args(["-Bbn", user, password]));
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, line).expect("write htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: nixfly-test\n    path: {}\n",
                    path.display()
                )
            }
            AuthMode::Token { .. } => {
                let ts = token_server.as_ref().expect("token server");
                format!(
                    "auth:\n  token:\n    realm: http://{}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                    ts.addr,
                    dir.path().join("token-cert.pem").display()
                )
            }
        };
        let storage = dir.path().join("storage");
        let port = free_port();
        let ip = if tls {
            non_loopback_ipv4()
        } else {
            std::net::Ipv4Addr::LOCALHOST
        };
        let tls_yaml = if tls {
            make_certificates(dir.path(), ip);
            let certs = dir.path().join("skopeo-certs");
            std::fs::create_dir_all(&certs).expect("create skopeo's cert dir");
            std::fs::copy(dir.path().join("ca.pem"), certs.join("ca.crt")).expect("copy the CA");
            format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.path().join("server.pem").display(),
                dir.path().join("server.key").display()
            )
        } else {
            String::new()
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: {}\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: {ip}:{port}\n  secret: nixfly-test-secret\n{tls_yaml}{auth_yaml}",
            !tls,
            storage.display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let binary = registry_binary(&std::env::var_os("PATH").unwrap_or_default()).expect(
            "no registry on PATH: apt install docker-registry, or enter the dev shell \
             (nixpkgs' distribution installs it as `registry`)",
        );
        let child = Command::new(&binary)
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let mut registry = Registry {
            child,
            dir,
            addr: SocketAddr::from((ip, port)),
            auth,
            token_server,
            tls,
        };
        assert!(
            registry.wait_ready(Duration::from_secs(15)),
            "the registry did not become ready on port {port}:\n{}",
            registry.log()
        );
        registry
    }

    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            match http_status(self.addr, "GET", "/v2/") {
                Some(200 | 401) => return true,
                // Go's answer to plain HTTP on a TLS port.
                Some(400) if self.tls => return true,
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `--creds` for this registry.
    pub fn creds(&self) -> String {
        match &self.auth {
            AuthMode::Htpasswd { user, password } => format!("{user}:{password}"),
            _ => format!("{USER}:{PASSWORD}"),
        }
    }

    /// Where the registry keeps its data (blobs, uploads): benchmarks measure pushed bytes here.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where distribution keeps the bytes of blob `digest` (`sha256:<hex>` or the bare hex):
    /// `blobs/sha256/<first two hex>/<hex>/data` (blobDataPathSpec in
    /// registry/storage/paths.go).
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Total bytes of committed blobs.
    pub fn blob_bytes(&self) -> u64 {
        fn walk(path: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(path) else {
                return 0;
            };
            entries
                .flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        walk(&p)
                    } else if p.file_name().is_some_and(|n| n == "data") {
                        e.metadata().map_or(0, |m| m.len())
                    } else {
                        0
                    }
                })
                .sum()
        }
        walk(&self.storage_dir().join("docker/registry/v2/blobs"))
    }

    /// Upload sessions the registry still holds open (`_uploads/<id>` under each repository,
    /// with its `startedat`): a push that ends, however, should leave none. A cancelled session
    /// leaves a `hashstates` directory behind in distribution 2.8 (its handler stores the hash
    /// state after the cancel); that is not a session any more (a GET on it answers 404).
    pub fn open_upload_sessions(&self) -> Vec<PathBuf> {
        fn walk(path: &Path, found: &mut Vec<PathBuf>) {
            let Ok(entries) = std::fs::read_dir(path) else {
                return;
            };
            for entry in entries.flatten() {
                let p = entry.path();
                if !p.is_dir() {
                    continue;
                }
                if p.file_name().is_some_and(|n| n == "_uploads") {
                    found.extend(
                        std::fs::read_dir(&p)
                            .into_iter()
                            .flatten()
                            .flatten()
                            .map(|e| e.path())
                            .filter(|session| session.join("startedat").exists()),
                    );
                } else {
                    walk(&p, found);
                }
            }
        }
        let mut found = Vec::new();
        walk(
            &self.storage_dir().join("docker/registry/v2/repositories"),
            &mut found,
        );
        found
    }

    /// The registry's own log (warnings and errors), for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The PEM file of the CA that signed a TLS registry's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The protocol (`HTTP/1.1`, `HTTP/2.0`) of every request in a TLS registry's access log
    /// whose User-Agent starts with `agent`, in order: distribution logs each request in the
    /// combined log format (`... "GET /v2/ HTTP/1.1" 200 2 "referer" "user agent"`).
    pub fn access_log_protocols(&self, agent: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|line| {
                let quoted: Vec<&str> = line.split('"').collect();
                let protocol = quoted.get(1)?.split_whitespace().nth(2)?;
                let user_agent = quoted.get(5)?;
                (protocol.starts_with("HTTP/") && user_agent.starts_with(agent)).then(|| protocol.to_string())
            })
            .collect()
    }

    /// skopeo arguments that reach this registry: plain HTTP, or TLS verified against its CA,
    /// and its credentials.
    pub fn skopeo_args(&self) -> Vec<String> {
        let mut args = vec![if self.tls {
            format!("--cert-dir={}", self.dir.path().join("skopeo-certs").display())
        } else {
            "--tls-verify=false".to_string()
        }];
        if !matches!(self.auth, AuthMode::None) {
            args.push(format!("--creds={}", self.creds()));
        }
        args
    }

    /// `skopeo inspect --raw`: the manifest as stored.
    pub fn skopeo_manifest(&self, reference: &str) -> serde_json::Value {
        self.skopeo_json(reference, &["--raw"])
    }

    /// `skopeo inspect --config`: the image config.
    pub fn skopeo_config(&self, reference: &str) -> serde_json::Value {
        self.skopeo_json(reference, &["--config"])
    }

    /// `skopeo inspect --raw`'s exit status and stderr, for checks that a tag does not exist.
    pub fn skopeo_inspect_fails(&self, reference: &str) -> bool {
        let out = Command::new("skopeo")
            .arg("inspect")
            .arg("--raw")
            .args(self.skopeo_args())
            .arg(format!("docker://{reference}"))
            .env("HOME", self.dir.path())
            .output()
            .expect("run skopeo");
        !out.status.success()
    }

    fn skopeo_json(&self, reference: &str, flags: &[&str]) -> serde_json::Value {
        let out = run_ok(
            Command::new("skopeo")
                .arg("inspect")
                .args(flags)
                .args(self.skopeo_args())
                .arg(format!("docker://{reference}"))
                .env("HOME", self.dir.path()),
        );
        serde_json::from_slice(&out).expect("skopeo printed JSON")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Status of a bare HTTP/1.1 request, or `None` when nothing answered.
pub fn http_status(addr: SocketAddr, method: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The token service distribution's token auth sends clients to: checks Basic credentials
/// and issues RS256 JWTs granting the requested scopes, signed by a key made for this run.
pub struct TokenServer {
    pub addr: SocketAddr,
    /// Tokens issued so far.
    pub issued: Arc<AtomicUsize>,
    /// Scopes requested, one entry per token request.
    pub requests: Arc<Mutex<Vec<String>>>,
    /// Every token issued, to check none is ever printed.
    pub tokens: Arc<Mutex<Vec<String>>>,
    /// How many of the next token requests are answered 503 with `Retry-After: 1` (a token
    /// service that is failing for a moment).
    pub fail_next: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    fn start(dir: &Path, lifetime: Duration, advertised: Duration, one_repository: bool) -> TokenServer {
        let key = dir.join("token-key.pem");
        let cert = dir.join("token-cert.pem");
        run_ok(Command::new("openssl").args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=nixfly-test-token-issuer",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ]));
        let der =
            run_ok(Command::new("openssl").args(["x509", "-in", cert.to_str().unwrap(), "-outform", "DER"]));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let addr = listener.local_addr().unwrap();
        let issued = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let tokens = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let signer = Signer {
            key,
            x5c: STANDARD.encode(der),
            lifetime,
            advertised,
            one_repository,
        };
        let fail_next = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (issued, requests, tokens, stop, fail_next) = (
                issued.clone(),
                requests.clone(),
                tokens.clone(),
                stop.clone(),
                fail_next.clone(),
            );
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(600);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let _ = stream.set_nonblocking(false);
                            if fail_next
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                                .is_ok()
                            {
                                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                                let _ = read_head(&mut stream);
                                let _ = stream.write_all(
                                    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                                );
                                continue;
                            }
                            serve_token(stream, &signer, &issued, &requests, &tokens);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        TokenServer {
            addr,
            issued,
            requests,
            tokens,
            fail_next,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Signer {
    key: PathBuf,
    x5c: String,
    lifetime: Duration,
    advertised: Duration,
    one_repository: bool,
}

impl Signer {
    fn token(&self, scopes: &[String]) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .filter_map(|scope| {
                let mut parts = scope.splitn(3, ':');
                let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                Some(serde_json::json!({
                    "type": kind, "name": name,
                    "actions": actions.split(',').collect::<Vec<_>>(),
                }))
            })
            .collect();
        // distribution accepts a token until 60 s (its clock-skew leeway) after `exp`: take
        // that off so the token dies after `lifetime`.
        let exp = (now + self.lifetime.as_secs()).saturating_sub(REGISTRY_LEEWAY_SECS);
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5c": [self.x5c]});
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": USER, "aud": SERVICE,
            "exp": exp, "nbf": now - 1, "iat": now,
            "jti": format!("{now}-{}", rand_suffix()),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run openssl dgst");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(signing_input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().expect("openssl dgst");
        assert!(out.status.success(), "openssl dgst failed");
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(out.stdout))
    }
}

fn rand_suffix() -> u64 {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed) as u64
}

fn serve_token(
    mut stream: TcpStream,
    signer: &Signer,
    issued: &AtomicUsize,
    requests: &Mutex<Vec<String>>,
    tokens: &Mutex<Vec<String>>,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let Some(head) = read_head(&mut stream) else {
        return;
    };
    let mut lines = head.lines();
    let mut request_line = lines.next().unwrap_or_default().split_whitespace();
    let method = request_line.next().unwrap_or("GET").to_string();
    let target = request_line.next().unwrap_or("/").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let authorization = header("authorization");
    let url = url::Url::parse(&format!("http://token{target}")).expect("request target");
    // distribution's docs/spec/auth/oauth.md: a POST of a form with grant_type=refresh_token,
    // the refresh token, client_id, service and a space-separated scope.
    let form: Vec<(String, String)> = if method == "POST" {
        let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0u8; length];
        if stream.read_exact(&mut body).is_err() {
            return;
        }
        url::form_urlencoded::parse(&body).into_owned().collect()
    } else {
        Vec::new()
    };
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let scopes: Vec<String> = url
        .query_pairs()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned())
        .chain(field("scope").map(str::to_string))
        .flat_map(|v| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .collect();
    requests.lock().unwrap().push(scopes.join(" "));
    let mut repositories: Vec<&str> = scopes
        .iter()
        .filter_map(|scope| scope.strip_prefix("repository:")?.split(':').next())
        .collect();
    repositories.sort_unstable();
    repositories.dedup();
    let expected = format!("Basic {}", STANDARD.encode(format!("{USER}:{PASSWORD}")));
    let refused = signer.one_repository && repositories.len() > 1;
    let refresh_grant = !refused
        && field("grant_type") == Some("refresh_token")
        && field("refresh_token") == Some(IDENTITY_TOKEN)
        && field("service") == Some(SERVICE)
        && field("client_id").is_some_and(|id| !id.is_empty());
    if refresh_grant {
        issued.fetch_add(1, Ordering::Relaxed);
        let token = signer.token(&scopes);
        tokens.lock().unwrap().push(token.clone());
        let body =
            serde_json::json!({"access_token": token, "expires_in": signer.advertised.as_secs()}).to_string();
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    let (status, body) = if refused {
        (
            "403 Forbidden",
            r#"{"details":"this credential reaches one repository only"}"#.to_string(),
        )
    } else if authorization.as_deref() == Some(expected.as_str()) {
        issued.fetch_add(1, Ordering::Relaxed);
        let token = signer.token(&scopes);
        tokens.lock().unwrap().push(token.clone());
        (
            "200 OK",
            serde_json::json!({"token": token, "expires_in": signer.advertised.as_secs()}).to_string(),
        )
    } else {
        (
            "401 Unauthorized",
            r#"{"details":"invalid username or password"}"#.to_string(),
        )
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// The request head (up to the blank line), or `None` on EOF or a head over 64 KiB.
pub fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 << 10 || stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).ok()
}

#[test]
fn the_registry_is_found_under_debians_name_or_nixpkgs_name() {
    let nixpkgs_bin = tempfile::tempdir().unwrap();
    let debian_bin = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(nixpkgs_bin.path().join("registry"), "").unwrap();
    std::fs::write(debian_bin.path().join("docker-registry"), "").unwrap();
    let path = |dirs: &[&Path]| std::env::join_paths(dirs).unwrap();
    assert_eq!(
        registry_binary(&path(&[empty.path(), nixpkgs_bin.path()])),
        Some(nixpkgs_bin.path().join("registry"))
    );
    assert_eq!(
        registry_binary(&path(&[nixpkgs_bin.path(), debian_bin.path()])),
        Some(debian_bin.path().join("docker-registry"))
    );
    assert_eq!(registry_binary(&path(&[empty.path()])), None);
}
