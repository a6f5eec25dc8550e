//! The Machines API client (`api.machines.dev`, `/v1/...`) and the HTTP layer it shares with
//! the platform API: auth header, retries with backoff, `{"error": ...}` bodies in errors.

use super::FlyToken;
use super::types::{App, Lease, LeaseResponse, Machine, Volume};
use crate::progress::Reporter;
use crate::retry::RetryPolicy;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use url::Url;

pub const DEFAULT_MACHINES_URL: &str = "https://api.machines.dev";
pub const DEFAULT_PLATFORM_URL: &str = "https://api.fly.io";

/// The Machines API caps one `wait` call at 60 seconds; longer waits loop.
pub const MAX_WAIT_CALL: Duration = Duration::from_secs(60);

/// The metadata key that makes a machine create safe to repeat (`MachinesApi::create_machine`).
pub const META_LAUNCH_ID: &str = "nixfly_launch_id";
const META_LAUNCH_QUERY: &str = "metadata.nixfly_launch_id";
/// Creates sent again after an ambiguous failure that made no machine.
const CREATE_RETRIES: u32 = 3;
/// How long reads may take to show a machine a failed create made after all.
const LAUNCH_LOOKUP: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{method} {url}: {}", transport_failure(source))]
    Transport {
        method: Method,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "{method} {url} was rejected with {status}: {message}. The token from {token_source} is \
         invalid, expired or has no access to this app; {fix}"
    )]
    Unauthorized {
        method: Method,
        url: String,
        status: u16,
        message: String,
        /// Where the token came from, and what the token itself shows when it does (" (every
        /// macaroon in it has expired, ...)").
        token_source: String,
        fix: &'static str,
    },
    #[error("{method} {url} failed with {status}: {message}{}", code_hint(code.as_deref()))]
    Status {
        method: Method,
        url: String,
        status: u16,
        message: String,
        /// How flaps classified the failure: the `status` of its `ErrorResponse`
        /// (`insufficient_capacity`, `name_taken`, ...), when it sent one.
        code: Option<String>,
    },
    #[error("{method} {url}: unexpected response body")]
    Decode {
        method: Method,
        url: String,
        #[source]
        source: serde_json::Error,
    },
    /// A create failed in a way that may have made the resource all the same, and the lookup
    /// that would have told failed too: it was not created again, and the user is told what to
    /// look for.
    #[error(
        "{create}; it may have been created all the same, and looking it up failed too ({lookup}). \
         It was not created again: look for {look_for}"
    )]
    CreateUncertain {
        create: Box<ApiError>,
        lookup: Box<ApiError>,
        look_for: String,
    },
    /// A lease request answered with success but no lease in it (`LeaseResponse::granted`).
    #[error(
        "the lease request for machine {machine} was answered with {answer}, which grants no \
         lease (flyctl takes it for none too); nothing was changed on that machine"
    )]
    NoLease { machine: String, answer: String },
    /// A start answered 200 whose body says it failed (fly-go `MachineStartResponse`).
    #[error(
        "Fly did not start machine {machine}: {message} (its answer to the start said status \
         \"error\")"
    )]
    StartRefused { machine: String, message: String },
    #[error("invalid Fly API base URL {url:?}")]
    BaseUrl {
        url: String,
        #[source]
        source: url::ParseError,
    },
}

/// What to do about a failure flaps classified, keyed off its code alone, never the message
/// (fly-go `flaps/flaps_error.go`, `FlapsError.Suggestion`; `flaps_error_test.go`,
/// `TestFlapsErrorSuggestion`: a message without the code gets no suggestion). Of the codes the
/// spec lists (`main.statusCode`), the two about capacity get one, as in fly-go
/// (`TestFlapsErrorSuggestionVolumePlacementCapacity`) and flyctl's deploy (PR #5141, which
/// points at creating a volume elsewhere); `name_taken` is about creating apps, which nixfly
/// does not do.
fn code_hint(code: Option<&str>) -> &'static str {
    match code {
        Some("insufficient_capacity") => {
            ". Fly has no capacity for this machine in its region right now \
             (insufficient_capacity): try again later, or run it in another region"
        }
        Some("volume_placement_capacity") => {
            ". The host that holds the machine's volume has no room for it right now \
             (volume_placement_capacity): try again later, or give the machine a volume on another \
             host (`fly volumes fork` copies one; `fly volumes create` makes an empty one)"
        }
        _ => "",
    }
}

/// What a transport error means for the request: never sent, or its answer cut off or late.
fn transport_failure(source: &reqwest::Error) -> String {
    if source.is_connect() && crate::net::is_certificate_error(source) {
        format!(
            "the Fly API presents a TLS certificate this machine does not trust. If a proxy \
             that inspects TLS stands in between: {}",
            crate::net::trust_hint()
        )
    } else if source.is_connect() {
        "cannot reach the Fly API".into()
    } else {
        "no complete answer came from the Fly API (the connection broke or timed out)".into()
    }
}

impl ApiError {
    /// Whether a create that failed this way may have made its machine all the same: a 408
    /// or 5xx from flaps, or a connection lost once the request could have been sent.
    pub fn create_may_have_happened(&self) -> bool {
        match self {
            ApiError::Status { status, .. } => *status == 408 || *status >= 500,
            ApiError::Transport { source, .. } => !source.is_connect() && !source.is_builder(),
            _ => false,
        }
    }

    /// The HTTP status the API answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Unauthorized { status, .. } | ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The API's own error text (`{"error": ...}`), if it answered.
    pub fn message(&self) -> Option<&str> {
        match self {
            ApiError::Unauthorized { message, .. } | ApiError::Status { message, .. } => Some(message),
            _ => None,
        }
    }

    /// How flaps classified the failure (its error body's `status`), if it did.
    pub fn code(&self) -> Option<&str> {
        match self {
            ApiError::Status { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// The machine's host cannot take the update (no room, or deploys to it paused): the
    /// messages flyctl answers by replacing the machine (`machines_deploymachinesapp.go`).
    pub fn is_host_refusal(&self) -> bool {
        self.message().is_some_and(|m| {
            m.contains("could not reserve resource for machine")
                || m.contains("deploys to this host are temporarily disabled")
        })
    }
}

/// Whether a request may be sent again after a 5xx or a dropped connection. A 429 means the
/// request was refused before doing anything, and a connect error that it was never sent, so
/// every request is retried on those.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    /// Sending it twice has the same effect as once (GET, DELETE, lease-guarded update, PATCH status).
    Safe,
    /// A second send could do the work twice (machine or release creation).
    Unsafe,
    /// `Safe`, but a 408 is its answer (the API's wait ran out), not a failure to retry.
    Wait,
}

/// Which API a `FlyHttp` talks to, which decides the `Authorization` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Audience {
    /// api.machines.dev: `FlyV1 <macaroons>` (fly-go `Tokens.FlapsHeader`).
    Machines,
    /// api.fly.io: `Bearer <macaroons,oauth>` (flyctl `internal/uiex/releases.go`).
    Platform,
    /// api.fly.io's REST routes fly-go reaches with `Tokens.BubblegumHeader()` (the app logs,
    /// `resource_logs.go`): the Machines API's header, `FlyV1 <macaroons>`, else `Bearer`.
    Bubblegum,
    /// api.fly.io's `/graphql`, as fly-go's GraphQL client reaches it (`client.go`,
    /// `Tokens.GraphQLHeader()`): `FlyV1 <macaroons,oauth>`, else `Bearer <oauth>`.
    GraphQl,
}

/// One HTTP endpoint family (Machines API or platform API) with the token's auth header.
#[derive(Clone)]
pub struct FlyHttp {
    client: reqwest::Client,
    base: Url,
    token: FlyToken,
    audience: Audience,
    /// Set once Fly rejected the macaroons and accepted the login session's OAuth token:
    /// every later request sends the OAuth token alone.
    oauth_only: Arc<AtomicBool>,
    reporter: Reporter,
}

pub(crate) struct Request<'a> {
    pub method: Method,
    pub path: &'a [&'a str],
    pub query: &'a [(&'a str, String)],
    pub body: Option<Value>,
    pub nonce: Option<&'a str>,
    pub replay: Replay,
}

impl<'a> Request<'a> {
    pub fn get(path: &'a [&'a str]) -> Self {
        Request {
            method: Method::GET,
            path,
            query: &[],
            body: None,
            nonce: None,
            replay: Replay::Safe,
        }
    }
}

impl FlyHttp {
    /// A client for the Machines API.
    pub fn new(base: &str, token: FlyToken, reporter: Reporter) -> Result<Self, ApiError> {
        Self::with_audience(base, token, reporter, Audience::Machines)
    }

    /// A client for the platform API (release records).
    pub fn platform(base: &str, token: FlyToken, reporter: Reporter) -> Result<Self, ApiError> {
        Self::with_audience(base, token, reporter, Audience::Platform)
    }

    /// A client for api.fly.io's app logs.
    pub fn bubblegum(base: &str, token: FlyToken, reporter: Reporter) -> Result<Self, ApiError> {
        Self::with_audience(base, token, reporter, Audience::Bubblegum)
    }

    fn with_audience(
        base: &str,
        token: FlyToken,
        reporter: Reporter,
        audience: Audience,
    ) -> Result<Self, ApiError> {
        let base = Url::parse(base).map_err(|source| ApiError::BaseUrl {
            url: base.to_string(),
            source,
        })?;
        let builder = crate::net::for_host(reqwest::Client::builder(), base.host_str().unwrap_or_default());
        let client = crate::net::trusting(builder, &reporter)
            .user_agent(concat!("nixfly/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(15))
            // Longer than the longest `wait` call the API holds open.
            .timeout(MAX_WAIT_CALL + Duration::from_secs(15))
            // flaps' `fly_flaps_affinity` cookie sends an app's later requests to the node that
            // made its writes, so that reads see them; fly-go keeps a cookie jar for it
            // (`flaps/flaps.go`, `NewWithOptions`).
            .cookie_store(true)
            .build()
            .map_err(|source| ApiError::Transport {
                method: Method::GET,
                url: base.to_string(),
                source,
            })?;
        Ok(FlyHttp {
            client,
            base,
            token,
            audience,
            oauth_only: Arc::new(AtomicBool::new(false)),
            reporter,
        })
    }

    fn authorization(&self) -> String {
        if self.oauth_only.load(Ordering::Relaxed)
            && let Some(oauth) = self.token.oauth_fallback_header()
        {
            return oauth;
        }
        match self.audience {
            Audience::Machines | Audience::Bubblegum => self.token.authorization_header(),
            Audience::Platform => self.token.platform_header(),
            Audience::GraphQl => self.token.graphql_header(),
        }
    }

    /// The same host and token under the header fly-go's GraphQL client sends.
    pub fn for_graphql(&self) -> FlyHttp {
        FlyHttp {
            audience: Audience::GraphQl,
            ..self.clone()
        }
    }

    fn url(&self, path: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(path);
        }
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    /// Send a request, retrying 429 (honouring Retry-After) and, for replayable requests, 5xx
    /// and connection failures, as the shared `RetryPolicy` says. Returns the body of a 2xx
    /// answer.
    pub(crate) async fn send(&self, req: Request<'_>) -> Result<Vec<u8>, ApiError> {
        let url = self.url(req.path, req.query);
        let shown = format!(
            "{}{}",
            url.path(),
            url.query().map(|q| format!("?{q}")).unwrap_or_default()
        );
        let policy = RetryPolicy::default();
        let mut attempt = 0;
        loop {
            let mut builder = self
                .client
                .request(req.method.clone(), url.clone())
                .header(reqwest::header::AUTHORIZATION, self.authorization());
            if let Some(nonce) = req.nonce {
                builder = builder.header("fly-machine-lease-nonce", nonce);
            }
            if let Some(body) = &req.body {
                builder = builder.json(body);
            }
            self.reporter.debug(format!("{} {shown}", req.method));
            let Answer {
                status,
                retry_after,
                request_id,
                body,
            } = match read_answer(builder).await {
                Ok(answer) => answer,
                Err(source) => {
                    // A certificate this machine does not trust stays untrusted: no retry.
                    if transport_is_transient(source.is_connect(), req.replay)
                        && !crate::net::is_certificate_error(&source)
                        && attempt < policy.retries
                    {
                        let delay = policy.delay(attempt, None);
                        attempt += 1;
                        self.reporter
                            .debug(format!("{} {shown}: {source}; retrying in {delay:?}", req.method));
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    return Err(ApiError::Transport {
                        method: req.method,
                        url: shown,
                        source,
                    });
                }
            };
            if status.is_success() {
                return Ok(body);
            }
            if status_is_transient(status, req.replay) && attempt < policy.retries {
                let delay = policy.delay(attempt, retry_after);
                attempt += 1;
                self.reporter.warn(format!(
                    "{} {shown} answered {status}; retrying in {:.1}s (retry {attempt} of {})",
                    req.method,
                    delay.as_secs_f64(),
                    policy.retries
                ));
                tokio::time::sleep(delay).await;
                continue;
            }
            // A login session's macaroons can be refused while its OAuth token still works
            // (fly-go sends both to api.fly.io): try that once before giving up.
            if status == StatusCode::UNAUTHORIZED
                && self.token.oauth_fallback_header().is_some()
                && !self.oauth_only.swap(true, Ordering::Relaxed)
            {
                self.reporter.warn(format!(
                    "{} {shown}: Fly rejected the macaroons of the token from {}; retrying with its OAuth token",
                    req.method,
                    self.token.source()
                ));
                continue;
            }
            let mut message = error_message(&body);
            // What Fly support asks for (fly-go keeps it as `FlapsError.FlyRequestId`).
            if let Some(id) = request_id {
                message.push_str(&format!(" (fly-request-id {id})"));
            }
            return Err(
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                    ApiError::Unauthorized {
                        method: req.method,
                        url: shown,
                        status: status.as_u16(),
                        message,
                        token_source: match self.token.refusal_reason() {
                            Some(reason) => format!("{} ({reason})", self.token.source()),
                            None => self.token.source().to_string(),
                        },
                        fix: if self.token.is_login_session() {
                            "renew the login session with `fly auth login`, or create a deploy \
                             token with `fly tokens create deploy -a <app>` and export it as \
                             FLY_API_TOKEN"
                        } else {
                            "create a new one with `fly tokens create deploy -a <app>`"
                        },
                    }
                } else {
                    ApiError::Status {
                        method: req.method,
                        url: shown,
                        status: status.as_u16(),
                        message,
                        code: error_code(&body),
                    }
                },
            );
        }
    }

    pub(crate) async fn send_json<T: DeserializeOwned>(&self, req: Request<'_>) -> Result<T, ApiError> {
        let method = req.method.clone();
        let url = self.url(req.path, req.query).path().to_string();
        let body = self.send(req).await?;
        serde_json::from_slice(&body).map_err(|source| ApiError::Decode { method, url, source })
    }
}

/// A whole answer: what `FlyHttp::send` reads of it.
struct Answer {
    status: StatusCode,
    retry_after: Option<Duration>,
    /// `fly-request-id`, when not empty.
    request_id: Option<String>,
    body: Vec<u8>,
}

/// Send the request and read its whole answer. A request that got no answer, or only part of
/// one, is one failure: either way nothing says whether it took effect.
async fn read_answer(builder: reqwest::RequestBuilder) -> Result<Answer, reqwest::Error> {
    let response = builder.send().await?;
    let status = response.status();
    let retry_after = crate::retry::retry_after(response.headers());
    let request_id = response
        .headers()
        .get("fly-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    let body = response.bytes().await?.to_vec();
    Ok(Answer {
        status,
        retry_after,
        request_id,
        body,
    })
}

/// Whether a request answered with `status` may be sent again. flaps' transient answers are
/// 408 (it timed out talking to flyd), 429 and any 5xx (flyctl `internal/flapsutil/retry.go`,
/// `IsTransientFlapsError`); api.fly.io's are its 5xx, 504 from the proxy in front of it
/// included (flyctl `internal/command/deploy/machines.go`, `isRetryableReleaseStatusError`).
/// Any other 4xx fails the same way next time. A 429 refused the request before it did
/// anything, so even a create is sent again; a 408 or 5xx may have come after a create took
/// effect, so a create is not (`MachinesApi::create_machine` looks for its machine instead),
/// and a `wait`'s 408 is its answer, not a failure.
fn status_is_transient(status: StatusCode, replay: Replay) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || (status.is_server_error() && replay != Replay::Unsafe)
        || (status == StatusCode::REQUEST_TIMEOUT && replay == Replay::Safe)
}

/// Whether a request that got no complete answer (the connection failed, broke, or the body
/// was cut off) may be sent again. A connect error means nothing was sent, so any request may
/// (flyctl's `HasTransientNetworkSubstring`: connection refused, no such host, ...); after
/// that, only a request that is safe to repeat (flyctl retries a release status update whose
/// answer could not be read, `isRetryableReleaseStatusError`).
fn transport_is_transient(connect_failed: bool, replay: Replay) -> bool {
    connect_failed || replay != Replay::Unsafe
}

/// The `message` (else `error`) field of a JSON error body, else the body itself (shortened),
/// else "no response body".
fn error_message(body: &[u8]) -> String {
    // `message` first, then `error`, as fly-go's `handleAPIError` (`flaps/flaps.go`) reads
    // them: lease conflicts come as `{"status":"error","message":...}`.
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        for field in ["message", "error"] {
            if let Some(text) = value.get(field).and_then(Value::as_str)
                && !text.is_empty()
            {
                return text.to_string();
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "no response body".to_string()
    } else {
        text.chars().take(500).collect()
    }
}

/// The `status` field of a JSON error body: flaps' `ErrorResponse` carries its classification
/// of the failure there (the OpenAPI file's `main.statusCode`; fly-go `flaps/flaps_error.go`,
/// `FlapsError.StatusCode`, reads it from any error body, so a lease call's `"error"` comes
/// through too and means nothing).
fn error_code(body: &[u8]) -> Option<String> {
    let value = serde_json::from_slice::<Value>(body).ok()?;
    let code = value.get("status")?.as_str()?;
    (!code.is_empty()).then(|| code.to_string())
}

/// Ask `find` until it finds something or `LAUNCH_LOOKUP` has passed (reads lag a little behind
/// a commit); an error ends the search.
async fn look_up<T, F, Fut>(mut find: F) -> Result<Option<T>, ApiError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, ApiError>>,
{
    let deadline = tokio::time::Instant::now() + LAUNCH_LOOKUP;
    loop {
        let found = find().await?;
        if found.is_some() || tokio::time::Instant::now() >= deadline {
            return Ok(found);
        }
        tokio::time::sleep(LAUNCH_LOOKUP / 4).await;
    }
}

/// The Machines API for one app.
#[derive(Clone)]
pub struct MachinesApi {
    http: FlyHttp,
    app: String,
    /// Sent as `min_secrets_version` with every create and update (`with_min_secrets_version`).
    min_secrets_version: Option<u64>,
}

impl MachinesApi {
    /// The app whose machines this client reaches.
    pub fn app(&self) -> &str {
        &self.app
    }

    pub fn new(http: FlyHttp, app: &str) -> Self {
        MachinesApi {
            http,
            app: app.to_string(),
            min_secrets_version: None,
        }
    }

    /// Every machine created or updated gets secrets of at least this version, as flyctl asks
    /// with the `app_secrets_minvers` it keeps (`crate::fly::token::secrets_min_version`).
    pub fn with_min_secrets_version(mut self, version: Option<u64>) -> Self {
        self.min_secrets_version = version;
        self
    }

    /// A create or update body with `min_secrets_version` when one is known.
    fn launch_body(&self, mut body: Value) -> Value {
        if let (Some(version), Some(fields)) = (self.min_secrets_version, body.as_object_mut()) {
            fields.insert("min_secrets_version".into(), version.into());
        }
        body
    }

    pub async fn get_app(&self) -> Result<App, ApiError> {
        self.http
            .send_json(Request::get(&["v1", "apps", &self.app]))
            .await
    }

    pub async fn list_machines(&self) -> Result<Vec<Machine>, ApiError> {
        self.list_machines_where(&[]).await
    }

    /// `GET /machines` with a filter query; every machine read with its `incomplete_config`
    /// when it has no `config`.
    async fn list_machines_where(&self, query: &[(&str, String)]) -> Result<Vec<Machine>, ApiError> {
        let machines: Vec<Machine> = self
            .http
            .send_json(Request {
                query,
                ..Request::get(&["v1", "apps", &self.app, "machines"])
            })
            .await?;
        Ok(machines
            .into_iter()
            .map(Machine::with_incomplete_config)
            .collect())
    }

    /// The images the app's machines run now (`config.image`, as the Machines API lists
    /// them), each once: a deploy's push reuses their layers.
    pub async fn current_images(&self) -> Result<Vec<String>, ApiError> {
        let mut images: Vec<String> = self
            .list_machines()
            .await?
            .iter()
            .map(|machine| machine.image().to_string())
            .filter(|image| !image.is_empty())
            .collect();
        images.sort();
        images.dedup();
        Ok(images)
    }

    pub async fn list_volumes(&self) -> Result<Vec<Volume>, ApiError> {
        self.http
            .send_json(Request::get(&["v1", "apps", &self.app, "volumes"]))
            .await
    }

    /// After a volume create failed ambiguously (see `create_machine`): the free volume named
    /// `name` in `region` that is not among `before`, if reads show one within `LAUNCH_LOOKUP`.
    /// Volumes carry no metadata, so this is the best identification there is.
    pub async fn find_new_volume(
        &self,
        before: &[Volume],
        name: &str,
        region: &str,
    ) -> Result<Option<Volume>, ApiError> {
        look_up(|| async {
            Ok(self
                .list_volumes()
                .await?
                .into_iter()
                .find(|v| !before.iter().any(|old| old.id == v.id) && v.is_free(name, region)))
        })
        .await
    }

    /// `POST /volumes` with the full request body (`name`, `region`, `size_gb`, ...).
    pub async fn create_volume(&self, body: Value) -> Result<Volume, ApiError> {
        self.http
            .send_json(Request {
                method: Method::POST,
                path: &["v1", "apps", &self.app, "volumes"],
                query: &[],
                body: Some(body),
                nonce: None,
                replay: Replay::Unsafe,
            })
            .await
    }

    /// The app's IP addresses (`ip` of each assignment).
    pub async fn list_ips(&self) -> Result<Vec<String>, ApiError> {
        let list: Value = self
            .http
            .send_json(Request::get(&["v1", "apps", &self.app, "ip_assignments"]))
            .await?;
        Ok(list["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["ip"].as_str().map(str::to_string))
            .collect())
    }

    /// Assign an address of `kind` (`v6`, `shared_v4`, ...) to the app of organization
    /// `org_slug`; returns it. The body is fly-go's `AssignIPRequest`, every field sent
    /// (`flaps/flaps_ip_assignments.go`, no `omitempty`), filled as flyctl's first deploy fills
    /// it (`internal/command/deploy/deploy_first.go`): the app's organization, no region,
    /// network or service name.
    pub async fn assign_ip(&self, kind: &str, org_slug: &str) -> Result<String, ApiError> {
        let assigned: Value = self
            .http
            .send_json(Request {
                method: Method::POST,
                path: &["v1", "apps", &self.app, "ip_assignments"],
                query: &[],
                body: Some(json!({
                    "type": kind,
                    "region": "",
                    "org_slug": org_slug,
                    "network": "",
                    "service_name": "",
                })),
                nonce: None,
                replay: Replay::Unsafe,
            })
            .await?;
        Ok(assigned["ip"].as_str().unwrap_or_default().to_string())
    }

    /// The processes of a running machine and the sockets they listen on (fly-go
    /// `GetProcesses`; its `MachinePsResponse` is a Go slice, so no processes may come as
    /// `null`).
    pub async fn processes(&self, id: &str) -> Result<Vec<crate::fly::types::ProcessStat>, ApiError> {
        let processes: Option<Vec<crate::fly::types::ProcessStat>> = self
            .http
            .send_json(Request::get(&["v1", "apps", &self.app, "machines", id, "ps"]))
            .await?;
        Ok(processes.unwrap_or_default())
    }

    pub async fn get_machine(&self, id: &str) -> Result<Machine, ApiError> {
        self.http
            .send_json(Request::get(&["v1", "apps", &self.app, "machines", id]))
            .await
            .map(Machine::with_incomplete_config)
    }

    /// `POST /machines/{id}` with the full request body (`config`, `region`, `skip_launch`, ...),
    /// under the lease whose nonce is given.
    pub async fn update_machine(&self, id: &str, nonce: &str, body: Value) -> Result<Machine, ApiError> {
        self.http
            .send_json(Request {
                method: Method::POST,
                path: &["v1", "apps", &self.app, "machines", id],
                query: &[],
                body: Some(self.launch_body(body)),
                nonce: Some(nonce),
                replay: Replay::Safe,
            })
            .await
    }

    /// `POST /machines`, made safe to repeat. flaps may answer a create with a 408 or a 5xx
    /// although flyd committed the machine (flyctl `internal/flapsutil/retry.go`), and the API
    /// takes no idempotency key. So, as flyctl's bluegreen strategy does
    /// (`internal/command/deploy/strategy_bluegreen.go`, `launchGreenMachineWithRetry`), every
    /// create carries a fresh `nixfly_launch_id` in its metadata; after an ambiguous failure
    /// the machine is looked up by it (`?metadata.nixfly_launch_id=`) and adopted when it is
    /// there, else the create is sent again. A machine nixfly cannot see is one it never made,
    /// so a rollback can always destroy what a deploy created.
    pub async fn create_machine(&self, body: Value) -> Result<Machine, ApiError> {
        let mut body = self.launch_body(body);
        let launch_id = ulid::Ulid::new().to_string();
        let config = &mut body["config"];
        if !config["metadata"].is_object() {
            config["metadata"] = Value::Object(Default::default());
        }
        config["metadata"][META_LAUNCH_ID] = Value::String(launch_id.clone());
        let policy = RetryPolicy::default();
        let mut attempt = 0;
        loop {
            let sent = self
                .http
                .send_json(Request {
                    method: Method::POST,
                    path: &["v1", "apps", &self.app, "machines"],
                    query: &[],
                    body: Some(body.clone()),
                    nonce: None,
                    replay: Replay::Unsafe,
                })
                .await;
            let err = match sent {
                Ok(machine) => return Ok(machine),
                Err(err) if err.create_may_have_happened() => err,
                Err(err) => return Err(err),
            };
            match self.find_launched(&launch_id).await {
                Ok(Some(machine)) => {
                    self.http.reporter.warn(format!(
                        "{err}; machine {} was created all the same (found by its \
                         nixfly_launch_id), going on with it",
                        machine.id
                    ));
                    return Ok(machine);
                }
                Ok(None) => {}
                Err(lookup) => {
                    return Err(ApiError::CreateUncertain {
                        create: Box::new(err),
                        lookup: Box::new(lookup),
                        look_for: format!(
                            "a machine of app {} whose metadata has {META_LAUNCH_ID} = {launch_id} \
                             (`fly machines list --json`) and destroy it if the deploy is abandoned \
                             (`fly machines destroy --force ID`)",
                            self.app
                        ),
                    });
                }
            }
            if attempt >= CREATE_RETRIES {
                return Err(err);
            }
            let delay = policy.delay(attempt, None);
            attempt += 1;
            self.http.reporter.warn(format!(
                "{err}; no machine was created, creating it again in {:.1}s (retry {attempt} of \
                 {CREATE_RETRIES})",
                delay.as_secs_f64()
            ));
            tokio::time::sleep(delay).await;
        }
    }

    /// The machine a create with this launch id made, if reads show one within
    /// `LAUNCH_LOOKUP` (the list lags a little behind a commit, as flyctl's lookup delay
    /// allows for). A failed lookup is an error: the machine may exist, and creating it again
    /// could make a second one.
    async fn find_launched(&self, launch_id: &str) -> Result<Option<Machine>, ApiError> {
        let filter = [(META_LAUNCH_QUERY, launch_id.to_string())];
        look_up(|| async {
            let listed = self.list_machines_where(&filter).await?;
            // Filtered again here: a server that ignored the filter must not hand us another
            // machine.
            Ok(listed
                .into_iter()
                .find(|m| m.metadata(META_LAUNCH_ID) == Some(launch_id)))
        })
        .await
    }

    /// `DELETE` the machine, stopping it first if it runs. A 404 means it is gone already (a
    /// retry after an answer that was lost, or a machine that destroyed itself): done, as
    /// flyctl's bluegreen strategy takes it (`internal/command/deploy/strategy_bluegreen.go`,
    /// `DestroyBlueMachines`). The flag goes under both names: `force` (the OpenAPI spec) and
    /// `kill` (what fly-go sends, `flaps/flaps_machines.go`, `Destroy`).
    pub async fn destroy_machine(&self, id: &str, nonce: Option<&str>) -> Result<(), ApiError> {
        let sent = self
            .http
            .send(Request {
                method: Method::DELETE,
                path: &["v1", "apps", &self.app, "machines", id],
                query: &[("force", "true".to_string()), ("kill", "true".to_string())],
                body: None,
                nonce,
                replay: Replay::Safe,
            })
            .await;
        match sent {
            Ok(_) => Ok(()),
            Err(err) if err.status() == Some(404) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// `start`, `stop`, `cordon` or `uncordon`. A start can fail with 200: fly-go's
    /// `MachineStartResponse` carries `status` and `message`, and flyctl's `fly machine start`
    /// fails on `status == "error"` (`internal/command/machine/start.go`); so does this, rather
    /// than wait for a start that is not coming.
    pub async fn machine_action(&self, id: &str, action: &str, nonce: Option<&str>) -> Result<(), ApiError> {
        let body = self
            .http
            .send(Request {
                method: Method::POST,
                path: &["v1", "apps", &self.app, "machines", id, action],
                query: &[],
                body: None,
                nonce,
                replay: Replay::Safe,
            })
            .await?;
        if action == "start"
            && let Ok(answer) = serde_json::from_slice::<Value>(&body)
            && answer.get("status").and_then(Value::as_str) == Some("error")
        {
            let message = answer
                .get("message")
                .and_then(Value::as_str)
                .filter(|m| !m.is_empty())
                .unwrap_or("no reason given");
            return Err(ApiError::StartRefused {
                machine: id.to_string(),
                message: message.to_string(),
            });
        }
        Ok(())
    }

    /// Set one key of the machine's metadata (`POST .../metadata/{key}`), under the lease.
    pub async fn set_metadata(
        &self,
        id: &str,
        key: &str,
        value: &str,
        nonce: Option<&str>,
    ) -> Result<(), ApiError> {
        self.http
            .send(Request {
                method: Method::POST,
                path: &["v1", "apps", &self.app, "machines", id, "metadata", key],
                query: &[],
                body: Some(json!({ "value": value })),
                nonce,
                replay: Replay::Safe,
            })
            .await
            .map(drop)
    }

    /// Acquire a new lease (`nonce` None) or extend the one we hold. The TTL goes both where
    /// the spec puts it (the `CreateLeaseRequest` body, with a description) and where fly-go
    /// sends it (`?ttl=`, no body: `flaps/flaps_machines.go`, `AcquireLease`, `RefreshLease`),
    /// so that flaps reads it whichever it honours.
    pub async fn lease(&self, id: &str, ttl: Duration, nonce: Option<&str>) -> Result<Lease, ApiError> {
        let secs = ttl.as_secs().max(1);
        let response: LeaseResponse = self
            .http
            .send_json(Request {
                method: Method::POST,
                path: &["v1", "apps", &self.app, "machines", id, "lease"],
                query: &[("ttl", secs.to_string())],
                body: Some(json!({"ttl": secs, "description": "nixfly deploy"})),
                nonce,
                // fly-go retries an acquire on any failure (`flaps/flaps_machines.go`,
                // `AcquireLease` in `Retry`). One that took effect although its answer was lost
                // meets our own lease as a 409, which `Leases::acquire` waits out (13 s TTL).
                replay: Replay::Safe,
            })
            .await?;
        response.granted().map_err(|answer| ApiError::NoLease {
            machine: id.to_string(),
            answer,
        })
    }

    /// Who holds the machine's lease now, if the API tells.
    pub async fn current_lease(&self, id: &str) -> Result<Option<Lease>, ApiError> {
        let response: LeaseResponse = self
            .http
            .send_json(Request::get(&["v1", "apps", &self.app, "machines", id, "lease"]))
            .await?;
        Ok(response.holder())
    }

    pub async fn release_lease(&self, id: &str, nonce: &str) -> Result<(), ApiError> {
        self.http
            .send(Request {
                method: Method::DELETE,
                path: &["v1", "apps", &self.app, "machines", id, "lease"],
                query: &[],
                body: None,
                nonce: Some(nonce),
                replay: Replay::Safe,
            })
            .await
            .map(drop)
    }

    /// One `wait` call for `state` (one state, or several comma-separated: any of them will
    /// do): at most 60 seconds (the API's cap). A timeout comes back as status 408.
    /// `version` (the machine's `instance_id` after an update) makes the API wait for that
    /// version, not the one that was running before. Answers the state reached, when the
    /// answer names it (`WaitMachineResponse.state`).
    pub async fn wait(
        &self,
        id: &str,
        state: &str,
        version: Option<&str>,
        timeout: Duration,
    ) -> Result<Option<String>, ApiError> {
        let secs = timeout.min(MAX_WAIT_CALL).as_secs().max(1);
        // Several states go as repeated `state` parameters, as fly-go sends them
        // (`flaps/flaps_machines_wait.go`: `State []string` with `url:"state"`): each is then
        // one of the spec's enum values. The spec also allows them comma-separated.
        let mut query: Vec<(&str, String)> = state.split(',').map(|s| ("state", s.to_string())).collect();
        query.push(("timeout", secs.to_string()));
        if let Some(version) = version {
            query.push(("version", version.to_string()));
        }
        self.http
            .send(Request {
                method: Method::GET,
                path: &["v1", "apps", &self.app, "machines", id, "wait"],
                query: &query,
                body: None,
                nonce: None,
                replay: Replay::Wait,
            })
            .await
            .map(|body| {
                serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|answer| answer.get("state")?.as_str().map(str::to_string))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_show_the_error_field_or_the_text() {
        assert_eq!(
            error_message(br#"{"error":"Authenticate: token validation error"}"#),
            "Authenticate: token validation error"
        );
        assert_eq!(
            error_message(br#"{"status":"error","message":"lease currently held by someone","error":""}"#),
            "lease currently held by someone"
        );
        assert_eq!(
            error_message(br#"{"error":"not found","message":""}"#),
            "not found"
        );
        assert_eq!(error_message(b"upstream timeout\n"), "upstream timeout");
        assert_eq!(error_message(b""), "no response body");
    }

    /// A create whose connection could not be made was never sent, so it is sent again
    /// (after backoff) although a create is otherwise never replayed blindly. The double
    /// starts listening only after the first attempt found nothing there.
    #[tokio::test]
    async fn a_create_that_could_not_connect_is_sent_again() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let options = fly_api_double::Options::default();
        let token = FlyToken::parse(&options.token, super::super::token::TokenSource::Flag).unwrap();
        let starter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let fly = fly_api_double::FlyApi::listen(addr, options).unwrap();
            fly.add_app("demo");
            fly
        });
        let http = FlyHttp::new(&format!("http://{addr}"), token, Reporter::plain()).unwrap();
        let config = fly_api_double::MachineSpec::new("app").config();
        let created = MachinesApi::new(http, "demo")
            .create_machine(json!({"config": config, "region": "ams"}))
            .await
            .unwrap();
        let fly = starter.join().unwrap();
        assert_eq!(fly.machines("demo").len(), 1);
        assert_eq!(fly.machines("demo")[0].id, created.id);
        assert_eq!(fly.requests_to("POST", "/v1/apps/demo/machines").len(), 1);
        assert!(fly.violations().is_empty(), "{:?}", fly.violations());
    }

    fn status(code: u16) -> StatusCode {
        StatusCode::from_u16(code).unwrap()
    }

    /// flyctl `internal/flapsutil/retry_test.go`, `TestIsTransientFlapsError` and
    /// `TestHasTransientNetworkSubstring`: flaps' 408, 429, 502 and 503 are worth another try,
    /// its 400 and 404 are not; a connection that could not be made (refused, no such host) is
    /// retried, and so is one that broke after sending (reset, EOF) when the request is safe to
    /// repeat. A create is the exception flyctl's comment asks for: only a 429 or a connection
    /// never made sends it again, as a 408 or 5xx may come after it took effect.
    #[test]
    fn flaps_answers_are_retried_as_flyctl_classifies_them() {
        for code in [408, 429, 502, 503] {
            assert!(status_is_transient(status(code), Replay::Safe), "{code}");
        }
        for code in [400, 404] {
            assert!(!status_is_transient(status(code), Replay::Safe), "{code}");
        }
        assert!(transport_is_transient(true, Replay::Safe));
        assert!(transport_is_transient(false, Replay::Safe));

        assert!(status_is_transient(status(429), Replay::Unsafe));
        for code in [408, 500, 502, 503] {
            assert!(!status_is_transient(status(code), Replay::Unsafe), "{code}");
        }
        assert!(transport_is_transient(true, Replay::Unsafe));
        assert!(!transport_is_transient(false, Replay::Unsafe));
        // A wait's 408 is the API saying the state was not reached in time: the caller's loop
        // asks again, the HTTP layer does not.
        assert!(!status_is_transient(status(408), Replay::Wait));
        assert!(status_is_transient(status(503), Replay::Wait));
    }

    /// flyctl `internal/command/deploy/machines_releasestatus_test.go`,
    /// `TestIsRetryableReleaseStatusError` and `TestStatusErrorRetryable`: a release status
    /// update (a PATCH, idempotent) is sent again on any 5xx (500 through 599, the proxy's 502
    /// and 504 pages included) and on a connection failure; 401, 404, 422 and 499 are final.
    /// nixfly also retries a 429, which flyctl's release client does not: it did nothing and
    /// says when to come back.
    #[test]
    fn release_status_answers_are_retried_as_flyctl_classifies_them() {
        for code in [500, 502, 503, 504, 599] {
            assert!(status_is_transient(status(code), Replay::Safe), "{code}");
        }
        for code in [401, 404, 422, 499] {
            assert!(!status_is_transient(status(code), Replay::Safe), "{code}");
        }
        assert!(transport_is_transient(false, Replay::Safe));
    }

    /// An answer `raw_server` gives by resetting the connection (RST) once the request began
    /// to arrive: the ECONNRESET of fly-go's tests.
    const RESET: &str = "";

    /// A one-connection-at-a-time HTTP server that answers the n-th request with `answers[n]`
    /// (raw bytes, the connection closed after each; `RESET` resets it instead), and keeps the
    /// head (request line and headers) of each request it read.
    fn raw_server(answers: Vec<&'static str>) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&heads);
        std::thread::spawn(move || {
            for answer in answers {
                let Ok((mut stream, _)) = listener.accept() else {
                    return;
                };
                if answer == RESET {
                    // Closing with unread input makes the kernel answer with a reset.
                    let _ = stream.read(&mut [0; 1]);
                    seen.lock().unwrap().push(String::new());
                    continue;
                }
                let mut reader = BufReader::new(stream);
                let mut head = String::new();
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                    head.push_str(&line);
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                seen.lock().unwrap().push(head);
                let mut stream = reader.into_inner();
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        (format!("http://{addr}"), heads)
    }

    fn count(heads: &std::sync::Mutex<Vec<String>>) -> usize {
        heads.lock().unwrap().len()
    }

    /// Headers that promise a body the connection then does not deliver.
    const CUT_OFF: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 64\r\nconnection: close\r\n\r\n{\"rel";
    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";

    fn platform(base: &str) -> FlyHttp {
        let token = FlyToken::parse("fo1_testtoken123", super::super::token::TokenSource::Flag).unwrap();
        FlyHttp::platform(base, token, Reporter::plain()).unwrap()
    }

    /// flyctl `machines_releasestatus_test.go`: "a response body that could not be read" is
    /// among the failures `isRetryableReleaseStatusError` retries (`machines.go`). nixfly gave
    /// up on an answer cut off mid-body, even for a request safe to repeat; it now sends such
    /// a request again, and still never a create, which may have taken effect.
    #[tokio::test]
    async fn an_answer_cut_off_mid_body_is_retried_only_when_safe_to_repeat() {
        let (base, seen) = raw_server(vec![CUT_OFF, OK]);
        let patch = Request {
            method: Method::PATCH,
            path: &["api", "v1", "releases", "rel_1"],
            query: &[],
            body: Some(json!({"status": "complete", "metadata": null})),
            nonce: None,
            replay: Replay::Safe,
        };
        assert_eq!(platform(&base).send(patch).await.unwrap(), b"{}");
        assert_eq!(count(&seen), 2);

        let (base, seen) = raw_server(vec![CUT_OFF, OK]);
        let create = Request {
            method: Method::POST,
            path: &["api", "v1", "releases"],
            query: &[],
            body: Some(json!({"app_name": "demo"})),
            nonce: None,
            replay: Replay::Unsafe,
        };
        let err = platform(&base).send(create).await.unwrap_err();
        assert!(matches!(err, ApiError::Transport { .. }), "{err:?}");
        assert_eq!(count(&seen), 1);
    }

    /// A raw HTTP answer with `status` (e.g. "503 Service Unavailable"), extra header lines and
    /// a JSON body, for `raw_server`.
    fn answer(status: &str, headers: &str, body: &str) -> &'static str {
        let text = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n{headers}\r\n{body}",
            body.len()
        );
        Box::leak(text.into_boxed_str())
    }

    fn machines(base: &str) -> FlyHttp {
        let token =
            FlyToken::parse("FlyV1 fm2_testmacaroon", super::super::token::TokenSource::Flag).unwrap();
        FlyHttp::new(base, token, Reporter::plain()).unwrap()
    }

    fn post<'a>(path: &'a [&'a str], replay: Replay) -> Request<'a> {
        Request {
            method: Method::POST,
            body: Some(json!({})),
            replay,
            ..Request::get(path)
        }
    }

    /// fly-go `flaps/flaps_error_test.go`, `TestIsNameTakenError` (its error bodies) and
    /// `TestFlapsErrorSuggestion`: flaps' error body is `{"error": text, "status": code}`, the
    /// code being its own classification of the failure (`main.statusCode` in the OpenAPI
    /// file). The text is the message either way; the code is kept when there is one, and the
    /// advice is keyed off the code alone: "insufficient capacity" in the text, without the
    /// code, gets none, and a code outranks whatever the text quotes. nixfly read only the
    /// text and dropped the code.
    #[tokio::test]
    async fn flaps_error_bodies_give_their_text_and_their_code() {
        let capacity_advice = "(insufficient_capacity): try again later, or run it in another region";
        let volume_advice = "(volume_placement_capacity): try again later, or give the machine a volume";
        let cases = [
            (
                "422 Unprocessable Entity",
                r#"{"error":"Validation failed: Name has already been taken","status":"name_taken"}"#,
                "Validation failed: Name has already been taken",
                Some("name_taken"),
            ),
            (
                "422 Unprocessable Entity",
                r#"{"error":"Validation failed: Name has already been taken"}"#,
                "Validation failed: Name has already been taken",
                None,
            ),
            (
                "422 Unprocessable Entity",
                r#"{"error":"uniqueness constraint violated"}"#,
                "uniqueness constraint violated",
                None,
            ),
            (
                "503 Service Unavailable",
                r#"{"error":"out of capacity","status":"insufficient_capacity"}"#,
                "out of capacity",
                Some("insufficient_capacity"),
            ),
            (
                "503 Service Unavailable",
                r#"{"error":"retry gave up after: Validation failed: Name has already been taken","status":"insufficient_capacity"}"#,
                "retry gave up after: Validation failed: Name has already been taken",
                Some("insufficient_capacity"),
            ),
            (
                "503 Service Unavailable",
                r#"{"error":"insufficient_capacity: out of capacity"}"#,
                "insufficient_capacity: out of capacity",
                None,
            ),
            // `TestCapacityScopeOf`: a region without room, and a volume's host without room.
            (
                "422 Unprocessable Entity",
                r#"{"error":"could not find a candidate host","status":"insufficient_capacity"}"#,
                "could not find a candidate host",
                Some("insufficient_capacity"),
            ),
            (
                "412 Precondition Failed",
                r#"{"error":"insufficient resources to create new machine with existing volume id '123'","status":"volume_placement_capacity"}"#,
                "insufficient resources to create new machine with existing volume id '123'",
                Some("volume_placement_capacity"),
            ),
        ];
        let (base, _) = raw_server(
            cases
                .iter()
                .map(|(status, body, ..)| answer(status, "", body))
                .collect(),
        );
        let http = machines(&base);
        for (status, body, text, code) in cases {
            // A create: not sent again on a 5xx, so each answer is read once.
            let err = http
                .send(post(&["v1", "apps", "demo", "machines"], Replay::Unsafe))
                .await
                .unwrap_err();
            assert_eq!(err.status(), status[..3].parse().ok(), "{body}");
            assert_eq!(err.message(), Some(text), "{body}");
            assert_eq!(err.code(), code, "{body}");
            let shown = err.to_string();
            assert_eq!(
                shown.contains(capacity_advice),
                code == Some("insufficient_capacity"),
                "{shown}"
            );
            assert_eq!(
                shown.contains(volume_advice),
                code == Some("volume_placement_capacity"),
                "{shown}"
            );
        }
    }

    /// fly-go `flaps/flaps_machines_wait_test.go`: `TestWaitDefaults` (GET `.../wait` with
    /// `state` and `timeout=60`, no `version`, no `from_event_id`), `TestWaitOptions` (several
    /// states as repeated `state` parameters, `timeout` in whole seconds and `version` as
    /// given) and `TestWaitTimeoutClamp` (2 minutes is sent as 60, half a second as 1). fly-go
    /// passes a comma-joined state on as one value (`TestWaitStatesNoCommaSplitting`), which
    /// the spec also accepts; nixfly's several states always go in `TestWaitOptions`' form.
    #[tokio::test]
    async fn waits_send_the_query_flaps_sends() {
        // The spec's `WaitMachineResponse` names the state reached, which `wait` answers.
        let reached = answer("200 OK", "", r#"{"ok":true,"state":"started"}"#);
        let (base, heads) = raw_server(vec![reached, OK, OK, OK, OK]);
        let api = MachinesApi::new(machines(&base), "my-app");
        let version = "01JC1W3CW1VEKNMHX7MJ70DE1D";
        let waits = [
            (
                "started",
                None,
                Duration::from_secs(60),
                "state=started&timeout=60",
            ),
            (
                "stopped",
                Some(version),
                Duration::from_secs(30),
                "state=stopped&timeout=30&version=01JC1W3CW1VEKNMHX7MJ70DE1D",
            ),
            (
                "started",
                None,
                Duration::from_secs(120),
                "state=started&timeout=60",
            ),
            (
                "started",
                None,
                Duration::from_millis(500),
                "state=started&timeout=1",
            ),
            (
                "started,stopped",
                None,
                Duration::from_secs(60),
                "state=started&state=stopped&timeout=60",
            ),
        ];
        let mut answered = Vec::new();
        for (state, version, timeout, _) in waits {
            answered.push(api.wait("m123", state, version, timeout).await.unwrap());
        }
        assert_eq!(answered, [Some("started".to_string()), None, None, None, None]);
        let heads = heads.lock().unwrap();
        for (head, (.., query)) in heads.iter().zip(waits) {
            let line = head.lines().next().unwrap();
            assert_eq!(
                line,
                format!("GET /v1/apps/my-app/machines/m123/wait?{query} HTTP/1.1")
            );
        }
    }

    /// fly-go `flaps/flaps_test.go`, `TestFlapsClientPersistsPathScopedCookiesPerApp`: the
    /// `fly_flaps_affinity` cookie flaps sets on an app's write, scoped to `/v1/apps/<app>`,
    /// goes back with that app's later requests and no other app's.
    #[tokio::test]
    async fn affinity_cookies_go_back_to_their_own_app_only() {
        let set = |node: &str, app: &str| {
            answer(
                "200 OK",
                &format!("set-cookie: fly_flaps_affinity={node}; Path=/v1/apps/{app}\r\n"),
                "{}",
            )
        };
        let (base, heads) = raw_server(vec![
            set("creator-node-a", "app-a"),
            set("creator-node-b", "app-b"),
            OK,
            OK,
        ]);
        let http = machines(&base);
        for app in ["app-a", "app-b"] {
            http.send(post(&["v1", "apps", app, "machines"], Replay::Unsafe))
                .await
                .unwrap();
        }
        for app in ["app-a", "app-b"] {
            http.send(Request::get(&["v1", "apps", app, "status"]))
                .await
                .unwrap();
        }
        let cookies: Vec<Vec<String>> = heads.lock().unwrap()[2..]
            .iter()
            .map(|head| {
                head.lines()
                    .filter_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("cookie:")
                            .map(|c| c.trim().to_string())
                    })
                    .collect()
            })
            .collect();
        assert_eq!(
            cookies,
            [
                ["fly_flaps_affinity=creator-node-a"],
                ["fly_flaps_affinity=creator-node-b"]
            ]
        );
    }

    /// fly-go `flaps/flaps_test.go`, `TestNewWithOptions_UserAgentUsesOptsWhenProvided`, and
    /// `client_test.go`, `TestTransportSetDefaults_UserAgentUsesNameAndVersionWhenProvided`:
    /// a client names itself `<name>/<version>` to both APIs, as flyctl sends `flyctl/<version>`.
    #[tokio::test]
    async fn both_apis_are_told_nixfly_and_its_version() {
        let (base, heads) = raw_server(vec![OK, OK]);
        machines(&base)
            .send(Request::get(&["v1", "apps", "demo"]))
            .await
            .unwrap();
        platform(&base)
            .send(Request::get(&["api", "v1", "releases"]))
            .await
            .unwrap();
        let agent = format!("user-agent: nixfly/{}", env!("CARGO_PKG_VERSION"));
        for head in heads.lock().unwrap().iter() {
            assert!(head.lines().any(|l| l.eq_ignore_ascii_case(&agent)), "{head}");
        }
    }

    /// fly-go `flaps/flaps_test.go`: `TestFlaps_GetRetriesOnConnReset` (a GET whose connection
    /// was reset twice is sent a third time), `TestFlaps_PostDoesNotRetry` (a POST that makes
    /// something is not), `TestFlaps_GetGivesUpAfterMaxRetries` (the reset stays in the error
    /// chain); `client_test.go`: `TestRunWithContext_RetriesQueryOnConnReset` (so is a GraphQL
    /// query) and `TestRunWithContext_DoesNotRetryMutation`. nixfly sends again more than fly-go
    /// does (any replayable request, 5 retries), as flyctl's own retry layer does: see
    /// `flaps_answers_are_retried_as_flyctl_classifies_them`.
    #[tokio::test]
    async fn a_reset_connection_is_retried_for_reads_and_never_for_a_create() {
        let (base, heads) = raw_server(vec![RESET, RESET, OK]);
        machines(&base).send(Request::get(&["v1", "apps"])).await.unwrap();
        assert_eq!(count(&heads), 3);

        let (base, heads) = raw_server(vec![RESET, OK]);
        let err = machines(&base)
            .send(post(&["v1", "apps", "demo", "machines"], Replay::Unsafe))
            .await
            .unwrap_err();
        assert_eq!(count(&heads), 1);
        let mut source: Option<&dyn std::error::Error> = Some(&err);
        let mut reset = false;
        while let Some(e) = source {
            reset |= e
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionReset);
            source = e.source();
        }
        assert!(reset, "{err:?}");
        assert!(err.to_string().contains("the connection broke"), "{err}");

        let graphql = answer(
            "200 OK",
            "",
            r#"{"data":{"app":{"currentReleaseUnprocessed":null}}}"#,
        );
        let (base, heads) = raw_server(vec![RESET, RESET, graphql]);
        let config = super::super::platform::PlatformApi::new(platform(&base))
            .current_release_config("demo")
            .await
            .unwrap();
        assert_eq!(config, None);
        assert_eq!(count(&heads), 3);
    }

    #[test]
    fn paths_are_joined_below_the_base_url() {
        let token = FlyToken::parse("fo1_testtoken123", super::super::token::TokenSource::Flag).unwrap();
        let http = FlyHttp::new("http://127.0.0.1:9/prefix/", token, Reporter::plain()).unwrap();
        let url = http.url(&["v1", "apps", "demo"], &[("state", "started".into())]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:9/prefix/v1/apps/demo?state=started"
        );
    }
}
