//! The HTTP side of the registry client: one host, auth applied per request, retries with
//! backoff honouring `Retry-After`, redirects without leaking `Authorization`, bounded
//! parallelism, an idle timeout, and `-v` request logs with credentials redacted.
//!
//! The idle timeout (`--registry-timeout`) ends a request when the connection has not moved for
//! that long: neither taken request body bytes nor answered. reqwest's own `read_timeout`
//! cannot serve: it counts from the start of the request to the response head, so a long
//! upload would hit it while data flows. Here a request body is sent through [`Watched`],
//! which notes each time the connection asks for more; time spent waiting for our own
//! producer (a slow compressor) does not count.

use super::auth::{Authenticator, Credentials, Scope};
use super::error::{RegistryError, StatusError, parse_api_errors};
use crate::progress::Reporter;
use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Response, StatusCode};
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use url::Url;

pub use crate::retry::{RETRYABLE_STATUSES, RetryPolicy};

const MAX_REDIRECTS: usize = 5;
/// `--registry-timeout` default: long enough for a registry committing a big blob.
const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 120;
/// Slices a buffered request body is sent in, so its progress is seen.
const BODY_SLICE: usize = 256 * 1024;

/// How the blob data of a streamed upload is sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum UploadMode {
    /// One PATCH with the whole body (chunked transfer encoding), as docker and skopeo do.
    #[default]
    Stream,
    /// PATCHes of a bounded size with `Content-Range`, each acknowledged by the registry.
    Chunked,
    /// One PUT with the whole blob, read first (beyond the last 8 MiB into an unlinked temp
    /// file in TMPDIR, so any size), sent again from byte 0 after a failure.
    Monolithic,
}

#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub credentials: Option<Credentials>,
    /// Use http:// even for a non-loopback host (`--plain-http`).
    pub plain_http: bool,
    /// Requests in flight at once to this registry.
    pub max_parallel: usize,
    pub retry: RetryPolicy,
    pub upload_mode: UploadMode,
    /// Bytes of a streamed upload kept in memory to resend after a failure.
    pub upload_window: u64,
    /// PATCH size in chunked mode (raised to the registry's `OCI-Chunk-Min-Length`).
    pub chunk_size: u64,
    /// A request whose connection moves no data for this long is abandoned (and retried).
    pub idle_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            credentials: None,
            plain_http: false,
            max_parallel: 6,
            retry: RetryPolicy::default(),
            upload_mode: UploadMode::Stream,
            upload_window: 16 << 20,
            // GHCR refuses a request body over 4 MiB (416, "exceeds the maximum permissible
            // limit of 4.00MiB"; oras-project/rust-oci-client#37): a larger chunk made every
            // resumed upload there fall to a monolithic one.
            chunk_size: 4 << 20,
            idle_timeout: Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS),
        }
    }
}

/// Whether `host[:port]` is a loopback address, where plain HTTP is the norm and safe.
pub fn is_loopback(registry: &str) -> bool {
    if let Ok(ip) = registry.parse::<std::net::IpAddr>() {
        return ip.is_loopback();
    }
    let host = match registry.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => host,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A request that can be sent again as is.
pub(crate) struct Request {
    pub method: Method,
    pub url: Url,
    pub scope: Scope,
    pub headers: Vec<(HeaderName, String)>,
    pub body: Option<Bytes>,
    /// What this request does, for errors: names the registry, repository and digest.
    pub operation: String,
}

/// A client for one registry host.
pub struct RegistryClient {
    pub(crate) registry: String,
    pub(crate) base: Url,
    pub(crate) http: reqwest::Client,
    pub(crate) auth: Authenticator,
    pub(crate) options: ClientOptions,
    permits: Semaphore,
    reporter: Reporter,
    /// Upload sessions a mount attempt opened (202), used by the next upload to that repository.
    pub(crate) pending_sessions: Mutex<HashMap<String, Vec<(u64, Url)>>>,
    /// Every upload session opened and not yet committed or cancelled, by id: repository and
    /// its latest Location. What `cancel_open_sessions` cancels when a push ends.
    pub(crate) open_sessions: Mutex<HashMap<u64, (String, Url)>>,
    pub(crate) next_session: std::sync::atomic::AtomicU64,
    /// The `GET /v2/` probe was answered without a challenge: the registry takes requests
    /// without credentials, so the probe is not sent again before each upload's data. A 401
    /// later (a registry that wants credentials for pushes only) teaches the challenge all the
    /// same (`Authenticator::learn`), and from then on the challenge is what counts.
    open_to_anyone: std::sync::atomic::AtomicBool,
    /// A manifest PUT went out (`put_manifest`): a push stopped after this may have tagged
    /// its image, complete, since the manifest comes after every blob.
    pub(crate) manifest_sent: std::sync::atomic::AtomicBool,
}

impl RegistryClient {
    pub fn new(registry: &str, options: ClientOptions, reporter: Reporter) -> Result<Self, RegistryError> {
        let scheme = if options.plain_http || is_loopback(registry) {
            "http"
        } else {
            "https"
        };
        let host = super::reference::api_host(registry);
        let base = Url::parse(&format!("{scheme}://{host}/")).map_err(|e| RegistryError::Protocol {
            operation: format!("connecting to registry {registry}"),
            message: format!("not a valid host: {e}"),
        })?;
        let builder = crate::net::for_host(reqwest::Client::builder(), registry);
        let http = crate::net::trusting(builder, &reporter)
            .user_agent(concat!("nixfly/", env!("CARGO_PKG_VERSION")))
            // Redirects are followed by hand so that credentials never go to another host.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(30))
            // HTTP/1.1 only, as Docker and skopeo push: moby's `registry/registry.go`
            // (`NewTransport`) and containers/image's `pkg/tlsclientconfig/tlsclientconfig.go`
            // (`NewTransport`) both set a TLS config or dialer without `ForceAttemptHTTP2`, so Go
            // never offers h2. That is the protocol registry.fly.io takes pushes in every day, and
            // each parallel upload gets a TCP connection (and a flow-control window) of its own
            // instead of sharing one h2 connection's. The Fly API client keeps h2, as fly-go's does.
            .http1_only()
            .build()
            .map_err(|source| RegistryError::Transport {
                operation: format!("setting up the HTTP client for {registry}"),
                hint: String::new(),
                source,
            })?;
        if reporter.verbose() > 0 {
            for variable in crate::net::environment_in_use() {
                reporter.debug(format!("{variable} (TLS trust and proxies for {registry})"));
            }
        }
        let is_fly = registry.eq_ignore_ascii_case(&super::reference::default_registry_host());
        let auth = Authenticator::new(
            registry,
            options.credentials.clone(),
            is_fly,
            options.idle_timeout,
        );
        Ok(RegistryClient {
            registry: registry.to_string(),
            base,
            http,
            auth,
            permits: Semaphore::new(options.max_parallel.max(1)),
            options,
            reporter,
            pending_sessions: Mutex::new(HashMap::new()),
            open_sessions: Mutex::new(HashMap::new()),
            next_session: std::sync::atomic::AtomicU64::new(0),
            open_to_anyone: std::sync::atomic::AtomicBool::new(false),
            manifest_sent: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// `/v2/<path>` on this registry.
    pub(crate) fn url(&self, path: &str) -> Url {
        self.base
            .join(&format!("v2/{path}"))
            .expect("registry paths are valid URL paths")
    }

    fn same_host(&self, url: &Url) -> bool {
        url.scheme() == self.base.scheme()
            && url.host_str() == self.base.host_str()
            && url.port_or_known_default() == self.base.port_or_known_default()
    }

    pub(crate) fn debug(&self, message: impl FnOnce() -> String) {
        if self.reporter.verbose() > 0 {
            self.reporter.debug(message());
        }
    }

    fn log_headers(&self, prefix: &str, headers: &HeaderMap) {
        if self.reporter.verbose() < 2 {
            return;
        }
        for (name, value) in headers {
            let value = if name == header::AUTHORIZATION {
                // The scheme only: the redaction of registered secrets is the second line of defence.
                let scheme = value.to_str().unwrap_or("").split(' ').next().unwrap_or("");
                format!("{scheme} <credentials hidden>")
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            self.reporter.debug(format!("{prefix} {name}: {value}"));
        }
    }

    /// Make sure the next request carries valid credentials: learn the challenge with a
    /// `GET /v2/` probe if needed and fetch or renew a token. Called before sending a body
    /// that cannot be replayed after a 401.
    pub(crate) async fn authenticate(&self, scope: &Scope) -> Result<(), RegistryError> {
        use std::sync::atomic::Ordering;
        if !self.auth.knows_challenge() && !self.open_to_anyone.load(Ordering::Relaxed) {
            let probe = Request {
                method: Method::GET,
                url: self.url(""),
                scope: Scope::none(),
                headers: Vec::new(),
                body: None,
                operation: format!("checking registry {}", self.registry),
            };
            let response = self.send(&probe).await?;
            if !response.status().is_success() && response.status() != StatusCode::UNAUTHORIZED {
                return Err(self.status_error(probe.operation, response, None).await);
            }
            if response.status().is_success() {
                self.open_to_anyone.store(true, Ordering::Relaxed);
            }
        }
        self.auth.ensure(&self.http, scope, None, None).await?;
        Ok(())
    }

    /// Send a replayable request: authenticates on 401, follows redirects (credentials only
    /// to this registry's host), retries connection errors and retryable statuses with
    /// backoff. Returns the final response whatever its status.
    pub(crate) async fn send(&self, req: &Request) -> Result<Response, RegistryError> {
        let mut url = req.url.clone();
        let mut method = req.method.clone();
        let mut attempt = 0u32;
        let mut reauthenticated = false;
        let mut redirects = 0usize;
        loop {
            let same_host = self.same_host(&url);
            if same_host {
                self.auth.ensure(&self.http, &req.scope, None, None).await?;
            }
            let mut builder = self.http.request(method.clone(), url.clone());
            for (name, value) in &req.headers {
                builder = builder.header(name, value);
            }
            let sent_auth = same_host.then(|| self.auth.header(&req.scope)).flatten();
            if let Some(value) = &sent_auth {
                builder = builder.header(header::AUTHORIZATION, value);
            }
            let activity = Activity::new();
            if let Some(body) = &req.body {
                let slices = (0..body.len())
                    .step_by(BODY_SLICE)
                    .map(|start| Ok::<_, io::Error>(body.slice(start..(start + BODY_SLICE).min(body.len()))))
                    .collect::<Vec<_>>();
                builder = builder.body(reqwest::Body::wrap_stream(Watched {
                    inner: futures::stream::iter(slices),
                    activity: activity.clone(),
                }));
            }
            let request = builder.build().map_err(|source| RegistryError::Transport {
                operation: req.operation.clone(),
                hint: String::new(),
                source,
            })?;
            self.debug(|| format!("HTTP {} {}", request.method(), without_query(request.url())));
            self.log_headers(">", request.headers());
            let started = Instant::now();
            let result = {
                let _permit = self
                    .permits
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                self.execute(request, &activity, &req.operation).await
            };
            let response = match result {
                Ok(response) => response,
                Err(err) => {
                    // A certificate this machine does not trust stays untrusted: no retry.
                    let untrusted = matches!(&err, RegistryError::Transport { source, .. }
                        if crate::net::is_certificate_error(source));
                    if attempt < self.options.retry.retries && !untrusted {
                        let delay = self.options.retry.delay(attempt, None);
                        self.debug(|| format!("{err}; retrying in {:.1} s", delay.as_secs_f64()));
                        attempt += 1;
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    return Err(err);
                }
            };
            let status = response.status();
            self.debug(|| {
                format!(
                    "HTTP {} {} -> {} ({:.2} s)",
                    method,
                    url,
                    status.as_u16(),
                    started.elapsed().as_secs_f64()
                )
            });
            self.log_headers("<", response.headers());
            if status == StatusCode::UNAUTHORIZED
                && same_host
                && !reauthenticated
                && let Some(challenge) = header_str(&response, header::WWW_AUTHENTICATE)
            {
                let extra = match self.auth.learn(&challenge)? {
                    super::auth::Challenge::Bearer { scope, .. } => scope,
                    super::auth::Challenge::Basic => None,
                };
                self.auth
                    .ensure(&self.http, &req.scope, sent_auth.as_deref(), extra.as_deref())
                    .await?;
                reauthenticated = true;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED
                && same_host
                && reauthenticated
                && self.auth.fall_back(&req.scope, sent_auth.as_deref())
            {
                self.debug(|| "the registry refused the credentials; trying their fallback once".to_string());
                continue;
            }
            if status.is_redirection()
                && let Some(location) = header_str(&response, header::LOCATION)
                && redirects < MAX_REDIRECTS
            {
                let next = url.join(&location).map_err(|e| RegistryError::Protocol {
                    operation: req.operation.clone(),
                    message: format!("the registry redirected to an invalid URL {location:?}: {e}"),
                })?;
                // Another host may serve a blob's bytes (distribution's storage drivers redirect
                // blob GETs and HEADs to their store, `registry/storage/blobserver.go`), never
                // take an upload, a manifest or a session: a registry host that sends those
                // elsewhere is not a registry API (docker.io itself redirects to a web page).
                let blob_read =
                    matches!(method, Method::GET | Method::HEAD) && req.url.path().contains("/blobs/sha256:");
                if !(self.same_host(&next) || blob_read) {
                    return Err(RegistryError::Protocol {
                        operation: req.operation.clone(),
                        message: format!(
                            "{} answered {} and sent the request to {next}, another host: is {} \
                             the registry's API host?",
                            self.base.host_str().unwrap_or_default(),
                            status.as_u16(),
                            self.registry
                        ),
                    });
                }
                if status == StatusCode::SEE_OTHER {
                    method = Method::GET;
                }
                self.debug(|| format!("redirected to {}", without_query(&next)));
                url = next;
                redirects += 1;
                continue;
            }
            // A mount is not worth a retry: the upload it would save is the fallback.
            if RETRYABLE_STATUSES.contains(&status.as_u16())
                && attempt < self.options.retry.retries
                && !req.scope.is_mount()
            {
                let delay = self.options.retry.delay(attempt, retry_after(&response));
                self.debug(|| {
                    format!(
                        "{}: registry answered {}; retrying in {:.1} s",
                        req.operation,
                        status.as_u16(),
                        delay.as_secs_f64()
                    )
                });
                attempt += 1;
                drop(response);
                tokio::time::sleep(delay).await;
                continue;
            }
            return Ok(response);
        }
    }

    /// Send a request whose body is a one-shot stream: no retry, no redirect; the caller has
    /// authenticated first (`authenticate`) and recovers from failures itself.
    pub(crate) async fn send_stream<S>(
        &self,
        method: Method,
        url: &Url,
        scope: &Scope,
        headers: Vec<(HeaderName, String)>,
        body: S,
        operation: &str,
    ) -> Result<Response, RegistryError>
    where
        S: futures::Stream<Item = io::Result<Bytes>> + Send + Unpin + 'static,
    {
        let activity = Activity::new();
        let body = reqwest::Body::wrap_stream(Watched {
            inner: body,
            activity: activity.clone(),
        });
        let mut builder = self.http.request(method.clone(), url.clone()).body(body);
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        // A redirected upload may go to another host: credentials stay with the registry.
        if self.same_host(url)
            && let Some(value) = self.auth.header(scope)
        {
            builder = builder.header(header::AUTHORIZATION, value);
        }
        let request = builder
            .build()
            .map_err(|source| self.transport_error(operation, source))?;
        self.debug(|| format!("HTTP {method} {url} (streamed body)"));
        self.log_headers(">", request.headers());
        let started = Instant::now();
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let response = self.execute(request, &activity, operation).await?;
        self.debug(|| {
            format!(
                "HTTP {method} {url} -> {} ({:.2} s)",
                response.status().as_u16(),
                started.elapsed().as_secs_f64()
            )
        });
        self.log_headers("<", response.headers());
        Ok(response)
    }

    /// Run one request, abandoning it once its connection has been idle for `idle_timeout`.
    async fn execute(
        &self,
        request: reqwest::Request,
        activity: &Activity,
        operation: &str,
    ) -> Result<Response, RegistryError> {
        let idle = self.options.idle_timeout;
        activity.touch();
        let call = self.http.execute(request);
        tokio::pin!(call);
        loop {
            let wait = idle.saturating_sub(activity.idle());
            if wait.is_zero() {
                return Err(RegistryError::Timeout {
                    operation: operation.to_string(),
                    registry: self.registry.clone(),
                    seconds: idle.as_secs(),
                });
            }
            tokio::select! {
                result = &mut call => {
                    return result.map_err(|source| self.transport_error(operation, source));
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// A response body, within the idle timeout (bodies here are small: errors, manifests).
    pub(crate) async fn body(&self, response: Response, operation: &str) -> Result<Bytes, RegistryError> {
        let idle = self.options.idle_timeout;
        match tokio::time::timeout(idle, response.bytes()).await {
            Ok(result) => result.map_err(|source| self.transport_error(operation, source)),
            Err(_) => Err(RegistryError::Timeout {
                operation: operation.to_string(),
                registry: self.registry.clone(),
                seconds: idle.as_secs(),
            }),
        }
    }

    pub(crate) fn transport_error(&self, operation: &str, mut source: reqwest::Error) -> RegistryError {
        // reqwest names the URL in its message; its query may be a storage signature.
        if let Some(url) = source.url_mut() {
            url.set_query(None);
        }
        let hint = if source.is_connect() && crate::net::is_certificate_error(&source) {
            format!(
                "; {} presents a TLS certificate this machine does not trust. If a private CA \
                 signs it (a self-hosted registry, or a proxy that inspects TLS): {}",
                self.registry,
                crate::net::trust_hint()
            )
        } else if source.is_connect() && self.base.scheme() == "https" {
            format!(
                "; is {} up and serving HTTPS? (--plain-http talks plain HTTP)",
                self.registry
            )
        } else if source.is_connect() {
            format!("; is {} up?", self.registry)
        } else {
            String::new()
        };
        RegistryError::Transport {
            operation: operation.to_string(),
            hint,
            source,
        }
    }

    /// Turn an unexpected response into an error with the registry's own messages and a hint.
    pub(crate) async fn status_error(
        &self,
        operation: String,
        response: Response,
        hint: Option<String>,
    ) -> RegistryError {
        let status = response.status().as_u16();
        let body = self.body(response, &operation).await.unwrap_or_default();
        let errors = parse_api_errors(&body);
        let body_excerpt = (errors.is_empty() && !body.is_empty()).then(|| {
            String::from_utf8_lossy(&body[..body.len().min(200)])
                .trim()
                .to_string()
        });
        let hint = hint.or_else(|| match status {
            401 => Some(self.auth.rejection_hint()),
            403 => Some(format!(
                "the credentials are valid but lack access; {}",
                self.auth.rejection_hint()
            )),
            429 => Some("the registry is rate-limiting this client; wait and try again".into()),
            _ => None,
        });
        RegistryError::Status(Box::new(StatusError {
            operation,
            status,
            errors,
            body_excerpt,
            hint,
        }))
    }

    /// The Location of a response, resolved against the request URL with its query kept.
    pub(crate) fn location(&self, response: &Response, operation: &str) -> Result<Url, RegistryError> {
        let location = header_str(response, header::LOCATION).ok_or_else(|| RegistryError::Protocol {
            operation: operation.to_string(),
            message: format!(
                "the registry answered {} without a Location header",
                response.status().as_u16()
            ),
        })?;
        response
            .url()
            .join(&location)
            .map_err(|e| RegistryError::Protocol {
                operation: operation.to_string(),
                message: format!("the registry sent an invalid Location {location:?}: {e}"),
            })
    }
}

/// When a request's connection last moved, and whether it is waiting on our own producer.
#[derive(Clone)]
pub(crate) struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last: Arc<AtomicU64>,
    waiting_on_source: Arc<AtomicBool>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
            waiting_on_source: Arc::new(AtomicBool::new(false)),
        }
    }

    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long the connection has not moved; zero while the body waits for its producer.
    fn idle(&self) -> Duration {
        if self.waiting_on_source.load(Ordering::Relaxed) {
            return Duration::ZERO;
        }
        self.start
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)))
    }
}

/// A request body that records when the connection asks for more of it.
struct Watched<S> {
    inner: S,
    activity: Activity,
}

impl<S: futures::Stream<Item = io::Result<Bytes>> + Unpin> futures::Stream for Watched<S> {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.activity.touch();
        let poll = Pin::new(&mut self.inner).poll_next(cx);
        self.activity
            .waiting_on_source
            .store(poll.is_pending(), Ordering::Relaxed);
        if poll.is_ready() {
            self.activity.touch();
        }
        poll
    }
}

pub(crate) fn header_str(response: &Response, name: HeaderName) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v: &HeaderValue| v.to_str().ok())
        .map(str::to_string)
}

/// `Retry-After` of a registry answer, as the shared retry policy reads it.
pub(crate) fn retry_after(response: &Response) -> Option<Duration> {
    crate::retry::retry_after(response.headers())
}

/// `url` as logged: without its query, which for a blob's storage (where distribution's
/// storage drivers redirect a blob GET, `registry/storage/blobserver.go`) is a signed, if
/// short-lived, credential (S3's `X-Amz-Signature`), and for an upload session only opaque state.
fn without_query(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    if shown.query().is_some() {
        shown.set_query(None);
        format!("{shown}?…")
    } else {
        shown.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_urls_leave_out_their_query() {
        let signed = reqwest::Url::parse(
            "https://storage.example/blobs/ab?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=f00d",
        )
        .unwrap();
        assert_eq!(without_query(&signed), "https://storage.example/blobs/ab?…");
        let plain = reqwest::Url::parse("https://registry.fly.io/v2/app/blobs/sha256:ab").unwrap();
        assert_eq!(
            without_query(&plain),
            "https://registry.fly.io/v2/app/blobs/sha256:ab"
        );
    }

    #[test]
    fn loopback_hosts_are_recognised_with_or_without_port() {
        for host in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.3.2.1",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "registry.fly.io",
            "10.0.0.1:5000",
            "localhost.example.com",
            "[::2]:80",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
