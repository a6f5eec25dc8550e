//! Manifests: PUT (with `Content-Type` = the manifest's media type, bytes stored as sent) and
//! GET (tag → digest resolution, read-back).

use super::auth::Scope;
use super::blob::sha256_digest;
use super::client::{RegistryClient, Request, header_str};
use super::error::RegistryError;
use bytes::Bytes;
use reqwest::header::{self, HeaderName};
use reqwest::{Method, StatusCode};

/// Media types a manifest read accepts: single-platform images and indexes, Docker and OCI.
pub const MANIFEST_MEDIA_TYPES: [&str; 4] = [
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
];

/// A manifest as the registry holds it.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub media_type: String,
    pub digest: String,
}

impl RegistryClient {
    /// Store `bytes` as the manifest `tag_or_digest` of `repository`; returns its digest.
    /// Every blob it names must already be in the repository.
    pub async fn put_manifest(
        &self,
        repository: &str,
        tag_or_digest: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<String, RegistryError> {
        let digest = sha256_digest(&bytes);
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
            && stored != digest
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
        let req = Request {
            method: Method::GET,
            url: self.url(&format!("{repository}/manifests/{tag_or_digest}")),
            scope: Scope::pull(repository),
            headers: vec![(header::ACCEPT, MANIFEST_MEDIA_TYPES.join(", "))],
            body: None,
            operation: format!("reading manifest {}/{repository}:{tag_or_digest}", self.registry),
        };
        let response = self.send(&req).await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            _ => return Err(self.status_error(req.operation, response, None).await),
        }
        let media_type = header_str(&response, header::CONTENT_TYPE).unwrap_or_default();
        let bytes = self.body(response, &req.operation).await?;
        let digest = sha256_digest(&bytes);
        if tag_or_digest.starts_with("sha256:") && tag_or_digest != digest {
            return Err(RegistryError::Protocol {
                operation: req.operation,
                message: format!("the registry returned content with digest {digest}"),
            });
        }
        Ok(Some(Manifest { media_type, digest }))
    }
}
