//! Manifest stage: the config blob byte for byte, then the manifest, put under the tag only
//! once every blob is in the repository (what makes a failed push leave the tag alone).

use super::{BlobStore, PushError, Pushed, PushedLayer, Pusher};
use crate::blob::Algorithm;
use crate::progress::Event;
use crate::registry::Digest;
use crate::registry::manifest::{MediaType, docker};
use bytes::Bytes;
use oci_spec::image::{Descriptor, ImageManifest, ImageManifestBuilder};

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
    fn manifest_media_type(self) -> MediaType {
        match self {
            ManifestFormat::Docker => docker::manifest(),
            ManifestFormat::Oci => MediaType::ImageManifest,
        }
    }

    fn config_media_type(self) -> MediaType {
        match self {
            ManifestFormat::Docker => docker::config(),
            ManifestFormat::Oci => MediaType::ImageConfig,
        }
    }

    /// The layer media type, or None when this format cannot carry the algorithm.
    pub(super) fn layer_media_type(self, algorithm: Algorithm) -> Option<MediaType> {
        match (self, algorithm) {
            (ManifestFormat::Docker, Algorithm::Gzip) => Some(docker::layer_gzip()),
            (ManifestFormat::Docker, Algorithm::Zstd) => None,
            (ManifestFormat::Oci, Algorithm::Gzip) => Some(MediaType::ImageLayerGzip),
            (ManifestFormat::Oci, Algorithm::Zstd) => Some(MediaType::ImageLayerZstd),
        }
    }
}

impl<S: BlobStore> Pusher<S> {
    /// Config blob, then the manifest, then the tag.
    pub(super) async fn commit(&self, config: Bytes, layers: Vec<PushedLayer>) -> Result<Pushed, PushError> {
        let spec = &self.spec;
        let config_digest = Digest::sha256_of(&config);
        let config_size = config.len() as u64;
        let have_config = self.blob_present(&config_digest, "config").await?;
        if have_config.is_none() {
            let stored = self
                .store
                .push_blob_bytes(&spec.repository, config)
                .await
                .map_err(
                    self.registry_error(format!("uploading config {config_digest} to {}", spec.name())),
                )?;
            debug_assert_eq!(stored.digest, config_digest);
        }
        let manifest = manifest(spec.format, &config_digest, config_size, &layers);
        let manifest = Bytes::from(serde_json::to_vec_pretty(&manifest).expect("a manifest serialises"));
        let manifest_digest = Digest::sha256_of(&manifest);
        let target = spec
            .tag
            .as_ref()
            .map_or_else(|| manifest_digest.to_string(), |tag| tag.to_string());
        let stored = self
            .store
            .put_manifest(
                &spec.repository,
                &target,
                &spec.format.manifest_media_type(),
                manifest,
            )
            .await
            .map_err(self.registry_error(format!("putting the manifest {target} in {}", spec.name())))?;
        let reference = crate::registry::reference::PinnedReference {
            registry: spec.registry.clone(),
            repository: spec.repository.clone(),
            digest: stored.clone(),
        };
        self.reporter.emit(Event::Pushed {
            reference: reference.to_string(),
            tag: spec.tag.as_ref().map(|tag| tag.to_string()),
        });
        Ok(Pushed {
            reference,
            manifest_digest: stored,
            config_digest,
            layers,
        })
    }
}

/// The image manifest: oci-spec's, whose JSON shape Docker v2s2 shares (with Docker's media
/// types). Serialised as the registry will store it, so its digest is the manifest digest.
fn manifest(
    format: ManifestFormat,
    config_digest: &Digest,
    config_size: u64,
    layers: &[PushedLayer],
) -> ImageManifest {
    let layers: Vec<Descriptor> = layers
        .iter()
        .map(|layer| {
            let media_type = format
                .layer_media_type(layer.algorithm)
                .expect("blobs are chosen for the format");
            Descriptor::new(media_type, layer.size, layer.digest.to_oci())
        })
        .collect();
    ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(format.manifest_media_type())
        .config(Descriptor::new(
            format.config_media_type(),
            config_size,
            config_digest.to_oci(),
        ))
        .layers(layers)
        .build()
        .expect("every required manifest field is set")
}
