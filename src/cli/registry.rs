//! The one way every command reaches a registry (push, deploy, rollout's tag lookup and the
//! hidden `registry` debug command): the same flags, the same credential lookup, the same
//! client settings; each command then adds only its upload tuning.

use crate::fly::FlyToken;
use crate::fly::appconfig::units::parse_go_duration;
use crate::fly::token::TokenError;
use crate::registry::auth::CredentialLookup;
use crate::registry::client::ClientOptions;
use crate::registry::reference::default_registry_host;
use anyhow::Context;
use clap::Args;
use std::time::Duration;

/// How to reach the registry, shared by every command that talks to one.
#[derive(Args, Clone, Default)]
#[command(next_help_heading = "Registry")]
pub struct RegistryOptions {
    /// Registry credentials as USER:PASSWORD. Default: for registry.fly.io the Fly token (user
    /// `x`), else REGISTRY_AUTH_FILE, $DOCKER_CONFIG/config.json, ~/.docker/config.json
    /// (`auths`, `credHelpers` and `credsStore`, as docker reads them).
    #[arg(
        long,
        value_name = "USER:PASSWORD",
        env = "NIXFLY_REGISTRY_CREDS",
        hide_env_values = true
    )]
    pub creds: Option<String>,
    /// Talk plain HTTP to the registry (loopback hosts always do). Never use it over a network
    /// you do not control.
    #[arg(long, alias = "insecure-registry")]
    pub plain_http: bool,
    /// How long a registry connection may stay idle (answering nothing, taking no data) before
    /// the request is abandoned and retried (e.g. 30s, 5m). Default 2m.
    #[arg(
        long,
        value_name = "DURATION",
        env = "NIXFLY_REGISTRY_TIMEOUT",
        value_parser = parse_go_duration
    )]
    pub registry_timeout: Option<Duration>,
}

const FLY_REGISTRY_PASSWORD: &str = "the Fly registry takes the Fly token as its password";

/// By hand, so that a `{:?}` of the command line never prints the password.
impl std::fmt::Debug for RegistryOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryOptions")
            .field("creds", &self.creds.as_ref().map(|_| "[REDACTED]"))
            .field("plain_http", &self.plain_http)
            .field("registry_timeout", &self.registry_timeout)
            .finish()
    }
}

impl RegistryOptions {
    /// Client settings for `registry`, credentials included; no network (a Docker credential
    /// helper may run). `fly_token` is asked for only when the registry is Fly's and no
    /// `--creds` were given: the Fly token is the password there and nowhere else.
    pub fn client_options(
        &self,
        registry: &str,
        fly_token: impl FnOnce() -> anyhow::Result<FlyToken>,
    ) -> anyhow::Result<ClientOptions> {
        let fly_registry_host = default_registry_host();
        let mut no_fly_token = None;
        let fly_credentials = if self.creds.is_none() && registry.eq_ignore_ascii_case(&fly_registry_host) {
            match fly_token() {
                Ok(token) => Some(token.registry_credentials()),
                // No Fly token anywhere: credentials saved for the host (`docker login
                // registry.fly.io -u x`, a CI login action) may serve, as they do for docker
                // and skopeo.
                Err(err) if matches!(err.downcast_ref(), Some(TokenError::Missing { .. })) => {
                    no_fly_token = Some(err);
                    None
                }
                Err(err) => return Err(err.context(FLY_REGISTRY_PASSWORD)),
            }
        } else {
            None
        };
        let lookup = CredentialLookup {
            flag: self.creds.as_deref(),
            auth_files: CredentialLookup::standard_auth_files(),
            fly_credentials,
            fly_registry_host,
        };
        let credentials = lookup
            .find(registry)
            .with_context(|| format!("finding credentials for registry {registry}"))?;
        if let (None, Some(err)) = (&credentials, no_fly_token) {
            return Err(err.context(FLY_REGISTRY_PASSWORD));
        }
        let defaults = ClientOptions::default();
        Ok(ClientOptions {
            credentials,
            plain_http: self.plain_http,
            idle_timeout: super::push::positive(
                "--registry-timeout",
                self.registry_timeout.unwrap_or(defaults.idle_timeout),
            )?,
            ..defaults
        })
    }
}
