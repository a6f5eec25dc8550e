//! The push pipeline: image source → layers (hashed and checked as they pass) → skip what the
//! registry has (cache, HEAD, cross-repository mount) → compress and upload the rest, several at
//! once → config blob byte for byte → manifest, put under the tag only after every blob is there.
//!
//! The registry is reached through [`BlobStore`], implemented by the registry client and by a
//! test double. Compression runs on blocking threads (`crate::blob`) and feeds the upload through
//! a bounded channel, so memory stays bounded whatever the image size and nothing touches disk.

use crate::blob::{self, Algorithm, BlobError, Compression, LayerDigests, SinkClosed};
use crate::cache::{ArchiveSummary, Cache, CachedBlob};
use crate::image::docker_archive::{self, ArchiveLayer};
use crate::image::{ArchiveStream, BlobEncoding, Image, ImageError, IndexedImage, KnownLayer, LayerForm};
use crate::progress::{Event, LayerOutcome, Reporter};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use std::future::Future;
use std::io::{self, Read};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Compressed chunks buffered between a compressor and its upload (each ~100 KiB).
const UPLOAD_CHANNEL: usize = 16;
/// HEAD and mount requests in flight while looking for layers the registry already has.
const LOOKUP_PARALLEL: usize = 16;
/// Progress events carry at least this many bytes (JSON lines stay few).
const PROGRESS_STEP: u64 = 4 << 20;

/// What push needs from a registry. Digests are `sha256:<hex>`.
pub trait BlobStore: Send + Sync + 'static {
    type Error: std::error::Error + Send + Sync + 'static;
    /// `Some(size)` when `repository` has the blob.
    fn blob_exists(
        &self,
        repository: &str,
        digest: &str,
    ) -> impl Future<Output = Result<Option<u64>, Self::Error>> + Send;
    /// Mount a blob from another repository of the same registry; false when it could not.
    fn mount_blob(
        &self,
        repository: &str,
        digest: &str,
        from: &str,
    ) -> impl Future<Output = Result<bool, Self::Error>> + Send;
    /// Upload a blob arriving on `body`; returns its digest and size. With `expected`, a blob
    /// with another digest is refused before it is committed. An `Err` on `body` aborts.
    fn push_blob_stream(
        &self,
        repository: &str,
        body: mpsc::Receiver<io::Result<Bytes>>,
        expected: Option<&str>,
    ) -> impl Future<Output = Result<(String, u64), Self::Error>> + Send;
    fn push_blob_bytes(
        &self,
        repository: &str,
        bytes: Bytes,
    ) -> impl Future<Output = Result<(String, u64), Self::Error>> + Send;
    /// Store a manifest under a tag or digest; returns its digest.
    fn put_manifest(
        &self,
        repository: &str,
        tag_or_digest: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> impl Future<Output = Result<String, Self::Error>> + Send;
}

impl BlobStore for crate::registry::RegistryClient {
    type Error = crate::registry::error::RegistryError;

    async fn blob_exists(&self, repository: &str, digest: &str) -> Result<Option<u64>, Self::Error> {
        crate::registry::RegistryClient::blob_exists(self, repository, digest).await
    }

    async fn mount_blob(&self, repository: &str, digest: &str, from: &str) -> Result<bool, Self::Error> {
        crate::registry::RegistryClient::mount_blob(self, repository, digest, from).await
    }

    async fn push_blob_stream(
        &self,
        repository: &str,
        body: mpsc::Receiver<io::Result<Bytes>>,
        expected: Option<&str>,
    ) -> Result<(String, u64), Self::Error> {
        let blob =
            crate::registry::RegistryClient::push_blob_stream(self, repository, body, expected).await?;
        Ok((blob.digest, blob.size))
    }

    async fn push_blob_bytes(&self, repository: &str, bytes: Bytes) -> Result<(String, u64), Self::Error> {
        let blob = crate::registry::RegistryClient::push_blob_bytes(self, repository, bytes).await?;
        Ok((blob.digest, blob.size))
    }

    async fn put_manifest(
        &self,
        repository: &str,
        tag_or_digest: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<String, Self::Error> {
        crate::registry::RegistryClient::put_manifest(self, repository, tag_or_digest, media_type, bytes)
            .await
    }
}

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
    fn layer_media_type(self, algorithm: Algorithm) -> Option<&'static str> {
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

/// Everything a push needs, validated.
#[derive(Clone, Debug)]
pub struct PushPlan {
    pub registry: String,
    pub repository: String,
    /// Set the manifest under this tag; None pushes it by digest only.
    pub tag: Option<String>,
    pub format: ManifestFormat,
    pub compression: Compression,
    /// Layers compressed and uploaded at once.
    pub jobs: usize,
    /// Compression threads per layer.
    pub workers: usize,
}

impl PushPlan {
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
    pub diff_id: String,
    pub digest: String,
    pub size: u64,
    pub algorithm: Algorithm,
    pub outcome: LayerOutcome,
}

/// What a push made. Commands print only the reference; the tests check the rest.
#[derive(Clone, Debug)]
#[cfg_attr(not(test), allow(dead_code))]
pub struct Pushed {
    /// `host/repo@sha256:...`
    pub reference: String,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layers: Vec<PushedLayer>,
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("{what}")]
    Registry {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
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
        expected: String,
        actual: String,
    },
    #[error("{0}")]
    Options(String),
    #[error("a push task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// Push `image` as `plan` says. Nothing is tagged unless every blob is in the registry.
pub async fn push<S: BlobStore>(
    store: Arc<S>,
    image: Image,
    plan: &PushPlan,
    cache: Arc<Cache>,
    reporter: Reporter,
) -> Result<Pushed, PushError> {
    plan.validate()?;
    let pusher = Arc::new(Pusher {
        store,
        plan: plan.clone(),
        cache,
        reporter,
    });
    let (config, layers) = match image {
        Image::Indexed(image) => pusher.clone().push_indexed(image).await?,
        Image::Stream(stream) => {
            let handle = tokio::runtime::Handle::current();
            let pusher = pusher.clone();
            tokio::task::spawn_blocking(move || pusher.push_stream(stream, handle))
                .await
                .map_err(PushError::Task)??
        }
    };
    pusher.finish(config, layers).await
}

struct Pusher<S> {
    store: Arc<S>,
    plan: PushPlan,
    cache: Arc<Cache>,
    reporter: Reporter,
}

/// A blob the registry may already have.
#[derive(Clone)]
struct Candidate {
    digest: String,
    size: u64,
    algorithm: Algorithm,
}

impl<S: BlobStore> Pusher<S> {
    fn registry_error(&self, what: String) -> impl FnOnce(S::Error) -> PushError {
        move |source| PushError::Registry {
            what,
            source: Box::new(source),
        }
    }

    /// The blobs that would serve as this layer, best first: a stored or reproducible blob the
    /// source knows, then what compressing it gave last time.
    fn candidates(&self, layer: &KnownLayer) -> Vec<Candidate> {
        let mut candidates = Vec::new();
        if let Some(blob) = &layer.blob {
            let algorithm = match blob.encoding {
                BlobEncoding::Stored(algorithm) => Some(algorithm),
                BlobEncoding::Reproducible(compression) => {
                    (compression == self.plan.compression).then_some(compression.algorithm)
                }
            };
            if let Some(algorithm) = algorithm.filter(|a| self.plan.format.layer_media_type(*a).is_some()) {
                candidates.push(Candidate {
                    digest: blob.digest.clone(),
                    size: blob.size,
                    algorithm,
                });
            }
        }
        if let Some(cached) = self.cache.compressed(&layer.diff_id, &self.plan.compression)
            && !candidates.iter().any(|c| c.digest == cached.digest)
        {
            candidates.push(Candidate {
                digest: cached.digest,
                size: cached.size,
                algorithm: self.plan.compression.algorithm,
            });
        }
        candidates
    }

    /// Whether the registry has one of the candidates, asking it (HEAD), then mounting from
    /// another repository the cache knows holds it.
    async fn find_existing(
        &self,
        index: usize,
        diff_id: &str,
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
        let plan = &self.plan;
        for candidate in &candidates {
            let exists = self
                .store
                .blob_exists(&plan.repository, &candidate.digest)
                .await
                .map_err(self.registry_error(format!(
                    "checking for blob {} in {}",
                    candidate.digest,
                    plan.name()
                )))?;
            if exists.is_some() {
                return Ok(Some((candidate.clone(), LayerOutcome::Skipped)));
            }
        }
        for candidate in candidates {
            for from in self.cache.repositories_with(&plan.registry, &candidate.digest) {
                if from == plan.repository {
                    continue;
                }
                let mounted = self
                    .store
                    .mount_blob(&plan.repository, &candidate.digest, &from)
                    .await
                    .map_err(self.registry_error(format!(
                        "mounting blob {} from {}/{from} into {}",
                        candidate.digest,
                        plan.registry,
                        plan.name()
                    )))?;
                if mounted {
                    return Ok(Some((candidate, LayerOutcome::Mounted)));
                }
            }
        }
        Ok(None)
    }

    /// For an archive file read before: when the registry has (or can mount) every layer it
    /// held, the layers, without reading the file. Blocking.
    fn known_archive(
        &self,
        identity: &str,
        handle: &tokio::runtime::Handle,
    ) -> Result<Option<(Bytes, Vec<PushedLayer>)>, PushError> {
        let Some(summary) = self.cache.archive(identity) else {
            return Ok(None);
        };
        let located: Vec<Option<(Candidate, LayerOutcome)>> = handle.block_on(
            futures::stream::iter(&summary.diff_ids)
                .map(|diff_id| {
                    let known = KnownLayer {
                        diff_id: diff_id.clone(),
                        uncompressed_size: None,
                        blob: None,
                    };
                    self.locate(self.candidates(&known))
                })
                .buffered(LOOKUP_PARALLEL)
                .try_collect(),
        )?;
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
                    diff_id: diff_id.clone(),
                    size: None,
                });
                self.done(index, diff_id, &blob, outcome)
            })
            .collect();
        Ok(Some((Bytes::from(summary.config), layers)))
    }

    /// Record and report a layer whose blob is now in the repository.
    fn done(&self, index: usize, diff_id: &str, blob: &Candidate, outcome: LayerOutcome) -> PushedLayer {
        self.cache
            .record_location(&self.plan.registry, &blob.digest, &self.plan.repository);
        if blob.algorithm == self.plan.compression.algorithm {
            // Any blob of this algorithm serves this diff_id (a stored one may be of another
            // level): remembering it lets the next push find it with one HEAD.
            self.cache.record_compressed(
                diff_id,
                &self.plan.compression,
                &CachedBlob {
                    digest: blob.digest.clone(),
                    size: blob.size,
                },
            );
        }
        self.reporter.emit(Event::LayerDone {
            index,
            outcome,
            digest: blob.digest.clone(),
            size: blob.size,
        });
        PushedLayer {
            diff_id: diff_id.to_string(),
            digest: blob.digest.clone(),
            size: blob.size,
            algorithm: blob.algorithm,
            outcome,
        }
    }

    async fn push_indexed(
        self: Arc<Self>,
        image: Arc<dyn IndexedImage>,
    ) -> Result<(Bytes, Vec<PushedLayer>), PushError> {
        let layers = image.layers().to_vec();
        for (index, layer) in layers.iter().enumerate() {
            self.reporter.emit(Event::LayerStarted {
                index,
                diff_id: layer.diff_id.clone(),
                size: layer.uncompressed_size,
            });
        }
        // Ask about every layer at once; read only the missing ones.
        let existing: Vec<Option<PushedLayer>> = futures::stream::iter(layers.iter().enumerate())
            .map(|(index, layer)| {
                let candidates = self.candidates(layer);
                let this = &self;
                async move { this.find_existing(index, &layer.diff_id, candidates).await }
            })
            .buffered(LOOKUP_PARALLEL)
            .try_collect()
            .await?;
        let uploads = existing
            .iter()
            .enumerate()
            .filter(|(_, found)| found.is_none())
            .map(|(index, _)| {
                let this = self.clone();
                let image = image.clone();
                async move { this.upload_known(image, index).await.map(|layer| (index, layer)) }
            });
        let mut uploaded: Vec<(usize, PushedLayer)> = futures::stream::iter(uploads)
            .buffer_unordered(self.plan.jobs)
            .try_collect()
            .await?;
        uploaded.sort_by_key(|(index, _)| *index);
        let mut uploaded = uploaded.into_iter().map(|(_, layer)| layer);
        let pushed = existing
            .into_iter()
            .map(|found| {
                found
                    .or_else(|| uploaded.next())
                    .expect("every missing layer was uploaded")
            })
            .collect();
        Ok((image.config(), pushed))
    }

    /// Upload one layer of an indexed image: its stored blob as is when the manifest format can
    /// carry it, else compressed from the uncompressed tar.
    async fn upload_known(
        self: Arc<Self>,
        image: Arc<dyn IndexedImage>,
        index: usize,
    ) -> Result<PushedLayer, PushError> {
        let layer = image.layers()[index].clone();
        let stored = layer.blob.as_ref().and_then(|blob| match blob.encoding {
            BlobEncoding::Stored(algorithm) if self.plan.format.layer_media_type(algorithm).is_some() => {
                Some((blob.clone(), algorithm))
            }
            _ => None,
        });
        let handle = tokio::runtime::Handle::current();
        let this = self.clone();
        let diff_id = layer.diff_id.clone();
        let blob = tokio::task::spawn_blocking(move || -> Result<Candidate, PushError> {
            let source_name = image.describe();
            if let Some((blob, algorithm)) = stored {
                let reader = image.open_layer(index, LayerForm::Stored)?;
                let (digest, size) =
                    this.upload_stored(reader, &blob.digest, index, &source_name, &handle)?;
                return Ok(Candidate {
                    digest,
                    size,
                    algorithm,
                });
            }
            let expected_digest = layer.blob.as_ref().and_then(|blob| match blob.encoding {
                BlobEncoding::Reproducible(c) if c == this.plan.compression => Some(blob.digest.clone()),
                _ => None,
            });
            let mut reader = image.open_layer(index, LayerForm::Uncompressed)?;
            let expect = Expected {
                diff_id: Some(layer.diff_id.clone()),
                digest: expected_digest,
                entry: format!("layer {index} ({})", layer.diff_id),
            };
            let (digests, upload) =
                this.compress_and_upload(&mut reader, index, &expect, &source_name, &handle)?;
            let (digest, size) = handle.block_on(upload)?;
            debug_assert_eq!(digest, digests.digest);
            Ok(Candidate {
                digest,
                size,
                algorithm: this.plan.compression.algorithm,
            })
        })
        .await
        .map_err(PushError::Task)??;
        Ok(self.done(index, &diff_id, &blob, LayerOutcome::Uploaded))
    }

    /// Stream stored blob bytes to the registry (which checks the digest). Blocking.
    fn upload_stored(
        &self,
        mut reader: Box<dyn Read + Send>,
        digest: &str,
        index: usize,
        source_name: &str,
        handle: &tokio::runtime::Handle,
    ) -> Result<(String, u64), PushError> {
        let (tx, rx) = mpsc::channel(UPLOAD_CHANNEL);
        let upload = self.spawn_upload(rx, Some(digest.to_string()), index, handle);
        let mut progress = Progress::new(&self.reporter, index);
        let mut buf = vec![0u8; 256 * 1024];
        let read_result = loop {
            match reader.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    progress.add(n as u64);
                    if tx.blocking_send(Ok(Bytes::copy_from_slice(&buf[..n]))).is_err() {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        progress.flush();
        if let Err(source) = read_result {
            let _ = tx.blocking_send(Err(io::Error::other("reading the layer failed")));
            drop(tx);
            let _ = handle.block_on(upload);
            return Err(ImageError::Read {
                source_name: source_name.to_string(),
                source,
            }
            .into());
        }
        drop(tx);
        handle.block_on(upload)
    }

    fn spawn_upload(
        &self,
        rx: mpsc::Receiver<io::Result<Bytes>>,
        expected: Option<String>,
        index: usize,
        handle: &tokio::runtime::Handle,
    ) -> Upload {
        let store = self.store.clone();
        let repository = self.plan.repository.clone();
        let what = format!("uploading layer {index} to {}", self.plan.name());
        let task: JoinHandle<Result<(String, u64), S::Error>> =
            handle.spawn(async move { store.push_blob_stream(&repository, rx, expected.as_deref()).await });
        Box::pin(async move {
            task.await
                .map_err(PushError::Task)?
                .map_err(|source| PushError::Registry {
                    what,
                    source: Box::new(source),
                })
        })
    }

    /// Compress a layer into an upload that runs alongside. Blocking. The last chunk is held
    /// back until the layer's content is checked, so a layer that does not match what the
    /// image declares is never committed. Returns the digests and the upload to await.
    fn compress_and_upload(
        &self,
        reader: &mut dyn Read,
        index: usize,
        expected: &Expected,
        source_name: &str,
        handle: &tokio::runtime::Handle,
    ) -> Result<(LayerDigests, Upload), PushError> {
        let (tx, rx) = mpsc::channel(UPLOAD_CHANNEL);
        let upload = self.spawn_upload(rx, expected.digest.clone(), index, handle);
        let mut held: Option<Bytes> = None;
        let sink_tx = tx.clone();
        let sink = |chunk: Bytes| {
            if let Some(previous) = held.replace(chunk) {
                sink_tx.blocking_send(Ok(previous)).map_err(|_| SinkClosed)?;
            }
            Ok(())
        };
        let mut progress = Progress::new(&self.reporter, index);
        let result = blob::compress_layer(reader, self.plan.compression, self.plan.workers, sink, |n| {
            progress.add(n)
        });
        progress.flush();
        let failure = match result {
            Ok(digests) => match self.check(&digests, expected, source_name) {
                Ok(()) => {
                    if let Some(last) = held.take() {
                        // The upload may have failed meanwhile; awaiting it tells why.
                        let _ = tx.blocking_send(Ok(last));
                    }
                    return Ok((digests, upload));
                }
                Err(err) => err,
            },
            // The upload stopped taking data: its own error is the cause.
            Err(BlobError::SinkClosed) => {
                drop(tx);
                return match handle.block_on(upload) {
                    Err(err) => Err(err),
                    Ok(_) => Err(PushError::Compress {
                        layer: expected.entry.clone(),
                        source_name: source_name.to_string(),
                        source: BlobError::SinkClosed,
                    }),
                };
            }
            Err(BlobError::Read(source)) => ImageError::Read {
                source_name: source_name.to_string(),
                source,
            }
            .into(),
            Err(source) => PushError::Compress {
                layer: expected.entry.clone(),
                source_name: source_name.to_string(),
                source,
            },
        };
        let _ = tx.blocking_send(Err(io::Error::other(
            "the layer was refused before its upload completed",
        )));
        drop(tx);
        let _ = handle.block_on(upload);
        Err(failure)
    }

    fn check(&self, digests: &LayerDigests, expected: &Expected, source_name: &str) -> Result<(), PushError> {
        if let Some(diff_id) = &expected.diff_id
            && diff_id != &digests.diff_id
        {
            return Err(ImageError::DigestMismatch {
                source_name: source_name.to_string(),
                entry: expected.entry.clone(),
                expected: diff_id.clone(),
                actual: digests.diff_id.clone(),
            }
            .into());
        }
        if let Some(digest) = &expected.digest
            && digest != &digests.digest
        {
            return Err(PushError::NotReproduced {
                layer: expected.entry.clone(),
                compression: self.plan.compression.key(),
                expected: digest.clone(),
                actual: digests.digest.clone(),
            });
        }
        Ok(())
    }

    /// Read a docker-archive stream once. Blocking (runs on a blocking thread).
    fn push_stream(
        self: Arc<Self>,
        mut stream: ArchiveStream,
        handle: tokio::runtime::Handle,
    ) -> Result<(Bytes, Vec<PushedLayer>), PushError> {
        if let Some(identity) = &stream.identity
            && let Some(known) = self.known_archive(identity, &handle)?
        {
            self.reporter.info(format!(
                "{}: pushed before and every layer is in the registry; not reading it again",
                stream.description
            ));
            (stream.finish)(true)?;
            return Ok(known);
        }
        let mut slots: Vec<Slot> = Vec::new();
        let read = docker_archive::read_stream(&mut stream.reader, &stream.description, |layer| {
            let index = slots.len();
            let (diff_id, slot) =
                self.stream_layer(layer, index, &stream.description, &handle, &mut slots)?;
            slots.push(slot);
            Ok::<_, PushError>((diff_id, index))
        });
        // The stream is still open here, so a script that failed is told apart from one we stopped.
        let finished = (stream.finish)(read.is_ok());
        let image = match (read, finished) {
            (Ok(image), Ok(())) => image,
            (Err(err), Ok(())) => {
                Self::abandon(&handle, slots);
                return Err(err);
            }
            (_, Err(script_failure)) => {
                Self::abandon(&handle, slots);
                return Err(script_failure.into());
            }
        };
        let mut results: Vec<Option<PushedLayer>> = Vec::with_capacity(slots.len());
        for slot in slots {
            results.push(Some(match slot {
                Slot::Done(layer) => layer,
                Slot::Uploading {
                    index,
                    diff_id,
                    upload,
                } => {
                    let blob = handle.block_on(upload)?;
                    self.done(index, &diff_id, &blob, LayerOutcome::Uploaded)
                }
            }));
        }
        let layers: Vec<PushedLayer> = image
            .layers
            .iter()
            .map(|&slot| results[slot].clone().expect("every slot has a result"))
            .collect();
        if let (Some(identity), Ok(config)) = (&stream.identity, std::str::from_utf8(&image.config)) {
            let summary = ArchiveSummary {
                config: config.to_string(),
                diff_ids: layers.iter().map(|l| l.diff_id.clone()).collect(),
            };
            self.cache.record_archive(identity, &summary);
        }
        Ok((image.config, layers))
    }

    /// Uploads still running when the push failed: let them end (their blobs are harmless,
    /// content-addressed and untagged).
    fn abandon(handle: &tokio::runtime::Handle, slots: Vec<Slot>) {
        for slot in slots {
            if let Slot::Uploading { upload, .. } = slot {
                let _ = handle.block_on(upload);
            }
        }
    }

    /// One layer as it passes in the stream: skipped (only hashed) when its name claims a
    /// diff_id whose blob the registry has, else compressed into an upload left running while
    /// the stream moves on.
    fn stream_layer(
        &self,
        layer: ArchiveLayer<'_>,
        index: usize,
        source_name: &str,
        handle: &tokio::runtime::Handle,
        slots: &mut [Slot],
    ) -> Result<(String, Slot), PushError> {
        self.reporter.emit(Event::LayerStarted {
            index,
            diff_id: layer
                .claimed_diff_id
                .clone()
                .unwrap_or_else(|| layer.name.to_string()),
            size: Some(layer.size),
        });
        if let Some(claimed) = &layer.claimed_diff_id {
            let known = KnownLayer {
                diff_id: claimed.clone(),
                uncompressed_size: Some(layer.size),
                blob: None,
            };
            let candidates = self.candidates(&known);
            if let Some(found) = handle.block_on(self.find_existing(index, claimed, candidates))? {
                let mut progress = Progress::new(&self.reporter, index);
                let (diff_id, _) =
                    blob::hash_layer(layer.reader, |n| progress.add(n)).map_err(|err| match err {
                        BlobError::Read(source) => PushError::from(ImageError::Read {
                            source_name: source_name.to_string(),
                            source,
                        }),
                        other => PushError::Compress {
                            layer: layer.name.to_string(),
                            source_name: source_name.to_string(),
                            source: other,
                        },
                    })?;
                progress.flush();
                return Ok((diff_id, Slot::Done(found)));
            }
        }
        // Keep at most `jobs` uploads running.
        self.wait_for_uploads(handle, slots)?;
        // The name's diff_id is only a hint (buildImage names are not diff_ids): the stream
        // checks the content against the config at the end.
        let expected = Expected {
            diff_id: None,
            digest: None,
            entry: layer.name.to_string(),
        };
        let (digests, upload) =
            self.compress_and_upload(layer.reader, index, &expected, source_name, handle)?;
        let algorithm = self.plan.compression.algorithm;
        let upload = Box::pin(async move {
            let (digest, size) = upload.await?;
            Ok(Candidate {
                digest,
                size,
                algorithm,
            })
        });
        Ok((
            digests.diff_id.clone(),
            Slot::Uploading {
                index,
                diff_id: digests.diff_id,
                upload,
            },
        ))
    }

    fn wait_for_uploads(&self, handle: &tokio::runtime::Handle, slots: &mut [Slot]) -> Result<(), PushError> {
        let running = slots
            .iter()
            .filter(|s| matches!(s, Slot::Uploading { .. }))
            .count();
        if running < self.plan.jobs {
            return Ok(());
        }
        let oldest = slots
            .iter()
            .position(|s| matches!(s, Slot::Uploading { .. }))
            .expect("an upload is running");
        let placeholder = Slot::Done(PushedLayer {
            diff_id: String::new(),
            digest: String::new(),
            size: 0,
            algorithm: self.plan.compression.algorithm,
            outcome: LayerOutcome::Uploaded,
        });
        if let Slot::Uploading {
            index,
            diff_id,
            upload,
        } = std::mem::replace(&mut slots[oldest], placeholder)
        {
            let blob = handle.block_on(upload)?;
            slots[oldest] = Slot::Done(self.done(index, &diff_id, &blob, LayerOutcome::Uploaded));
        }
        Ok(())
    }

    /// Config blob, then the manifest, then the tag.
    async fn finish(&self, config: Bytes, layers: Vec<PushedLayer>) -> Result<Pushed, PushError> {
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

/// A blob upload running on the runtime: resolves to its digest and size.
type Upload = std::pin::Pin<Box<dyn Future<Output = Result<(String, u64), PushError>> + Send>>;

/// What a layer must turn out to be.
struct Expected {
    /// Its uncompressed sha256, when known before reading it.
    diff_id: Option<String>,
    /// Its compressed digest, when it must be reproduced exactly.
    digest: Option<String>,
    /// How to name it in errors.
    entry: String,
}

/// A stream layer: done, or still uploading while the stream moves on.
enum Slot {
    Done(PushedLayer),
    Uploading {
        index: usize,
        diff_id: String,
        upload: std::pin::Pin<Box<dyn Future<Output = Result<Candidate, PushError>> + Send>>,
    },
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

/// Per-layer progress, in steps of at least `PROGRESS_STEP`.
struct Progress<'a> {
    reporter: &'a Reporter,
    index: usize,
    pending: u64,
}

impl<'a> Progress<'a> {
    fn new(reporter: &'a Reporter, index: usize) -> Self {
        Progress {
            reporter,
            index,
            pending: 0,
        }
    }

    fn add(&mut self, bytes: u64) {
        self.pending += bytes;
        if self.pending >= PROGRESS_STEP {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.pending > 0 {
            self.reporter.emit(Event::LayerProgress {
                index: self.index,
                bytes: std::mem::take(&mut self.pending),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An in-memory registry: blobs per repository, manifests per tag, uploads counted.
    #[derive(Default)]
    struct FakeRegistry {
        blobs: Mutex<HashMap<(String, String), Bytes>>,
        manifests: Mutex<HashMap<(String, String), Bytes>>,
        uploads: AtomicUsize,
        heads: AtomicUsize,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("fake registry: {0}")]
    struct FakeError(String);

    impl BlobStore for FakeRegistry {
        type Error = FakeError;

        async fn blob_exists(&self, repository: &str, digest: &str) -> Result<Option<u64>, FakeError> {
            self.heads.fetch_add(1, Ordering::Relaxed);
            let blobs = self.blobs.lock().unwrap();
            Ok(blobs
                .get(&(repository.into(), digest.into()))
                .map(|b| b.len() as u64))
        }

        async fn mount_blob(&self, repository: &str, digest: &str, from: &str) -> Result<bool, FakeError> {
            let mut blobs = self.blobs.lock().unwrap();
            let Some(blob) = blobs.get(&(from.into(), digest.into())).cloned() else {
                return Ok(false);
            };
            blobs.insert((repository.into(), digest.into()), blob);
            Ok(true)
        }

        async fn push_blob_stream(
            &self,
            repository: &str,
            mut body: mpsc::Receiver<io::Result<Bytes>>,
            expected: Option<&str>,
        ) -> Result<(String, u64), FakeError> {
            let mut data = Vec::new();
            while let Some(chunk) = body.recv().await {
                data.extend_from_slice(&chunk.map_err(|e| FakeError(format!("upload aborted: {e}")))?);
            }
            let digest = blob::sha256_of(&data);
            if expected.is_some_and(|e| e != digest) {
                return Err(FakeError(format!(
                    "digest {digest} is not the expected {expected:?}"
                )));
            }
            self.uploads.fetch_add(1, Ordering::Relaxed);
            let size = data.len() as u64;
            self.blobs
                .lock()
                .unwrap()
                .insert((repository.into(), digest.clone()), Bytes::from(data));
            Ok((digest, size))
        }

        async fn push_blob_bytes(&self, repository: &str, bytes: Bytes) -> Result<(String, u64), FakeError> {
            let digest = blob::sha256_of(&bytes);
            let size = bytes.len() as u64;
            self.blobs
                .lock()
                .unwrap()
                .insert((repository.into(), digest.clone()), bytes);
            Ok((digest, size))
        }

        async fn put_manifest(
            &self,
            repository: &str,
            tag: &str,
            _: &str,
            bytes: Bytes,
        ) -> Result<String, FakeError> {
            let manifest: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let blobs = self.blobs.lock().unwrap();
            let mut needed = vec![manifest["config"]["digest"].as_str().unwrap().to_string()];
            needed.extend(
                manifest["layers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| l["digest"].as_str().unwrap().to_string()),
            );
            if let Some(missing) = needed
                .iter()
                .find(|d| !blobs.contains_key(&(repository.into(), (*d).clone())))
            {
                return Err(FakeError(format!("MANIFEST_BLOB_UNKNOWN {missing}")));
            }
            let digest = blob::sha256_of(&bytes);
            self.manifests
                .lock()
                .unwrap()
                .insert((repository.into(), tag.into()), bytes);
            Ok(digest)
        }
    }

    /// Layers with some structure, distinct per index.
    fn layer_tar(index: usize) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for file in 0..3 {
            let data = format!("layer {index} file {file}\n").repeat(5000 * (file + 1));
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(
                    &mut header,
                    format!("nix/store/x-{index}/f{file}"),
                    data.as_bytes(),
                )
                .unwrap();
        }
        builder.into_inner().unwrap()
    }

    /// A streamLayeredImage-shaped archive: `<diff_id>/layer.tar`..., config, manifest.json last.
    fn archive(layers: &[Vec<u8>], corrupt_layer: Option<usize>) -> (Vec<u8>, Vec<String>) {
        let diff_ids: Vec<String> = layers.iter().map(|l| blob::sha256_of(l)).collect();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}
        }))
        .unwrap();
        let config_name = format!("{}.json", &blob::sha256_of(&config)[7..]);
        let mut builder = tar::Builder::new(Vec::new());
        let mut names = Vec::new();
        for (index, (layer, diff_id)) in layers.iter().zip(&diff_ids).enumerate() {
            let mut data = layer.clone();
            if corrupt_layer == Some(index) {
                data[600] ^= 1;
            }
            let name = format!("{}/layer.tar", &diff_id[7..]);
            append(&mut builder, &name, &data);
            names.push(name);
        }
        append(&mut builder, &config_name, &config);
        let manifest = serde_json::json!([{"Config": config_name, "RepoTags": ["x:y"], "Layers": names}]);
        append(
            &mut builder,
            "manifest.json",
            &serde_json::to_vec(&manifest).unwrap(),
        );
        (builder.into_inner().unwrap(), diff_ids)
    }

    fn append(builder: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, data).unwrap();
    }

    fn plan(format: ManifestFormat, compression: Compression) -> PushPlan {
        PushPlan {
            registry: "127.0.0.1:5000".into(),
            repository: "app".into(),
            tag: Some("v1".into()),
            format,
            compression,
            jobs: 2,
            workers: 2,
        }
    }

    fn stream_of(bytes: Vec<u8>) -> Image {
        Image::Stream(ArchiveStream {
            description: "test archive".into(),
            reader: Box::new(io::Cursor::new(bytes)),
            finish: Box::new(|_| Ok(())),
            identity: None,
        })
    }

    fn file_image(dir: &std::path::Path, bytes: &[u8]) -> Image {
        let path = dir.join("image.tar");
        std::fs::write(&path, bytes).unwrap();
        let source = crate::image::detect(path.to_str().unwrap(), crate::image::SourceKind::Auto).unwrap();
        source.open(&Reporter::plain()).unwrap()
    }

    async fn run(
        store: &Arc<FakeRegistry>,
        image: Image,
        plan: &PushPlan,
        cache_dir: &std::path::Path,
    ) -> Result<Pushed, PushError> {
        let cache = Arc::new(Cache::with_root(Some(cache_dir.to_path_buf()), Reporter::plain()));
        push(store.clone(), image, plan, cache, Reporter::plain()).await
    }

    fn check_blobs(store: &FakeRegistry, pushed: &Pushed, layers: &[Vec<u8>], diff_ids: &[String]) {
        let blobs = store.blobs.lock().unwrap();
        for ((layer, pushed_layer), diff_id) in layers.iter().zip(&pushed.layers).zip(diff_ids) {
            assert_eq!(&pushed_layer.diff_id, diff_id);
            let blob = &blobs[&("app".to_string(), pushed_layer.digest.clone())];
            let mut plain = Vec::new();
            match pushed_layer.algorithm {
                Algorithm::Gzip => flate2::read::MultiGzDecoder::new(&blob[..])
                    .read_to_end(&mut plain)
                    .unwrap(),
                Algorithm::Zstd => zstd::stream::read::Decoder::new(&blob[..])
                    .unwrap()
                    .read_to_end(&mut plain)
                    .unwrap(),
            };
            assert_eq!(&plain, layer);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stream_push_then_warm_push_uploads_nothing() {
        let layers: Vec<Vec<u8>> = (0..4).map(layer_tar).collect();
        let (bytes, diff_ids) = archive(&layers, None);
        let store = Arc::new(FakeRegistry::default());
        let cache = tempfile::tempdir().unwrap();
        let plan = plan(ManifestFormat::Docker, Compression::default());
        let pushed = run(&store, stream_of(bytes.clone()), &plan, cache.path())
            .await
            .unwrap();
        assert!(pushed.layers.iter().all(|l| l.outcome == LayerOutcome::Uploaded));
        assert_eq!(store.uploads.load(Ordering::Relaxed), 4);
        check_blobs(&store, &pushed, &layers, &diff_ids);
        let manifest: serde_json::Value =
            serde_json::from_slice(&store.manifests.lock().unwrap()[&("app".to_string(), "v1".to_string())])
                .unwrap();
        assert_eq!(
            manifest["mediaType"],
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        assert_eq!(manifest["config"]["digest"], pushed.config_digest.as_str());
        assert_eq!(
            manifest["layers"][3]["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
        assert!(pushed.reference.starts_with("127.0.0.1:5000/app@sha256:"));

        let again = run(&store, stream_of(bytes), &plan, cache.path()).await.unwrap();
        assert!(
            again.layers.iter().all(|l| l.outcome == LayerOutcome::Skipped),
            "{:?}",
            again.layers
        );
        assert_eq!(store.uploads.load(Ordering::Relaxed), 4, "the warm push uploaded");
        assert_eq!(again.manifest_digest, pushed.manifest_digest);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn indexed_tar_file_matches_the_stream_result_and_mounts_across_repositories() {
        let layers: Vec<Vec<u8>> = (0..3).map(layer_tar).collect();
        let (bytes, diff_ids) = archive(&layers, None);
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FakeRegistry::default());
        let plan_a = plan(
            ManifestFormat::Oci,
            Compression::new(Algorithm::Zstd, None).unwrap(),
        );
        let first = run(&store, file_image(dir.path(), &bytes), &plan_a, dir.path())
            .await
            .unwrap();
        check_blobs(&store, &first, &layers, &diff_ids);
        // Deterministic compression: the stream path gives the same blobs in a fresh cache.
        let fresh = tempfile::tempdir().unwrap();
        let other = Arc::new(FakeRegistry::default());
        let streamed = run(&other, stream_of(bytes.clone()), &plan_a, fresh.path())
            .await
            .unwrap();
        assert_eq!(streamed.manifest_digest, first.manifest_digest);

        let plan_b = PushPlan {
            repository: "other".into(),
            ..plan_a
        };
        let mounted = run(&store, file_image(dir.path(), &bytes), &plan_b, dir.path())
            .await
            .unwrap();
        assert!(
            mounted.layers.iter().all(|l| l.outcome == LayerOutcome::Mounted),
            "{:?}",
            mounted.layers
        );
        assert_eq!(store.uploads.load(Ordering::Relaxed), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_layer_not_matching_its_name_is_refused_and_nothing_is_tagged() {
        let layers: Vec<Vec<u8>> = (0..3).map(layer_tar).collect();
        let (bytes, diff_ids) = archive(&layers, Some(1));
        let store = Arc::new(FakeRegistry::default());
        let cache = tempfile::tempdir().unwrap();
        let plan = plan(ManifestFormat::Docker, Compression::default());
        let err = run(&store, stream_of(bytes.clone()), &plan, cache.path())
            .await
            .unwrap_err();
        let text = format!("{err}");
        assert!(text.contains(&diff_ids[1]) && text.contains("corrupt"), "{text}");
        assert!(store.manifests.lock().unwrap().is_empty());
        // The indexed path reads the layer and finds the same.
        let dir = tempfile::tempdir().unwrap();
        let err = run(&store, file_image(dir.path(), &bytes), &plan, cache.path())
            .await
            .unwrap_err();
        assert!(format!("{err}").contains("corrupt"), "{err}");
        assert!(store.manifests.lock().unwrap().is_empty());
    }

    #[test]
    fn zstd_needs_the_oci_format() {
        let err = plan(
            ManifestFormat::Docker,
            Compression::new(Algorithm::Zstd, None).unwrap(),
        )
        .validate()
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "zstd layers need --format oci: Docker v2s2 manifests only carry gzip"
        );
    }
}
