//! Registry errors: what failed, where (registry, repository, digest), what the registry said,
//! and how to fix it.

use std::fmt;

/// One entry of the registry's `{"errors":[...]}` body. Codes are kept as strings: registries
/// send legacy and vendor codes beyond the spec's list.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub struct ApiError {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub detail: Option<serde_json::Value>,
}

/// Parse an error body leniently: anything unexpected yields no entries rather than a failure.
pub fn parse_api_errors(body: &[u8]) -> Vec<ApiError> {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        errors: Vec<ApiError>,
    }
    serde_json::from_slice::<Body>(body)
        .map(|b| b.errors)
        .unwrap_or_default()
}

fn describe_api_errors(errors: &[ApiError]) -> String {
    errors
        .iter()
        .map(|e| {
            let mut s = match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{}: {}", e.code, e.message),
                (false, true) => e.code.clone(),
                _ => e.message.clone(),
            };
            if let Some(detail) = e.detail.as_ref().filter(|d| !d.is_null()) {
                let detail = match detail {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                // Registries echo long detail objects; keep messages readable.
                let detail: String = detail.chars().take(300).collect();
                s.push_str(&format!(" ({detail})"));
            }
            s
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A response the registry gave that ends an operation.
#[derive(Debug)]
pub struct StatusError {
    /// What was being done, naming the registry, repository and digest or tag.
    pub operation: String,
    pub status: u16,
    pub errors: Vec<ApiError>,
    /// A short body excerpt when the body was not the standard error JSON.
    pub body_excerpt: Option<String>,
    pub hint: Option<String>,
}

impl fmt::Display for StatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reason = reqwest::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        write!(
            f,
            "{}: the registry answered {} {}",
            self.operation, self.status, reason
        )?;
        if !self.errors.is_empty() {
            write!(f, ": {}", describe_api_errors(&self.errors))?;
        } else if let Some(body) = &self.body_excerpt {
            write!(f, ": {body}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Status(Box<StatusError>),
    #[error("{operation}: cannot reach the registry{hint}")]
    Transport {
        operation: String,
        hint: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{operation}: {message}")]
    Protocol { operation: String, message: String },
    #[error(
        "{operation}: {registry} neither answered nor took data for {seconds} s, after retries; \
         is it overloaded or unreachable? (--registry-timeout / NIXFLY_REGISTRY_TIMEOUT sets the limit)"
    )]
    Timeout {
        operation: String,
        registry: String,
        seconds: u64,
    },
    #[error(transparent)]
    Auth(#[from] super::auth::AuthError),
    #[error(
        "uploading to {registry}/{repository}: cannot keep the blob in a temp file in {} (set \
         TMPDIR to a directory with room)", dir.display()
    )]
    Spill {
        registry: String,
        repository: String,
        dir: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "uploading to {registry}/{repository}: the registry lost the upload after {received} bytes \
         were sent and kept only {kept} of them, but only bytes from {window_start} on are still \
         in memory (the resend window is {window} bytes); the blob must be generated again from \
         its source"
    )]
    UploadLost {
        registry: String,
        repository: String,
        received: u64,
        kept: u64,
        window_start: u64,
        window: u64,
    },
    #[error(
        "uploading to {registry}/{repository}: the data has digest {actual} but {expected} was \
         expected; nothing was committed"
    )]
    DigestMismatch {
        registry: String,
        repository: String,
        expected: super::digest::Digest,
        actual: super::digest::Digest,
    },
    #[error("uploading to {registry}/{repository}: reading the blob's data failed")]
    Source {
        registry: String,
        repository: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "uploading to {registry}/{repository}: gave up after {attempts} attempts; the last failure \
         was: {last}"
    )]
    UploadGaveUp {
        registry: String,
        repository: String,
        attempts: u32,
        last: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_parse_leniently_and_render_code_message_detail() {
        let body =
            br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:ab"},
            {"code":"VENDOR_SPECIFIC"},{"message":"no code"}]}"#;
        let errors = parse_api_errors(body);
        assert_eq!(errors.len(), 3);
        let err = StatusError {
            operation: "HEAD blob sha256:ab in 127.0.0.1:5000/app".into(),
            status: 404,
            errors,
            body_excerpt: None,
            hint: Some("push the blob first".into()),
        };
        assert_eq!(
            err.to_string(),
            "HEAD blob sha256:ab in 127.0.0.1:5000/app: the registry answered 404 Not Found: \
             BLOB_UNKNOWN: blob unknown to registry (sha256:ab); VENDOR_SPECIFIC; no code; push the blob first"
        );
        assert!(parse_api_errors(b"<html>oops</html>").is_empty());
        assert!(parse_api_errors(br#"{"errors":"nope"}"#).is_empty());
    }
}
