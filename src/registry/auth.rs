//! Registry credentials and challenge-driven authentication (Basic, and Bearer tokens from a
//! token realm), with token reuse and refresh.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Token lifetime when the token server does not say (distribution's token spec).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// A token this close to expiry is renewed before use: a request must not start with a token
/// that expires while the registry checks it.
const TOKEN_RENEW_MARGIN: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("--creds must be USER:PASSWORD (the part before the first ':' is the user)")]
    CredsSyntax,
    #[error("cannot read registry credentials from {path}")]
    ConfigUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("registry credentials file {path} is not valid JSON")]
    ConfigInvalid {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "the credentials for {host} in {path} cannot be used: `auth` must be base64 of USER:PASSWORD \
         (and agree with `username`/`password` when those are set too)"
    )]
    ConfigAuthInvalid { host: String, path: PathBuf },
    #[error(
        "credential helper {helper} (named in {path}) gave no credentials for {host}: {problem}; \
         fix the helper or its entry in credHelpers/credsStore, or pass --creds USER:PASSWORD"
    )]
    Helper {
        helper: String,
        host: String,
        path: PathBuf,
        problem: String,
    },
    #[error(
        "{registry}: the token service {realm} rejected the credentials ({status}) for scope {scope}; {hint}"
    )]
    TokenRejected {
        registry: String,
        realm: String,
        scope: String,
        status: u16,
        hint: String,
    },
    #[error(
        "{registry}: the token service {realm} answered {status} for scope {scope}, also after \
         retries; it is failing, not refusing the credentials: try again later"
    )]
    TokenServiceFailed {
        registry: String,
        realm: String,
        scope: String,
        status: u16,
    },
    #[error("{registry}: cannot get a token from {realm}")]
    TokenTransport {
        registry: String,
        realm: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{registry}: the token service {realm} answered without a token ({reason})")]
    TokenMalformed {
        registry: String,
        realm: String,
        reason: String,
    },
    #[error("{registry}: unsupported authentication challenge {challenge:?}")]
    UnsupportedChallenge { registry: String, challenge: String },
}

/// Where credentials came from, so a rejection can say which to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialSource {
    Flag,
    FlyToken(String),
    ConfigFile(PathBuf),
    /// A Docker credential helper, `docker-credential-<name>`.
    Helper(String),
}

/// Credentials for one registry. `Debug` never shows the password.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    pub source: CredentialSource,
    /// What to send instead, once, when a registry with Basic auth refuses these (a Fly login
    /// session's OAuth token, when its macaroons are refused).
    pub fallback: Option<Box<Credentials>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn new(username: &str, password: &str, source: CredentialSource) -> Self {
        crate::error::register_secret(password);
        let creds = Credentials {
            username: username.to_string(),
            password: password.to_string(),
            source,
            fallback: None,
        };
        crate::error::register_secret(&creds.basic_value());
        creds
    }

    /// `USER:PASSWORD` from `--creds`.
    pub fn from_flag(text: &str) -> Result<Self, AuthError> {
        let (user, pass) = text.split_once(':').ok_or(AuthError::CredsSyntax)?;
        crate::error::register_secret(text);
        if user.is_empty() {
            return Err(AuthError::CredsSyntax);
        }
        Ok(Self::new(user, pass, CredentialSource::Flag))
    }

    /// These as Fly's registry gets a Fly token from flyctl: the password without a `FlyV1`
    /// or `Bearer` scheme (fly-go `tokens/tokens.go` `Tokens.Docker()`, which flyctl sends as
    /// the Basic password in `internal/build/imgsrc/docker.go` and writes into docker's
    /// config.json in `internal/command/auth/docker.go`). A deploy token is printed as
    /// `FlyV1 fm2_...`, and pasted whole into `--creds x:...` or `docker login -p` it keeps
    /// the scheme, a form flyctl never sends. The token itself is left as given.
    fn without_fly_scheme(self) -> Self {
        let bare = crate::fly::token::strip_scheme(&self.password);
        if bare.is_empty() || bare.len() == self.password.len() {
            return self;
        }
        let mut creds = Credentials::new(&self.username, bare, self.source.clone());
        creds.fallback = self.fallback;
        creds
    }

    /// These, then `fallback` once if the registry refuses these.
    pub fn with_fallback(mut self, fallback: Credentials) -> Self {
        self.fallback = Some(Box::new(fallback));
        self
    }

    fn basic_value(&self) -> String {
        B64.encode(format!("{}:{}", self.username, self.password))
    }

    pub fn basic_header(&self) -> String {
        format!("Basic {}", self.basic_value())
    }
}

/// Inputs for finding credentials, with the environment made explicit so tests can set it.
pub struct CredentialLookup<'a> {
    pub flag: Option<&'a str>,
    pub auth_files: Vec<PathBuf>,
    /// What the Fly token makes for Fly's registry (`FlyToken::registry_credentials`),
    /// consulted for the Fly registry host only.
    pub fly_credentials: Option<Credentials>,
    pub fly_registry_host: String,
}

impl CredentialLookup<'_> {
    /// The files Docker, podman and skopeo read, in the order that wins: `REGISTRY_AUTH_FILE`,
    /// `$DOCKER_CONFIG/config.json`, `~/.docker/config.json`.
    pub fn standard_auth_files() -> Vec<PathBuf> {
        let mut files = Vec::new();
        if let Some(file) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|v| !v.is_empty()) {
            files.push(PathBuf::from(file));
        }
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
            files.push(Path::new(&dir).join("config.json"));
        }
        if let Some(home) = dirs::home_dir() {
            let file = home.join(".docker").join("config.json");
            if !files.contains(&file) {
                files.push(file);
            }
        }
        files
    }

    /// Credentials for `host`, highest precedence first: `--creds`, the Fly token (Fly's
    /// registry only: user `x`, the token as password), the auth files. `None`: anonymous.
    /// Fly's registry gets the password as flyctl sends it (see `Credentials::without_fly_scheme`).
    pub fn find(&self, host: &str) -> Result<Option<Credentials>, AuthError> {
        let fly = host.eq_ignore_ascii_case(&self.fly_registry_host);
        let found = self.find_as_given(host, fly)?;
        Ok(if fly {
            found.map(Credentials::without_fly_scheme)
        } else {
            found
        })
    }

    fn find_as_given(&self, host: &str, fly: bool) -> Result<Option<Credentials>, AuthError> {
        if let Some(flag) = self.flag {
            return Credentials::from_flag(flag).map(Some);
        }
        if fly && let Some(creds) = &self.fly_credentials {
            return Ok(Some(creds.clone()));
        }
        // Docker keys Docker Hub's credentials by its old index URL, `https://index.docker.io/v1/`
        // (`docker login` with no server; read as `index.docker.io`); Podman and skopeo by
        // `docker.io`.
        let names: &[&str] = if super::reference::is_docker_hub(host) {
            &["docker.io", "index.docker.io"]
        } else {
            &[host]
        };
        for path in &self.auth_files {
            for name in names {
                if let Some(creds) = credentials_from_auth_file(path, name)? {
                    return Ok(Some(creds));
                }
            }
        }
        Ok(None)
    }
}

/// Credentials for `host` from one Docker/containers auth file, as docker finds them: a
/// credential helper named in `credHelpers.<host>`, an `identitytoken` or `auth`/`username`/
/// `password` in `auths.<host>` (keys may be bare hosts or URLs like `https://host/v1/`), else
/// the `credsStore` helper. The docker_credential crate reads the file and speaks the helper
/// protocol (`docker-credential-<name> get`, the host on stdin, `{"Username", "Secret"}` back).
fn credentials_from_auth_file(path: &Path, host: &str) -> Result<Option<Credentials>, AuthError> {
    use docker_credential::{CredentialRetrievalError as Retrieval, DockerCredential};
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(AuthError::ConfigUnreadable {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    // Parsed here first only for an error that says where the JSON is broken.
    let config: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| AuthError::ConfigInvalid {
            path: path.to_path_buf(),
            source,
        })?;
    let named = |value: Option<&serde_json::Value>| {
        value
            .and_then(serde_json::Value::as_str)
            .filter(|name| !name.is_empty())
            .map(str::to_string)
    };
    // Which helper the crate will ask, to name it in messages: credHelpers for this host, else
    // credsStore unless `auths` holds the host itself.
    let in_auths = config
        .get("auths")
        .and_then(serde_json::Value::as_object)
        .is_some_and(|auths| {
            auths
                .keys()
                .any(|key| auth_key_host(key).eq_ignore_ascii_case(host))
        });
    let helper = named(config.get("credHelpers").and_then(|h| h.get(host)))
        .or_else(|| named(config.get("credsStore")).filter(|_| !in_auths));
    let source = match &helper {
        Some(name) => CredentialSource::Helper(format!("docker-credential-{name}")),
        None => CredentialSource::ConfigFile(path.to_path_buf()),
    };
    let helper_error = |problem: String| AuthError::Helper {
        helper: format!("docker-credential-{}", helper.as_deref().unwrap_or("?")),
        host: host.to_string(),
        path: path.to_path_buf(),
        problem,
    };
    match docker_credential::get_credential_from_reader(text.as_bytes(), host) {
        Ok(DockerCredential::UsernamePassword(user, password)) => {
            Ok(Some(Credentials::new(&user, &password, source)))
        }
        Ok(DockerCredential::IdentityToken(token)) => {
            Ok(Some(Credentials::new(IDENTITY_TOKEN_USER, &token, source)))
        }
        Err(Retrieval::NoCredentialConfigured) => Ok(None),
        // What docker's own helpers answer for a host they hold nothing for: anonymous, as
        // docker treats it.
        Err(Retrieval::HelperFailure { stdout, .. }) if stdout.contains("credentials not found") => Ok(None),
        Err(Retrieval::HelperFailure { stdout, stderr, .. }) => {
            let said: String = format!("{} {}", stdout.trim(), stderr.trim())
                .trim()
                .chars()
                .take(300)
                .collect();
            Err(helper_error(format!("it failed: {said}")))
        }
        Err(Retrieval::HelperCommunicationError) => Err(helper_error(
            "it could not be run, or did not read the host on stdin: is it installed and on PATH?".into(),
        )),
        Err(Retrieval::MalformedHelperResponse) => Err(helper_error(
            "its answer is not JSON with Username and Secret".into(),
        )),
        Err(Retrieval::CredentialDecodingError)
            if let Some((user, password)) = url_safe_auth(&config, host) =>
        {
            Ok(Some(Credentials::new(&user, &password, source)))
        }
        Err(Retrieval::CredentialDecodingError | Retrieval::CredentialMismatchError) => {
            Err(AuthError::ConfigAuthInvalid {
                host: host.to_string(),
                path: path.to_path_buf(),
            })
        }
        Err(Retrieval::ConfigNotFound | Retrieval::ConfigReadError) => Ok(None),
    }
}

/// `auths.<host>.auth` in base64's URL-safe alphabet, as `user:password`. `fly auth docker`
/// writes config.json itself that way when it finds no docker binary (flyctl
/// `internal/command/auth/docker.go`, `addFlyAuthToDockerConfig`: `base64.URLEncoding`), the
/// usual case on a Nix machine; docker_credential decodes only the standard alphabet.
fn url_safe_auth(config: &serde_json::Value, host: &str) -> Option<(String, String)> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
    let (_, entry) = config
        .get("auths")?
        .as_object()?
        .iter()
        .find(|(key, _)| auth_key_host(key).eq_ignore_ascii_case(host))?;
    let auth = entry.get("auth")?.as_str()?.trim();
    let decoded = URL_SAFE
        .decode(auth)
        .or_else(|_| URL_SAFE_NO_PAD.decode(auth))
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// The host of an `auths` key: `https://host/v1/` → `host`.
fn auth_key_host(key: &str) -> &str {
    key.trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
}

/// The user name docker's credential protocol gives an identity token (an OAuth2 refresh
/// token, exchanged at the token realm) instead of a password.
pub const IDENTITY_TOKEN_USER: &str = "<token>";

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
        let params = parse_auth_params(params);
        if scheme.eq_ignore_ascii_case("basic") {
            Some(Challenge::Basic)
        } else if scheme.eq_ignore_ascii_case("bearer") {
            Some(Challenge::Bearer {
                realm: params.get("realm")?.clone(),
                service: params.get("service").cloned(),
                scope: params.get("scope").cloned(),
            })
        } else {
            None
        }
    }
}

/// `key=value` and `key="quoted, value"` pairs separated by commas.
fn parse_auth_params(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.insert(key, value);
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// The access a request needs: `repository:<name>:<actions>` scopes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Scope(Vec<String>);

impl Scope {
    pub fn push(repository: &str) -> Self {
        Scope(vec![format!("repository:{repository}:pull,push")])
    }
    pub fn pull(repository: &str) -> Self {
        Scope(vec![format!("repository:{repository}:pull")])
    }
    /// Push to `repository` and pull from `from`, for a cross-repository mount.
    pub fn mount(repository: &str, from: &str) -> Self {
        let mut scope = Self::push(repository);
        scope.0.push(format!("repository:{from}:pull"));
        scope
    }
    /// Whether it reaches beyond the repository pushed to (a mount's): its refusal says
    /// nothing about the credentials for that repository, and a failed mount costs only an
    /// upload.
    pub fn is_mount(&self) -> bool {
        self.0.len() > 1
    }
    /// Only reads (another repository's image, for `--reuse-from` or the app's running one).
    pub fn is_pull_only(&self) -> bool {
        !self.0.is_empty() && self.0.iter().all(|part| part.ends_with(":pull"))
    }
    /// No repository: the `/v2/` probe.
    pub fn none() -> Self {
        Scope(Vec::new())
    }
    fn with_extra(&self, extra: Option<&str>) -> Self {
        let mut scope = self.clone();
        for part in extra
            .into_iter()
            .flat_map(|s| s.split(' '))
            .filter(|s| !s.is_empty())
        {
            if !scope.0.iter().any(|s| covers(s, part)) {
                scope.0.push(part.to_string());
            }
        }
        scope
    }
    pub fn describe(&self) -> String {
        if self.0.is_empty() {
            "(none)".into()
        } else {
            self.0.join(" ")
        }
    }
}

/// Whether scope `have` grants everything `want` asks (same resource, a superset of actions;
/// registries list actions in any order).
fn covers(have: &str, want: &str) -> bool {
    let split = |s: &str| {
        s.rsplit_once(':')
            .map(|(resource, actions)| (resource.to_string(), actions.to_string()))
    };
    match (split(have), split(want)) {
        (Some((have_resource, have_actions)), Some((want_resource, want_actions))) => {
            have_resource == want_resource
                && want_actions
                    .split(',')
                    .all(|a| have_actions.split(',').any(|h| h == a || h == "*"))
        }
        _ => have == want,
    }
}

struct CachedToken {
    header: String,
    /// When to fetch a new one: a little before expiry, so no request starts with a token
    /// that dies while the registry checks it.
    renew_at: Instant,
}

#[derive(Default)]
struct State {
    /// Learnt from the registry's first 401; `None` until then.
    challenge: Option<Challenge>,
    tokens: HashMap<Scope, CachedToken>,
    /// The credentials were refused and their fallback is in use.
    fell_back: bool,
}

/// Authentication for one registry host: remembers the challenge and caches tokens per scope.
pub struct Authenticator {
    registry: String,
    credentials: Option<Credentials>,
    is_fly: bool,
    /// The most a token request may take (`--registry-timeout`): a token service that never
    /// answers must not hang the push.
    timeout: Duration,
    state: Mutex<State>,
    fetch_lock: tokio::sync::Mutex<()>,
}

impl Authenticator {
    pub fn new(registry: &str, credentials: Option<Credentials>, is_fly: bool, timeout: Duration) -> Self {
        Authenticator {
            registry: registry.to_string(),
            credentials,
            is_fly,
            timeout,
            state: Mutex::new(State::default()),
            fetch_lock: tokio::sync::Mutex::new(()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The credentials in use: the given ones, or their fallback once they were refused.
    fn credentials(&self) -> Option<&Credentials> {
        let given = self.credentials.as_ref()?;
        match (&given.fallback, self.state().fell_back) {
            (Some(fallback), true) => Some(fallback),
            _ => Some(given),
        }
    }

    /// Whether the registry's challenge is known (after a 401, or a probe).
    pub fn knows_challenge(&self) -> bool {
        self.state().challenge.is_some()
    }

    /// The `Authorization` value to send now for `scope`, without any network call: `None`
    /// when nothing is known yet or a token must be fetched first (`ensure`).
    pub fn header(&self, scope: &Scope) -> Option<String> {
        let state = self.state();
        match state.challenge.as_ref()? {
            Challenge::Basic => {
                drop(state);
                self.credentials().map(Credentials::basic_header)
            }
            Challenge::Bearer { .. } => state
                .tokens
                .get(scope)
                .filter(|t| Instant::now() < t.renew_at)
                .map(|t| t.header.clone()),
        }
    }

    /// Drop the token for `scope`: a request carrying it was refused.
    pub fn forget(&self, scope: &Scope) {
        self.state().tokens.remove(scope);
    }

    /// Basic credentials sent as `rejected` were refused: switch to their fallback, once.
    /// Whether there is something new to send. (registry.fly.io takes a login session's OAuth
    /// token as well as its macaroons: fly-go's `Tokens.Docker()` sends the one when there are
    /// none of the other.)
    pub fn fall_back(&self, scope: &Scope, rejected: Option<&str>) -> bool {
        let has_fallback = self.credentials.as_ref().is_some_and(|c| c.fallback.is_some());
        // A mount or a read refused (no access to the other app's repository: Fly scopes
        // registry access to the token's apps or organization) is no reason to give up the
        // macaroons for the rest of the push: fly-go's `Tokens.Docker()` never sends the
        // OAuth token while there are macaroons. Only a refusal of the push's own repository
        // (whose reads ask for pull,push) switches.
        if !has_fallback
            || scope.is_mount()
            || scope.is_pull_only()
            || rejected.is_none()
            || self.header(scope).as_deref() != rejected
        {
            return false;
        }
        let mut state = self.state();
        if state.fell_back || !matches!(state.challenge, Some(Challenge::Basic)) {
            return false;
        }
        state.fell_back = true;
        true
    }

    /// Record a challenge from a 401.
    pub fn learn(&self, www_authenticate: &str) -> Result<Challenge, AuthError> {
        let challenge =
            Challenge::parse(www_authenticate).ok_or_else(|| AuthError::UnsupportedChallenge {
                registry: self.registry.clone(),
                challenge: www_authenticate.chars().take(200).collect(),
            })?;
        self.state().challenge = Some(challenge.clone());
        Ok(challenge)
    }

    /// Make `header(scope)` return something usable: fetch a token when the challenge is
    /// Bearer and none is cached, it is about to expire, or it is `rejected` (the value a 401
    /// answered). `extra_scope` is what the 401 asked for. One fetch at a time: requests that
    /// fail together share the token the first of them fetches.
    pub async fn ensure(
        &self,
        http: &reqwest::Client,
        scope: &Scope,
        rejected: Option<&str>,
        extra_scope: Option<&str>,
    ) -> Result<(), AuthError> {
        let usable = || self.header(scope).is_some_and(|h| Some(h.as_str()) != rejected);
        let challenge = self.state().challenge.clone();
        let Some(Challenge::Bearer { realm, service, .. }) = challenge else {
            return Ok(());
        };
        if usable() {
            return Ok(());
        }
        let _one_fetch = self.fetch_lock.lock().await;
        if usable() {
            return Ok(());
        }
        let wanted = scope.with_extra(extra_scope);
        let mut url = url::Url::parse(&realm).map_err(|_| AuthError::TokenMalformed {
            registry: self.registry.clone(),
            realm: realm.clone(),
            reason: "the realm is not a URL".into(),
        })?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = &service {
                query.append_pair("service", service);
            }
            for part in &wanted.0 {
                query.append_pair("scope", part);
            }
        }
        // A token service's 408, 429 or 5xx, or a dropped connection, is tried again with the
        // registry requests' backoff (honouring `Retry-After`), as go-containerregistry fetches
        // tokens through its retrying transport (`remote/options.go`, `transport/bearer.go`):
        // a long push renews its token several times.
        let policy = crate::retry::RetryPolicy::default();
        let mut attempt = 0;
        let response = loop {
            let sent = self.token_request(http, &url, &service, &wanted).send().await;
            let wait = match &sent {
                Ok(response) if crate::retry::RETRYABLE_STATUSES.contains(&response.status().as_u16()) => {
                    crate::retry::retry_after(response.headers())
                }
                Ok(_) => break sent,
                Err(_) => None,
            };
            if attempt >= policy.retries {
                break sent;
            }
            tokio::time::sleep(policy.delay(attempt, wait)).await;
            attempt += 1;
        };
        let response = response.map_err(|source| AuthError::TokenTransport {
            registry: self.registry.clone(),
            realm: realm.clone(),
            source,
        })?;
        let status = response.status();
        if crate::retry::RETRYABLE_STATUSES.contains(&status.as_u16()) || status.is_server_error() {
            return Err(AuthError::TokenServiceFailed {
                registry: self.registry.clone(),
                realm,
                scope: wanted.describe(),
                status: status.as_u16(),
            });
        }
        if !status.is_success() {
            return Err(AuthError::TokenRejected {
                registry: self.registry.clone(),
                realm,
                scope: wanted.describe(),
                status: status.as_u16(),
                hint: self.rejection_hint(),
            });
        }
        self.store_token(scope, response, &realm).await
    }

    /// One token request to the realm `url` (its query already set) for `wanted`.
    fn token_request(
        &self,
        http: &reqwest::Client,
        url: &url::Url,
        service: &Option<String>,
        wanted: &Scope,
    ) -> reqwest::RequestBuilder {
        match self.credentials() {
            // An identity token is an OAuth2 refresh token: POSTed to the realm for an access
            // token (distribution's docs/spec/auth/oauth.md), never sent as a password.
            Some(creds) if creds.username == IDENTITY_TOKEN_USER => {
                let mut form = vec![
                    ("grant_type", "refresh_token".to_string()),
                    ("refresh_token", creds.password.clone()),
                    ("client_id", "nixfly".to_string()),
                    ("scope", wanted.0.join(" ")),
                ];
                if let Some(service) = &service {
                    form.push(("service", service.clone()));
                }
                let mut realm_url = url.clone();
                realm_url.set_query(None);
                http.post(realm_url).form(&form)
            }
            Some(creds) => http
                .get(url.clone())
                .header(reqwest::header::AUTHORIZATION, creds.basic_header()),
            None => http.get(url.clone()),
        }
        .timeout(self.timeout)
    }

    /// Read a token service's answer and cache its token for `scope`.
    async fn store_token(
        &self,
        scope: &Scope,
        response: reqwest::Response,
        realm: &str,
    ) -> Result<(), AuthError> {
        let realm = realm.to_string();
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let malformed = |reason: String| AuthError::TokenMalformed {
            registry: self.registry.clone(),
            realm: realm.clone(),
            reason,
        };
        let body = response
            .bytes()
            .await
            .map_err(|e| malformed(format!("reading the body failed: {e}")))?;
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| malformed(format!("not JSON: {e}")))?;
        let token = parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| malformed("neither `token` nor `access_token` is set".into()))?;
        crate::error::register_secret(&token);
        let lifetime = parsed
            .expires_in
            .filter(|&s| s > 0)
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        let cached = CachedToken {
            header: format!("Bearer {token}"),
            renew_at: Instant::now() + lifetime - TOKEN_RENEW_MARGIN.min(lifetime / 4),
        };
        let mut state = self.state();
        state.tokens.insert(scope.clone(), cached);
        Ok(())
    }

    /// How to fix rejected credentials, naming where they came from.
    pub fn rejection_hint(&self) -> String {
        // registry.fly.io takes the user `x` and a Fly token as the password (flyctl's
        // `internal/build/imgsrc/docker.go` logs in so); a deploy token reaches its own app.
        let fly = if self.is_fly {
            "; registry.fly.io takes the user `x` and, as the password, a Fly token with access \
             to the app (`fly tokens create deploy -a <app>`; or set FLY_API_TOKEN)"
        } else {
            ""
        };
        let hint = match self.credentials.as_ref().map(|c| &c.source) {
            Some(CredentialSource::FlyToken(from)) => {
                return format!(
                    "the Fly token (from {from}) was rejected: make one with `fly tokens create \
                     deploy -a <app>` (a deploy token reaches only its own app's repository) and \
                     export it as FLY_API_TOKEN"
                );
            }
            None if self.is_fly => {
                return "no credentials for the Fly registry: set FLY_API_TOKEN to a token from \
                        `fly tokens create deploy -a <app>`"
                    .to_string();
            }
            Some(CredentialSource::Flag) => "check the user and password given with --creds".to_string(),
            Some(CredentialSource::ConfigFile(path)) => format!(
                "check the credentials for {} in {} (or pass --creds USER:PASSWORD)",
                self.registry,
                path.display()
            ),
            Some(CredentialSource::Helper(helper)) => format!(
                "check the credentials {helper} holds for {} (log in again, e.g. `docker login {}`), \
                 or pass --creds USER:PASSWORD",
                self.registry, self.registry
            ),
            None => format!(
                "no credentials for {} were found: pass --creds USER:PASSWORD, or log in with \
                 `docker login` / `skopeo login` (REGISTRY_AUTH_FILE)",
                self.registry
            ),
        };
        format!("{hint}{fly}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Credentials given for registry.fly.io that it refused are named as given, with what
    /// the Fly registry takes; before, the hint said no credentials had been given.
    #[test]
    fn a_refusal_by_the_fly_registry_names_the_credentials_given() {
        let auth = |source: Option<CredentialSource>, is_fly: bool| {
            Authenticator::new(
                "registry.fly.io",
                source.map(|source| Credentials::new("me", "secret", source)),
                is_fly,
                Duration::from_secs(5),
            )
            .rejection_hint()
        };
        let given = auth(Some(CredentialSource::Flag), true);
        assert!(
            given.starts_with("check the user and password given with --creds"),
            "{given}"
        );
        assert!(given.contains("takes the user `x`"), "{given}");
        let none = auth(None, true);
        assert!(none.starts_with("no credentials for the Fly registry"), "{none}");
        let elsewhere = auth(Some(CredentialSource::Flag), false);
        assert_eq!(elsewhere, "check the user and password given with --creds");
    }

    #[test]
    fn bearer_challenges_parse_quoted_commas_and_escapes() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            }
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="flyio-registry.fly.dev""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            Challenge::parse(r#"bearer realm=http://x/t, service = "s\"q""#),
            Some(Challenge::Bearer {
                realm: "http://x/t".into(),
                service: Some("s\"q".into()),
                scope: None
            })
        );
        assert_eq!(Challenge::parse("Negotiate abc"), None);
        assert_eq!(Challenge::parse("Bearer service=x"), None);
    }

    #[test]
    fn challenge_scopes_already_asked_for_are_not_repeated() {
        let scope = Scope::push("team/app");
        assert_eq!(scope.with_extra(Some("repository:team/app:push,pull")), scope);
        assert_eq!(scope.with_extra(Some("repository:team/app:pull")), scope);
        assert_eq!(
            scope.with_extra(Some("repository:other:pull")).describe(),
            "repository:team/app:pull,push repository:other:pull"
        );
        assert_eq!(
            scope.with_extra(Some("repository:team/app:delete")).describe(),
            "repository:team/app:pull,push repository:team/app:delete"
        );
    }

    #[test]
    fn auth_files_give_credentials_by_auth_or_username_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let auth = B64.encode("alice:s3cret-password");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths":{{"https://reg.example:5000/v1/":{{"auth":"{auth}"}},
                   "other.example":{{"username":"bob","password":"hunter2-long"}}}}}}"#
            ),
        )
        .unwrap();
        let lookup = CredentialLookup {
            flag: None,
            auth_files: vec![dir.path().join("missing.json"), path.clone()],
            fly_credentials: None,
            fly_registry_host: "registry.fly.io".into(),
        };
        let creds = lookup.find("reg.example:5000").unwrap().unwrap();
        assert_eq!(
            (creds.username.as_str(), creds.password.as_str()),
            ("alice", "s3cret-password")
        );
        assert_eq!(creds.source, CredentialSource::ConfigFile(path.clone()));
        let creds = lookup.find("other.example").unwrap().unwrap();
        assert_eq!(creds.username, "bob");
        assert!(lookup.find("registry.fly.io").unwrap().is_none());
        assert!(!format!("{creds:?}").contains("hunter2"));
        // Registered as secrets: errors and logs never show them.
        assert!(!crate::error::redacted("pw s3cret-password").contains("s3cret"));

        std::fs::write(&path, r#"{"auths":{"reg.example":{"auth":"!!!"}}}"#).unwrap();
        let lookup = CredentialLookup {
            auth_files: vec![path],
            ..lookup
        };
        assert!(matches!(
            lookup.find("reg.example"),
            Err(AuthError::ConfigAuthInvalid { .. })
        ));
    }

    /// `docker login` keys Docker Hub by `https://index.docker.io/v1/`; a reference says
    /// `docker.io`.
    #[test]
    fn docker_hubs_credentials_are_found_under_its_index_url() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let auth = B64.encode("carol:hub-password-123");
        std::fs::write(
            &path,
            format!(r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}}}}}}"#),
        )
        .unwrap();
        let lookup = CredentialLookup {
            flag: None,
            auth_files: vec![path],
            fly_credentials: None,
            fly_registry_host: "registry.fly.io".into(),
        };
        let creds = lookup
            .find("docker.io")
            .unwrap()
            .expect("found under the index URL");
        assert_eq!(creds.username, "carol");
        assert!(lookup.find("quay.io").unwrap().is_none());
    }

    #[test]
    fn the_fly_token_is_used_for_the_fly_registry_only_and_the_flag_wins() {
        let fly = Credentials::new(
            "x",
            "fm2_abcdefghijkl",
            CredentialSource::FlyToken("FLY_API_TOKEN".into()),
        );
        let lookup = CredentialLookup {
            flag: None,
            auth_files: vec![],
            fly_credentials: Some(fly),
            fly_registry_host: "registry.fly.io".into(),
        };
        let creds = lookup.find("registry.fly.io").unwrap().unwrap();
        assert_eq!(
            (creds.username.as_str(), creds.password.as_str()),
            ("x", "fm2_abcdefghijkl")
        );
        assert!(lookup.find("ghcr.io").unwrap().is_none());
        let lookup = CredentialLookup {
            flag: Some("u:p:with:colons"),
            ..lookup
        };
        let creds = lookup.find("registry.fly.io").unwrap().unwrap();
        assert_eq!(
            (creds.username.as_str(), creds.password.as_str()),
            ("u", "p:with:colons")
        );
        assert!(matches!(
            Credentials::from_flag("nocolon"),
            Err(AuthError::CredsSyntax)
        ));
    }
}
