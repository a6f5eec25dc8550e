//! Manifest stage: the config blob byte for byte, then the manifest, put under the tag only
//! once every blob is in the repository (what makes a failed push leave the tag alone).

use super::{BlobStore, PushError, Pushed, PushedLayer, Pusher};
use crate::blob::{self, Algorithm};
use crate::progress::Event;
use bytes::Bytes;

/// `--format`: the manifest (and media types) pushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ManifestFormat {
    /// Docker image manifest v2 schema 2 (what registry.fly.io and every runtime accept).
    #[default]
    Docker,
    /// OCI image manifest (needed for zstd layers).
    Oci,
}

impl ManifestFormat {
    fn manifest_media_type(self) -> &'static str {
        match self {
            ManifestFormat::Docker => "application/vnd.docker.distribution.manifest.v2+json",
            ManifestFormat::Oci => "application/vnd.oci.image.manifest.v1+json",
        }
    }

    fn config_media_type(self) -> &'static str {
        match self {
            ManifestFormat::Docker => "application/vnd.docker.container.image.v1+json",
            ManifestFormat::Oci => "application/vnd.oci.image.config.v1+json",
        }
    }

    /// The layer media type, or None when this format cannot carry the algorithm.
    pub(super) fn layer_media_type(self, algorithm: Algorithm) -> Option<&'static str> {
        match (self, algorithm) {
            (ManifestFormat::Docker, Algorithm::Gzip) => {
                Some("application/vnd.docker.image.rootfs.diff.tar.gzip")
            }
            (ManifestFormat::Docker, Algorithm::Zstd) => None,
            (ManifestFormat::Oci, Algorithm::Gzip) => Some("application/vnd.oci.image.layer.v1.tar+gzip"),
            (ManifestFormat::Oci, Algorithm::Zstd) => Some("application/vnd.oci.image.layer.v1.tar+zstd"),
        }
    }
}

impl<S: BlobStore> Pusher<S> {
    /// Config blob, then the manifest, then the tag.
    pub(super) async fn commit(&self, config: Bytes, layers: Vec<PushedLayer>) -> Result<Pushed, PushError> {
        let plan = &self.plan;
        let config_digest = blob::sha256_of(&config);
        let config_size = config.len() as u64;
        let have_config = self
            .store
            .blob_exists(&plan.repository, &config_digest)
            .await
            .map_err(
                self.registry_error(format!("checking for config {config_digest} in {}", plan.name())),
            )?;
        if have_config.is_none() {
            let (digest, _) = self
                .store
                .push_blob_bytes(&plan.repository, config)
                .await
                .map_err(
                    self.registry_error(format!("uploading config {config_digest} to {}", plan.name())),
                )?;
            debug_assert_eq!(digest, config_digest);
        }
        let manifest = manifest_json(plan.format, &config_digest, config_size, &layers);
        let media_type = plan.format.manifest_media_type();
        let manifest_digest = blob::sha256_of(&manifest);
        let target = plan.tag.clone().unwrap_or_else(|| manifest_digest.clone());
        let stored = self
            .store
            .put_manifest(&plan.repository, &target, media_type, manifest)
            .await
            .map_err(self.registry_error(format!("putting the manifest {target} in {}", plan.name())))?;
        let reference = format!("{}@{stored}", plan.name());
        self.reporter.emit(Event::Pushed {
            reference: reference.clone(),
            tag: plan.tag.clone(),
        });
        Ok(Pushed {
            reference,
            manifest_digest: stored,
            config_digest,
            layers,
        })
    }
}

/// Manifest JSON, fields in the order the specs list them.
fn manifest_json(
    format: ManifestFormat,
    config_digest: &str,
    config_size: u64,
    layers: &[PushedLayer],
) -> Bytes {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Manifest<'a> {
        schema_version: u32,
        media_type: &'a str,
        config: Descriptor<'a>,
        layers: Vec<Descriptor<'a>>,
    }
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Descriptor<'a> {
        media_type: &'a str,
        size: u64,
        digest: &'a str,
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: format.manifest_media_type(),
        config: Descriptor {
            media_type: format.config_media_type(),
            size: config_size,
            digest: config_digest,
        },
        layers: layers
            .iter()
            .map(|layer| Descriptor {
                media_type: format
                    .layer_media_type(layer.algorithm)
                    .expect("blobs are chosen for the format"),
                size: layer.size,
                digest: &layer.digest,
            })
            .collect(),
    };
    Bytes::from(serde_json::to_vec_pretty(&manifest).expect("a manifest serialises"))
}
