//! Lookup stage: what the registry already has, known before a layer is read. The candidates
//! for a layer come from the source (a stored or reproducible blob), the local cache, and the
//! images the registry already holds (the target tag's current image, `--reuse-from`, on deploy
//! the image the app runs now: each manifest's `layers[i]` is the blob of its config's
//! `rootfs.diff_ids[i]`), so that a fresh CI runner with an empty cache still reads and
//! compresses nothing the registry has. The registry is asked with HEAD, then offered a
//! cross-repository mount from a repository known to hold the blob; a manifest that names a
//! blob the registry lost only costs that HEAD, and the layer is uploaded.

use super::{BlobStore, LOOKUP_PARALLEL, PushError, PushSpec, PushedLayer, Pusher};
use crate::blob::Algorithm;
use crate::image::{BlobEncoding, KnownLayer};
use crate::progress::{Event, LayerOutcome, Reporter};
use crate::registry::Digest;
use crate::registry::error::RegistryError;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;
use std::collections::HashMap;

/// Image indexes are followed this far (a multi-platform tag lists a handful of images).
const INDEX_ENTRIES: usize = 8;

/// diff_id → compressed blob, learned from manifests and configs in the registry, with the
/// repositories each blob was seen in (for mounting into the target repository) and the blobs
/// a HEAD found in the target repository.
#[derive(Default)]
pub(super) struct RegistryBlobs {
    by_diff_id: HashMap<Digest, Candidate>,
    holders: HashMap<Digest, Vec<String>>,
    /// Blobs a HEAD found in the target repository, with the size it gave.
    present: HashMap<Digest, u64>,
}

impl RegistryBlobs {
    /// Read the target tag's image and every `reuse_from` image. Nothing here is required for
    /// the push to succeed, so a failure is a warning and the push goes on without it; except
    /// a registry that cannot be connected to at all, which no push to it survives: that is
    /// the push's error, before any layer is read.
    pub(super) async fn learn<S: BlobStore>(
        store: &S,
        spec: &PushSpec,
        reporter: &Reporter,
    ) -> Result<Self, super::PushError> {
        let mut images: Vec<(String, String)> = spec
            .tag
            .iter()
            .map(|tag| (spec.repository.clone(), tag.to_string()))
            .collect();
        images.extend(spec.reuse_from.iter().cloned());
        images.dedup();
        let mut blobs = RegistryBlobs::default();
        for (repository, reference) in images {
            if let Err(err) = blobs
                .learn_image(store, spec, &repository, &reference, true)
                .await
            {
                if repository == spec.repository
                    && matches!(&err, RegistryError::Transport { source, .. } if source.is_connect())
                {
                    return Err(super::PushError::Registry {
                        what: "looking up what the registry has, before reading any layer".into(),
                        source: Box::new(err),
                    });
                }
                reporter.warn(format!(
                    "not reusing layers of {}/{repository}:{reference}: {}",
                    spec.registry,
                    crate::error::chain_text(&err)
                ));
            }
        }
        // HEAD them all at once now: a stream asks about its layers one at a time as they pass,
        // and must not wait a round trip for each.
        let digests: Vec<Digest> = blobs.by_diff_id.values().map(|c| c.digest.clone()).collect();
        let found: Vec<Option<(Digest, u64)>> = futures::stream::iter(digests)
            .map(|digest| async move {
                match store.blob_exists(&spec.repository, &digest).await {
                    Ok(Some(size)) => Some((digest, size)),
                    // Not there (or not answerable now): the layer's own lookup asks again.
                    Ok(None) | Err(_) => None,
                }
            })
            .buffer_unordered(LOOKUP_PARALLEL)
            .collect()
            .await;
        blobs.present = found.into_iter().flatten().collect();
        if !blobs.by_diff_id.is_empty() {
            reporter.info(format!(
                "the registry's images have blobs for {} layer(s), {} of them in {}",
                blobs.by_diff_id.len(),
                blobs.present.len(),
                spec.name()
            ));
        }
        Ok(blobs)
    }

    /// One manifest: an image's layers paired with its config's diff_ids, or an index's
    /// images (followed once, not recursively).
    async fn learn_image<S: BlobStore>(
        &mut self,
        store: &S,
        spec: &PushSpec,
        repository: &str,
        reference: &str,
        follow_index: bool,
    ) -> Result<(), crate::registry::error::RegistryError> {
        let target = repository == spec.repository;
        let Some((_, bytes)) = store.get_manifest(repository, reference, target).await? else {
            return Ok(());
        };
        let Ok(manifest) = serde_json::from_slice::<Value>(&bytes) else {
            return Ok(());
        };
        if let Some(entries) = manifest["manifests"].as_array() {
            if follow_index {
                for entry in entries.iter().take(INDEX_ENTRIES) {
                    if let Some(digest) = entry["digest"].as_str() {
                        Box::pin(self.learn_image(store, spec, repository, digest, false)).await?;
                    }
                }
            }
            return Ok(());
        }
        let (Some(config), Some(layers)) = (
            manifest["config"]["digest"].as_str(),
            manifest["layers"].as_array(),
        ) else {
            return Ok(());
        };
        let Ok(config) = config.parse::<Digest>() else {
            return Ok(());
        };
        let Some(config) = store.get_config(repository, &config, target).await? else {
            return Ok(());
        };
        let Ok(config) = serde_json::from_slice::<Value>(&config) else {
            return Ok(());
        };
        let Some(diff_ids) = config["rootfs"]["diff_ids"].as_array() else {
            return Ok(());
        };
        // The pairing only holds when every layer has its diff_id (no foreign or empty extras).
        if diff_ids.len() != layers.len() {
            return Ok(());
        }
        for (layer, diff_id) in layers.iter().zip(diff_ids) {
            let (Some(digest), Some(size), Some(media_type), Some(diff_id)) = (
                layer["digest"].as_str(),
                layer["size"].as_u64(),
                layer["mediaType"].as_str(),
                diff_id.as_str(),
            ) else {
                continue;
            };
            // Only a blob compressed as this push compresses serves as its layer.
            let (Ok(digest), Ok(diff_id)) = (digest.parse::<Digest>(), diff_id.parse::<Digest>()) else {
                continue;
            };
            if algorithm_of(media_type) != Some(spec.compression.algorithm) {
                continue;
            }
            self.by_diff_id.entry(diff_id).or_insert_with(|| Candidate {
                digest: digest.clone(),
                size,
                algorithm: spec.compression.algorithm,
            });
            let holders = self.holders.entry(digest).or_default();
            if !holders.iter().any(|r| r == repository) {
                holders.push(repository.to_string());
            }
        }
        Ok(())
    }
}

/// The compression a layer media type declares (Docker v2s2 and OCI).
fn algorithm_of(media_type: &str) -> Option<Algorithm> {
    match media_type {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.oci.image.layer.v1.tar+gzip" => Some(Algorithm::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd" => Some(Algorithm::Zstd),
        _ => None,
    }
}

/// A blob the registry may already have.
#[derive(Clone)]
pub(super) struct Candidate {
    pub(super) digest: Digest,
    pub(super) size: u64,
    pub(super) algorithm: Algorithm,
}

impl<S: BlobStore> Pusher<S> {
    /// The blobs that would serve as this layer, best first: a stored or reproducible blob the
    /// source knows, then what compressing it gave last time, then what an image in the
    /// registry has for its diff_id.
    pub(super) fn candidates(&self, layer: &KnownLayer) -> Vec<Candidate> {
        let mut candidates = Vec::new();
        if let Some(blob) = &layer.blob {
            let algorithm = match blob.encoding {
                BlobEncoding::Stored(algorithm) => Some(algorithm),
                BlobEncoding::Reproducible(compression) => {
                    (compression == self.spec.compression).then_some(compression.algorithm)
                }
            };
            if let Some(algorithm) = algorithm.filter(|a| self.spec.format.layer_media_type(*a).is_some()) {
                candidates.push(Candidate {
                    digest: blob.digest.clone(),
                    size: blob.size,
                    algorithm,
                });
            }
        }
        if let Some(cached) = self.cache.compressed(&layer.diff_id, &self.spec.compression)
            && !candidates.iter().any(|c| c.digest == cached.digest)
        {
            candidates.push(Candidate {
                digest: cached.digest,
                size: cached.size,
                algorithm: self.spec.compression.algorithm,
            });
        }
        if let Some(held) = self.registry_blobs.by_diff_id.get(&layer.diff_id)
            && !candidates.iter().any(|c| c.digest == held.digest)
        {
            candidates.push(held.clone());
        }
        candidates
    }

    /// The layer as pushed when the registry has (or could mount) one of the candidates;
    /// reported as done.
    pub(super) async fn find_existing(
        &self,
        index: usize,
        diff_id: &Digest,
        candidates: Vec<Candidate>,
    ) -> Result<Option<PushedLayer>, PushError> {
        Ok(self
            .locate(candidates)
            .await?
            .map(|(blob, outcome)| self.done(index, diff_id, &blob, outcome)))
    }

    /// Whether the target repository has `digest` (HEAD), and its size. A refusal of the
    /// credentials would refuse the upload too, and ends the push here. Any other failure,
    /// after the retries (a 5xx, a timeout), leaves it not known to be there: it is uploaded,
    /// with a warning, as Docker uploads a layer whose existence check failed. A registry that
    /// cannot take it either fails the push at the upload.
    pub(super) async fn blob_present(&self, digest: &Digest, what: &str) -> Result<Option<u64>, PushError> {
        let spec = &self.spec;
        match self.store.blob_exists(&spec.repository, digest).await {
            Ok(exists) => Ok(exists),
            Err(err) if is_refusal(&err) => Err(self
                .registry_error(format!("checking for {what} {digest} in {}", spec.name()))(
                err
            )),
            Err(err) => {
                self.reporter.warn(format!(
                    "could not check for {what} {digest} in {} ({}): uploading it",
                    spec.name(),
                    crate::error::chain_text(&err)
                ));
                Ok(None)
            }
        }
    }

    /// Which candidate the repository has (HEAD), or can mount from another repository the
    /// cache knows holds it. Reports nothing.
    async fn locate(
        &self,
        candidates: Vec<Candidate>,
    ) -> Result<Option<(Candidate, LayerOutcome)>, PushError> {
        let spec = &self.spec;
        for candidate in &candidates {
            if let Some(&size) = self.registry_blobs.present.get(&candidate.digest) {
                return Ok(Some((self.held(candidate, size), LayerOutcome::Skipped)));
            }
            let exists = self.blob_present(&candidate.digest, "blob").await?;
            if let Some(size) = exists {
                return Ok(Some((self.held(candidate, size), LayerOutcome::Skipped)));
            }
        }
        for candidate in candidates {
            let mut holders = self.cache.repositories_with(&spec.registry, &candidate.digest);
            for seen in self
                .registry_blobs
                .holders
                .get(&candidate.digest)
                .into_iter()
                .flatten()
            {
                if !holders.contains(seen) {
                    holders.push(seen.clone());
                }
            }
            for from in holders {
                if from == spec.repository {
                    continue;
                }
                let mounted = self
                    .store
                    .mount_blob(&spec.repository, &candidate.digest, &from)
                    .await
                    .map_err(self.registry_error(format!(
                        "mounting blob {} from {}/{from} into {}",
                        candidate.digest,
                        spec.registry,
                        spec.name()
                    )))?;
                if mounted {
                    // The size, too, may come from another repository's lying descriptor.
                    let size = self
                        .store
                        .blob_exists(&spec.repository, &candidate.digest)
                        .await
                        .ok()
                        .flatten()
                        .unwrap_or(0);
                    return Ok(Some((self.held(&candidate, size), LayerOutcome::Mounted)));
                }
            }
        }
        Ok(None)
    }

    /// The candidate as the registry holds it. A manifest's descriptor can give a layer the
    /// wrong size: distribution checks only that the blobs a manifest names exist
    /// (`verifyManifest` in registry/storage/schema2manifesthandler.go and
    /// ocimanifesthandler.go), and a manifest copied from such a descriptor makes every pull
    /// fail on the size (containerd, containers/image). The digest fixes the blob's bytes, so
    /// the size a HEAD gives is the true one. 0 is a HEAD without Content-Length: no layer
    /// blob is empty, and the descriptor's size stands.
    fn held(&self, candidate: &Candidate, size: u64) -> Candidate {
        if size == 0 || size == candidate.size {
            return candidate.clone();
        }
        self.reporter.warn(format!(
            "an image in the registry lists blob {} as {} bytes, but {} holds {size} bytes \
             under that digest; the new manifest gives {size}",
            candidate.digest,
            candidate.size,
            self.spec.name()
        ));
        Candidate {
            size,
            ..candidate.clone()
        }
    }

    /// For an archive file read before: when the registry has (or can mount) every layer it
    /// held, the config and layers, without reading the file.
    pub(super) async fn known_archive(
        &self,
        identity: &str,
    ) -> Result<Option<(Bytes, Vec<PushedLayer>)>, PushError> {
        let Some(summary) = self.cache.archive(identity) else {
            return Ok(None);
        };
        let located: Vec<Option<(Candidate, LayerOutcome)>> = futures::stream::iter(&summary.diff_ids)
            .map(|diff_id| {
                let known = KnownLayer {
                    diff_id: diff_id.clone(),
                    uncompressed_size: None,
                    blob: None,
                };
                self.locate(self.candidates(&known))
            })
            .buffered(LOOKUP_PARALLEL)
            .try_collect()
            .await?;
        let Some(located) = located.into_iter().collect::<Option<Vec<_>>>() else {
            return Ok(None);
        };
        let layers = located
            .into_iter()
            .zip(&summary.diff_ids)
            .enumerate()
            .map(|(index, ((blob, outcome), diff_id))| {
                self.reporter.emit(Event::LayerStarted {
                    index,
                    diff_id: diff_id.to_string(),
                    size: None,
                });
                self.done(index, diff_id, &blob, outcome)
            })
            .collect();
        Ok(Some((Bytes::from(summary.config), layers)))
    }
}

/// A registry's refusal of the credentials (401, 403, or no usable token).
fn is_refusal(err: &RegistryError) -> bool {
    match err {
        RegistryError::Auth(_) => true,
        RegistryError::Status(status) => matches!(status.status, 401 | 403),
        _ => false,
    }
}
