//! Stream pipeline: the blocking side of a push. It reads layers and compresses (or copies)
//! them into bounded channels that uploads drain; it never waits on the network itself, only on
//! a full channel or on the coordinator's answer about the next layer of a stream.

use super::upload::ReadFailed;
use super::{BlobStore, PushError, Pusher};
use crate::blob::{self, BlobError, LayerDigests, SinkClosed};
use crate::image::docker_archive::{self, StreamedImage};
use crate::image::{ArchiveStream, ImageError};
use crate::progress::{Event, Reporter};
use crate::registry::Digest;
use bytes::Bytes;
use std::io::{self, Read};
use tokio::sync::{mpsc, oneshot};

/// Compressed chunks buffered between a compressor and its upload: each is one compressed
/// 1 MiB block (~0.4 MiB) or a 256 KiB read of a stored blob, and with `--jobs` layers in
/// flight these buffers count towards the 100 MB peak RSS.
pub(super) const UPLOAD_CHANNEL: usize = 4;
/// Buffers (1 MiB each) shared by the hashes of the layers a stream passes that the registry
/// has, and how many of those layers are hashed at once (see [`blob::LayerHasher`]).
const HASH_BUFFERS: usize = 16;
const HASH_THREADS: usize = 2;
/// Progress events carry at least this many bytes (JSON lines stay few).
const PROGRESS_STEP: u64 = 4 << 20;

/// Where a reader sends a blob's bytes; an `Err` aborts the upload.
pub(super) type Body = mpsc::Sender<io::Result<Bytes>>;

/// What a layer must turn out to be.
pub(super) struct Expected {
    /// Its uncompressed digest, when known before reading it.
    pub(super) diff_id: Option<Digest>,
    /// Its compressed digest, when it must be reproduced exactly.
    pub(super) digest: Option<Digest>,
    /// How to name it in errors.
    pub(super) entry: String,
}

/// The stream reader's question about the layer it reached.
pub(super) struct Ask {
    pub(super) index: usize,
    pub(super) name: String,
    pub(super) size: u64,
    /// The diff_id the entry's name suggests (checked against the config at the end).
    pub(super) claimed_diff_id: Option<Digest>,
    pub(super) source_name: String,
    pub(super) reply: oneshot::Sender<Decision>,
}

/// The coordinator's answer. No answer (the sender dropped) means: stop, the push failed.
pub(super) enum Decision {
    /// The registry has the blob: only hash the layer, for the check against the config.
    Skip,
    /// Compress the layer into `body`, then say how reading it went.
    Upload {
        body: Body,
        verdict: oneshot::Sender<Result<Digest, ReadFailed>>,
    },
}

/// A layer's sha256 as the stream reader leaves it: known (it was compressed), or still
/// being computed on a thread of its own.
enum LayerSum {
    Known(Digest),
    Hashing(blob::PendingDigest),
}

/// Why the stream reader ended early.
pub(super) enum PipelineEnd {
    /// The coordinator stopped answering, or a layer's upload carries the error: the
    /// uploads' failure is the one to report.
    Stopped,
    Failed(PushError),
}

impl<S: BlobStore> Pusher<S> {
    /// Compress a layer into `body`. Blocking. The last chunk is held back until the layer's
    /// content is checked, so a layer that does not match what the image declares is never
    /// committed.
    pub(super) fn compress_into(
        &self,
        reader: &mut dyn Read,
        index: usize,
        expected: &Expected,
        source_name: &str,
        body: Body,
    ) -> Result<LayerDigests, ReadFailed> {
        let compress_error = |source| PushError::Compress {
            layer: expected.entry.clone(),
            source_name: source_name.to_string(),
            source,
        };
        let mut held: Option<Bytes> = None;
        let sink = |chunk: Bytes| {
            if let Some(previous) = held.replace(chunk) {
                body.blocking_send(Ok(previous)).map_err(|_| SinkClosed)?;
            }
            Ok(())
        };
        let mut progress = Progress::new(&self.reporter, index);
        let result = blob::compress_layer(reader, self.spec.compression, self.spec.workers, sink, |n| {
            progress.add(n)
        });
        progress.flush();
        let failure = match result {
            Ok(digests) => match self.check(&digests, expected, source_name) {
                Ok(()) => {
                    if let Some(last) = held.take()
                        && body.blocking_send(Ok(last)).is_err()
                    {
                        return Err(ReadFailed::UploadStopped(compress_error(BlobError::SinkClosed)));
                    }
                    return Ok(digests);
                }
                Err(err) => err,
            },
            Err(BlobError::SinkClosed) => {
                return Err(ReadFailed::UploadStopped(compress_error(BlobError::SinkClosed)));
            }
            Err(BlobError::Read(source)) => ImageError::Read {
                source_name: source_name.to_string(),
                source,
            }
            .into(),
            Err(source) => compress_error(source),
        };
        let _ = body.blocking_send(Err(io::Error::other(
            "the layer was refused before its upload completed",
        )));
        Err(ReadFailed::Error(failure))
    }

    /// Copy stored blob bytes into `body` (the registry checks the digest). Blocking.
    pub(super) fn copy_stored(
        &self,
        mut reader: Box<dyn Read + Send>,
        index: usize,
        source_name: &str,
        body: Body,
    ) -> Result<(), ReadFailed> {
        let mut progress = Progress::new(&self.reporter, index);
        // Page-aligned: the kernel copies into it faster (see `blob::AlignedBuf`).
        let mut buf = blob::AlignedBuf::zeroed(256 * 1024);
        let read_result = loop {
            match reader.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    progress.add(n as u64);
                    if body.blocking_send(Ok(Bytes::copy_from_slice(&buf[..n]))).is_err() {
                        // The upload ended early; its result says why.
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        progress.flush();
        read_result.map_err(|source| {
            let _ = body.blocking_send(Err(io::Error::other("reading the layer failed")));
            ReadFailed::Error(
                ImageError::Read {
                    source_name: source_name.to_string(),
                    source,
                }
                .into(),
            )
        })
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
                compression: self.spec.compression.key(),
                expected: digest.clone(),
                actual: digests.digest.clone(),
            });
        }
        Ok(())
    }

    /// Read a docker-archive stream once, front to back, asking the coordinator on `asks`
    /// what to do with each layer. Blocking. The result maps the manifest's layers to the
    /// indexes the layers were asked about under.
    pub(super) fn read_archive(
        &self,
        mut stream: ArchiveStream,
        asks: mpsc::Sender<Ask>,
    ) -> Result<StreamedImage<usize>, PipelineEnd> {
        let source_name = stream.description.clone();
        let mut count = 0;
        let hasher = blob::LayerHasher::new(HASH_BUFFERS, HASH_THREADS);
        let on_layer = |layer: docker_archive::ArchiveLayer<'_>| {
            let index = count;
            count += 1;
            let (reply, answer) = oneshot::channel();
            let ask = Ask {
                index,
                name: layer.name.to_string(),
                size: layer.size,
                claimed_diff_id: layer.claimed_diff_id.clone(),
                source_name: source_name.clone(),
                reply,
            };
            asks.blocking_send(ask).map_err(|_| PipelineEnd::Stopped)?;
            let diff_id = match answer.blocking_recv().map_err(|_| PipelineEnd::Stopped)? {
                Decision::Skip => LayerSum::Hashing(
                    self.hash_skipped(&hasher, layer.reader, index, layer.name, &source_name)
                        .map_err(PipelineEnd::Failed)?,
                ),
                Decision::Upload { body, verdict } => {
                    // The name's diff_id is only a hint (buildImage names are not diff_ids):
                    // the content is checked against the config at the end.
                    let expected = Expected {
                        diff_id: None,
                        digest: None,
                        entry: layer.name.to_string(),
                    };
                    match self.compress_into(layer.reader, index, &expected, &source_name, body) {
                        Ok(digests) => {
                            let _ = verdict.send(Ok(digests.diff_id.clone()));
                            LayerSum::Known(digests.diff_id)
                        }
                        Err(failed) => {
                            // The upload reports it, together with its own error.
                            let _ = verdict.send(Err(failed));
                            return Err(PipelineEnd::Stopped);
                        }
                    }
                }
            };
            Ok((diff_id, index))
        };
        let resolve = |sum: LayerSum| {
            Ok(match sum {
                LayerSum::Known(diff_id) => diff_id,
                LayerSum::Hashing(pending) => pending.wait().0,
            })
        };
        let read = docker_archive::read_stream_deferred(&mut stream.reader, &source_name, on_layer, resolve);
        // The stream is still open here, so a script that failed is told apart from one we stopped.
        let finished = (stream.finish)(read.is_ok());
        match (read, finished) {
            (_, Err(script_failure)) => Err(PipelineEnd::Failed(script_failure.into())),
            (read, Ok(())) => read,
        }
    }

    /// Read a layer the registry has and start hashing it, for the check against the config.
    /// Blocking until the layer is read; its hash may still be running.
    fn hash_skipped(
        &self,
        hasher: &blob::LayerHasher,
        reader: &mut dyn Read,
        index: usize,
        name: &str,
        source_name: &str,
    ) -> Result<blob::PendingDigest, PushError> {
        let mut progress = Progress::new(&self.reporter, index);
        let pending = hasher
            .hash(reader, |n| progress.add(n))
            .map_err(|err| match err {
                BlobError::Read(source) => PushError::from(ImageError::Read {
                    source_name: source_name.to_string(),
                    source,
                }),
                other => PushError::Compress {
                    layer: name.to_string(),
                    source_name: source_name.to_string(),
                    source: other,
                },
            })?;
        progress.flush();
        Ok(pending)
    }
}

impl From<ImageError> for PipelineEnd {
    fn from(err: ImageError) -> Self {
        PipelineEnd::Failed(err.into())
    }
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
