//! The HTTP side: one handler records the request, checks auth, validates it against the
//! schema, applies injected faults, then dispatches on the spec's operationId.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::schema::{self, Operation};
use super::state::{
    App, CreateMachine, FaultKind, Lease, Machine, MountRefusal, RecordedRequest, State, Violation, Volume,
    rfc3339, rfc3339_now, unix_secs,
};

/// The longest a single wait call blocks, in Fly time (the spec: "up to 60 seconds").
const WAIT_CAP_SECS: u64 = 60;
const NONCE_HEADER: &str = "fly-machine-lease-nonce";
/// The cookie flaps sets to send an app's later requests to the node that made its writes
/// (fly-go `flaps/flaps.go` keeps it in a cookie jar; `flaps/flaps_test.go`,
/// `TestFlapsClientPersistsPathScopedCookiesPerApp`: `fly_flaps_affinity`, path
/// `/v1/apps/<app>`).
const AFFINITY_COOKIE: &str = "fly_flaps_affinity";

pub struct Shared {
    pub state: Mutex<State>,
    /// The token without any scheme prefix.
    pub token: String,
    pub started: Instant,
    /// Print each request and violation on stderr (the standalone sandbox).
    pub echo: bool,
    /// Answer lease calls with the flat `Lease` of the 2026 spec instead of the
    /// `{"status":"success","data":{...}}` envelope flyctl's client decodes.
    pub flat_lease: bool,
    pub affinity: bool,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the state from the Drop check.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Everything about the request the handlers need, parsed once.
struct Request {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    nonce: Option<String>,
    body: Option<Value>,
    /// It carries the affinity cookie of its app's writes: it reaches the node that made
    /// them, which sees them at once.
    affinity: bool,
}

impl Request {
    fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str) -> bool {
        self.query(name) == Some("true")
    }

    fn body_field(&self, name: &str) -> Option<&Value> {
        self.body.as_ref().and_then(|b| b.get(name))
    }
}

pub async fn handle(
    AxumState(shared): AxumState<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    raw_body: Bytes,
) -> Response {
    let mut problems = Vec::new();
    let body = if raw_body.is_empty() {
        None
    } else {
        match serde_json::from_slice::<Value>(&raw_body) {
            Ok(v) => Some(v),
            Err(e) => {
                problems.push(format!("request body is not JSON: {e}"));
                Some(Value::String(String::from_utf8_lossy(&raw_body).into_owned()))
            }
        }
    };
    let raw_query = uri.query().unwrap_or_default().to_string();
    let req = Request {
        method: method.as_str().to_string(),
        path: uri.path().to_string(),
        query: url::form_urlencoded::parse(raw_query.as_bytes())
            .into_owned()
            .collect(),
        nonce: header(&headers, NONCE_HEADER).map(str::to_string),
        body,
        affinity: machines_app(uri.path()).is_some_and(|app| {
            headers
                .get_all("cookie")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .any(|pair| pair.trim() == format!("{AFFINITY_COOKIE}={}", affinity_node(app)))
        }),
    };
    let index = {
        let mut st = shared.lock();
        st.requests.push(RecordedRequest {
            method: req.method.clone(),
            path: req.path.clone(),
            query: raw_query.clone(),
            body: req.body.clone(),
            lease_nonce: req.nonce.clone(),
            auth_scheme: auth_scheme(&headers),
            affinity: req.affinity,
            at: shared.started.elapsed(),
            status: 0,
        });
        st.requests.len() - 1
    };
    let mut response = process(&shared, &req, &headers, problems).await;
    let status = response.status().as_u16();
    // Every answer carries a request id (fly-go keeps it as `FlapsError.FlyRequestId`).
    response.headers_mut().insert(
        "fly-request-id",
        HeaderValue::from_str(&format!("01double{index:018}")).expect("ascii"),
    );
    if shared.affinity
        && req.method != "GET"
        && response.status().is_success()
        && let Some(app) = machines_app(&req.path)
    {
        let cookie = format!("{AFFINITY_COOKIE}={}; Path=/v1/apps/{app}", affinity_node(app));
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert("set-cookie", value);
        }
    }
    shared.lock().requests[index].status = status;
    if shared.echo {
        let q = if raw_query.is_empty() {
            String::new()
        } else {
            format!("?{raw_query}")
        };
        eprintln!("fly-api-double: {} {}{q} -> {status}", req.method, req.path);
    }
    response
}

async fn process(shared: &Shared, req: &Request, headers: &HeaderMap, mut problems: Vec<String>) -> Response {
    let content_type = header(headers, "content-type");
    let route = if req.path == "/api/v1/releases" || req.path.starts_with("/api/v1/releases/") {
        problems.extend(validate_release_request(req, content_type));
        Route::Releases
    } else if req.path == "/graphql" {
        problems.extend(validate_graphql_request(req, content_type));
        Route::GraphQl
    } else if let Some(app) = logs_app(&req.path) {
        problems.extend(validate_logs_request(req));
        Route::Logs(app.to_string())
    } else {
        match schema::find_operation(&req.method, &req.path) {
            Some(op) => {
                problems.extend(schema::validate_request(
                    &op,
                    &req.query,
                    headers,
                    content_type,
                    req.body.as_ref(),
                ));
                Route::Machines(op)
            }
            None => {
                problems.push(format!(
                    "no operation `{} {}` in the Machines API spec",
                    req.method, req.path
                ));
                Route::Unknown
            }
        }
    };
    problems.dedup();
    // Every request is checked, also one refused below before its body matters: a malformed
    // request that happens to be refused is still a test failure.
    {
        let mut st = shared.lock();
        for reason in &problems {
            if shared.echo {
                eprintln!("fly-api-double: VIOLATION {} {}: {reason}", req.method, req.path);
            }
            st.violations.push(Violation {
                method: req.method.clone(),
                path: req.path.clone(),
                reason: reason.clone(),
            });
        }
    }
    // NOTES.md "Base URLs": errors are `{"error": ...}`, a token Fly does not take is 401
    // "Authenticate: token validation error".
    if !authorized(headers, &shared.token, is_platform_api(req)) {
        return error(StatusCode::UNAUTHORIZED, "Authenticate: token validation error");
    }
    if let Some(refusal) = platform_scheme_refusal(req, headers).or_else(|| release_definition_refusal(req)) {
        return refusal;
    }
    // The double's own rule, not Fly's: a request off the spec is a test failure, answered
    // 400 (404 off every path) so that it cannot pass unnoticed. Fly often ignores what it
    // does not know instead.
    if !problems.is_empty() {
        let status = match route {
            Route::Unknown => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        };
        return error(
            status,
            &format!(
                "request does not match the Fly API schema: {}",
                problems.join("; ")
            ),
        );
    }
    let (after, late) = match take_fault(shared, req) {
        Some(Taken::Instead(response)) => return response,
        Some(Taken::After(response)) => (Some(response), None),
        Some(Taken::Late(delay)) => (None, Some(delay)),
        None => (None, None),
    };
    let response = match route {
        Route::Releases => releases(shared, req),
        Route::GraphQl => current_release_config(shared, req),
        Route::Logs(app) => app_logs(shared, req, &app),
        Route::Machines(op) => {
            let response = machines(shared, req, &op).await;
            check_own_answer(shared, req, &op, response).await
        }
        Route::Unknown => unreachable!("unknown routes are violations"),
    };
    if let Some(delay) = late {
        tokio::time::sleep(delay).await;
    }
    after.unwrap_or(response)
}

/// An injected fault: answered instead of the request, or after it took effect, or the
/// request's own answer sent late.
enum Taken {
    Instead(Response),
    After(Response),
    Late(std::time::Duration),
}

/// Validate the double's own successful answers against the spec's response schema (the
/// lease envelope's `data` for lease calls): a mismatch is a bug in the double, recorded as
/// a violation so that it fails the test like any other.
async fn check_own_answer(shared: &Shared, req: &Request, op: &Operation, response: Response) -> Response {
    let status = response.status().as_u16();
    let Some(schema) = schema::response_schema(op, status) else {
        return response;
    };
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .expect("in-memory body");
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let checked = if op.id.contains("lease") && !shared.flat_lease {
        &value["data"]
    } else {
        &value
    };
    let mut errors = Vec::new();
    schema::validate(schema, checked, "answer", &mut errors);
    if !errors.is_empty() {
        let mut st = shared.lock();
        for reason in errors {
            st.violations.push(Violation {
                method: req.method.clone(),
                path: req.path.clone(),
                reason: format!(
                    "the double's own answer breaks the spec (fix crates/fly-api-double): {reason}"
                ),
            });
        }
    }
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

enum Route {
    Machines(Operation),
    Releases,
    GraphQl,
    /// `GET /api/v1/apps/{app}/logs`: the app's logs as fly-go's `GetAppLogs` reads them.
    Logs(String),
    Unknown,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn auth_scheme(headers: &HeaderMap) -> String {
    let value = header(headers, "authorization").unwrap_or_default();
    let mut words = value.split(' ');
    match (words.next(), words.next()) {
        (Some("Bearer"), Some("FlyV1")) => "Bearer FlyV1".into(),
        (Some(scheme @ ("Bearer" | "FlyV1" | "Basic")), _) => scheme.into(),
        // Anything else may be the credential itself: never record it.
        (Some(""), None) => String::new(),
        _ => "other".into(),
    }
}

/// `Bearer X`, `FlyV1 X` and `Bearer FlyV1 X`, as Fly accepts them. The platform API also
/// takes the token among others: fly-go (`tokens/tokens.go`, `GraphQL()`) sends it every
/// macaroon and OAuth token at once, "the only service that accepts macaroons and OAuth
/// tokens in the same request".
/// `token` without its `FlyV1`/`Bearer` schemes, however many, in any case (fly-go
/// `tokens/tokens.go` `StripAuthorizationScheme`).
pub(crate) fn strip_scheme(token: &str) -> &str {
    let token = token.trim();
    match token.split_once(' ') {
        Some((scheme, rest))
            if scheme.eq_ignore_ascii_case("Bearer") || scheme.eq_ignore_ascii_case("FlyV1") =>
        {
            strip_scheme(rest)
        }
        _ => token,
    }
}

/// `token`'s comma-separated parts, split as fly-go's `tokens.Parse` splits them: (macaroons,
/// OAuth tokens).
fn token_parts(token: &str) -> (Vec<&str>, Vec<&str>) {
    token
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .partition(|t| matches!(t.split_once('_'), Some(("fm1r" | "fm1a" | "fm2", _))))
}

fn authorized(headers: &HeaderMap, token: &str, platform: bool) -> bool {
    let Some(value) = header(headers, "authorization") else {
        return false;
    };
    let Some((scheme, _)) = value.split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("Bearer") && !scheme.eq_ignore_ascii_case("FlyV1") {
        return false;
    }
    let credential = strip_scheme(value);
    if platform {
        let sent: Vec<&str> = credential.split(',').collect();
        return token.split(',').all(|part| sent.contains(&part));
    }
    // The Machines API gets a token's macaroons alone when it has any (fly-go
    // `Tokens.FlapsHeader`), so a login session (macaroons and an OAuth token) is accepted by
    // its macaroons; a token of OAuth tokens alone, by those.
    let (macaroons, oauth) = token_parts(token);
    let expected = if macaroons.is_empty() { oauth } else { macaroons };
    credential == token || credential.split(',').map(str::trim).eq(expected)
}

fn is_platform_api(req: &Request) -> bool {
    req.path.starts_with("/api/") || req.path == "/graphql"
}

/// The platform API (api.fly.io) takes `Authorization: Bearer <macaroons,oauth>` on its REST
/// routes: flyctl's client sends exactly that (`internal/uiex/releases.go`: `"Bearer " +
/// Tokens.GraphQL()`), never the Machines API's `FlyV1` scheme, so the double refuses `FlyV1`
/// there.
///
/// The app logs are the exception: fly-go reaches them with `Tokens.BubblegumHeader()`
/// (`resource_logs.go`), which is `FlyV1 <macaroons>` whenever there are macaroons.
///
/// `/graphql` gets what fly-go's GraphQL client puts on every request (`client.go`,
/// `addAuthorization`: `Tokens.GraphQLHeader()`, `tokens/tokens.go` `normalized(true, true)`):
/// `FlyV1` as soon as the token has a macaroon, else `Bearer`; the other scheme is refused.
///
/// No source found that api.fly.io refuses the other scheme: refusing it is the double's
/// strict choice, which keeps clients to what flyctl sends.
fn platform_scheme_refusal(req: &Request, headers: &HeaderMap) -> Option<Response> {
    if !is_platform_api(req) || logs_app(&req.path).is_some() {
        return None;
    }
    let scheme = auth_scheme(headers);
    if req.path == "/graphql" {
        // By the tokens sent, as fly-go decides by the tokens it holds.
        let sent = header(headers, "authorization").unwrap_or_default();
        let credential = sent.split_once(' ').map_or("", |(_, rest)| rest);
        let has_macaroon = credential
            .split(',')
            .any(|part| ["fm1r_", "fm1a_", "fm2_"].iter().any(|p| part.starts_with(p)));
        let expected = if has_macaroon { "FlyV1" } else { "Bearer" };
        return (scheme != expected).then(|| {
            error(
                StatusCode::UNAUTHORIZED,
                &format!(
                    "Authenticate: fly-go's GraphQL client sends `Authorization: {expected} <tokens>` \
                     for this token, not {scheme}"
                ),
            )
        });
    }
    scheme.contains("FlyV1").then(|| {
        error(
            StatusCode::UNAUTHORIZED,
            "Authenticate: the platform API takes `Authorization: Bearer <tokens>`, not FlyV1",
        )
    })
}

/// A release is created with the app config as `definition` (flyctl
/// `internal/command/deploy/machines.go` passes `md.appConfig`, rebuilt from the machines by
/// `internal/appconfig/remote.go` when there is no fly.toml): an absent, null or non-object
/// one is refused as unprocessable. No source found for Fly's refusal (its status, its text,
/// or that it refuses at all): the 422 is the double's strict choice.
fn release_definition_refusal(req: &Request) -> Option<Response> {
    let creating = req.method == "POST" && req.path == "/api/v1/releases";
    let definition = req.body_field("definition");
    (creating && !definition.is_some_and(Value::is_object)).then(|| {
        error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "definition must be the app config (an object)",
        )
    })
}

fn take_fault(shared: &Shared, req: &Request) -> Option<Taken> {
    let mut st = shared.lock();
    let index = st.faults.iter().position(|f| {
        let (path_rule, query_name) = match f.path_contains.split_once('?') {
            Some((path, name)) => (path, Some(name)),
            None => (f.path_contains.as_str(), None),
        };
        let path = match path_rule.strip_suffix('$') {
            Some(end) => req.path.ends_with(end),
            None => req.path.contains(path_rule),
        };
        let query = query_name.is_none_or(|name| req.query(name).is_some());
        (f.method == "*" || f.method.eq_ignore_ascii_case(&req.method)) && path && query
    })?;
    let fault = &mut st.faults[index];
    if fault.passes > 0 {
        fault.passes -= 1;
        return None;
    }
    fault.remaining -= 1;
    let kind = fault.kind.clone();
    if fault.remaining == 0 {
        st.faults.remove(index);
    }
    let status_error = |status: u16, message: &str| {
        error(
            StatusCode::from_u16(status).expect("valid injected status"),
            message,
        )
    };
    Some(match kind {
        FaultKind::TooManyRequests { retry_after_secs } => {
            let mut response = error(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
            response.headers_mut().insert(
                "retry-after",
                HeaderValue::from_str(&retry_after_secs.to_string()).expect("digits"),
            );
            Taken::Instead(response)
        }
        FaultKind::Unavailable => {
            Taken::Instead(error(StatusCode::SERVICE_UNAVAILABLE, "service unavailable"))
        }
        FaultKind::Status { status, message } => Taken::Instead(status_error(status, &message)),
        FaultKind::AfterCommit { status, message } => Taken::After(status_error(status, &message)),
        FaultKind::AfterCommitBroken => {
            let broken = futures_util::stream::once(async {
                Err::<axum::body::Bytes, _>(std::io::Error::other("connection lost"))
            });
            Taken::After((StatusCode::OK, axum::body::Body::from_stream(broken)).into_response())
        }
        FaultKind::SlowAnswer { millis } => Taken::Late(std::time::Duration::from_millis(millis)),
    })
}

pub fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// An `ErrorResponse` with flaps' classification of the failure in `status` (the spec's
/// `main.statusCode`), as fly-go's `FlapsError.StatusCode` reads it.
fn error_with_code(status: StatusCode, message: &str, code: &str) -> Response {
    (status, axum::Json(json!({ "error": message, "status": code }))).into_response()
}

fn ok_json(status: StatusCode, value: Value) -> Response {
    (status, axum::Json(value)).into_response()
}

// ---------------------------------------------------------------- releases (platform API)

/// The release API is not in the OpenAPI file; these are the shapes from the Fly notes,
/// written in the same schema language so the one validator checks them.
fn release_schemas() -> (Value, Value) {
    let create = json!({
        "type": "object",
        "required": ["app_name", "definition", "image", "strategy"],
        "properties": {
            "app_name": {"type": "string"},
            // flyctl `internal/uiex/releases.go` `CreateReleaseRequest.BuildId int64`.
            "build_id": {"type": "integer"},
            "definition": {"type": "object"},
            "image": {"type": "string"},
            "strategy": {"type": "string", "enum": ["ROLLING", "IMMEDIATE", "CANARY", "BLUEGREEN"]},
        }
    });
    let update = json!({
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "string", "enum": ["running", "complete", "failed", "interrupted"]},
            // fly-go `types.go` `ReleaseMetadata`, as flyctl sends it
            // (`machines_deploymachinesapp.go`: null with `running`, filled in after).
            "metadata": {
                "type": "object",
                "nullable": true,
                "required": ["post_deployment_info"],
                "properties": {
                    "post_deployment_info": {
                        "type": "object",
                        "properties": {
                            "flyctl_version": {"type": "string"},
                            "error": {"type": "string"},
                        }
                    }
                }
            },
        }
    });
    (create, update)
}

fn validate_release_request(req: &Request, content_type: Option<&str>) -> Vec<String> {
    let (create, update) = release_schemas();
    let schema = match (req.method.as_str(), release_id(&req.path)) {
        ("POST", None) => create,
        ("PATCH", Some(_)) => update,
        _ => {
            return vec![format!(
                "the releases API has no `{} {}` (known: POST /api/v1/releases, PATCH /api/v1/releases/{{id}})",
                req.method, req.path
            )];
        }
    };
    let mut errors = Vec::new();
    if !req.query.is_empty() {
        errors.push("the releases API takes no query parameters".to_string());
    }
    match &req.body {
        None => errors.push("a JSON request body is required".into()),
        Some(body) => {
            if !content_type.is_some_and(|c| c.starts_with("application/json")) {
                errors.push("request body must be sent as application/json".into());
            }
            schema::validate(&schema, body, "body", &mut errors);
        }
    }
    errors
}

/// The one GraphQL query the double answers: flyctl's `FlyctlConfigCurrentRelease`
/// (`internal/appconfig/remote.go`, `getAppV2ConfigFromReleases`), which `fly deploy` without a
/// fly.toml uses to take the app's config from its current release. Anything else is a
/// violation: nixfly must not come to depend on a query the double does not model.
fn validate_graphql_request(req: &Request, content_type: Option<&str>) -> Vec<String> {
    let mut errors = Vec::new();
    if req.method != "POST" {
        errors.push(format!("GraphQL is POST /graphql, not {}", req.method));
    }
    if !content_type.is_some_and(|c| c.starts_with("application/json")) {
        errors.push("a GraphQL request is sent as application/json".into());
    }
    let body = req.body.as_ref();
    let query = body.and_then(|b| b["query"].as_str()).unwrap_or_default();
    let squashed: String = query.split_whitespace().collect::<Vec<_>>().join(" ");
    let known = squashed.contains("app(name: $appName)") || squashed.contains("app(name:$appName)");
    if !(known && squashed.contains("currentReleaseUnprocessed { configDefinition }")) {
        errors.push(format!(
            "the double answers only flyctl's FlyctlConfigCurrentRelease query \
             (app(name: $appName) {{ currentReleaseUnprocessed {{ configDefinition }} }}), not {query:?}"
        ));
    }
    if !body.is_some_and(|b| b["variables"]["appName"].is_string()) {
        errors.push("variables.appName must be the app's name".into());
    }
    errors
}

/// `currentReleaseUnprocessed.configDefinition`: the `definition` of the app's latest release
/// that completed (the one running), null when it has none; an unknown app is a GraphQL error
/// (status 200, `errors`), as GraphQL answers (no source found for its text).
fn current_release_config(shared: &Shared, req: &Request) -> Response {
    let app = req.body.as_ref().expect("validated")["variables"]["appName"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let st = shared.lock();
    if !st.apps.contains_key(&app) {
        return ok_json(
            StatusCode::OK,
            json!({"data": {"app": null}, "errors": [{"message": "Could not find App", "path": ["app"]}]}),
        );
    }
    let current = st
        .releases
        .iter()
        .rev()
        .find(|r| r.app == app && r.status() == "complete")
        .map(|r| json!({"configDefinition": r.definition}));
    ok_json(
        StatusCode::OK,
        json!({"data": {"app": {"currentReleaseUnprocessed": current}}}),
    )
}

/// The app of a logs path, `/api/v1/apps/{app}/logs`.
fn logs_app(path: &str) -> Option<&str> {
    path.strip_prefix("/api/v1/apps/")?
        .strip_suffix("/logs")
        .filter(|app| !app.is_empty() && !app.contains('/'))
}

/// fly-go's `GetAppLogs` (`resource_logs.go`): a GET with `next_token` always (empty at the
/// start), `instance` and `region` when set, no body.
fn validate_logs_request(req: &Request) -> Vec<String> {
    let mut problems = Vec::new();
    if req.method != "GET" {
        problems.push(format!("the logs API is GET, not {}", req.method));
    }
    if req.body.is_some() {
        problems.push("the logs API takes no body".into());
    }
    for (name, _) in &req.query {
        if !["next_token", "instance", "region"].contains(&name.as_str()) {
            problems.push(format!("the logs API has no query parameter {name:?}"));
        }
    }
    if !req.query.iter().any(|(name, _)| name == "next_token") {
        problems.push("fly-go always sends next_token (empty at the start)".into());
    }
    problems
}

/// A page of the app's logs after `next_token` (an index, opaque to clients), only
/// `instance`'s when given, in the shape fly-go decodes (`getLogsResponse`): `data[]` of
/// `{id, type, attributes: {timestamp, message, level, instance, region, meta}}` and
/// `meta.next_token`, which stays as it was when there is nothing new. Answers 401 after
/// `FlyApi::refuse_logs`: flyctl (`internal/command/deploy/machines_releasecommand.go`,
/// `waitForLogs`) reads a 401 there (fly-go `error.go`, `IsNotAuthenticatedError`) as "not
/// authorized to retrieve app logs (this can happen when using deploy tokens)". fly-go never
/// reads the body of a failed logs call (`ErrorFromResp` keeps only the status), so its
/// text is ours (no source found). An unknown app is 404 (no source found either).
fn app_logs(shared: &Shared, req: &Request, app: &str) -> Response {
    let mut st = shared.lock();
    if st.logs_refused {
        return error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    if !st.apps.contains_key(app) {
        return error(StatusCode::NOT_FOUND, &format!("app {app} not found"));
    }
    st.settle(Instant::now());
    let query = |name: &str| req.query.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let instance = query("instance").filter(|i| !i.is_empty());
    let from: usize = query("next_token").and_then(|t| t.parse().ok()).unwrap_or(0);
    let lines = st.app_logs(app, instance);
    let page: Vec<Value> = lines
        .iter()
        .enumerate()
        .skip(from)
        .map(|(i, line)| {
            json!({
                "id": format!("log{i}"),
                "type": "logs",
                "attributes": {
                    "timestamp": line.timestamp,
                    "message": line.message,
                    "level": "info",
                    "instance": line.instance,
                    "region": line.region,
                    "meta": {"instance": line.instance, "region": line.region, "event": {"provider": "app"}},
                },
            })
        })
        .collect();
    let next = if page.is_empty() {
        query("next_token").unwrap_or_default().to_string()
    } else {
        lines.len().to_string()
    };
    ok_json(
        StatusCode::OK,
        json!({"data": page, "meta": {"next_token": next}}),
    )
}

fn release_id(path: &str) -> Option<&str> {
    path.strip_prefix("/api/v1/releases/")
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// NOTES.md ("What `flyctl deploy --image REF` does", step 4): a create answers
/// `{"release":{id,version,...}}` (200 or 201 there; the double says 201) and a PATCH records
/// the status. No source found for an unknown app's or release's answer: 404.
fn releases(shared: &Shared, req: &Request) -> Response {
    let body = req.body.as_ref().expect("validated");
    let mut st = shared.lock();
    match release_id(&req.path) {
        None => {
            let app = body["app_name"].as_str().unwrap_or_default().to_string();
            if !st.apps.contains_key(&app) {
                return error(StatusCode::NOT_FOUND, &format!("app {app} not found"));
            }
            let version = st.releases.iter().filter(|r| r.app == app).count() as u64 + 1;
            let release = super::state::Release {
                id: ulid::Ulid::new().to_string(),
                app,
                version,
                image: body["image"].as_str().unwrap_or_default().to_string(),
                strategy: body["strategy"].as_str().unwrap_or_default().to_string(),
                build_id: body["build_id"].as_i64(),
                definition: body["definition"].clone(),
                statuses: vec!["created".into()],
                metadata: Value::Null,
            };
            let answer = json!({ "release": release.to_json() });
            st.releases.push(release);
            ok_json(StatusCode::CREATED, answer)
        }
        Some(id) => {
            let Some(release) = st.releases.iter_mut().find(|r| r.id == id) else {
                return error(StatusCode::NOT_FOUND, &format!("release {id} not found"));
            };
            release
                .statuses
                .push(body["status"].as_str().unwrap_or_default().to_string());
            release.metadata = body.get("metadata").cloned().unwrap_or(Value::Null);
            ok_json(StatusCode::OK, json!({ "release": release.to_json() }))
        }
    }
}

// ---------------------------------------------------------------- Machines API

async fn machines(shared: &Shared, req: &Request, op: &Operation) -> Response {
    let app = op.param("app_name").to_string();
    if op.id == "Machines_wait" {
        return wait(shared, req, &app, op.param("machine_id")).await;
    }
    let now = Instant::now();
    let mut st = shared.lock();
    st.settle(now);
    let Some(app_record) = st.apps.get(&app).cloned() else {
        return error(StatusCode::NOT_FOUND, &format!("app {app} not found"));
    };
    match op.id.as_str() {
        "Apps_show" => show_app(&st, &app_record),
        "Machines_list" => list_machines(&st, req, &app, now),
        "Machines_create" => create_machine(&mut st, req, &app, now),
        "Volumes_list" | "Volumes_create" | "Volumes_get_by_id" | "Volume_delete" => {
            volumes(&mut st, req, op, &app)
        }
        // The spec's `App_IPAssignments_*` (200, 204). No source found for the type of an
        // assignment that names none (v6 here) or for deleting an address the app lacks (404).
        "App_IPAssignments_list" => {
            let ips: Vec<Value> = st
                .ips
                .iter()
                .filter(|(owner, _)| *owner == app)
                .map(|(_, ip)| ip.clone())
                .collect();
            ok_json(StatusCode::OK, json!({ "ips": ips }))
        }
        "App_IPAssignments_create" => {
            let str_field = |name: &str| req.body_field(name).and_then(Value::as_str);
            // fly-go's `AssignIPRequest` has no `omitempty` (`flaps/flaps_ip_assignments.go`), and
            // flyctl's first deploy fills `org_slug` with the app's organization
            // (`internal/command/deploy/deploy_first.go`, `provisionIpsOnFirstDeploy`): a body
            // without it is not what flyctl sends. No source found that Fly refuses one; the
            // double records it as a violation, its strict choice.
            if str_field("org_slug") != Some(APP_ORG_SLUG) {
                st.violations.push(Violation {
                    method: req.method.clone(),
                    path: req.path.clone(),
                    reason: format!(
                        "an IP assignment without the app's org_slug ({APP_ORG_SLUG:?}), which fly-go's \
                         AssignIPRequest always carries"
                    ),
                });
            }
            let kind = str_field("type").unwrap_or("v6").to_string();
            let region = str_field("region").map(str::to_string);
            ok_json(StatusCode::OK, st.assign_ip(&app, &kind, region.as_deref()))
        }
        "App_IPAssignments_delete" => {
            let ip = op.param("ip");
            let before = st.ips.len();
            st.ips
                .retain(|(owner, json)| !(*owner == app && json["ip"] == ip));
            if st.ips.len() == before {
                return error(StatusCode::NOT_FOUND, &format!("app {app} has no IP {ip}"));
            }
            StatusCode::NO_CONTENT.into_response()
        }
        _ => {
            let id = op.param("machine_id").to_string();
            match st.machines.get(&id) {
                Some(m) if m.app == app => {}
                _ => {
                    return error(
                        StatusCode::NOT_FOUND,
                        &format!("machine {id} not found in app {app}"),
                    );
                }
            }
            machine_operation(shared, &mut st, req, op, &id, now)
        }
    }
}

/// The spec's `App`; `status` as NOTES.md reads it ("What `flyctl deploy --image REF` does",
/// step 1: `deployed` or `suspended` once deployed, `pending` before).
fn show_app(st: &State, app: &App) -> Response {
    let count = st
        .machines
        .values()
        .filter(|m| m.app == app.name && m.state != "destroyed")
        .count();
    let volumes = st
        .volumes
        .values()
        .filter(|v| v.app == app.name && v.state != "destroyed")
        .count();
    ok_json(
        StatusCode::OK,
        json!({
            "id": app.name,
            "name": app.name,
            "status": app.status,
            "machine_count": count,
            "volume_count": volumes,
            "network": "default",
            "organization": {"name": "Personal", "slug": APP_ORG_SLUG},
        }),
    )
}

/// The organization every app of the double belongs to (`Apps_show`'s `organization.slug`).
const APP_ORG_SLUG: &str = "personal";

fn list_machines(st: &State, req: &Request, app: &str, now: Instant) -> Response {
    let states: Option<Vec<&str>> = req.query("state").map(|s| s.split(',').collect());
    let metadata: Vec<(&str, &str)> = req
        .query
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("metadata.")?, v.as_str())))
        .collect();
    let list: Vec<Value> = st
        .machines
        .values()
        .filter(|m| m.app == app && m.listed(now))
        .filter(|m| req.flag("include_deleted") || m.state != "destroyed")
        .filter(|m| req.query("region").is_none_or(|r| r == m.region))
        .filter(|m| states.as_ref().is_none_or(|s| s.contains(&m.state.as_str())))
        .filter(|m| metadata.iter().all(|(k, v)| m.metadata(k) == Some(v)))
        .map(|m| {
            let mut json = machine_json(m, now, req.flag("include_leases"));
            // The spec's `summary` parameter: "omit config, checks, events, host_status, nonce,
            // etc." (the double shows no nonce in a list).
            if req.flag("summary") {
                let obj = json.as_object_mut().expect("object");
                for key in ["config", "incomplete_config", "checks", "events", "host_status"] {
                    obj.remove(key);
                }
            }
            json
        })
        .collect();
    ok_json(StatusCode::OK, Value::Array(list))
}

fn create_machine(st: &mut State, req: &Request, app: &str, now: Instant) -> Response {
    let config = match required_config(req) {
        Ok(config) => config,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let volumes = match st.mounted_volumes(app, None, &config) {
        Ok(volumes) => volumes,
        Err(refusal) => return refusal.response(),
    };
    if st.create_refusals > 0 {
        st.create_refusals -= 1;
        return capacity_refusal(volumes.first().map(String::as_str));
    }
    let str_field = |name: &str| req.body_field(name).and_then(Value::as_str);
    // A volume lives on one host in one region, and only a machine there can mount it: flyctl
    // looks volumes up by the machine's region (`machines.go` `popVolumeFor`,
    // `machines_launchinput.go` with `origMachineRaw.Region`). Without a region the machine
    // goes where its volume is. (The status and text of flaps' own refusal are not known.)
    let volume_region = volumes.first().map(|id| st.volumes[id].region.clone());
    let region = match (str_field("region"), &volume_region) {
        (Some(region), Some(volume)) if region != volume => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "volume {} is in region {volume}: a machine in {region} cannot mount it",
                    volumes[0]
                ),
            );
        }
        (Some(region), _) => region.to_string(),
        (None, Some(volume)) => volume.clone(),
        // No source found for where Fly places a machine that names no region (near the
        // caller, presumably): the double puts it in iad.
        (None, None) => "iad".to_string(),
    };
    let id = st.create_machine(
        CreateMachine {
            app: app.to_string(),
            name: str_field("name").map(str::to_string),
            region,
            config,
            skip_launch: req.body_field("skip_launch") == Some(&Value::Bool(true)),
            // A machine created out of the proxy is a cordoned one: the spec's `Machines_cordon`
            // and `Machines_uncordon` say bluegreen starts greens "with services disabled" and
            // enables them by uncordoning. No source says what a read of such a machine shows
            // in `cordoned` (the spec's `Machine` has the field); nixfly's leftover rule
            // (`split_leftovers`) relies on `true`, and without it replaces leftovers as blues.
            cordoned: req.body_field("skip_service_registration") == Some(&Value::Bool(true)),
        },
        now,
    );
    st.attach_volumes(&id, &volumes);
    // `lease_ttl` (the spec's `CreateMachineRequest`) leases the new machine to the caller,
    // and the answer carries the nonce (fly-go `machine_types.go`, `Machine.LeaseNonce`,
    // `nonce`).
    let lease_ttl = req.body_field("lease_ttl").and_then(Value::as_u64);
    if let Some(ttl) = lease_ttl {
        let owner = st.lease_owner.clone();
        let lease = Lease::new(&st.machines[&id], owner, "", Some(Duration::from_secs(ttl)), now);
        st.machines.get_mut(&id).expect("created").lease = Some(lease);
    }
    let machine = &st.machines[&id];
    let mut json = machine_json(machine, now, false);
    if let Some(lease) = &machine.lease {
        json["nonce"] = json!(lease.nonce);
    }
    ok_json(StatusCode::OK, json)
}

impl MountRefusal {
    fn response(&self) -> Response {
        let status = match self {
            MountRefusal::Invalid(_) => StatusCode::BAD_REQUEST,
            MountRefusal::InUse(_) => StatusCode::PRECONDITION_FAILED,
        };
        error(status, &self.to_string())
    }
}

/// A create Fly has no room for, in the two shapes flaps classifies (the `status` of its
/// `ErrorResponse`, the spec's `main.statusCode`; fly-go `flaps/flaps_error_test.go`,
/// `TestCapacityScopeOf`, after fly-go PR #306 "classify capacity errors by scope"): a machine
/// pinned to an existing volume whose host is full is 412 `volume_placement_capacity` ("insufficient
/// resources to create new machine with existing volume id ..."; the 412 and that text are
/// what Kilo-Org/cloud#388 quotes from production too), and one no host of the region can take
/// is 422 `insufficient_capacity` ("could not find a candidate host"). Either comes before any
/// effect.
fn capacity_refusal(volume: Option<&str>) -> Response {
    match volume {
        Some(volume) => error_with_code(
            StatusCode::PRECONDITION_FAILED,
            &format!("insufficient resources to create new machine with existing volume id '{volume}'"),
            "volume_placement_capacity",
        ),
        None => error_with_code(
            StatusCode::UNPROCESSABLE_ENTITY,
            "could not find a candidate host",
            "insufficient_capacity",
        ),
    }
}

/// The config of a create/update body; the schema makes no field required, Fly does. A guest
/// size or machine check Fly refuses is refused too (`sizing`, `checks`). No source found for
/// the status and text of Fly's refusal of a missing config or image: 400, the status the
/// spec gives update's bad requests.
fn required_config(req: &Request) -> Result<Value, String> {
    let config = req
        .body_field("config")
        .cloned()
        .ok_or("the request needs a config")?;
    if config["image"].as_str().is_none_or(str::is_empty) {
        return Err("invalid config.image, cannot be empty".into());
    }
    if let Some(refusal) =
        crate::sizing::guest_refusal(&config).or_else(|| crate::checks::checks_refusal(&config))
    {
        return Err(refusal);
    }
    Ok(config)
}

/// Why a body that names a machine version no longer current is refused.
fn version_mismatch(machine: &Machine, req: &Request, field: &str) -> Option<String> {
    let expected = req.body_field(field).and_then(Value::as_str)?;
    (expected != machine.version).then(|| {
        format!(
            "machine {} is at version {}, not {expected}",
            machine.id, machine.version
        )
    })
}

/// The spec's `Volumes_*` operations (200 each). No source found for: destroyed volumes
/// leaving the list, a create without a name or region being 400, and deleting a volume a
/// machine mounts being 412.
fn volumes(st: &mut State, req: &Request, op: &Operation, app: &str) -> Response {
    if op.id == "Volumes_list" {
        let list: Vec<Value> = st
            .volumes
            .values()
            .filter(|v| v.app == app && v.state != "destroyed")
            .map(Volume::to_json)
            .collect();
        return ok_json(StatusCode::OK, Value::Array(list));
    }
    if op.id == "Volumes_create" {
        let str_field = |name: &str| req.body_field(name).and_then(Value::as_str);
        let (Some(name), Some(region)) = (str_field("name"), str_field("region")) else {
            return error(StatusCode::BAD_REQUEST, "a volume needs a name and a region");
        };
        if let Err(reason) = check_volume_request(req) {
            return error(StatusCode::BAD_REQUEST, &reason);
        }
        let volume = Volume {
            id: st.new_volume_id(),
            app: app.to_string(),
            name: name.to_string(),
            region: region.to_string(),
            size_gb: req.body_field("size_gb").and_then(Value::as_i64).unwrap_or(1),
            state: "created".into(),
            attached_machine_id: None,
            host_status: "ok".into(),
            // flyctl always sends it ("Volume contents are encrypted by default",
            // `internal/command/volumes/create.go`); no source found for the API's default.
            encrypted: req
                .body_field("encrypted")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            snapshot_retention: req.body_field("snapshot_retention").and_then(Value::as_i64),
            auto_backup_enabled: req.body_field("auto_backup_enabled").and_then(Value::as_bool),
        };
        let answer = volume.to_json();
        st.volumes.insert(volume.id.clone(), volume);
        return ok_json(StatusCode::OK, answer);
    }
    let id = op.param("volume_id");
    let Some(volume) = st.volumes.get_mut(id).filter(|v| v.app == app) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("volume {id} not found in app {app}"),
        );
    };
    if op.id == "Volume_delete" {
        if let Some(machine) = &volume.attached_machine_id {
            return error(
                StatusCode::PRECONDITION_FAILED,
                &format!("volume {id} is attached to machine {machine}: destroy the machine first"),
            );
        }
        volume.state = "destroyed".into();
    }
    ok_json(StatusCode::OK, volume.to_json())
}

/// Volume create: `snapshot_retention` must be 1-60 days (flyctl's
/// `internal/appconfig/validation.go` checks the same range before sending it).
fn check_volume_request(req: &Request) -> Result<(), String> {
    if let Some(days) = req.body_field("snapshot_retention").and_then(Value::as_i64)
        && !(1..=60).contains(&days)
    {
        return Err(format!("invalid snapshot_retention {days}: must be 1-60 days"));
    }
    Ok(())
}

/// Operations that change a machine need the lease nonce while someone holds a lease: the
/// refusal, if any. 409 for a lease the request does not name (a Fly engineer on
/// community.fly.io, t/15555, for updates; fly-go sends the nonce header on every write,
/// `flaps/flaps_machines.go`, so the double asks it of every write). No source found for a
/// nonce that matches no active lease: 409 too.
fn lease_refusal(machine: &Machine, req: &Request, now: Instant) -> Option<Response> {
    match (machine.active_lease(now), &req.nonce) {
        (Some(lease), Some(nonce)) if *nonce == lease.nonce => None,
        (Some(lease), _) => Some(lease_conflict(machine, lease)),
        (None, Some(_)) => Some(error(
            StatusCode::CONFLICT,
            &format!(
                "machine {} has no lease matching the fly-machine-lease-nonce sent: it expired or was released",
                machine.id
            ),
        )),
        (None, None) => None,
    }
}

fn lease_conflict(machine: &Machine, lease: &Lease) -> Response {
    error(StatusCode::CONFLICT, &lease_conflict_message(machine, lease))
}

/// A lease call's own 409 comes in the lease envelope, with `message` and no `error` (fly-go's
/// `MachineLease` has `Status`, `Message` and `Code`; a Fly engineer quotes
/// `{"status":"error","message":"machine ID … lease currently held by …"}` on
/// community.fly.io): fly-go's `handleAPIError` reads `message` before `error`.
fn lease_call_conflict(machine: &Machine, lease: &Lease) -> Response {
    ok_json(
        StatusCode::CONFLICT,
        json!({"status": "error", "message": lease_conflict_message(machine, lease)}),
    )
}

fn lease_conflict_message(machine: &Machine, lease: &Lease) -> String {
    format!(
        "machine ID {} lease currently held by {}, expires at {}",
        machine.id,
        lease.owner,
        if lease.expires.is_some() {
            rfc3339(lease.expires_at_unix)
        } else {
            "never".to_string()
        }
    )
}

fn lease_json(shared: &Shared, lease: &Lease) -> Value {
    let data = json!({
        "nonce": lease.nonce,
        "expires_at": lease.expires_at_unix,
        "owner": lease.owner,
        "description": lease.description,
        "version": lease.version,
    });
    if shared.flat_lease {
        data
    } else {
        json!({ "status": "success", "data": data })
    }
}

fn machine_operation(
    shared: &Shared,
    st: &mut State,
    req: &Request,
    op: &Operation,
    id: &str,
    now: Instant,
) -> Response {
    let machine = &st.machines[id];
    let destroyed = machine.state == "destroyed";
    // Metadata writes are not guarded by the lease: fly-go's `SetMetadata` and
    // `DeleteMetadata` (`flaps/flaps_machines.go`) take no nonce, and flyctl tags the blue
    // machines it holds leases on through them (`internal/command/deploy/strategy_bluegreen.go`,
    // `TagBlueMachinesAsSafeForDeletion`), which a lease check would refuse.
    let leased = !matches!(
        op.id.as_str(),
        "Machines_upsert_metadata" | "Machines_delete_metadata" | "Machines_update_metadata"
    );
    let mutating = !matches!(
        op.id.as_str(),
        "Machines_show"
            | "Machines_list_events"
            | "Machines_show_lease"
            | "Machines_create_lease"
            | "Machines_release_lease"
            | "Machines_show_metadata"
            | "Machines_get_metadata_key"
            | "Machines_list_processes"
    );
    if mutating {
        // Destroying an already-destroyed machine answers 404, which flyctl's bluegreen
        // strategy takes as success (`internal/command/deploy/strategy_bluegreen.go`,
        // `DestroyBlueMachines`); other changes to it are refused (no source found for the
        // status: 412).
        if destroyed && op.id == "Machines_delete" {
            return error(StatusCode::NOT_FOUND, &format!("machine {id} not found"));
        }
        if destroyed {
            return error(
                StatusCode::PRECONDITION_FAILED,
                &format!("machine {id} is destroyed"),
            );
        }
        if leased && let Some(refusal) = lease_refusal(machine, req, now) {
            return refusal;
        }
    }
    let ok = || ok_json(StatusCode::OK, json!({"ok": true}));
    match op.id.as_str() {
        "Machines_show" if !machine.visible(now) && !req.affinity => not_visible_yet(id),
        "Machines_show" => ok_json(
            StatusCode::OK,
            machine_json(machine, now, req.flag("include_leases")),
        ),
        // What flyctl reads after each machine's health wait to warn about an app that listens
        // on loopback only (`warnAboutIncorrectListenAddress`, machines_deploymachinesapp.go;
        // fly-go `GetProcesses`). No source found for what flaps answers for a machine that is
        // not running (the spec documents only 400 for this operation): the double refuses
        // with 412, by analogy only: the one flyd `failed_precondition` refusal seen in the
        // sources (flyctl `TestVolumePlacementCapacitySuggestion`) is `volume_placement_capacity`,
        // which fly-go's `flaps_error_test.go` shows as a 412. Clients must not depend on the
        // status: flyctl gives up on any error there (`waitForExpectedListenAddresses`), and so
        // does nixfly.
        "Machines_list_processes" if machine.state != "started" => error(
            StatusCode::PRECONDITION_FAILED,
            &format!("machine {id} is not running"),
        ),
        "Machines_list_processes" => ok_json(StatusCode::OK, st.processes(machine)),
        // Newest first (NOTES.md, release_command step 4); the spec's `limit`: "max of 50. If
        // omitted, this is set to 20 by default."
        "Machines_list_events" => {
            let limit = req
                .query("limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(20)
                .min(50);
            let events: Vec<Value> = machine.events.iter().rev().take(limit).cloned().collect();
            ok_json(StatusCode::OK, Value::Array(events))
        }
        "Machines_update" => {
            if let Some(refusal) = host_refusal(st, machine) {
                return refusal;
            }
            let config = match required_config(req) {
                Ok(config) => config,
                Err(message) => return error(StatusCode::BAD_REQUEST, &message),
            };
            // A `current_version` that is not the machine's is 409 (a Fly engineer on
            // community.fly.io, t/15555, lists it among update's 409s).
            if let Some(mismatch) = version_mismatch(machine, req, "current_version") {
                return error(StatusCode::CONFLICT, &mismatch);
            }
            let volumes = match st.mounted_volumes(&machine.app, Some(id), &config) {
                Ok(volumes) => volumes,
                Err(refusal) => return refusal.response(),
            };
            // A machine's volume is fixed at creation: flyctl replaces a machine whose mounts
            // gain, lose or swap a volume rather than update it, because an update cannot
            // (`internal/command/deploy/machines_launchinput.go`, `launchInputForUpdate`:
            // "Volumes attached to existings machines can't be swapped by other volumes",
            // "it is not possible to attach a volume to an existing machine"). Only the mount
            // path and extension settings may change.
            let attached: Vec<&str> = machine.config["mounts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["volume"].as_str())
                .collect();
            if attached != volumes.iter().map(String::as_str).collect::<Vec<_>>() {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "machine {id} mounts {attached:?} and the update mounts {volumes:?}: a machine's \
                         volumes cannot be attached, detached or swapped by an update; destroy it and \
                         create a new machine"
                    ),
                );
            }
            let region = req
                .body_field("region")
                .and_then(Value::as_str)
                .map(str::to_string);
            let skip_launch = req.body_field("skip_launch") == Some(&Value::Bool(true));
            st.update_machine(id, config, region, skip_launch, now);
            st.attach_volumes(id, &volumes);
            ok_json(StatusCode::OK, machine_json(&st.machines[id], now, false))
        }
        // The spec's flag is `force`; fly-go sends `kill` (`flaps/flaps_machines.go`,
        // `Destroy`: `?kill=%t`), flyctl's deploy with `Kill: true` for a running machine
        // (`internal/command/deploy/plan.go`, `destroyMachine`), and `fly machine destroy`
        // (`internal/command/machine/destroy.go`) only with --force, refusing a started machine
        // without it. Either flag forces here. No source found for flaps' own refusal: the
        // double answers 412 for a machine that is running or on its way, and destroys any
        // other.
        "Machines_delete" => {
            let running = matches!(
                machine.state.as_str(),
                "started" | "starting" | "replacing" | "stopping"
            );
            if running && !req.flag("force") && !req.flag("kill") {
                return error(
                    StatusCode::PRECONDITION_FAILED,
                    &format!(
                        "unable to destroy machine {id}: it is {}; stop it first or pass force=true",
                        machine.state
                    ),
                );
            }
            st.destroy_machine(id);
            ok()
        }
        // The answer's `previous_state` is fly-go's `MachineStartResponse` (`machine_types.go`).
        // A machine still `created` (its image not yet pulled, launched or not) or being
        // `replacing` cannot be started: flaps answers 412 `failed_precondition` (recorded
        // answers: "unable to start machine from current state: 'created'", "machine getting
        // replaced, refusing to start"), which is why flyctl waits for `stopped` before it
        // starts a release command machine (`internal/command/deploy/machines_releasecommand.go`,
        // `WaitForState(ctx, fly.MachineStateStopped, ...)`). No source found for starting a
        // running machine or stopping a stopped one: both answer 200 and change nothing.
        "Machines_start" => {
            let previous = machine.state.clone();
            if !st.start_refusals.is_empty() {
                let message = st.start_refusals.remove(0);
                return ok_json(
                    StatusCode::OK,
                    json!({ "status": "error", "message": message, "previous_state": previous }),
                );
            }
            match previous.as_str() {
                "created" => {
                    return error(
                        StatusCode::PRECONDITION_FAILED,
                        "failed_precondition: unable to start machine from current state: 'created'",
                    );
                }
                "replacing" => {
                    return error(
                        StatusCode::PRECONDITION_FAILED,
                        "failed_precondition: machine getting replaced, refusing to start",
                    );
                }
                "started" | "starting" => {}
                _ => st.start_machine(id, now),
            }
            ok_json(StatusCode::OK, json!({ "previous_state": previous }))
        }
        "Machines_stop" => {
            if matches!(machine.state.as_str(), "started" | "starting" | "replacing") {
                st.stop_machine(id, now);
            }
            ok()
        }
        "Machines_cordon" | "Machines_uncordon" => {
            st.machines.get_mut(id).expect("exists").cordoned = op.id == "Machines_cordon";
            ok()
        }
        // A machine without a lease: the text says "lease not found", the words flyctl takes
        // as "no lease" (`internal/command/machine/leases.go`, after `FindLease`). No source
        // found for the status: 404.
        "Machines_show_lease" => match machine.active_lease(now) {
            Some(lease) => ok_json(StatusCode::OK, lease_json(shared, lease)),
            None => error(StatusCode::NOT_FOUND, "lease not found"),
        },
        // 201 and the spec's `Lease` (in flyctl's envelope unless `flat_lease`); with the
        // current nonce in the header it refreshes (NOTES.md step 6), keeping that nonce:
        // flyctl's `RefreshLease` (`internal/machine/leasable_machine.go`) fails a deploy on
        // "unexpectedly received a new nonce". No source found for a lease on a destroyed
        // machine (404) or for a nonce that matches no active lease (409).
        "Machines_create_lease" => {
            if destroyed {
                return error(StatusCode::NOT_FOUND, &format!("machine {id} is destroyed"));
            }
            // The TTL from the body (the spec's `CreateLeaseRequest`) or the query (fly-go's
            // `AcquireLease`); no source found for the default when neither gives one.
            let ttl = req
                .body_field("ttl")
                .and_then(Value::as_u64)
                .or_else(|| req.query("ttl").and_then(|t| t.parse().ok()))
                .unwrap_or(30);
            let description = req
                .body_field("description")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let refreshed = match (machine.active_lease(now), &req.nonce) {
                (Some(lease), Some(nonce)) if *nonce == lease.nonce => {
                    let mut lease = lease.clone();
                    lease.expires = Some(now + Duration::from_secs(ttl));
                    lease.expires_at_unix = unix_secs() + ttl as i64;
                    lease
                }
                (Some(lease), _) => return lease_call_conflict(machine, lease),
                (None, Some(_)) => {
                    return error(
                        StatusCode::CONFLICT,
                        &format!(
                            "machine {id} has no lease to refresh with that nonce: it expired or was released"
                        ),
                    );
                }
                (None, None) => Lease::new(
                    machine,
                    st.lease_owner.clone(),
                    description,
                    Some(Duration::from_secs(ttl)),
                    now,
                ),
            };
            let answer = lease_json(shared, &refreshed);
            st.machines.get_mut(id).expect("exists").lease = Some(refreshed);
            ok_json(StatusCode::CREATED, answer)
        }
        // 200 (the spec). No source found for releasing with another nonce (409), nor for the
        // status when no lease is active (404 here); its text says "lease not found", the
        // words flyctl takes as a lease already gone (`internal/machine/lease.go`,
        // `releaseLease`).
        "Machines_release_lease" => match machine.active_lease(now) {
            Some(lease) if req.nonce.as_deref() == Some(lease.nonce.as_str()) => {
                st.machines.get_mut(id).expect("exists").lease = None;
                ok()
            }
            Some(lease) => lease_conflict(machine, lease),
            None => error(
                StatusCode::NOT_FOUND,
                &format!("lease not found: machine {id} has no lease to release"),
            ),
        },
        "Machines_show_metadata" => ok_json(
            StatusCode::OK,
            machine.config.get("metadata").cloned().unwrap_or(json!({})),
        ),
        "Machines_get_metadata_key" => {
            let key = op.param("key");
            match machine.metadata(key) {
                Some(value) => ok_json(StatusCode::OK, json!({ "value": value })),
                None => error(
                    StatusCode::NOT_FOUND,
                    &format!("machine {id} has no metadata key {key}"),
                ),
            }
        }
        "Machines_upsert_metadata" | "Machines_delete_metadata" | "Machines_update_metadata" => {
            // A stale `machine_version` is 412: the spec's answer for `Machines_update_metadata`
            // ("Precondition Failed").
            if let Some(mismatch) = version_mismatch(machine, req, "machine_version") {
                return error(StatusCode::PRECONDITION_FAILED, &mismatch);
            }
            let changes: Vec<(String, String)> = match op.id.as_str() {
                "Machines_upsert_metadata" => vec![(
                    op.param("key").to_string(),
                    req.body_field("value")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                )],
                "Machines_delete_metadata" => vec![(op.param("key").to_string(), String::new())],
                _ => req
                    .body_field("metadata")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect(),
            };
            let machine = st.machines.get_mut(id).expect("exists");
            if !machine.config["metadata"].is_object() {
                machine.config["metadata"] = json!({});
            }
            let metadata = machine.config["metadata"]
                .as_object_mut()
                .expect("just made an object");
            for (key, value) in changes {
                // The spec: "Null values and empty strings remove keys."
                if value.is_empty() {
                    metadata.remove(&key);
                } else {
                    metadata.insert(key, Value::String(value));
                }
            }
            machine.updated_at = rfc3339_now();
            StatusCode::NO_CONTENT.into_response()
        }
        other => not_modelled(
            st,
            req,
            format!("operation {other} is in the spec but the Fly API double does not implement it"),
        ),
    }
}

/// An update the machine's host cannot take: 409 with flyd's text and no `status` code (fly-go
/// `flaps/flaps_error_test.go`, `TestCapacityScopeOf`: "aborted: could not reserve resource for
/// machine: insufficient memory available to fulfill request on the current host" is a 409 of
/// host scope; a Fly engineer lists host capacity among update's 409s in community.fly.io
/// t/15555; Kilo-Org/cloud#412 quotes the same 409 from production). flyctl
/// (`internal/command/deploy/machines_deploymachinesapp.go`) recognises it by its text and
/// replaces the machine. No source found for the status of "deploys to this host are
/// temporarily disabled": the double answers whatever text `refuse_updates` gives with 409.
/// A machine whose host is not `ok` flyctl replaces without trying (`machines_launchinput.go`);
/// no source found for what flaps answers an update of one: the double refuses with 412.
fn host_refusal(st: &State, machine: &Machine) -> Option<Response> {
    if let Some(message) = st.update_refusals.get(&machine.id) {
        return Some(error(StatusCode::CONFLICT, message));
    }
    (machine.host_status != "ok").then(|| {
        error(
            StatusCode::PRECONDITION_FAILED,
            &format!(
                "machine {} is on a host that is {}",
                machine.id, machine.host_status
            ),
        )
    })
}

/// The app of a Machines API path (`/v1/apps/{app}/...`).
fn machines_app(path: &str) -> Option<&str> {
    let app = path.strip_prefix("/v1/apps/")?.split('/').next()?;
    (!app.is_empty()).then_some(app)
}

/// The node that serves an app's writes, as its affinity cookie names it.
fn affinity_node(app: &str) -> String {
    format!("double-node-{app}")
}

/// A machine created moments ago, which reads do not see yet (`Timing::visible_after_create`).
fn not_visible_yet(id: &str) -> Response {
    error(StatusCode::NOT_FOUND, &format!("machine {id} not found"))
}

/// What the spec has and the double does not model: recorded as a violation (so a client that
/// starts to use it is noticed) and answered 501.
fn not_modelled(st: &mut State, req: &Request, reason: String) -> Response {
    st.violations.push(Violation {
        method: req.method.clone(),
        path: req.path.clone(),
        reason: reason.clone(),
    });
    error(StatusCode::NOT_IMPLEMENTED, &reason)
}

/// `GET .../wait`: long-poll until the machine is in one of the wanted states, 408 after the
/// timeout (capped at 60 Fly seconds; NOTES.md "Read against flyctl and fly-go source").
/// Waiting for anything but `destroyed` on a destroyed machine answers 404, as NOTES.md
/// describes for release-command machines (release_command, step 3). `settled` is any of
/// the states a machine rests in (the spec lists it among `state`'s values; which states
/// count is our reading).
async fn wait(shared: &Shared, req: &Request, app: &str, id: &str) -> Response {
    // Fly waits for the state reached after that event (the spec; fly-go
    // `flaps/flaps_machines_wait_test.go`, `TestWaitOptions`, sends it); the double has no
    // model of it and would answer for an earlier one, so a client that starts to send it is
    // told, as for an operation the double does not serve.
    if req.query("from_event_id").is_some() {
        return not_modelled(
            &mut shared.lock(),
            req,
            "wait with `from_event_id`: in the spec, but the Fly API double does not model it".into(),
        );
    }
    let wanted: Vec<String> = req
        .query
        .iter()
        .filter(|(k, _)| k == "state")
        .flat_map(|(_, v)| v.split(','))
        .map(str::to_string)
        .collect();
    // fly-go always names a state (`flaps/flaps_machines_wait.go`); no source found for
    // Fly's default: `started`.
    let wanted = if wanted.is_empty() {
        vec!["started".to_string()]
    } else {
        wanted
    };
    let timeout_secs = match wait_timeout_secs(req) {
        Ok(secs) => secs,
        Err(reason) => return error(StatusCode::BAD_REQUEST, &reason),
    };
    let version = wait_version(req);
    let deadline = {
        let st = shared.lock();
        if !st.apps.contains_key(app) {
            return error(StatusCode::NOT_FOUND, &format!("app {app} not found"));
        }
        Instant::now() + st.timing.wall(Duration::from_secs(timeout_secs))
    };
    loop {
        let now = Instant::now();
        let next_step = {
            let mut st = shared.lock();
            st.settle(now);
            let machine = match st.machines.get(id) {
                Some(m) if m.app == app && !m.visible(now) && !req.affinity => return not_visible_yet(id),
                Some(m) if m.app == app => m,
                _ => {
                    return error(
                        StatusCode::NOT_FOUND,
                        &format!("machine {id} not found in app {app}"),
                    );
                }
            };
            let reached = version.as_deref().is_none_or(|v| v == machine.version)
                && wanted.iter().any(|w| {
                    *w == machine.state
                        || (w == "settled"
                            && matches!(
                                machine.state.as_str(),
                                "started" | "stopped" | "suspended" | "failed" | "destroyed"
                            ))
                });
            if reached {
                return ok_json(
                    StatusCode::OK,
                    json!({
                        "ok": true,
                        "state": machine.state,
                        "version": machine.version,
                        "event_id": machine.events.last().map(|e| e["id"].clone()),
                    }),
                );
            }
            if machine.state == "destroyed" {
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("machine {id} not found: it was destroyed"),
                );
            }
            st.next_step_at()
        };
        if now >= deadline {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "deadline_exceeded: machine {id} did not reach state {} within {timeout_secs}s",
                    wanted.join(",")
                ),
            );
        }
        // Poll at least every 20 ms so that changes made through the test handle are seen.
        let mut wake = deadline.min(now + Duration::from_millis(20));
        if let Some(next) = next_step {
            wake = wake.min(next.max(now));
        }
        tokio::time::sleep_until(wake.into()).await;
    }
}

/// The wait call's `timeout` in seconds: 60 when absent; 0 or more than 60 is refused with 400
/// `invalid_argument`, as the Machines API does (the OpenAPI description: "This request will
/// block for up to 60 seconds"; a recorded answer to an out-of-range one: "invalid
/// WaitMachineRequest.Timeout: value must be inside range [1s, 1m0s]"). fly-go
/// (`flaps/flaps_machines_wait.go`, `WithWaitTimeout`) clamps every timeout to 1..=60 s and
/// omits a zero one, so flyctl never sends either.
fn wait_timeout_secs(req: &Request) -> Result<u64, String> {
    let Some(secs) = req.query("timeout").and_then(|t| t.parse::<u64>().ok()) else {
        return Ok(WAIT_CAP_SECS);
    };
    if secs == 0 || secs > WAIT_CAP_SECS {
        return Err(format!(
            "invalid_argument: invalid WaitMachineRequest.Timeout: value must be inside range \
             [1s, 1m0s] (got {secs}s)"
        ));
    }
    Ok(secs)
}

/// The machine version a wait is for: `version`, or the deprecated `instance_id` (the OpenAPI
/// file; fly-go `flaps/flaps_machines_wait.go` sends `version`). A wait with a version is
/// answered only once the machine runs that version in the wanted state, so a client that
/// sends a version other than the one its update returned waits until 408, as a wait on a
/// superseded version would on Fly (that last part unverified, chosen to be strict).
fn wait_version(req: &Request) -> Option<String> {
    req.query("version")
        .or_else(|| req.query("instance_id"))
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// A machine as the API shows it: events newest first, and `autostop` as the booleans Fly
/// answers with for "off"/"stop".
pub fn machine_json(machine: &Machine, now: Instant, include_lease: bool) -> Value {
    let mut config = machine.config.clone();
    // `get_mut`, not `["services"]`: indexing mutably would insert a `null`.
    let services = config.get_mut("services").and_then(Value::as_array_mut);
    for service in services.into_iter().flatten() {
        match service["autostop"].as_str() {
            Some("off") => service["autostop"] = Value::Bool(false),
            Some("stop") => service["autostop"] = Value::Bool(true),
            _ => {}
        }
    }
    let checks: Vec<Value> = machine
        .checks
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "status": c.status,
                // No source found for check outputs: stand-ins.
                "output": match c.status.as_str() {
                    "passing" => "OK",
                    "warning" => "waiting for status update",
                    _ => "connect: connection refused",
                },
                "updated_at": c.updated_at,
            })
        })
        .collect();
    let mut json = json!({
        "id": machine.id,
        "name": machine.name,
        "state": machine.state,
        "region": machine.region,
        "instance_id": machine.version,
        "private_ip": machine.private_ip(),
        "image_ref": image_ref(machine.image()),
        "created_at": machine.created_at,
        "updated_at": machine.updated_at,
        "events": machine.events.iter().rev().cloned().collect::<Vec<_>>(),
        "checks": checks,
        "host_status": machine.host_status,
        "cordoned": machine.cordoned,
    });
    // flaps cannot read the whole config of a machine whose host is not `ok`: it sends what it
    // could piece together as `incomplete_config`, and no `config` (fly-go `machine_types.go`,
    // `Machine.IncompleteConfig`, "not suitable to clone or recreate the original machine", and
    // `GetConfig`). No source says which fields it has: the double keeps only those flyctl's
    // tests give it and flyctl reads from it (`machines_launchinput_test.go`: `metadata`,
    // `mounts`; `plan_test.go`: `image`; `machines_releasecommand.go`,
    // `machineHostDedicationID`: `guest`), so a client that rebuilds a machine from it is caught.
    if machine.host_status == "ok" {
        json["config"] = config;
    } else {
        let partial: Map<String, Value> = ["image", "metadata", "mounts", "guest"]
            .iter()
            .filter_map(|key| Some((key.to_string(), config.get(*key)?.clone())))
            .collect();
        json["incomplete_config"] = Value::Object(partial);
    }
    if include_lease && let Some(lease) = machine.active_lease(now) {
        json["lease"] = json!({
            "owner": lease.owner,
            "expires_at": lease.expires_at_unix,
            "description": lease.description,
        });
    }
    json
}

/// `registry.fly.io/app@sha256:…` or `registry.fly.io/app:tag` split into the spec's
/// `ImageRef` (fly-go `machine_types.go`, `FullImageRef`, joins them back); a reference without
/// a registry host is docker.io's (Docker's rule; no source found for Fly's).
fn image_ref(image: &str) -> Value {
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, d),
        None => (image, ""),
    };
    let (name, tag) = match name.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, t),
        _ => (name, ""),
    };
    let (registry, repository) = match name.split_once('/') {
        Some((r, rest)) if r.contains('.') || r.contains(':') => (r, rest),
        _ => ("docker.io", name),
    };
    let mut out = Map::new();
    out.insert("registry".into(), json!(registry));
    out.insert("repository".into(), json!(repository));
    out.insert("tag".into(), json!(tag));
    out.insert("digest".into(), json!(digest));
    out.insert("labels".into(), json!({}));
    Value::Object(out)
}

#[cfg(test)]
mod auth_tests {
    use super::*;

    fn sends(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn schemes_are_stripped_as_fly_go_strips_them() {
        assert_eq!(strip_scheme("Bearer FlyV1 fm2_a,fm2_b"), "fm2_a,fm2_b");
        assert_eq!(strip_scheme("  flyv1 BEARER fo1_x "), "fo1_x");
        assert_eq!(strip_scheme("fm2_a"), "fm2_a");
    }

    /// A login session (macaroons and an OAuth token): the Machines API gets the macaroons
    /// alone (fly-go `FlapsHeader`), the platform API all of it.
    #[test]
    fn the_machines_api_takes_a_sessions_macaroons() {
        let token = "fm2_a,fm2_b,fo1_user";
        assert!(authorized(&sends("FlyV1 fm2_a,fm2_b"), token, false));
        assert!(authorized(&sends("Bearer fm2_a,fm2_b,fo1_user"), token, true));
        assert!(!authorized(&sends("FlyV1 fm2_a"), token, false));
        assert!(!authorized(&sends("Basic fm2_a,fm2_b"), token, false));
        // OAuth alone.
        assert!(authorized(&sends("Bearer fo1_user"), "fo1_user", false));
        assert!(!authorized(&sends("Bearer fo1_other"), "fo1_user", false));
    }
}
