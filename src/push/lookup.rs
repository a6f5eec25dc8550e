//! Lookup stage: what the registry already has, known before a layer is read. The candidates
//! for a layer come from the source (a stored or reproducible blob) and the local cache; the
//! registry is asked with HEAD, then offered a cross-repository mount from a repository the
//! cache knows holds the blob.

use super::{BlobStore, LOOKUP_PARALLEL, PushError, PushedLayer, Pusher};
use crate::blob::Algorithm;
use crate::image::{BlobEncoding, KnownLayer};
use crate::progress::{Event, LayerOutcome};
use crate::registry::Digest;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

/// A blob the registry may already have.
#[derive(Clone)]
pub(super) struct Candidate {
    pub(super) digest: Digest,
    pub(super) size: u64,
    pub(super) algorithm: Algorithm,
}

impl<S: BlobStore> Pusher<S> {
    /// The blobs that would serve as this layer, best first: a stored or reproducible blob the
    /// source knows, then what compressing it gave last time.
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

    /// Which candidate the repository has (HEAD), or can mount from another repository the
    /// cache knows holds it. Reports nothing.
    async fn locate(
        &self,
        candidates: Vec<Candidate>,
    ) -> Result<Option<(Candidate, LayerOutcome)>, PushError> {
        let spec = &self.spec;
        for candidate in &candidates {
            let exists = self
                .store
                .blob_exists(&spec.repository, &candidate.digest)
                .await
                .map_err(self.registry_error(format!(
                    "checking for blob {} in {}",
                    candidate.digest,
                    spec.name()
                )))?;
            if exists.is_some() {
                return Ok(Some((candidate.clone(), LayerOutcome::Skipped)));
            }
        }
        for candidate in candidates {
            for from in self.cache.repositories_with(&spec.registry, &candidate.digest) {
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
                    return Ok(Some((candidate, LayerOutcome::Mounted)));
                }
            }
        }
        Ok(None)
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
