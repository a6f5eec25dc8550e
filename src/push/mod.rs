//! The push pipeline, one module per stage (go-containerregistry's `pkg/v1/remote/pusher.go` is
//! the model, `Push` → `uploadOne` → `commitManifest`: find what the registry has, upload the
//! rest, commit the manifest last):
//!
//! - `lookup`: what the registry already has, from the cache and the source, asked with HEAD
//!   and cross-repository mounts, before any layer is read;
//! - `upload`: one blob's upload, and the set of uploads in flight (`--jobs` at most);
//! - `pipeline`: the blocking side: reading layers and compressing them into bounded
//!   channels, never waiting on the network itself;
//! - `manifest`: the config blob, then the manifest, put under the tag only after every
//!   blob is there.
//!
//! One async coordinator per push (here) owns the uploads and answers the blocking reader, so
//! the registry's typed errors reach the caller as [`PushError::Registry`]; memory stays
//! bounded whatever the image size and nothing touches disk.
//!
//! The registry is reached through [`BlobStore`], implemented by the registry client and by a
//! test double.

mod lookup;
mod manifest;
mod pipeline;
#[cfg(test)]
mod tests;
mod upload;

pub use manifest::ManifestFormat;

use crate::blob::{Algorithm, BlobError, Compression};
use crate::cache::{ArchiveSummary, Cache, CachedBlob};
use crate::image::read_ahead::{READ_AHEAD_LIMIT, ReadAhead};
use crate::image::{ArchiveStream, Image, ImageError, IndexedImage};
use crate::progress::{Event, LayerOutcome, Reporter};
use crate::registry::Digest;
use crate::registry::blob::StoredBlob;
use crate::registry::error::RegistryError;
use crate::registry::manifest::MediaType;
use crate::registry::reference::{PinnedReference, Tag};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use lookup::Candidate;
use pipeline::{Ask, Decision, PipelineEnd};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use upload::{ReadFailed, Uploads};

/// HEAD and mount requests in flight while looking for layers the registry already has.
const LOOKUP_PARALLEL: usize = 16;

/// What push needs from a registry.
pub trait BlobStore: Send + Sync + 'static {
    /// `Some(size)` when `repository` has the blob.
    fn blob_exists(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> impl Future<Output = Result<Option<u64>, RegistryError>> + Send;
    /// Mount a blob from another repository of the same registry; false when it could not.
    fn mount_blob(
        &self,
        repository: &str,
        digest: &Digest,
        from: &str,
    ) -> impl Future<Output = Result<bool, RegistryError>> + Send;
    /// Upload a blob arriving on `body`; returns its digest and size. With `expected`, a blob
    /// with another digest is refused before it is committed. An `Err` on `body` aborts.
    /// `once`: the data cannot be produced again (a stream), so all of it is kept for resending.
    fn push_blob_stream(
        &self,
        repository: &str,
        body: mpsc::Receiver<io::Result<Bytes>>,
        expected: Option<&Digest>,
        once: bool,
    ) -> impl Future<Output = Result<StoredBlob, RegistryError>> + Send;
    fn push_blob_bytes(
        &self,
        repository: &str,
        bytes: Bytes,
    ) -> impl Future<Output = Result<StoredBlob, RegistryError>> + Send;
    /// Store a manifest under a tag or digest; returns its digest.
    fn put_manifest(
        &self,
        repository: &str,
        tag_or_digest: &str,
        media_type: &MediaType,
        bytes: Bytes,
    ) -> impl Future<Output = Result<Digest, RegistryError>> + Send;
    /// A manifest as stored (media type, bytes), or `None` when there is none. `target`: the
    /// repository is the one pushed to (read with the push's credentials scope).
    fn get_manifest(
        &self,
        repository: &str,
        tag_or_digest: &str,
        target: bool,
    ) -> impl Future<Output = Result<Option<(String, Bytes)>, RegistryError>> + Send;
    /// An image config's bytes, checked against its digest; `None` when missing.
    fn get_config(
        &self,
        repository: &str,
        digest: &Digest,
        target: bool,
    ) -> impl Future<Output = Result<Option<Bytes>, RegistryError>> + Send;
}

/// The token scope for reading from `repository`: the push's own for its target repository, so
/// that the lookup does not cost a token of its own.
fn read_scope(repository: &str, target: bool) -> crate::registry::auth::Scope {
    if target {
        crate::registry::auth::Scope::push(repository)
    } else {
        crate::registry::auth::Scope::pull(repository)
    }
}

/// No image config comes near this; a larger blob named as one is not read.
const CONFIG_LIMIT: u64 = 16 << 20;

impl BlobStore for crate::registry::RegistryClient {
    async fn blob_exists(&self, repository: &str, digest: &Digest) -> Result<Option<u64>, RegistryError> {
        crate::registry::RegistryClient::blob_exists(self, repository, digest).await
    }

    async fn mount_blob(&self, repository: &str, digest: &Digest, from: &str) -> Result<bool, RegistryError> {
        crate::registry::RegistryClient::mount_blob(self, repository, digest, from).await
    }

    async fn push_blob_stream(
        &self,
        repository: &str,
        body: mpsc::Receiver<io::Result<Bytes>>,
        expected: Option<&Digest>,
        once: bool,
    ) -> Result<StoredBlob, RegistryError> {
        let resend = if once {
            crate::registry::blob::Resend::Everything
        } else {
            crate::registry::blob::Resend::Window
        };
        crate::registry::RegistryClient::push_blob_stream(self, repository, body, expected, resend).await
    }

    async fn push_blob_bytes(&self, repository: &str, bytes: Bytes) -> Result<StoredBlob, RegistryError> {
        crate::registry::RegistryClient::push_blob_bytes(self, repository, bytes).await
    }

    async fn put_manifest(
        &self,
        repository: &str,
        tag_or_digest: &str,
        media_type: &MediaType,
        bytes: Bytes,
    ) -> Result<Digest, RegistryError> {
        crate::registry::RegistryClient::put_manifest(self, repository, tag_or_digest, media_type, bytes)
            .await
    }

    async fn get_manifest(
        &self,
        repository: &str,
        tag_or_digest: &str,
        target: bool,
    ) -> Result<Option<(String, Bytes)>, RegistryError> {
        let manifest = self
            .get_manifest_scoped(repository, tag_or_digest, read_scope(repository, target))
            .await?;
        Ok(manifest.map(|m| (m.media_type.to_string(), m.bytes)))
    }

    async fn get_config(
        &self,
        repository: &str,
        digest: &Digest,
        target: bool,
    ) -> Result<Option<Bytes>, RegistryError> {
        self.get_blob(repository, digest, CONFIG_LIMIT, read_scope(repository, target))
            .await
    }
}

/// Everything a push needs, validated.
#[derive(Clone, Debug)]
pub struct PushSpec {
    pub registry: String,
    pub repository: String,
    /// Set the manifest under this tag; None pushes it by digest only.
    pub tag: Option<Tag>,
    pub format: ManifestFormat,
    pub compression: Compression,
    /// Layers compressed and uploaded at once.
    pub jobs: usize,
    /// Compression threads per layer.
    pub workers: usize,
    /// Images of the same registry whose layers this push may reuse, as `(repository,
    /// tag or digest)`: `--reuse-from`, and on deploy what the app's machines run now. The
    /// target tag's current image is always looked at too.
    pub reuse_from: Vec<(String, String)>,
    /// Push an image built for another architecture than Fly's amd64 (`--allow-arch`).
    pub allow_arch: bool,
}

impl PushSpec {
    pub fn validate(&self) -> Result<(), PushError> {
        if self.format.layer_media_type(self.compression.algorithm).is_none() {
            return Err(PushError::Options(format!(
                "{} layers need --format oci: Docker v2s2 manifests only carry gzip",
                self.compression.algorithm.name()
            )));
        }
        if self.jobs == 0 || self.workers == 0 {
            return Err(PushError::Options("--jobs must be at least 1".into()));
        }
        Ok(())
    }

    /// `host/repository`, for messages.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

/// A layer blob as it ends up in the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushedLayer {
    pub diff_id: Digest,
    pub digest: Digest,
    pub size: u64,
    pub algorithm: Algorithm,
    pub outcome: LayerOutcome,
}

/// What a push made. Commands print only the reference; the tests check the rest.
#[derive(Clone, Debug)]
#[cfg_attr(not(test), allow(dead_code))]
pub struct Pushed {
    pub reference: PinnedReference,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub layers: Vec<PushedLayer>,
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The registry's own error, kept typed so callers can act on it (e.g.
    /// `RegistryError::UploadLost`: the blob must be generated again from its source). Boxed:
    /// it is the largest error and every `Result` of push carries its size.
    #[error("{what}")]
    Registry {
        what: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("compressing layer {layer} of {source_name}")]
    Compress {
        layer: String,
        source_name: String,
        #[source]
        source: BlobError,
    },
    #[error(
        "layer {layer}: compressing it with {compression} gave {actual}, but the image declares {expected}; \
         was it made with another nixfly version?"
    )]
    NotReproduced {
        layer: String,
        compression: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{0}")]
    Options(String),
    #[error(transparent)]
    Architecture(#[from] crate::image::arch::ForeignArchitecture),
    #[error("a push task failed")]
    Task(#[source] tokio::task::JoinError),
    #[error("reading {source_name} stopped while {layer} was being uploaded")]
    ReaderStopped { layer: String, source_name: String },
}

impl PushError {
    /// Whether the registry lost an upload beyond what was kept for resending, so that only
    /// reading the layer again from its source can complete it.
    pub fn is_upload_lost(&self) -> bool {
        matches!(self, PushError::Registry { source, .. } if matches!(**source, RegistryError::UploadLost { .. }))
    }
}

/// Layers that repeat an earlier layer of the same image (same diff_id: the empty
/// customisation layers of a base and of the app, say). Only the first is uploaded, when the
/// registry lacks it (from a stream, only the first is looked up too); each repeat takes its
/// blob once the uploads are done.
#[derive(Default)]
struct Repeats {
    /// diff_id → the first layer with it.
    first: HashMap<Digest, usize>,
    /// (repeat, the layer it repeats).
    repeats: Vec<(usize, usize)>,
}

impl Repeats {
    /// Whether layer `index` repeats an earlier one; if not, it is the first with `diff_id`.
    fn is_repeat(&mut self, index: usize, diff_id: &Digest) -> bool {
        match self.first.get(diff_id) {
            Some(&first) => {
                self.repeats.push((index, first));
                true
            }
            None => {
                self.first.insert(diff_id.clone(), index);
                false
            }
        }
    }

    /// Give each repeat the blob its first layer ended up with, and report it as found (the
    /// cache already holds what the first one recorded).
    fn resolve<S: BlobStore>(self, pusher: &Pusher<S>, done: &mut BTreeMap<usize, PushedLayer>) {
        for (index, first) in self.repeats {
            let repeat = PushedLayer {
                outcome: LayerOutcome::Skipped,
                ..done[&first].clone()
            };
            pusher.report_done(index, &repeat);
            done.insert(index, repeat);
        }
    }
}

/// Read a stream that is not a file (a script's output, stdin) ahead from now on, into a
/// scratch file ([`ReadAhead`]): what comes before its first layer is read (a deploy's checks,
/// asking the registry what it has) then overlaps its generation instead of leaving the
/// script waiting on a full pipe. A file is read when needed, and may not be at all. Call it
/// as soon as the image is opened, before [`push`].
pub fn read_ahead(image: Image) -> Image {
    match image {
        Image::Stream(mut stream) if stream.identity.is_none() => {
            stream.reader = Box::new(ReadAhead::start(stream.reader, READ_AHEAD_LIMIT));
            Image::Stream(stream)
        }
        image => image,
    }
}

/// Push `image` as `spec` says. Nothing is tagged unless every blob is in the registry.
pub async fn push<S: BlobStore>(
    store: Arc<S>,
    image: Image,
    spec: &PushSpec,
    cache: Arc<Cache>,
    reporter: Reporter,
) -> Result<Pushed, PushError> {
    spec.validate()?;
    // Before any layer is read: which blobs the registry holds for which diff_ids.
    let registry_blobs = lookup::RegistryBlobs::learn(&*store, spec, &reporter).await?;
    let pusher = Arc::new(Pusher {
        store,
        spec: spec.clone(),
        cache,
        reporter,
        registry_blobs,
    });
    // Fly runs amd64: the architecture is checked as soon as the config is known, before any
    // upload for indexed sources; a stream's config comes last, so before its manifest.
    let check_arch = |config: &[u8], source: &str| match spec.allow_arch {
        true => Ok(()),
        false => crate::image::arch::check(config, source),
    };
    let (config, layers) = match image {
        Image::Indexed(image) => {
            check_arch(&image.config(), &image.describe())?;
            pusher.clone().push_indexed(image).await?
        }
        Image::Stream(stream) => {
            let description = stream.description.clone();
            let pushed = pusher.clone().push_stream(stream).await?;
            check_arch(&pushed.0, &description)?;
            pushed
        }
    };
    pusher.commit(config, layers).await
}

/// Times a layer of an indexed image is read again after the registry lost its upload.
const REGENERATIONS: u32 = 1;

struct Pusher<S> {
    store: Arc<S>,
    spec: PushSpec,
    cache: Arc<Cache>,
    reporter: Reporter,
    registry_blobs: lookup::RegistryBlobs,
}

impl<S: BlobStore> Pusher<S> {
    fn registry_error(&self, what: String) -> impl FnOnce(RegistryError) -> PushError {
        move |source| PushError::Registry {
            what,
            source: Box::new(source),
        }
    }

    /// Record and report a layer whose blob is now in the repository.
    fn done(&self, index: usize, diff_id: &Digest, blob: &Candidate, outcome: LayerOutcome) -> PushedLayer {
        self.cache
            .record_location(&self.spec.registry, &blob.digest, &self.spec.repository);
        if blob.algorithm == self.spec.compression.algorithm {
            // Any blob of this algorithm serves this diff_id (a stored one may be of another
            // level): remembering it lets the next push find it with one HEAD.
            self.cache.record_compressed(
                diff_id,
                &self.spec.compression,
                &CachedBlob {
                    digest: blob.digest.clone(),
                    size: blob.size,
                },
            );
        }
        let layer = PushedLayer {
            diff_id: diff_id.clone(),
            digest: blob.digest.clone(),
            size: blob.size,
            algorithm: blob.algorithm,
            outcome,
        };
        self.report_done(index, &layer);
        layer
    }

    fn report_done(&self, index: usize, layer: &PushedLayer) {
        self.reporter.emit(Event::LayerDone {
            index,
            outcome: layer.outcome,
            digest: layer.digest.to_string(),
            size: layer.size,
        });
    }

    /// An image whose layers are known up front: ask about every layer at once, then read
    /// and upload only the missing ones, `jobs` at a time.
    async fn push_indexed(
        self: Arc<Self>,
        image: Arc<dyn IndexedImage>,
    ) -> Result<(Bytes, Vec<PushedLayer>), PushError> {
        let layers = image.layers().to_vec();
        for (index, layer) in layers.iter().enumerate() {
            self.reporter.emit(Event::LayerStarted {
                index,
                diff_id: layer.diff_id.to_string(),
                size: layer.uncompressed_size,
            });
        }
        let existing: Vec<Option<PushedLayer>> = futures::stream::iter(layers.iter().enumerate())
            .map(|(index, layer)| self.find_existing(index, &layer.diff_id, self.candidates(layer)))
            .buffered(LOOKUP_PARALLEL)
            .try_collect()
            .await?;
        let mut uploads = Uploads::new(self.spec.jobs);
        let mut repeats = Repeats::default();
        for (index, found) in existing.into_iter().enumerate() {
            match found {
                Some(layer) => uploads.record(index, layer),
                None => {
                    if repeats.is_repeat(index, &layers[index].diff_id) {
                        continue;
                    }
                    let Some(reading) = uploads.reserve().await else {
                        break;
                    };
                    let this = self.clone();
                    let image = image.clone();
                    uploads.spawn(async move {
                        this.regenerating(&image, index, reading)
                            .await
                            .map(|l| (index, l))
                    });
                }
            }
        }
        let mut done = uploads.finish().await?;
        repeats.resolve(&self, &mut done);
        Ok((image.config(), done.into_values().collect()))
    }

    /// Upload a layer of an indexed image, reading it again from the image when the registry
    /// lost the upload beyond the bytes kept for resending.
    async fn regenerating(
        self: &Arc<Self>,
        image: &Arc<dyn IndexedImage>,
        index: usize,
        reading: upload::Reading,
    ) -> Result<PushedLayer, PushError> {
        let mut attempt = 0;
        // Only the first reading holds a turn. A second one (rare) goes without, beside the
        // layers then being read: its upload already holds a place among those running.
        let mut reading = Some(reading);
        loop {
            // The second time, everything sent is kept (a spill): it cannot be lost again.
            match self
                .clone()
                .upload_indexed(image.clone(), index, attempt > 0, reading.take())
                .await
            {
                Err(err) if err.is_upload_lost() && attempt < REGENERATIONS => {
                    attempt += 1;
                    self.reporter.info(format!(
                        "layer {index}: {}; reading it again from {}",
                        std::error::Error::source(&err).map_or(err.to_string(), |s| s.to_string()),
                        image.describe()
                    ));
                }
                other => return other,
            }
        }
    }

    /// A docker-archive stream: a blocking reader goes through it once and asks, layer by
    /// layer, whether to skip it or where to send its compressed bytes; this coordinator
    /// answers, looking the layer up and starting its upload.
    async fn push_stream(
        self: Arc<Self>,
        stream: ArchiveStream,
    ) -> Result<(Bytes, Vec<PushedLayer>), PushError> {
        if let Some(identity) = &stream.identity
            && let Some(known) = self.known_archive(identity).await?
        {
            self.reporter.info(format!(
                "{}: pushed before and every layer is in the registry; not reading it again",
                stream.description
            ));
            let finish = stream.finish;
            tokio::task::spawn_blocking(move || finish(true))
                .await
                .map_err(PushError::Task)??;
            return Ok(known);
        }
        let identity = stream.identity.clone();
        // One question at a time: the reader waits for each answer anyway.
        let (asks_tx, mut asks) = mpsc::channel(1);
        let reader = tokio::task::spawn_blocking({
            let this = self.clone();
            move || this.read_archive(stream, asks_tx)
        });
        let mut uploads = Uploads::new(self.spec.jobs);
        let mut repeats = Repeats::default();
        loop {
            // Uploads that end meanwhile are settled at once, so a failure stops the reader at
            // its next question rather than after the whole stream.
            let ask = if uploads.is_running() {
                tokio::select! {
                    ask = asks.recv() => ask,
                    () = uploads.settle_one() => continue,
                }
            } else {
                asks.recv().await
            };
            match ask {
                Some(ask) => self.answer(ask, &mut uploads, &mut repeats).await,
                None => break,
            }
        }
        let read = reader.await.map_err(PushError::Task)?;
        let done = uploads.finish().await;
        let image = match read {
            Ok(image) => image,
            Err(PipelineEnd::Failed(err)) => return Err(err),
            Err(PipelineEnd::Stopped) => {
                return Err(done.expect_err("the reader stops only after an upload failed"));
            }
        };
        let mut done = done?;
        repeats.resolve(&self, &mut done);
        let layers: Vec<PushedLayer> = image.layers.iter().map(|slot| done[slot].clone()).collect();
        if let (Some(identity), Ok(config)) = (&identity, std::str::from_utf8(&image.config)) {
            let summary = ArchiveSummary {
                config: config.to_string(),
                diff_ids: layers.iter().map(|l| l.diff_id.clone()).collect(),
            };
            self.cache.record_archive(identity, &summary);
        }
        Ok((image.config, layers))
    }

    /// Answer the reader about one layer: skip it when its name claims the diff_id of an
    /// earlier layer (it takes that layer's blob) or one whose blob the registry has (either
    /// way it is only hashed, and checked against the config), else start its upload once
    /// fewer than `jobs` are being read (see [`Uploads`]). After a failure the question is
    /// dropped unanswered, which stops the reader.
    async fn answer(self: &Arc<Self>, ask: Ask, uploads: &mut Uploads, repeats: &mut Repeats) {
        if uploads.failed() {
            return;
        }
        self.reporter.emit(Event::LayerStarted {
            index: ask.index,
            diff_id: ask
                .claimed_diff_id
                .as_ref()
                .map_or_else(|| ask.name.clone(), Digest::to_string),
            size: Some(ask.size),
        });
        if let Some(claimed) = &ask.claimed_diff_id {
            if repeats.is_repeat(ask.index, claimed) {
                let _ = ask.reply.send(Decision::Skip);
                return;
            }
            let known = crate::image::KnownLayer {
                diff_id: claimed.clone(),
                uncompressed_size: Some(ask.size),
                blob: None,
            };
            match self
                .find_existing(ask.index, claimed, self.candidates(&known))
                .await
            {
                Ok(Some(found)) => {
                    uploads.record(ask.index, found);
                    let _ = ask.reply.send(Decision::Skip);
                    return;
                }
                Ok(None) => {}
                Err(err) => return uploads.fail(err),
            }
        }
        let Some(reading) = uploads.reserve().await else {
            return;
        };
        let (body, body_rx) = mpsc::channel(pipeline::UPLOAD_CHANNEL);
        let (verdict, verdict_rx) = oneshot::channel();
        let this = self.clone();
        let index = ask.index;
        let stopped = PushError::ReaderStopped {
            layer: ask.name.clone(),
            source_name: ask.source_name.clone(),
        };
        uploads.spawn(async move {
            let read = async move { verdict_rx.await.unwrap_or(Err(ReadFailed::Error(stopped))) };
            let algorithm = this.spec.compression.algorithm;
            this.upload_one(index, body_rx, None, algorithm, true, read, Some(reading))
                .await
                .map(|layer| (index, layer))
        });
        let _ = ask.reply.send(Decision::Upload { body, verdict });
    }
}
