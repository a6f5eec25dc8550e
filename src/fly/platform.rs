//! The platform API (`api.fly.io`): release records, which `fly releases` and the dashboard list.

use super::api::{ApiError, FlyHttp, Replay, Request};
use super::types::Release;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

/// How a release ended (or that it is under way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseStatus {
    Running,
    Complete,
    Failed,
    Interrupted,
}

impl ReleaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseStatus::Running => "running",
            ReleaseStatus::Complete => "complete",
            ReleaseStatus::Failed => "failed",
            ReleaseStatus::Interrupted => "interrupted",
        }
    }
}

/// What the new release records: the strategy is upper-case on the wire (`ROLLING`, ...);
/// `definition` is the app config as a JSON object (flyctl `uiex.CreateReleaseRequest`).
pub struct NewRelease<'a> {
    pub app: &'a str,
    pub image: &'a str,
    pub strategy: &'a str,
    pub definition: Value,
}

#[derive(Deserialize)]
struct ReleaseEnvelope {
    release: Release,
}

#[derive(Clone)]
pub struct PlatformApi {
    http: FlyHttp,
    /// The same host under the header fly-go's logs client sends.
    logs: Option<FlyHttp>,
}

/// One line of an app's logs (fly-go `LogEntry`; Go matches the JSON keys in any case).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct LogEntry {
    #[serde(default, alias = "Timestamp")]
    pub timestamp: String,
    #[serde(default, alias = "Message")]
    pub message: String,
}

#[derive(Deserialize)]
struct LogPage {
    #[serde(default)]
    data: Vec<LogData>,
    #[serde(default)]
    meta: LogMeta,
}

#[derive(Deserialize)]
struct LogData {
    #[serde(default)]
    attributes: LogEntry,
}

#[derive(Default, Deserialize)]
struct LogMeta {
    #[serde(default)]
    next_token: String,
}

impl PlatformApi {
    pub fn new(http: FlyHttp) -> Self {
        PlatformApi { http, logs: None }
    }

    /// With a client for the app logs (`FlyHttp::bubblegum` on the same host).
    pub fn with_logs(self, logs: FlyHttp) -> Self {
        PlatformApi {
            logs: Some(logs),
            ..self
        }
    }

    /// The lines machine `instance` of `app` logged after `next_token` ("" for the start), and
    /// the token to ask from next ("" when there is nothing new): fly-go `GetAppLogs`
    /// (`resource_logs.go`), `GET /api/v1/apps/{app}/logs?next_token=..&instance=..`, which
    /// flyctl polls for the release command's logs (`logs/polling.go`). None without a logs
    /// client.
    pub async fn app_logs(
        &self,
        app: &str,
        instance: &str,
        next_token: &str,
    ) -> Option<Result<(Vec<LogEntry>, String), ApiError>> {
        let logs = self.logs.as_ref()?;
        let page = logs
            .send_json::<LogPage>(Request {
                method: Method::GET,
                path: &["api", "v1", "apps", app, "logs"],
                query: &[
                    ("next_token", next_token.to_string()),
                    ("instance", instance.to_string()),
                ],
                body: None,
                nonce: None,
                replay: Replay::Safe,
            })
            .await;
        Some(page.map(|page| {
            (
                page.data.into_iter().map(|d| d.attributes).collect(),
                page.meta.next_token,
            )
        }))
    }

    pub async fn create_release(&self, new: NewRelease<'_>) -> Result<Release, ApiError> {
        let envelope: ReleaseEnvelope = self
            .http
            .send_json(Request {
                method: Method::POST,
                path: &["api", "v1", "releases"],
                query: &[],
                body: Some(json!({
                    "app_name": new.app,
                    // An int64 in flyctl's request, 0 for a deploy of a ready image (there
                    // is no remote build to point at).
                    "build_id": 0,
                    "definition": new.definition,
                    "image": new.image,
                    "strategy": new.strategy.to_ascii_uppercase(),
                })),
                nonce: None,
                replay: Replay::Unsafe,
            })
            .await?;
        Ok(envelope.release)
    }

    /// The app config of the app's current release (`configDefinition`), through the GraphQL
    /// query flyctl's `fly deploy` makes without a fly.toml (`internal/appconfig/remote.go`,
    /// `getAppV2ConfigFromReleases`); None when the app has no release with one.
    pub async fn current_release_config(&self, app: &str) -> anyhow::Result<Option<Value>> {
        const QUERY: &str = "query FlyctlConfigCurrentRelease($appName: String!) { \
                             app(name: $appName) { currentReleaseUnprocessed { configDefinition } } }";
        let answer: Value = self
            .http
            .for_graphql()
            .send_json(Request {
                method: Method::POST,
                path: &["graphql"],
                query: &[],
                body: Some(json!({"query": QUERY, "variables": {"appName": app}})),
                nonce: None,
                // A query: asking twice changes nothing.
                replay: Replay::Safe,
            })
            .await?;
        if let Some(errors) = answer["errors"].as_array().filter(|e| !e.is_empty()) {
            let messages: Vec<&str> = errors.iter().filter_map(|e| e["message"].as_str()).collect();
            anyhow::bail!("the Fly GraphQL API answered: {}", messages.join("; "));
        }
        let definition = &answer["data"]["app"]["currentReleaseUnprocessed"]["configDefinition"];
        Ok(definition.is_object().then(|| definition.clone()))
    }

    /// Mark the release. A final status carries fly-go's `ReleaseMetadata`
    /// (`{"post_deployment_info": {"error": ...}}`, `types.go`) with the deploy's error, empty
    /// unless it failed, as flyctl sends it (`machines_deploymachinesapp.go`); `running` carries
    /// none. Its `flyctl_version` is left out: nixfly is not flyctl.
    pub async fn set_status(
        &self,
        release_id: &str,
        status: ReleaseStatus,
        error: Option<&str>,
    ) -> Result<(), ApiError> {
        let metadata = match status {
            ReleaseStatus::Running => Value::Null,
            _ => json!({"post_deployment_info": {"error": error.unwrap_or_default()}}),
        };
        self.http
            .send(Request {
                method: Method::PATCH,
                path: &["api", "v1", "releases", release_id],
                query: &[],
                body: Some(json!({"status": status.as_str(), "metadata": metadata})),
                nonce: None,
                replay: Replay::Safe,
            })
            .await
            .map(drop)
    }
}
