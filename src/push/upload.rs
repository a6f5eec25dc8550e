//! Upload stage: one blob from a bounded channel into the registry, and the set of uploads in
//! flight, which the coordinator owns (at most `--jobs` at once).

use super::lookup::Candidate;
use super::pipeline::UPLOAD_CHANNEL;
use super::{BlobStore, PushError, PushedLayer, Pusher};
use crate::blob::Algorithm;
use crate::image::{BlobEncoding, IndexedImage, LayerForm};
use crate::progress::LayerOutcome;
use crate::registry::Digest;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;

/// Why a reader stopped before its blob was complete.
pub(super) enum ReadFailed {
    /// The upload stopped taking data: the upload's own error is the cause. The error is what
    /// to report should the upload nonetheless have succeeded.
    UploadStopped(PushError),
    /// The layer could not be read or was not what the image declares.
    Error(PushError),
}

/// The uploads in flight, each a task resolving to its layer's place in the image and blob.
///
/// `jobs` layers are read (and compressed) at once: each holds a [`Reading`] permit until its
/// last byte is read, then gives it up while its upload finishes. That end is a request or two
/// the compressors would otherwise wait out: the rest of the body, then the PUT that commits
/// the blob, which the registry answers only once it has verified and stored it (distribution's
/// `registry/storage/driver/filesystem/driver.go` syncs the file to disk in `Commit`) and a
/// distant registry a round trip later. The
/// next layer is compressed meanwhile. One upload more than `jobs` may be finishing; its
/// compression buffers are gone, and its resend window goes once its body is acknowledged.
pub(super) struct Uploads {
    running: JoinSet<Result<(usize, PushedLayer), PushError>>,
    reading: Arc<Semaphore>,
    in_flight: usize,
    done: BTreeMap<usize, PushedLayer>,
    /// The first failure; later ones are consequences or noise.
    failure: Option<PushError>,
}

impl Uploads {
    pub(super) fn new(jobs: usize) -> Self {
        let jobs = jobs.max(1);
        Uploads {
            running: JoinSet::new(),
            reading: Arc::new(Semaphore::new(jobs)),
            in_flight: jobs + 1,
            done: BTreeMap::new(),
            failure: None,
        }
    }

    /// Wait until another layer may be read and uploaded: fewer than `jobs` are being read and
    /// fewer than `jobs + 1` uploads are running. None once an upload has failed: start no more.
    pub(super) async fn reserve(&mut self) -> Option<Reading> {
        loop {
            if self.failure.is_some() {
                return None;
            }
            if self.running.len() >= self.in_flight {
                self.settle_one().await;
                continue;
            }
            let reading = self.reading.clone();
            if self.running.is_empty() {
                // Every permit is back once no upload runs.
                return reading.acquire_owned().await.ok().map(Reading::new);
            }
            tokio::select! {
                permit = reading.acquire_owned() => return permit.ok().map(Reading::new),
                () = self.settle_one() => {}
            }
        }
    }

    pub(super) fn spawn(
        &mut self,
        upload: impl Future<Output = Result<(usize, PushedLayer), PushError>> + Send + 'static,
    ) {
        self.running.spawn(upload);
    }

    /// A layer whose blob the registry already has.
    pub(super) fn record(&mut self, index: usize, layer: PushedLayer) {
        self.done.insert(index, layer);
    }

    pub(super) fn fail(&mut self, err: PushError) {
        self.failure.get_or_insert(err);
    }

    pub(super) fn failed(&self) -> bool {
        self.failure.is_some()
    }

    pub(super) fn is_running(&self) -> bool {
        !self.running.is_empty()
    }

    /// Wait for one upload to end and keep its result. Cancel-safe.
    pub(super) async fn settle_one(&mut self) {
        match self.running.join_next().await {
            None => {}
            Some(Ok(Ok((index, layer)))) => self.record(index, layer),
            Some(Ok(Err(err))) => self.fail(err),
            Some(Err(join)) => self.fail(PushError::Task(join)),
        }
    }

    /// Let every running upload end (a failed push leaves no session half-sent); then the
    /// layers by index, or the first failure.
    pub(super) async fn finish(mut self) -> Result<BTreeMap<usize, PushedLayer>, PushError> {
        while self.is_running() {
            self.settle_one().await;
        }
        match self.failure {
            Some(err) => Err(err),
            None => Ok(self.done),
        }
    }
}

/// A layer's turn to be read: given up (dropped) once its reading ends (see [`Uploads`]).
pub(super) struct Reading {
    _turn: OwnedSemaphorePermit,
}

impl Reading {
    fn new(turn: OwnedSemaphorePermit) -> Self {
        Reading { _turn: turn }
    }
}

impl<S: BlobStore> Pusher<S> {
    /// Upload one layer's blob arriving on `body` while `read` reports how reading it went
    /// (its diff_id); `reading` is given up as soon as it has. Nothing the reader refused is
    /// reported as pushed.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn upload_one(
        &self,
        index: usize,
        body: mpsc::Receiver<io::Result<Bytes>>,
        expected: Option<Digest>,
        algorithm: Algorithm,
        once: bool,
        read: impl Future<Output = Result<Digest, ReadFailed>>,
        reading: Option<Reading>,
    ) -> Result<PushedLayer, PushError> {
        let upload = self
            .store
            .push_blob_stream(&self.spec.repository, body, expected.as_ref(), once);
        let read = async move {
            let read = read.await;
            drop(reading);
            read
        };
        let (uploaded, read) = tokio::join!(upload, read);
        let uploaded =
            uploaded.map_err(self.registry_error(format!("uploading layer {index} to {}", self.spec.name())));
        let diff_id = match read {
            Ok(diff_id) => diff_id,
            Err(ReadFailed::Error(err)) => return Err(err),
            Err(ReadFailed::UploadStopped(fallback)) => return Err(uploaded.err().unwrap_or(fallback)),
        };
        let stored = uploaded?;
        let blob = Candidate {
            digest: stored.digest,
            size: stored.size,
            algorithm,
        };
        Ok(self.done(index, &diff_id, &blob, LayerOutcome::Uploaded))
    }

    /// Upload one layer of an indexed image: its stored blob as is when the manifest format can
    /// carry it, else compressed from the uncompressed tar on a blocking thread.
    pub(super) async fn upload_indexed(
        self: Arc<Self>,
        image: Arc<dyn IndexedImage>,
        index: usize,
        keep_all: bool,
        reading: Option<Reading>,
    ) -> Result<PushedLayer, PushError> {
        let layer = image.layers()[index].clone();
        let stored = layer.blob.as_ref().and_then(|blob| match blob.encoding {
            BlobEncoding::Stored(algorithm) if self.spec.format.layer_media_type(algorithm).is_some() => {
                Some((blob.digest.clone(), algorithm))
            }
            _ => None,
        });
        let (body, body_rx) = mpsc::channel(UPLOAD_CHANNEL);
        let (expected, algorithm, reader) = match stored {
            Some((digest, algorithm)) => {
                let this = self.clone();
                let diff_id = layer.diff_id.clone();
                let reader = tokio::task::spawn_blocking(move || {
                    let source_name = image.describe();
                    let reader = image
                        .open_layer(index, LayerForm::Stored)
                        .map_err(|e| ReadFailed::Error(e.into()))?;
                    this.copy_stored(reader, index, &source_name, body)?;
                    Ok(diff_id)
                });
                (Some(digest), algorithm, reader)
            }
            None => {
                let compression = self.spec.compression;
                let expected = layer.blob.as_ref().and_then(|blob| match blob.encoding {
                    BlobEncoding::Reproducible(c) if c == compression => Some(blob.digest.clone()),
                    _ => None,
                });
                let this = self.clone();
                let check = super::pipeline::Expected {
                    diff_id: Some(layer.diff_id.clone()),
                    digest: expected.clone(),
                    entry: format!("layer {index} ({})", layer.diff_id),
                };
                let reader = tokio::task::spawn_blocking(move || {
                    let source_name = image.describe();
                    let mut reader = image
                        .open_layer(index, LayerForm::Uncompressed)
                        .map_err(|e| ReadFailed::Error(e.into()))?;
                    this.compress_into(&mut reader, index, &check, &source_name, body)
                        .map(|digests| digests.diff_id)
                });
                (expected, compression.algorithm, reader)
            }
        };
        let read = async {
            reader
                .await
                .unwrap_or_else(|e| Err(ReadFailed::Error(PushError::Task(e))))
        };
        // An indexed layer can be read again (`regenerating`): unless told otherwise, only the
        // window is kept.
        self.upload_one(index, body_rx, expected, algorithm, keep_all, read, reading)
            .await
    }
}
