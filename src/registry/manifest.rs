//! Manifests: PUT (with `Content-Type` = the manifest's media type, bytes stored as sent) and
//! GET (tag → digest resolution, read-back).

use super::auth::Scope;
use super::client::{RegistryClient, Request, header_str};
use super::digest::Digest;
use super::error::RegistryError;
use bytes::Bytes;
pub use oci_spec::image::MediaType;
use reqwest::header::{self, HeaderName};
use reqwest::{Method, StatusCode};

/// Docker's image manifest v2 schema 2 media types. oci-spec names only OCI's (Docker's parse
/// as `MediaType::Other`); the JSON shapes are the same, so its manifest types serve both.
pub mod docker {
    use super::MediaType;

    pub fn manifest() -> MediaType {
        MediaType::Other("application/vnd.docker.distribution.manifest.v2+json".into())
    }

    pub fn manifest_list() -> MediaType {
        MediaType::Other("application/vnd.docker.distribution.manifest.list.v2+json".into())
    }

    pub fn config() -> MediaType {
        MediaType::Other("application/vnd.docker.container.image.v1+json".into())
    }

    /// An uncompressed layer tar (what `docker save` layers are).
    pub fn layer() -> MediaType {
        MediaType::Other("application/vnd.docker.image.rootfs.diff.tar".into())
    }

    pub fn layer_gzip() -> MediaType {
        MediaType::Other("application/vnd.docker.image.rootfs.diff.tar.gzip".into())
    }
}

/// Media types a manifest read accepts: single-platform images and indexes, Docker and OCI.
fn accepted_manifest_types() -> [MediaType; 4] {
    [
        docker::manifest(),
        MediaType::ImageManifest,
        docker::manifest_list(),
        MediaType::ImageIndex,
    ]
}

/// A manifest as the registry holds it.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub media_type: MediaType,
    pub digest: Digest,
    /// As stored (what a pusher learns layers from).
    pub bytes: Bytes,
}

impl RegistryClient {
    /// Store `bytes` as the manifest `tag_or_digest` of `repository`; returns its digest.
    /// Every blob it names must already be in the repository.
    pub async fn put_manifest(
        &self,
        repository: &str,
        tag_or_digest: &str,
        media_type: &MediaType,
        bytes: Bytes,
    ) -> Result<Digest, RegistryError> {
        let digest = Digest::sha256_of(&bytes);
        self.manifest_sent
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let req = Request {
            method: Method::PUT,
            url: self.url(&format!("{repository}/manifests/{tag_or_digest}")),
            scope: Scope::push(repository),
            headers: vec![
                (header::CONTENT_TYPE, media_type.to_string()),
                (header::CONTENT_LENGTH, bytes.len().to_string()),
            ],
            body: Some(bytes),
            operation: format!(
                "storing manifest {digest} as {}/{repository}:{tag_or_digest}",
                self.registry
            ),
        };
        let response = self.send(&req).await?;
        if response.status() != StatusCode::CREATED && response.status() != StatusCode::OK {
            let hint = match response.status().as_u16() {
                400 => Some(
                    "MANIFEST_BLOB_UNKNOWN means a layer or the config is missing from the \
                     repository; MANIFEST_INVALID that the registry rejects the manifest's format"
                        .to_string(),
                ),
                _ => None,
            };
            return Err(self.status_error(req.operation, response, hint).await);
        }
        if let Some(stored) = header_str(&response, HeaderName::from_static("docker-content-digest"))
            && digest != stored.as_str()
        {
            return Err(RegistryError::Protocol {
                operation: req.operation,
                message: format!("the registry stored the manifest as {stored}, not as sent"),
            });
        }
        Ok(digest)
    }

    /// The manifest `tag_or_digest` of `repository`, or `None` when there is none.
    pub async fn get_manifest(
        &self,
        repository: &str,
        tag_or_digest: &str,
    ) -> Result<Option<Manifest>, RegistryError> {
        self.get_manifest_scoped(repository, tag_or_digest, Scope::pull(repository))
            .await
    }

    /// `get_manifest` with the token scope given: a push reading its own target repository
    /// asks with the push scope, so that one token serves the whole push.
    pub async fn get_manifest_scoped(
        &self,
        repository: &str,
        tag_or_digest: &str,
        scope: Scope,
    ) -> Result<Option<Manifest>, RegistryError> {
        let req = Request {
            method: Method::GET,
            url: self.url(&format!("{repository}/manifests/{tag_or_digest}")),
            scope,
            headers: vec![(
                header::ACCEPT,
                accepted_manifest_types().map(|t| t.to_string()).join(", "),
            )],
            body: None,
            operation: format!("reading manifest {}/{repository}:{tag_or_digest}", self.registry),
        };
        let response = self.send(&req).await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            _ => return Err(self.status_error(req.operation, response, None).await),
        }
        let content_type = header_str(&response, header::CONTENT_TYPE).unwrap_or_default();
        // The type without parameters (`; charset=...`): a manifest's, or the answer is no
        // manifest (an HTML page from something that is not a registry, say), whose digest
        // must not be taken for the image's.
        let bare = content_type.split(';').next().unwrap_or_default().trim();
        let media_type = MediaType::from(bare);
        if !accepted_manifest_types().contains(&media_type) {
            return Err(RegistryError::Protocol {
                operation: req.operation,
                message: format!(
                    "the answer is not a manifest (Content-Type {content_type:?}; expected one of {})",
                    accepted_manifest_types().map(|t| t.to_string()).join(", ")
                ),
            });
        }
        let bytes = self.body(response, &req.operation).await?;
        let digest = Digest::sha256_of(&bytes);
        if tag_or_digest.parse::<Digest>().is_ok_and(|asked| asked != digest) {
            return Err(RegistryError::Protocol {
                operation: req.operation,
                message: format!("the registry returned content with digest {digest}"),
            });
        }
        Ok(Some(Manifest {
            media_type,
            digest,
            bytes,
        }))
    }
}
