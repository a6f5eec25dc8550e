//! The HTTP side of the registry client: one host, auth applied per request, retries with
//! backoff honouring `Retry-After`, redirects without leaking `Authorization`, bounded
//! parallelism, and `-v` request logs with credentials redacted.

use super::auth::{Authenticator, Credentials, Scope};
use super::error::{RegistryError, StatusError, parse_api_errors};
use crate::progress::Reporter;
use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Response, StatusCode};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use url::Url;

pub use crate::retry::{RETRYABLE_STATUSES, RetryPolicy};

const MAX_REDIRECTS: usize = 5;

/// How the blob data of a streamed upload is sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum UploadMode {
    /// One PATCH with the whole body (chunked transfer encoding), as docker and skopeo do.
    #[default]
    Stream,
    /// PATCHes of a bounded size with `Content-Range`, each acknowledged by the registry.
    Chunked,
    /// One PUT with the whole blob (held in memory: small blobs only).
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
            chunk_size: 8 << 20,
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
    pub(crate) pending_sessions: Mutex<HashMap<String, Vec<Url>>>,
}

impl RegistryClient {
    pub fn new(registry: &str, options: ClientOptions, reporter: Reporter) -> Result<Self, RegistryError> {
        let scheme = if options.plain_http || is_loopback(registry) {
            "http"
        } else {
            "https"
        };
        let base = Url::parse(&format!("{scheme}://{registry}/")).map_err(|e| RegistryError::Protocol {
            operation: format!("connecting to registry {registry}"),
            message: format!("not a valid host: {e}"),
        })?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("nixfly/", env!("CARGO_PKG_VERSION")))
            // Redirects are followed by hand so that credentials never go to another host.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|source| RegistryError::Transport {
                operation: format!("setting up the HTTP client for {registry}"),
                hint: String::new(),
                source,
            })?;
        let is_fly = registry.eq_ignore_ascii_case(&super::reference::default_registry_host());
        let auth = Authenticator::new(registry, options.credentials.clone(), is_fly);
        Ok(RegistryClient {
            registry: registry.to_string(),
            base,
            http,
            auth,
            permits: Semaphore::new(options.max_parallel.max(1)),
            options,
            reporter,
            pending_sessions: Mutex::new(HashMap::new()),
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
        if !self.auth.knows_challenge() {
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
            if let Some(body) = &req.body {
                builder = builder.body(body.clone());
            }
            let request = builder.build().map_err(|source| RegistryError::Transport {
                operation: req.operation.clone(),
                hint: String::new(),
                source,
            })?;
            self.debug(|| format!("HTTP {} {}", request.method(), request.url()));
            self.log_headers(">", request.headers());
            let started = Instant::now();
            let result = {
                let _permit = self
                    .permits
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                self.http.execute(request).await
            };
            let response = match result {
                Ok(response) => response,
                Err(source) => {
                    if attempt < self.options.retry.retries {
                        let delay = self.options.retry.delay(attempt, None);
                        self.debug(|| {
                            format!(
                                "{}: {source}; retrying in {:.1} s",
                                req.operation,
                                delay.as_secs_f64()
                            )
                        });
                        attempt += 1;
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    return Err(self.transport_error(&req.operation, source));
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
            if status.is_redirection()
                && let Some(location) = header_str(&response, header::LOCATION)
                && redirects < MAX_REDIRECTS
            {
                let next = url.join(&location).map_err(|e| RegistryError::Protocol {
                    operation: req.operation.clone(),
                    message: format!("the registry redirected to an invalid URL {location:?}: {e}"),
                })?;
                if status == StatusCode::SEE_OTHER {
                    method = Method::GET;
                }
                self.debug(|| format!("redirected to {next}"));
                url = next;
                redirects += 1;
                continue;
            }
            if RETRYABLE_STATUSES.contains(&status.as_u16()) && attempt < self.options.retry.retries {
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
    pub(crate) async fn send_stream(
        &self,
        method: Method,
        url: &Url,
        scope: &Scope,
        headers: Vec<(HeaderName, String)>,
        body: reqwest::Body,
    ) -> Result<Response, reqwest::Error> {
        let mut builder = self.http.request(method.clone(), url.clone()).body(body);
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        if let Some(value) = self.auth.header(scope) {
            builder = builder.header(header::AUTHORIZATION, value);
        }
        let request = builder.build()?;
        self.debug(|| format!("HTTP {method} {url} (streamed body)"));
        self.log_headers(">", request.headers());
        let started = Instant::now();
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let response = self.http.execute(request).await?;
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

    pub(crate) fn transport_error(&self, operation: &str, source: reqwest::Error) -> RegistryError {
        let hint = if source.is_connect() && self.base.scheme() == "https" {
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
        let body = response.bytes().await.unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;

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
