//! Fly API token discovery and the headers built from it, as flyctl and fly-go do it.
//!
//! Precedence, lowest to highest: `<config dir>/config.yml` `access_token` (config dir =
//! `FLY_CONFIG_DIR` or `~/.fly`), `FLY_AUTH_TOKEN`, `FLY_API_TOKEN`, `FLY_ACCESS_TOKEN`, then the
//! `--access-token`/`-t` flag (flyctl `internal/config/config.go`: `env.First(FLY_ACCESS_TOKEN,
//! FLY_API_TOKEN)`). `FLY_AUTH_TOKEN` is not read by flyctl; Nix users export it for skopeo, so
//! it is accepted below the names flyctl knows.
//!
//! The login session `fly auth login` writes to config.yml holds macaroons that expire; they
//! are pruned as fly-go prunes them (`tokens/tokens.go`) before use, and when Fly still rejects
//! the macaroons the OAuth token of the session is tried once.

use crate::registry::auth::{CredentialSource, Credentials};
use std::fmt;
use std::path::{Path, PathBuf};

/// Environment variables holding a token, highest precedence first.
const TOKEN_ENV_VARS: [&str; 3] = ["FLY_ACCESS_TOKEN", "FLY_API_TOKEN", "FLY_AUTH_TOKEN"];

/// Prefixes of macaroon tokens (`fly tokens create ...`); anything else is an OAuth token.
const MACAROON_PREFIXES: [&str; 3] = ["fm1r_", "fm1a_", "fm2_"];

/// Where a token was found, so that errors about a rejected token can say which one to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    Flag,
    Env(&'static str),
    ConfigFile(PathBuf),
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Flag => f.write_str("the --access-token flag"),
            TokenSource::Env(var) => write!(f, "the {var} environment variable"),
            TokenSource::ConfigFile(path) => write!(f, "access_token in {}", path.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "no Fly API token found; looked in (highest precedence first): the --access-token/-t flag, \
         the FLY_ACCESS_TOKEN, FLY_API_TOKEN and FLY_AUTH_TOKEN environment variables, and \
         access_token in {config}. Create a deploy token with `fly tokens create deploy -a <app>` \
         and export it as FLY_API_TOKEN, or log in with `fly auth login`"
    )]
    Missing { config: String },
    #[error("cannot read the Fly config file {path}")]
    ConfigUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the token from {source_name} is empty once its FlyV1/Bearer prefix is removed")]
    Empty { source_name: TokenSource },
    #[error(
        "the login session in {} has expired (every macaroon in it is past its expiry and it \
         holds no OAuth token): run `fly auth login`, or create a deploy token with \
         `fly tokens create deploy -a <app>` and export it as FLY_API_TOKEN",
        path.display()
    )]
    SessionExpired { path: PathBuf },
}

/// A Fly API token, split into its macaroons and OAuth tokens, remembering where it came from.
/// `Debug` never shows the token.
#[derive(Clone)]
pub struct FlyToken {
    macaroons: Vec<String>,
    oauth: Vec<String>,
    source: TokenSource,
}

impl fmt::Debug for FlyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlyToken")
            .field("macaroons", &self.macaroons.len())
            .field("oauth", &self.oauth.len())
            .field("source", &self.source)
            .finish()
    }
}

impl FlyToken {
    /// Find the token as flyctl does, reading the real environment and home directory.
    pub fn discover(flag: Option<&str>) -> Result<Self, TokenError> {
        Self::discover_from(flag, |var| std::env::var(var).ok(), config_dir().as_deref())
    }

    /// Discovery with the environment and config directory given, for tests.
    fn discover_from(
        flag: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
        config_dir: Option<&Path>,
    ) -> Result<Self, TokenError> {
        if let Some(token) = flag.filter(|t| !t.trim().is_empty()) {
            return Self::parse(token, TokenSource::Flag);
        }
        for var in TOKEN_ENV_VARS {
            if let Some(token) = env(var).filter(|t| !t.trim().is_empty()) {
                return Self::parse(&token, TokenSource::Env(var));
            }
        }
        let config = config_dir.map(|dir| dir.join("config.yml"));
        if let Some(path) = &config {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    if let Some(token) = config_access_token(&text) {
                        let mut token = Self::parse(&token, TokenSource::ConfigFile(path.clone()))?;
                        token.prune_expired(unix_now());
                        if token.macaroons.is_empty() && token.oauth.is_empty() {
                            return Err(TokenError::SessionExpired { path: path.clone() });
                        }
                        return Ok(token);
                    }
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(TokenError::ConfigUnreadable {
                        path: path.clone(),
                        source,
                    });
                }
            }
        }
        Err(TokenError::Missing {
            config: config.map_or_else(
                || "~/.fly/config.yml (no home directory found)".to_string(),
                |p| p.display().to_string(),
            ),
        })
    }

    /// Split a token as fly-go's `tokens.Parse` does: strip any `FlyV1`/`Bearer` scheme
    /// prefixes, split on commas, sort by prefix into macaroons and OAuth tokens.
    pub fn parse(raw: &str, source: TokenSource) -> Result<Self, TokenError> {
        crate::error::register_secret(raw);
        let stripped = strip_scheme(raw);
        let mut token = FlyToken {
            macaroons: Vec::new(),
            oauth: Vec::new(),
            source,
        };
        for part in stripped.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            crate::error::register_secret(part);
            if MACAROON_PREFIXES.iter().any(|p| part.starts_with(p)) {
                token.macaroons.push(part.to_string());
            } else {
                token.oauth.push(part.to_string());
            }
        }
        if token.macaroons.is_empty() && token.oauth.is_empty() {
            return Err(TokenError::Empty {
                source_name: token.source,
            });
        }
        Ok(token)
    }

    pub fn source(&self) -> &TokenSource {
        &self.source
    }

    /// Drop the macaroons fly-go drops before using a login session: expired or malformed
    /// ones, and discharge tokens no permission token needs (fly-go `tokens/tokens.go`
    /// `pruneBadMacaroons`). Only for config.yml: a token the user passed is used as given.
    fn prune_expired(&mut self, now: i64) {
        self.macaroons = super::macaroon::prune(&self.macaroons, now);
    }

    /// The `Authorization` header value for the Machines API (fly-go `Tokens.FlapsHeader`):
    /// `FlyV1` with the macaroons when there are any (they carry the permissions), else
    /// `Bearer` with the OAuth token.
    pub fn authorization_header(&self) -> String {
        if self.macaroons.is_empty() {
            format!("Bearer {}", self.oauth.join(","))
        } else {
            format!("FlyV1 {}", self.macaroons.join(","))
        }
    }

    /// The credentials for Fly's registry, the one place a Fly token becomes registry
    /// credentials: HTTP Basic, user `x`, the token as password.
    /// With both macaroons and an OAuth token (a login session), the OAuth token is the
    /// fallback the registry gets once if it refuses the macaroons, as the Machines API does
    /// (`oauth_fallback_header`): the macaroons of a session go stale, and nixfly does not
    /// fetch new discharges as flyctl does.
    pub fn registry_credentials(&self) -> Credentials {
        let source = || CredentialSource::FlyToken(self.source.to_string());
        let credentials = Credentials::new("x", &self.registry_password(), source());
        if self.macaroons.is_empty() || self.oauth.is_empty() {
            return credentials;
        }
        credentials.with_fallback(Credentials::new("x", &self.oauth.join(","), source()))
    }

    /// The `Authorization` header value for the platform API at api.fly.io (flyctl
    /// `internal/uiex/releases.go`: `"Bearer " + Tokens.GraphQL()`): every macaroon, then
    /// every OAuth token, comma-joined, under the `Bearer` scheme, never `FlyV1`.
    pub fn platform_header(&self) -> String {
        format!("Bearer {}", self.every_token())
    }

    /// Every macaroon, then every OAuth token, comma-joined (fly-go `Tokens.GraphQL()`).
    fn every_token(&self) -> String {
        let all: Vec<&str> = self
            .macaroons
            .iter()
            .chain(&self.oauth)
            .map(String::as_str)
            .collect();
        all.join(",")
    }

    /// The `Authorization` header value for Fly's GraphQL API (fly-go `Tokens.GraphQLHeader`,
    /// `tokens/tokens.go` `normalized(true, true)`, which fly-go's client puts on every GraphQL
    /// request, `client.go` `addAuthorization`): every macaroon, then every OAuth token, under
    /// `FlyV1` when there is a macaroon, else `Bearer`. Not the releases API's form: that one
    /// is always `Bearer` (`platform_header`).
    pub fn graphql_header(&self) -> String {
        let scheme = if self.macaroons.is_empty() {
            "Bearer"
        } else {
            "FlyV1"
        };
        format!("{scheme} {}", self.every_token())
    }

    /// What to send once when Fly rejects a header built with macaroons: the OAuth token of
    /// a login session on its own. None when there is no such second chance.
    pub fn oauth_fallback_header(&self) -> Option<String> {
        (!self.macaroons.is_empty() && !self.oauth.is_empty())
            .then(|| format!("Bearer {}", self.oauth.join(",")))
    }

    /// Why Fly would refuse this token, when the token itself shows it (expired, or a
    /// discharge it needs is missing); for the error after a 401.
    pub fn refusal_reason(&self) -> Option<String> {
        super::macaroon::refusal_reason(&self.macaroons, unix_now())
    }

    /// A `fly auth login` session (config.yml) rather than a token made for deploys.
    pub fn is_login_session(&self) -> bool {
        matches!(self.source, TokenSource::ConfigFile(_))
    }

    /// The password for HTTP Basic auth (user `x`) at registry.fly.io: the token without its
    /// scheme prefix, macaroons comma-joined.
    fn registry_password(&self) -> String {
        if self.macaroons.is_empty() {
            self.oauth.join(",")
        } else {
            self.macaroons.join(",")
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Remove leading `FlyV1 `/`Bearer ` scheme words (case-insensitive, possibly repeated, as in
/// `Bearer FlyV1 fm2_...`).
pub(crate) fn strip_scheme(token: &str) -> &str {
    let is_scheme = |word: &str| word.eq_ignore_ascii_case("FlyV1") || word.eq_ignore_ascii_case("Bearer");
    let mut token = token.trim();
    loop {
        let (first, rest) = token.split_once(char::is_whitespace).unwrap_or((token, ""));
        if !is_scheme(first) {
            return token;
        }
        token = rest.trim_start();
    }
}

/// The top-level `access_token` value of flyctl's config.yml. flyctl writes it as a plain or
/// quoted scalar on one line; this reads exactly that shape rather than pulling in a YAML parser.
/// The least secrets version machines of `app` must get: `app_secrets_minvers` in flyctl's
/// config.yml, which `fly secrets set` raises, and which flyctl sends with every machine
/// create and update (`internal/appsecrets/minvers.go`; `min_secrets_version` in
/// `machines_launchinput.go`), so that a deploy right after a secret change does not start
/// machines on the older secrets. None when the file or the app's entry is missing.
pub fn secrets_min_version(app: &str) -> Option<u64> {
    let text = std::fs::read_to_string(config_dir()?.join("config.yml")).ok()?;
    config_secrets_min_version(&text, app)
}

/// flyctl's config directory: `FLY_CONFIG_DIR`, else `~/.fly`.
fn config_dir() -> Option<PathBuf> {
    std::env::var_os("FLY_CONFIG_DIR")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| dirs::home_dir().map(|home| home.join(".fly")))
}

/// `app_secrets_minvers.<app>` of a config.yml as flyctl writes it (a YAML map under that key,
/// one indented `name: version` line per app).
fn config_secrets_min_version(text: &str, app: &str) -> Option<u64> {
    let mut lines = text
        .lines()
        .skip_while(|line| !line.starts_with("app_secrets_minvers:"));
    lines.next()?;
    lines
        .take_while(|line| line.starts_with([' ', '\t']) || line.trim().is_empty())
        .filter_map(|line| line.trim().split_once(':'))
        .find(|(name, _)| name.trim().trim_matches(['"', '\'']) == app)
        .and_then(|(_, version)| version.split('#').next()?.trim().parse().ok())
}

fn config_access_token(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix("access_token:")?.trim();
        let value = match value.chars().next() {
            Some(q @ ('"' | '\'')) => value[1..].split(q).next().unwrap_or(""),
            _ => value.split(" #").next().unwrap_or("").trim(),
        };
        (!value.is_empty()).then(|| value.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |var| pairs.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone())
    }

    #[test]
    fn the_secrets_min_version_is_read_from_flyctls_config() {
        let text = "access_token: fo1_x\napp_secrets_minvers:\n    demo: 7\n    \"other-app\": 12 # set by fly\nsend_metrics: true\n";
        assert_eq!(config_secrets_min_version(text, "demo"), Some(7));
        assert_eq!(config_secrets_min_version(text, "other-app"), Some(12));
        assert_eq!(config_secrets_min_version(text, "send_metrics"), None);
        assert_eq!(config_secrets_min_version(text, "missing"), None);
        assert_eq!(
            config_secrets_min_version("app_secrets_minvers: {}\n", "demo"),
            None
        );
        assert_eq!(config_secrets_min_version("access_token: x\n", "demo"), None);
    }

    fn config_dir_with(token: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.yml"),
            format!("access_token: {token}\nsend_metrics: true\n"),
        )
        .unwrap();
        dir
    }

    #[test]
    fn precedence_is_flag_then_access_then_api_then_auth_then_config() {
        let dir = config_dir_with("fo1_from_config_file");
        // flyctl's order (internal/config/config.go): FLY_ACCESS_TOKEN before FLY_API_TOKEN.
        let all = [
            ("FLY_ACCESS_TOKEN", "fo1_from_access_token_var"),
            ("FLY_API_TOKEN", "fo1_from_api_token_var"),
            ("FLY_AUTH_TOKEN", "fo1_from_auth_token_var"),
        ];
        let token =
            FlyToken::discover_from(Some("fo1_from_the_flag"), env_of(&all), Some(dir.path())).unwrap();
        assert_eq!(token.source(), &TokenSource::Flag);
        assert_eq!(token.registry_password(), "fo1_from_the_flag");

        for (skip, (var, expected)) in all.iter().enumerate() {
            let env = env_of(&all[skip..]);
            let token = FlyToken::discover_from(None, env, Some(dir.path())).unwrap();
            assert_eq!(token.source(), &TokenSource::Env(var));
            assert_eq!(token.registry_password(), *expected);
        }

        let token = FlyToken::discover_from(None, env_of(&[]), Some(dir.path())).unwrap();
        assert_eq!(
            token.source(),
            &TokenSource::ConfigFile(dir.path().join("config.yml"))
        );
        assert_eq!(token.registry_password(), "fo1_from_config_file");
    }

    #[test]
    fn a_login_session_loses_its_expired_macaroons_and_keeps_its_oauth_token() {
        use crate::fly::macaroon::{LOCATION_PERMISSION, encode_for_test};
        let now = unix_now();
        let live = encode_for_test(b"live", LOCATION_PERMISSION, Some(now + 3600), &[]);
        let expired = encode_for_test(b"dead", LOCATION_PERMISSION, Some(now - 60), &[]);
        let dir = config_dir_with(&format!("{expired},{live},fo1_sessiontoken"));
        let token = FlyToken::discover_from(None, env_of(&[]), Some(dir.path())).unwrap();
        assert_eq!(token.authorization_header(), format!("FlyV1 {live}"));
        assert_eq!(token.platform_header(), format!("Bearer {live},fo1_sessiontoken"));
        assert_eq!(
            token.oauth_fallback_header().as_deref(),
            Some("Bearer fo1_sessiontoken")
        );

        let dir = config_dir_with(&expired);
        let err = FlyToken::discover_from(None, env_of(&[]), Some(dir.path())).unwrap_err();
        assert!(matches!(err, TokenError::SessionExpired { .. }), "{err}");
        assert!(err.to_string().contains("fly auth login"), "{err}");

        // A token passed on purpose is used as given: Fly decides.
        let token = FlyToken::discover_from(None, env_of(&[("FLY_API_TOKEN", &expired)]), None).unwrap();
        assert_eq!(token.authorization_header(), format!("FlyV1 {expired}"));
    }

    /// fly-go `tokens/tokens.go`, `normalized(true, true)`: GraphQL gets every token, macaroons
    /// first, under `FlyV1` as soon as there is a macaroon.
    #[test]
    fn graphql_gets_flyv1_with_macaroons_then_oauth() {
        let token = FlyToken::parse("FlyV1 fo1_oauthpart1234,fm2_macaroonpart", TokenSource::Flag).unwrap();
        assert_eq!(token.graphql_header(), "FlyV1 fm2_macaroonpart,fo1_oauthpart1234");
        let token = FlyToken::parse("fm2_a,fm2_b", TokenSource::Flag).unwrap();
        assert_eq!(token.graphql_header(), "FlyV1 fm2_a,fm2_b");
    }

    #[test]
    fn the_platform_api_gets_bearer_with_macaroons_then_oauth() {
        // fly-go tokens_test.go: GraphQL() puts macaroons first whatever the input order.
        let token = FlyToken::parse("FlyV1 fo1_oauthpart1234,fm2_macaroonpart", TokenSource::Flag).unwrap();
        assert_eq!(
            token.platform_header(),
            "Bearer fm2_macaroonpart,fo1_oauthpart1234"
        );
        let token = FlyToken::parse("fo1_onlyoauth", TokenSource::Flag).unwrap();
        assert_eq!(token.platform_header(), "Bearer fo1_onlyoauth");
        assert_eq!(token.graphql_header(), "Bearer fo1_onlyoauth");
        assert_eq!(token.oauth_fallback_header(), None);
    }

    /// fly-go `tokens/tokens_test.go`, `TestAuthorizationHeader`: any run of `Bearer`/`FlyV1`
    /// scheme words, in any order and case, is stripped; the Machines API and the registry get
    /// the macaroons alone when there are any (fly-go's `Flaps`/`Docker`, `normalized(false,
    /// ..)`), the platform API every macaroon then every other token (`GraphQL`,
    /// `normalized(true, ..)`), whatever order they came in.
    #[test]
    fn schemes_are_stripped_and_each_api_gets_the_tokens_fly_go_sends_it() {
        for raw in [
            "foobar",
            "Bearer foobar",
            "FlyV1 foobar",
            "Bearer FlyV1 foobar",
            "FlyV1 Bearer foobar",
            "BEARER FLYV1 foobar",
        ] {
            let token = FlyToken::parse(raw, TokenSource::Flag).unwrap();
            assert_eq!(token.registry_password(), "foobar", "{raw}");
            assert_eq!(token.authorization_header(), "Bearer foobar", "{raw}");
            assert_eq!(token.platform_header(), "Bearer foobar", "{raw}");
        }
        for (raw, machines, platform) in [
            ("fm2_foobar,foobar", "fm2_foobar", "fm2_foobar,foobar"),
            ("foobar,fm2_foobar", "fm2_foobar", "fm2_foobar,foobar"),
            ("fm2_foobar", "fm2_foobar", "fm2_foobar"),
        ] {
            let token = FlyToken::parse(raw, TokenSource::Flag).unwrap();
            assert_eq!(token.registry_password(), machines, "{raw}");
            assert_eq!(token.authorization_header(), format!("FlyV1 {machines}"), "{raw}");
            assert_eq!(token.platform_header(), format!("Bearer {platform}"), "{raw}");
        }
    }

    #[test]
    fn empty_values_fall_through_to_lower_sources() {
        let dir = config_dir_with("\"fo1_quoted_in_config\"");
        let env = env_of(&[("FLY_API_TOKEN", ""), ("FLY_ACCESS_TOKEN", "  ")]);
        let token = FlyToken::discover_from(Some(""), env, Some(dir.path())).unwrap();
        assert_eq!(token.registry_password(), "fo1_quoted_in_config");
    }

    #[test]
    fn missing_token_says_where_it_looked_and_how_to_make_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = FlyToken::discover_from(None, env_of(&[]), Some(dir.path())).unwrap_err();
        let text = err.to_string();
        for needle in [
            "--access-token",
            "FLY_API_TOKEN",
            "FLY_ACCESS_TOKEN",
            "FLY_AUTH_TOKEN",
            "config.yml",
            "fly tokens create deploy",
        ] {
            assert!(text.contains(needle), "{needle} missing from: {text}");
        }
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
    }

    #[test]
    fn deploy_token_with_prefix_gives_flyv1_header_and_bare_password() {
        let raw = "FlyV1 fm2_firstmacaroon,fm2_secondmacaroon";
        let token = FlyToken::parse(raw, TokenSource::Flag).unwrap();
        assert_eq!(
            token.authorization_header(),
            "FlyV1 fm2_firstmacaroon,fm2_secondmacaroon"
        );
        assert_eq!(token.registry_password(), "fm2_firstmacaroon,fm2_secondmacaroon");
        let creds = token.registry_credentials();
        assert_eq!(
            (creds.username.as_str(), creds.password.as_str()),
            ("x", "fm2_firstmacaroon,fm2_secondmacaroon")
        );
        assert_eq!(
            creds.source,
            CredentialSource::FlyToken(TokenSource::Flag.to_string())
        );
    }

    #[test]
    fn every_macaroon_prefix_is_recognised_with_or_without_scheme() {
        for raw in [
            "fm1r_readonlymacaroon",
            "fm1a_authmacaroon",
            "fm2_deploymacaroon",
            "Bearer FlyV1 fm2_deploymacaroon",
            "bearer fm1a_authmacaroon",
        ] {
            let token = FlyToken::parse(raw, TokenSource::Flag).unwrap();
            assert!(
                token.authorization_header().starts_with("FlyV1 fm"),
                "{raw} -> {}",
                token.authorization_header()
            );
            assert!(!token.registry_password().contains(' '), "{raw}");
        }
    }

    #[test]
    fn oauth_token_gives_bearer_header() {
        let token = FlyToken::parse("fo1_someoauthtoken", TokenSource::Flag).unwrap();
        assert_eq!(token.authorization_header(), "Bearer fo1_someoauthtoken");
        let token = FlyToken::parse("Bearer fo1_someoauthtoken", TokenSource::Flag).unwrap();
        assert_eq!(token.authorization_header(), "Bearer fo1_someoauthtoken");
        assert_eq!(token.registry_password(), "fo1_someoauthtoken");
    }

    #[test]
    fn macaroons_win_over_oauth_in_a_mixed_token() {
        let token = FlyToken::parse("fo1_oauthpart1234,fm2_macaroonpart", TokenSource::Flag).unwrap();
        assert_eq!(token.authorization_header(), "FlyV1 fm2_macaroonpart");
    }

    #[test]
    fn a_bare_scheme_is_an_empty_token() {
        let err = FlyToken::parse("FlyV1 ", TokenSource::Env("FLY_API_TOKEN")).unwrap_err();
        assert!(err.to_string().contains("FLY_API_TOKEN"), "{err}");
    }

    #[test]
    fn tokens_are_registered_for_redaction_and_hidden_from_debug() {
        let token = FlyToken::parse("FlyV1 fm2_secretpartone,fm2_secretparttwo", TokenSource::Flag).unwrap();
        let shown = crate::error::redacted("sent fm2_secretparttwo to the API");
        assert!(!shown.contains("fm2_secretparttwo"), "{shown}");
        assert!(!format!("{token:?}").contains("fm2_"));
    }

    #[test]
    fn config_file_reader_handles_quotes_comments_and_other_keys() {
        assert_eq!(
            config_access_token("access_token: 'fo1_abc'\n").as_deref(),
            Some("fo1_abc")
        );
        assert_eq!(
            config_access_token("x: 1\naccess_token: fo1_abc # note\n").as_deref(),
            Some("fo1_abc")
        );
        assert_eq!(config_access_token("  access_token: nested\n"), None);
        assert_eq!(config_access_token("access_token: \"\"\n"), None);
        assert_eq!(config_access_token("metrics_token: fo1_x\n"), None);
    }
}
