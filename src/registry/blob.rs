//! Blobs: existence checks, cross-repository mounts and uploads that survive a cut connection
//! or a registry error mid-upload without the caller sending anything again.
//!
//! A streamed upload keeps the most recent `upload_window` bytes it sent (default 16 MiB).
//! After a failure it asks the registry where the upload stands (`GET <location>` → 204 +
//! `Range`) and resends from there, or starts a new session from byte 0 when the registry
//! dropped the session. When the registry needs bytes older than the window, the upload fails
//! with `RegistryError::UploadLost` so the caller can regenerate the blob from its source.
//!
//! Measured with distribution 2.8 (Debian's docker-registry): when a PATCH is cut mid-body
//! (streamed or chunked with `Content-Range`), the registry writes what it received, and the
//! next request on that session finds the stored size differs from the offset signed into
//! the `_state` parameter, cancels the upload and answers 404 `BLOB_UPLOAD_INVALID` — even a
//! session whose earlier chunks were acknowledged. So after a cut only a restart from byte 0
//! works there: acknowledged chunks buy nothing, and the window therefore keeps the last
//! `upload_window` bytes whether acknowledged or not. Registries that keep the session
//! (`GET` → 204 + `Range`) are resumed from their offset. An injected 5xx/429/401 answer
//! leaves the session intact and resumes where the registry stands. A session cut that way
//! cannot be cancelled either (DELETE answers 404 the same way); distribution's purge removes
//! it days later.
//!
//! `--upload-mode monolithic` reads the whole blob first (the window in memory, everything
//! older in an unlinked temp file, the spill), then PUTs it with its length, from byte 0 again
//! after a failure: any size, bounded memory.

use super::auth::{AuthError, Scope};
use super::client::{RETRYABLE_STATUSES, RegistryClient, Request, UploadMode, header_str, retry_after};
use super::digest::Digest;
use super::error::RegistryError;
use bytes::{Bytes, BytesMut};
use reqwest::header::{self, HeaderName};
use reqwest::{Method, Response, StatusCode};
use sha2::{Digest as _, Sha256};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, mpsc};
use url::Url;

/// What a streamed upload keeps for sending again after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resend {
    /// The last `upload_window` bytes: the caller can produce the blob again when the registry
    /// needs older ones (`RegistryError::UploadLost`).
    Window,
    /// Everything (older bytes in an unlinked temp file): the data arrives once.
    Everything,
}

/// A blob the registry committed: what an upload returns (manifests describe blobs with
/// oci-spec's `Descriptor`, which adds the media type).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBlob {
    pub digest: Digest,
    pub size: u64,
}

/// Failures in a row, without progress, after which an upload gives up.
const MAX_UPLOAD_FAILURES: u32 = 6;
/// HEADs asked after a commit that got no answer or 5xx on every try, before it counts as
/// failed: at 0, 1 and 3 s (`committed_all_the_same`).
const COMMIT_CHECKS: u32 = 3;
/// Redirects of one upload's data followed (307/308 on a streamed PATCH).
const MAX_UPLOAD_REDIRECTS: usize = 5;
/// Bytes read back from a spill at a time.
const SPILL_READ: u64 = 256 * 1024;

/// Blob bytes that left the memory window, in a temp file removed as soon as it is created:
/// nothing is left behind whatever way nixfly ends. Written and read in order or by offset.
struct Spill {
    file: std::fs::File,
    len: u64,
}

impl Spill {
    fn new() -> io::Result<Spill> {
        Ok(Spill {
            file: crate::scratch::unlinked("upload")?,
            len: 0,
        })
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(bytes, self.len)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(Bytes::from(buf))
    }
}

/// The producer's data as it passes: hashed once, the recent part kept for resending, and
/// with a spill, everything older written to an unlinked temp file so that any offset can be
/// resent.
struct Source {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    hasher: Sha256,
    window: VecDeque<Bytes>,
    /// Offset of the first byte of `window`.
    window_start: u64,
    /// Bytes `0..window_start`, when this upload keeps them.
    spill: Option<Spill>,
    /// Bytes taken from the producer so far.
    received: u64,
    capacity: u64,
    finished: bool,
    failure: Option<io::Error>,
}

impl Source {
    fn new(rx: mpsc::Receiver<io::Result<Bytes>>, capacity: u64, spill: Option<Spill>) -> Self {
        Source {
            rx,
            hasher: Sha256::new(),
            window: VecDeque::new(),
            window_start: 0,
            spill,
            received: 0,
            capacity,
            finished: false,
            failure: None,
        }
    }

    /// The bytes at `cursor`: resent from the window, or new from the producer. `None` at the end.
    async fn next_at(&mut self, cursor: u64) -> Option<io::Result<Bytes>> {
        if cursor < self.window_start
            && let Some(spill) = &self.spill
        {
            let len = (self.window_start - cursor).min(SPILL_READ);
            return Some(spill.read_at(cursor, len as usize));
        }
        if cursor < self.received {
            let mut start = self.window_start;
            for chunk in &self.window {
                let end = start + chunk.len() as u64;
                if cursor >= start && cursor < end {
                    return Some(Ok(chunk.slice((cursor - start) as usize..)));
                }
                start = end;
            }
            return Some(Err(io::Error::other("resend position outside the upload window")));
        }
        loop {
            if self.finished {
                return None;
            }
            match self.rx.recv().await {
                None => self.finished = true,
                Some(Err(err)) => {
                    let kind = err.kind();
                    self.failure = Some(err);
                    self.finished = true;
                    return Some(Err(io::Error::new(kind, "the blob's data source failed")));
                }
                Some(Ok(bytes)) if bytes.is_empty() => {}
                Some(Ok(bytes)) => {
                    self.hasher.update(&bytes);
                    self.received += bytes.len() as u64;
                    self.window.push_back(bytes.clone());
                    if let Err(err) = self.trim() {
                        return Some(Err(err));
                    }
                    return Some(Ok(bytes));
                }
            }
        }
    }

    /// Up to `limit` bytes from `cursor` as one buffer (a chunk or a monolithic body).
    async fn gather(&mut self, cursor: u64, limit: u64) -> io::Result<Bytes> {
        let mut buf = BytesMut::new();
        while (buf.len() as u64) < limit {
            match self.next_at(cursor + buf.len() as u64).await {
                None => break,
                Some(Err(err)) => return Err(err),
                Some(Ok(bytes)) => {
                    let take = bytes.len().min((limit - buf.len() as u64) as usize);
                    buf.extend_from_slice(&bytes[..take]);
                }
            }
        }
        Ok(buf.freeze())
    }

    /// Keep only the last `capacity` bytes in memory (older ones go to the spill, if any).
    /// Bytes the registry acknowledged are kept too: distribution drops the whole session on a
    /// cut (see the module comment), so a restart from byte 0 needs them.
    fn trim(&mut self) -> io::Result<()> {
        while let Some(front) = self.window.front() {
            let front_end = self.window_start + front.len() as u64;
            if self.received - front_end >= self.capacity {
                if let Some(spill) = &mut self.spill {
                    spill.append(front)?;
                }
                self.window_start = front_end;
                self.window.pop_front();
            } else {
                break;
            }
        }
        Ok(())
    }

    /// The first offset that can still be sent again.
    fn resend_from(&self) -> u64 {
        if self.spill.is_some() {
            0
        } else {
            self.window_start
        }
    }

    /// Take everything the producer has left (into the window and the spill).
    async fn drain(&mut self) -> io::Result<()> {
        while let Some(item) = self.next_at(self.received).await {
            item?;
        }
        Ok(())
    }

    fn digest(&self) -> Digest {
        Digest::from_hasher(self.hasher.clone())
    }
}

/// An upload session: where to send the next request. Its Location changes with every data
/// request; `RegistryClient::moved` keeps the client's record of open sessions current, so a
/// cancel always goes to the latest one.
struct Session {
    id: u64,
    location: Url,
    min_chunk: Option<u64>,
}

/// Why a data request failed, and what that means for the next attempt.
struct Failure {
    message: String,
    retry_after: Option<Duration>,
    /// The registry refuses this way of sending data: try the next mode.
    unsupported: bool,
    /// Retrying cannot help (e.g. 403).
    fatal: Option<RegistryError>,
    /// The registry redirected the data (307/308): send it again there.
    redirect: Option<Url>,
}

impl RegistryClient {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (String, Url)>> {
        self.open_sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record a session the registry opened; returns its id.
    fn opened(&self, repository: &str, location: &Url) -> u64 {
        let id = self
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.sessions()
            .insert(id, (repository.to_string(), location.clone()));
        id
    }

    /// The registry gave the session a new Location.
    fn moved(&self, session: &mut Session, location: Url) {
        if let Some(entry) = self.sessions().get_mut(&session.id) {
            entry.1 = location.clone();
        }
        session.location = location;
    }

    /// The session is committed or cancelled: nothing to clean up.
    fn closed(&self, id: u64) {
        self.sessions().remove(&id);
    }

    /// Whether a manifest PUT went out: a push stopped after that may have tagged its
    /// (complete) image.
    pub fn manifest_sent(&self) -> bool {
        self.manifest_sent.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Cancel every upload session still open (unused sessions a mount attempt opened, uploads
    /// a failed push stopped), each at its latest Location, so that nothing is left in the
    /// registry. Call once no upload is running. Returns how many were cancelled.
    pub async fn cancel_open_sessions(&self) -> usize {
        self.pending_sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let open: Vec<(u64, (String, Url))> = self.sessions().drain().collect();
        let count = open.len();
        futures::future::join_all(open.into_iter().map(|(id, (repository, location))| async move {
            let session = Session {
                id,
                location,
                min_chunk: None,
            };
            self.cancel_upload(&repository, &session).await;
        }))
        .await;
        count
    }

    fn blob_operation(&self, what: &str, repository: &str, digest: &Digest) -> String {
        format!("{what} blob {digest} in {}/{repository}", self.registry)
    }

    /// Size of `digest` in `repository`, or `None` when the registry does not have it there.
    pub async fn blob_exists(&self, repository: &str, digest: &Digest) -> Result<Option<u64>, RegistryError> {
        let req = Request {
            method: Method::HEAD,
            url: self.url(&format!("{repository}/blobs/{digest}")),
            scope: Scope::push(repository),
            headers: Vec::new(),
            body: None,
            operation: self.blob_operation("checking", repository, digest),
        };
        let response = self.send(&req).await?;
        match response.status() {
            // Read the header itself: for HEAD, the body length reqwest reports is always 0.
            StatusCode::OK => Ok(Some(
                header_str(&response, header::CONTENT_LENGTH)
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0),
            )),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.status_error(req.operation, response, None).await),
        }
    }

    /// A small blob (an image config) held in memory, checked against its digest; `None` when
    /// the registry does not have it. Larger than `limit` bytes is refused, as no config is.
    /// `scope`: pull, or push for the repository a push goes to (one token for the push).
    pub async fn get_blob(
        &self,
        repository: &str,
        digest: &Digest,
        limit: u64,
        scope: Scope,
    ) -> Result<Option<Bytes>, RegistryError> {
        let req = Request {
            method: Method::GET,
            url: self.url(&format!("{repository}/blobs/{digest}")),
            scope,
            headers: Vec::new(),
            body: None,
            operation: self.blob_operation("reading", repository, digest),
        };
        let response = self.send(&req).await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            _ => return Err(self.status_error(req.operation, response, None).await),
        }
        if response.content_length().is_some_and(|len| len > limit) {
            return Err(RegistryError::Protocol {
                operation: req.operation,
                message: format!("the blob is larger than the {limit} bytes expected"),
            });
        }
        let bytes = self.body(response, &req.operation).await?;
        let actual = Digest::sha256_of(&bytes);
        if actual != *digest {
            return Err(RegistryError::Protocol {
                operation: req.operation,
                message: format!("the registry returned content with digest {actual}"),
            });
        }
        Ok(Some(bytes))
    }

    /// Mount `digest` from repository `from` of the same registry. `false`: not mounted; the
    /// upload session the registry opened instead is used by the next upload to `repository`.
    pub async fn mount_blob(
        &self,
        repository: &str,
        digest: &Digest,
        from: &str,
    ) -> Result<bool, RegistryError> {
        let mut url = self.url(&format!("{repository}/blobs/uploads/"));
        url.query_pairs_mut()
            .append_pair("mount", digest.as_str())
            .append_pair("from", from);
        let req = Request {
            method: Method::POST,
            url,
            scope: Scope::mount(repository, from),
            headers: vec![(header::CONTENT_LENGTH, "0".into())],
            body: None,
            operation: format!(
                "mounting blob {digest} from {}/{from} into {}/{repository}",
                self.registry, self.registry
            ),
        };
        // A mount needs pull access to `from` as well: a token for one app's repository (a
        // Fly deploy token) may not read another's. Refused, the blob is uploaded instead, as
        // a registry that cannot mount answers anyway (202 with a session). A mount is only a
        // shortcut, so any other answer means "upload it" too, as docker's push takes every
        // mount error (distribution's `registry/client`, `mountCandidate` falls through to an
        // upload): registry.fly.io is not distribution, and answers a repository it does not
        // know (an app deleted, or of another organisation) with its own errors ("unknown: app
        // repository not found").
        let response = match self.send(&req).await {
            Ok(response) => response,
            Err(RegistryError::Auth(err @ AuthError::TokenRejected { .. })) => {
                self.debug(|| format!("{}: not mounted ({err})", req.operation));
                return Ok(false);
            }
            Err(err) => return Err(err),
        };
        match response.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                let location = self.location(&response, &req.operation)?;
                let id = self.opened(repository, &location);
                self.pending_sessions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(repository.to_string())
                    .or_default()
                    .push((id, location));
                Ok(false)
            }
            status => {
                self.debug(|| format!("{}: not mounted (the registry answered {status})", req.operation));
                Ok(false)
            }
        }
    }

    /// Open an upload session: one a mount left open when it is still alive, else a new one.
    async fn start_upload(&self, repository: &str) -> Result<Session, RegistryError> {
        loop {
            let pending = self
                .pending_sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(repository)
                .and_then(Vec::pop);
            let Some((id, location)) = pending else { break };
            let mut session = Session {
                id,
                location,
                min_chunk: None,
            };
            if let Ok(Some((location, 0))) = self.upload_status(repository, &session.location).await {
                self.moved(&mut session, location);
                return Ok(session);
            }
            self.cancel_upload(repository, &session).await;
        }
        let req = Request {
            method: Method::POST,
            url: self.url(&format!("{repository}/blobs/uploads/")),
            scope: Scope::push(repository),
            headers: vec![(header::CONTENT_LENGTH, "0".into())],
            body: None,
            operation: format!("starting an upload to {}/{repository}", self.registry),
        };
        let response = self.send(&req).await?;
        if response.status() != StatusCode::ACCEPTED {
            let hint = (response.status() == StatusCode::NOT_FOUND && self.auth_is_fly()).then(|| {
                format!(
                    "does the Fly app {repository:?} exist? Create it with `fly apps create {repository}`"
                )
            });
            return Err(self.status_error(req.operation, response, hint).await);
        }
        let min_chunk = header_str(&response, HeaderName::from_static("oci-chunk-min-length"))
            .and_then(|v| v.trim().parse().ok());
        let location = self.location(&response, &req.operation)?;
        Ok(Session {
            id: self.opened(repository, &location),
            location,
            min_chunk,
        })
    }

    fn auth_is_fly(&self) -> bool {
        self.registry
            .eq_ignore_ascii_case(&super::reference::default_registry_host())
    }

    /// Where an upload stands: `Some((location, bytes the registry holds))`, or `None` when
    /// the registry no longer knows the session.
    async fn upload_status(
        &self,
        repository: &str,
        location: &Url,
    ) -> Result<Option<(Url, u64)>, RegistryError> {
        let req = Request {
            method: Method::GET,
            url: location.clone(),
            scope: Scope::push(repository),
            headers: Vec::new(),
            body: None,
            operation: format!("checking an upload to {}/{repository}", self.registry),
        };
        let response = self.send(&req).await?;
        match response.status() {
            StatusCode::NO_CONTENT | StatusCode::ACCEPTED => {
                let location = self
                    .location(&response, &req.operation)
                    .unwrap_or_else(|_| location.clone());
                let held = header_str(&response, header::RANGE)
                    .as_deref()
                    .and_then(range_end)
                    .unwrap_or(0);
                Ok(Some((location, held)))
            }
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST => Ok(None),
            // A registry that does not answer where a session stands (docker, crane and skopeo
            // never ask, so one that serves only them need not): the upload starts again in a
            // new session, from what is kept for resending, as for a session it dropped.
            StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED => {
                self.debug(|| {
                    format!(
                        "{}: the registry does not tell where an upload stands",
                        req.operation
                    )
                });
                Ok(None)
            }
            _ => Err(self.status_error(req.operation, response, None).await),
        }
    }

    /// Best effort: the session is abandoned, tell the registry so it can free the space.
    async fn cancel_upload(&self, repository: &str, session: &Session) {
        self.closed(session.id);
        let req = Request {
            method: Method::DELETE,
            url: session.location.clone(),
            scope: Scope::push(repository),
            headers: Vec::new(),
            body: None,
            operation: format!("cancelling an upload to {}/{repository}", self.registry),
        };
        if let Err(err) = self.send(&req).await {
            self.debug(|| format!("{err}"));
        }
    }

    /// Upload a small blob held in memory (a config): one monolithic PUT.
    pub async fn push_blob_bytes(&self, repository: &str, data: Bytes) -> Result<StoredBlob, RegistryError> {
        let digest = Digest::sha256_of(&data);
        let size = data.len() as u64;
        let mut restarted = false;
        loop {
            let session = self.start_upload(repository).await?;
            match self
                .finish_upload(repository, &session, &digest, Some(data.clone()))
                .await
            {
                Ok(()) => return Ok(StoredBlob { digest, size }),
                // The session vanished between POST and PUT (registry restart, expiry): once more.
                Err(RegistryError::Status(s)) if !restarted && matches!(s.status, 400 | 404) => {
                    self.debug(|| format!("{s}; starting a new upload"));
                    restarted = true;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// `PUT <location>&digest=` with the last data (or none): commits the blob.
    async fn finish_upload(
        &self,
        repository: &str,
        session: &Session,
        digest: &Digest,
        body: Option<Bytes>,
    ) -> Result<(), RegistryError> {
        let mut url = session.location.clone();
        url.query_pairs_mut().append_pair("digest", digest.as_str());
        let length = body.as_ref().map_or(0, Bytes::len);
        let req = Request {
            method: Method::PUT,
            url,
            scope: Scope::push(repository),
            headers: vec![
                (header::CONTENT_TYPE, "application/octet-stream".into()),
                (header::CONTENT_LENGTH, length.to_string()),
            ],
            body,
            operation: self.blob_operation("committing", repository, digest),
        };
        let response = match self.send(&req).await {
            Ok(response) => response,
            // No answer to any try (cut, timed out): the registry may have committed the blob
            // all the same. registry.fly.io commits to object storage near iad, far from most
            // runners, and a slow commit can outlast a proxy's patience; Docker's retry of a
            // layer starts with a HEAD ("Layer already exists"). So does this, before failing.
            Err(err @ (RegistryError::Transport { .. } | RegistryError::Timeout { .. })) => {
                if self
                    .committed_all_the_same(repository, digest, COMMIT_CHECKS)
                    .await
                {
                    self.closed(session.id);
                    return Ok(());
                }
                return Err(err);
            }
            Err(err) => return Err(err),
        };
        if response.status() != StatusCode::CREATED {
            // A commit sent again after its answer was lost (a proxy's 5xx or a timeout, which
            // `send` retries) meets the session the first one closed: distribution answers 404
            // BLOB_UPLOAD_UNKNOWN. The blob is there then, which is what the commit was for.
            // A 5xx on every try may likewise hide a commit that went through (see above).
            let checks = match response.status() {
                StatusCode::NOT_FOUND => 1,
                status if status.is_server_error() => COMMIT_CHECKS,
                _ => 0,
            };
            if checks > 0 && self.committed_all_the_same(repository, digest, checks).await {
                self.closed(session.id);
                return Ok(());
            }
            return Err(self.status_error(req.operation, response, None).await);
        }
        self.closed(session.id);
        if let Some(stored) = header_str(&response, HeaderName::from_static("docker-content-digest"))
            && digest != stored.as_str()
        {
            return Err(RegistryError::Protocol {
                operation: req.operation,
                message: format!("the registry stored the blob as {stored}"),
            });
        }
        Ok(())
    }

    /// Whether `digest` is in `repository` although its commit failed: a HEAD, up to `checks`
    /// times, 1 s, then 2 s, ... apart (a registry still finishing the commit shows it late).
    async fn committed_all_the_same(&self, repository: &str, digest: &Digest, checks: u32) -> bool {
        for check in 0..checks {
            if check > 0 {
                tokio::time::sleep(Duration::from_secs(1 << (check - 1))).await;
            }
            if matches!(self.blob_exists(repository, digest).await, Ok(Some(_))) {
                self.debug(|| {
                    format!("{digest} is in {repository}: its commit went through, though no answer said so")
                });
                return true;
            }
        }
        false
    }

    /// Upload a blob whose bytes arrive on `body`, hashing them as they pass. `expected`: the
    /// digest the data must have (checked before the blob is committed). The producer never
    /// resends: after a cut or a registry error the upload resumes from its own window.
    pub async fn push_blob_stream(
        &self,
        repository: &str,
        body: mpsc::Receiver<io::Result<Bytes>>,
        expected: Option<&Digest>,
        resend: Resend,
    ) -> Result<StoredBlob, RegistryError> {
        let window = self.options.upload_window.max(1);
        let mut mode = self.options.upload_mode;
        // A monolithic PUT needs the whole blob before it starts (its digest is in the URL).
        let spill = if mode == UploadMode::Monolithic || resend == Resend::Everything {
            Some(Spill::new().map_err(|e| self.spill_error(repository, e))?)
        } else {
            None
        };
        let mut source = Source::new(body, window, spill);
        let mut session = self.start_upload_taking(repository, &mut source).await?;
        if let Some(source_err) = source.failure.take() {
            return Err(self.source_failed(repository, &session, source_err).await);
        }
        let source = Arc::new(Mutex::new(source));
        let scope = Scope::push(repository);
        let mut offset = 0u64;
        let mut failures = 0u32;
        let mut redirects = 0usize;
        // Data went to this session: the registry may hold some of it even when its status
        // says none (an answer without `Range` reads as 0).
        let mut patched = false;
        loop {
            {
                let src = source.lock().await;
                if src.finished && src.failure.is_none() && offset == src.received {
                    break;
                }
            }
            if mode == UploadMode::Monolithic {
                if patched {
                    // The PUT carries the whole blob, and a registry appends a PUT's body to
                    // what the session holds (distribution's `registry/handlers/blobupload.go`,
                    // PutBlobUploadComplete, copies it into the upload before committing): the
                    // bytes sent in chunks would come twice, and the digest would not match. A
                    // new session holds none.
                    self.cancel_upload(repository, &session).await;
                    session = self.start_upload(repository).await?;
                }
                return self
                    .upload_monolithic(repository, session, &source, expected)
                    .await;
            }
            self.authenticate(&scope).await?;
            patched = true;
            let result = match mode {
                UploadMode::Stream => self.patch_stream(repository, &session, &source, offset).await,
                _ => self.patch_chunk(repository, &session, &source, offset).await,
            };
            let mut failure = match result {
                Ok((location, end)) => {
                    self.moved(&mut session, location);
                    offset = end;
                    failures = 0;
                    continue;
                }
                Err(failure) => failure,
            };
            if let Some(target) = failure.redirect.take()
                && redirects < MAX_UPLOAD_REDIRECTS
            {
                redirects += 1;
                self.debug(|| {
                    format!(
                        "the registry redirected the upload to {target}; sending from byte {offset} there"
                    )
                });
                self.moved(&mut session, target);
                let src = source.lock().await;
                if offset >= src.resend_from() {
                    continue;
                }
                let lost = self.upload_lost(repository, &src, offset);
                drop(src);
                self.cancel_upload(repository, &session).await;
                return Err(lost);
            }
            let mut src = source.lock().await;
            if let Some(source_err) = src.failure.take() {
                drop(src);
                return Err(self.source_failed(repository, &session, source_err).await);
            }
            drop(src);
            if let Some(fatal) = failure.fatal {
                self.cancel_upload(repository, &session).await;
                return Err(fatal);
            }
            failures += 1;
            if failures >= MAX_UPLOAD_FAILURES {
                self.cancel_upload(repository, &session).await;
                return Err(RegistryError::UploadGaveUp {
                    registry: self.registry.clone(),
                    repository: repository.into(),
                    attempts: failures,
                    last: failure.message,
                });
            }
            // After a failed streamed PATCH the rest goes in chunks: each is acknowledged and
            // retried on its own, so a flaky registry costs a chunk, not the whole rest.
            mode = match mode {
                UploadMode::Stream => UploadMode::Chunked,
                UploadMode::Chunked if failure.unsupported => UploadMode::Monolithic,
                other => other,
            };
            let delay = self.options.retry.delay(failures - 1, failure.retry_after);
            self.debug(|| {
                format!(
                    "upload to {}/{repository} failed at {offset} bytes: {}; resuming in {:.1} s ({mode:?} mode)",
                    self.registry,
                    failure.message,
                    delay.as_secs_f64()
                )
            });
            tokio::time::sleep(delay).await;
            match self.upload_status(repository, &session.location).await? {
                Some((location, held)) => {
                    self.moved(&mut session, location);
                    offset = held;
                }
                None => {
                    // The registry dropped the session: start again (in chunks, see above).
                    self.closed(session.id);
                    session = self.start_upload(repository).await?;
                    offset = 0;
                    patched = false;
                }
            }
            let src = source.lock().await;
            if offset < src.resend_from() || offset > src.received {
                let lost = self.upload_lost(repository, &src, offset);
                drop(src);
                self.cancel_upload(repository, &session).await;
                return Err(lost);
            }
            self.debug(|| format!("resuming the upload at byte {offset} of {} sent", src.received));
        }
        let digest = source.lock().await.digest();
        // The registry has every byte: what is kept for resending goes before the commit,
        // which the next layer's compression overlaps (`push::upload::Uploads`).
        drop(source);
        self.check_expected(repository, &session, &digest, expected)
            .await?;
        self.finish_upload(repository, &session, &digest, None).await?;
        Ok(StoredBlob { digest, size: offset })
    }

    /// Open an upload session while the producer goes on: what it sends meanwhile, up to half
    /// the window, is taken into the window and goes out first. The session costs a round trip
    /// (more when a token must be fetched first), and without this the producer (a compressor)
    /// would stop at its channel's few chunks until the first PATCH drains them.
    async fn start_upload_taking(
        &self,
        repository: &str,
        source: &mut Source,
    ) -> Result<Session, RegistryError> {
        let start = self.start_upload(repository);
        tokio::pin!(start);
        loop {
            // Up to half the window: a chunk pushes an older one out of the window (to the
            // spill, or gone) only once the window's worth of newer bytes has come after it, so
            // nothing taken here leaves before it is sent unless one chunk is over half the
            // window (never with the 8 MiB window and chunks of 1 MiB at most; if it happened,
            // the upload would be lost and read again, as after any loss beyond the window).
            let room = !source.finished && source.received < source.capacity / 2;
            let at = source.received;
            tokio::select! {
                biased;
                session = &mut start => return session,
                // Receiving is cancel-safe: a chunk is either taken whole or left in the channel.
                // A producer's failure is kept in `source.failure` for the caller.
                _ = source.next_at(at), if room => {}
            }
        }
    }

    /// The registry needs bytes from `offset` on, which are no longer kept.
    fn upload_lost(&self, repository: &str, src: &Source, offset: u64) -> RegistryError {
        RegistryError::UploadLost {
            registry: self.registry.clone(),
            repository: repository.into(),
            received: src.received,
            kept: offset,
            window_start: src.window_start,
            window: src.capacity,
        }
    }

    async fn check_expected(
        &self,
        repository: &str,
        session: &Session,
        digest: &Digest,
        expected: Option<&Digest>,
    ) -> Result<(), RegistryError> {
        match expected {
            Some(expected) if expected != digest => {
                self.cancel_upload(repository, session).await;
                Err(RegistryError::DigestMismatch {
                    registry: self.registry.clone(),
                    repository: repository.into(),
                    expected: expected.clone(),
                    actual: digest.clone(),
                })
            }
            _ => Ok(()),
        }
    }

    /// One PATCH carrying everything from `offset` to the end of the producer's data.
    async fn patch_stream(
        &self,
        repository: &str,
        session: &Session,
        source: &Arc<Mutex<Source>>,
        offset: u64,
    ) -> Result<(Url, u64), Failure> {
        let stream = futures::stream::unfold((source.clone(), offset), |(src, cursor)| async move {
            let item = src.lock().await.next_at(cursor).await?;
            let next = match &item {
                Ok(bytes) => cursor + bytes.len() as u64,
                Err(_) => cursor,
            };
            Some((item, (src, next)))
        });
        let response = self
            .send_stream(
                Method::PATCH,
                &session.location,
                &Scope::push(repository),
                vec![(header::CONTENT_TYPE, "application/octet-stream".into())],
                Box::pin(stream),
                &format!("uploading to {}/{repository}", self.registry),
            )
            .await
            .map_err(|e| recoverable_failure(&e))?;
        let sent = source.lock().await.received;
        self.data_response(repository, response, sent, false).await
    }

    /// One acknowledged chunk from `offset`, sent with `Content-Range` and replayable.
    async fn patch_chunk(
        &self,
        repository: &str,
        session: &Session,
        source: &Arc<Mutex<Source>>,
        offset: u64,
    ) -> Result<(Url, u64), Failure> {
        // The chunk must fit in the window, or a failure mid-chunk could not be resent.
        let size = self
            .options
            .chunk_size
            .max(session.min_chunk.unwrap_or(0))
            .min(self.options.upload_window / 2)
            .max(1);
        let chunk = source
            .lock()
            .await
            .gather(offset, size)
            .await
            .map_err(|e| Failure {
                message: e.to_string(),
                retry_after: None,
                unsupported: false,
                fatal: None,
                redirect: None,
            })?;
        if chunk.is_empty() {
            return Ok((session.location.clone(), offset));
        }
        let end = offset + chunk.len() as u64;
        let req = Request {
            method: Method::PATCH,
            url: session.location.clone(),
            scope: Scope::push(repository),
            headers: vec![
                (header::CONTENT_TYPE, "application/octet-stream".into()),
                (header::CONTENT_RANGE, format!("{offset}-{}", end - 1)),
                (header::CONTENT_LENGTH, chunk.len().to_string()),
            ],
            body: Some(chunk),
            operation: format!(
                "uploading bytes {offset}-{} to {}/{repository}",
                end - 1,
                self.registry
            ),
        };
        let response = self.send(&req).await.map_err(|e| match e {
            RegistryError::Transport { .. } | RegistryError::Timeout { .. } => recoverable_failure(&e),
            other => Failure {
                message: other.to_string(),
                retry_after: None,
                unsupported: false,
                fatal: Some(other),
                redirect: None,
            },
        })?;
        self.data_response(repository, response, end, true).await
    }

    /// Interpret the answer to a data PATCH that sent bytes up to `sent`, a `Content-Range`
    /// chunk or not.
    async fn data_response(
        &self,
        repository: &str,
        response: Response,
        sent: u64,
        chunk: bool,
    ) -> Result<(Url, u64), Failure> {
        let status = response.status();
        if status == StatusCode::ACCEPTED || status == StatusCode::NO_CONTENT {
            let operation = format!("uploading to {}/{repository}", self.registry);
            let location = self.location(&response, &operation).map_err(|e| Failure {
                message: e.to_string(),
                retry_after: None,
                unsupported: false,
                fatal: None,
                redirect: None,
            })?;
            // A registry that took the request took its body: the bytes sent are what the
            // session holds. Its `Range` here is not trusted (ECR's stops moving after the first
            // chunk), as Docker, skopeo (containers/image `docker_image_dest.go`) and
            // go-containerregistry (`remote/write.go`) ignore it; sending from a lower offset
            // would repeat bytes (without a `Content-Range`, a registry appends them). Only the
            // status request after a failure (`upload_status`) is asked where the upload stands.
            if let Some(held) = header_str(&response, header::RANGE)
                .as_deref()
                .and_then(range_end)
                && held != sent
            {
                self.debug(|| {
                    format!("the registry's Range says {held} bytes after {sent} were sent; counting {sent}")
                });
            }
            return Ok((location, sent));
        }
        if matches!(status.as_u16(), 307 | 308)
            && let Ok(target) = self.location(&response, "following an upload redirect")
        {
            return Err(Failure {
                message: format!("redirected to {target}"),
                retry_after: None,
                unsupported: false,
                fatal: None,
                redirect: Some(target),
            });
        }
        let retry_after = retry_after(&response);
        // A chunk answered 400 is a request the registry will not take however often it is
        // sent: chunks end there and the blob goes in one PUT from byte 0, the way Docker and
        // skopeo send a layer again (neither ever sends a chunk: moby's
        // `distribution/push_v2.go` and containers/image's `docker/docker_image_dest.go`
        // stream a layer in one PATCH), so a registry that takes no chunks costs one resend.
        let unsupported = matches!(status.as_u16(), 405 | 411 | 413 | 415 | 416 | 501)
            || (chunk && status == StatusCode::BAD_REQUEST);
        let code = status.as_u16();
        let recoverable = unsupported
            || code == 401
            || code == 404
            || code == 400
            || super::client::RETRYABLE_STATUSES.contains(&code);
        if code == 401 {
            // The body is gone, so the 401 cannot be answered by `send`: remember what it said
            // and make the next attempt fetch a new token.
            if let Some(challenge) = header_str(&response, header::WWW_AUTHENTICATE) {
                let _ = self.auth.learn(&challenge);
            }
            self.auth.forget(&Scope::push(repository));
        }
        let error = self
            .status_error(
                format!("uploading to {}/{repository}", self.registry),
                response,
                None,
            )
            .await;
        Err(Failure {
            message: error.to_string(),
            retry_after,
            unsupported,
            fatal: (!recoverable).then_some(error),
            redirect: None,
        })
    }

    /// The blob's producer failed: the session goes, and the producer's error is the upload's.
    async fn source_failed(&self, repository: &str, session: &Session, source: io::Error) -> RegistryError {
        self.cancel_upload(repository, session).await;
        RegistryError::Source {
            registry: self.registry.clone(),
            repository: repository.into(),
            source,
        }
    }

    fn spill_error(&self, repository: &str, source: io::Error) -> RegistryError {
        RegistryError::Spill {
            registry: self.registry.clone(),
            repository: repository.into(),
            dir: std::env::temp_dir(),
            source,
        }
    }

    /// The whole blob in one PUT: read to the end first (the window in memory, the rest in the
    /// spill), then sent from byte 0 with its length, again from byte 0 after a failure.
    async fn upload_monolithic(
        &self,
        repository: &str,
        mut session: Session,
        source: &Arc<Mutex<Source>>,
        expected: Option<&Digest>,
    ) -> Result<StoredBlob, RegistryError> {
        let mut src = source.lock().await;
        if src.spill.is_none() {
            // A fallback from another mode: what already left the window is gone.
            if src.window_start > 0 {
                let lost = RegistryError::UploadLost {
                    registry: self.registry.clone(),
                    repository: repository.into(),
                    received: src.received,
                    kept: 0,
                    window_start: src.window_start,
                    window: self.options.upload_window,
                };
                drop(src);
                self.cancel_upload(repository, &session).await;
                return Err(lost);
            }
            src.spill = Some(Spill::new().map_err(|e| self.spill_error(repository, e))?);
        }
        if let Err(err) = src.drain().await {
            let err = src.failure.take().unwrap_or(err);
            drop(src);
            return Err(self.source_failed(repository, &session, err).await);
        }
        let (digest, size) = (src.digest(), src.received);
        drop(src);
        self.check_expected(repository, &session, &digest, expected)
            .await?;
        let operation = self.blob_operation("uploading", repository, &digest);
        let mut failures = 0u32;
        loop {
            let mut url = session.location.clone();
            url.query_pairs_mut().append_pair("digest", digest.as_str());
            let body = futures::stream::unfold((source.clone(), 0u64), |(src, cursor)| async move {
                let item = src.lock().await.next_at(cursor).await?;
                let next = item.as_ref().map_or(cursor, |b| cursor + b.len() as u64);
                Some((item, (src, next)))
            });
            self.authenticate(&Scope::push(repository)).await?;
            let result = self
                .send_stream(
                    Method::PUT,
                    &url,
                    &Scope::push(repository),
                    vec![
                        (header::CONTENT_TYPE, "application/octet-stream".into()),
                        (header::CONTENT_LENGTH, size.to_string()),
                    ],
                    Box::pin(body),
                    &operation,
                )
                .await;
            let message = match result {
                Ok(response) if response.status() == StatusCode::CREATED => {
                    return Ok(StoredBlob { digest, size });
                }
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry = RETRYABLE_STATUSES.contains(&status) || matches!(status, 400 | 401 | 404);
                    let error = self.status_error(operation.clone(), response, None).await;
                    if !retry {
                        self.cancel_upload(repository, &session).await;
                        return Err(error);
                    }
                    error.to_string()
                }
                Err(err @ (RegistryError::Transport { .. } | RegistryError::Timeout { .. })) => {
                    recoverable_failure(&err).message
                }
                Err(err) => {
                    self.cancel_upload(repository, &session).await;
                    return Err(err);
                }
            };
            failures += 1;
            let delay = self.options.retry.delay(failures - 1, None);
            // After the delay: a registry still finishing the failed request would otherwise
            // write the session back after cancelling it (distribution 2.8 does).
            tokio::time::sleep(delay).await;
            // The PUT carried the whole blob and its digest: if it went in after all, sending it
            // again would only upload it twice.
            if self.committed_all_the_same(repository, &digest, 1).await {
                self.cancel_upload(repository, &session).await;
                return Ok(StoredBlob { digest, size });
            }
            self.cancel_upload(repository, &session).await;
            if failures >= MAX_UPLOAD_FAILURES {
                return Err(RegistryError::UploadGaveUp {
                    registry: self.registry.clone(),
                    repository: repository.into(),
                    attempts: failures,
                    last: message,
                });
            }
            self.debug(|| format!("{message}; sending the blob again"));
            session = self.start_upload(repository).await?;
        }
    }
}

fn recoverable_failure(err: &RegistryError) -> Failure {
    let mut message = err.to_string();
    let mut cause = std::error::Error::source(err);
    while let Some(inner) = cause {
        message.push_str(&format!(": {inner}"));
        cause = inner.source();
    }
    Failure {
        message,
        retry_after: None,
        unsupported: false,
        fatal: None,
        redirect: None,
    }
}

/// `Range: 0-<end>` → bytes held (`end + 1`). distribution answers `0-0` for an empty upload
/// as well as for one byte; it is read as empty, the far more common case.
fn range_end(range: &str) -> Option<u64> {
    let range = range.trim().trim_start_matches("bytes=");
    let (_, end) = range.split_once('-')?;
    let end = end.trim().parse::<u64>().ok()?;
    Some(if end == 0 { 0 } else { end + 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn source_with(chunks: &[&'static [u8]], capacity: u64) -> Source {
        let (tx, rx) = mpsc::channel(16);
        for chunk in chunks {
            tx.send(Ok(Bytes::from_static(chunk))).await.unwrap();
        }
        drop(tx);
        Source::new(rx, capacity, None)
    }

    #[tokio::test]
    async fn the_window_resends_recent_bytes_and_drops_old_ones() {
        let mut src = source_with(&[b"aaaa", b"bbbb", b"cccc"], 5).await;
        let mut cursor = 0;
        while let Some(item) = src.next_at(cursor).await {
            cursor += item.unwrap().len() as u64;
        }
        assert_eq!(cursor, 12);
        // Keeps at least the last 5 bytes, in whole chunks: "bbbb" and "cccc".
        assert_eq!(src.window_start, 4);
        assert_eq!(&src.next_at(6).await.unwrap().unwrap()[..], b"bb");
        assert!(src.next_at(2).await.unwrap().is_err());
        assert_eq!(src.digest(), Digest::sha256_of(b"aaaabbbbcccc"));
    }

    #[tokio::test]
    async fn gather_spans_window_and_fresh_data() {
        let mut src = source_with(&[b"0123", b"4567", b"89"], 100).await;
        assert_eq!(&src.gather(0, 6).await.unwrap()[..], b"012345");
        assert_eq!(&src.gather(2, 6).await.unwrap()[..], b"234567");
        assert_eq!(&src.gather(6, 6).await.unwrap()[..], b"6789");
        assert!(src.finished);
    }

    #[tokio::test]
    async fn a_producer_error_is_kept_for_the_caller() {
        let (tx, rx) = mpsc::channel(4);
        tx.send(Ok(Bytes::from_static(b"ab"))).await.unwrap();
        tx.send(Err(io::Error::new(io::ErrorKind::InvalidData, "corrupt gzip")))
            .await
            .unwrap();
        let mut src = Source::new(rx, 10, None);
        assert!(src.next_at(0).await.unwrap().is_ok());
        assert!(src.next_at(2).await.unwrap().is_err());
        assert_eq!(src.failure.unwrap().to_string(), "corrupt gzip");
    }

    /// A registry on loopback for one test: answers `GET /v2/` without a challenge, and an
    /// upload's POST only once `opened` says so (or after 5 s); takes PATCHes (sized or
    /// chunked) and the committing PUT. Returns its host and the heads of the requests it saw.
    fn slow_session_registry(
        opened: std::sync::mpsc::Receiver<()>,
    ) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        let opened = Arc::new(std::sync::Mutex::new(opened));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (seen, opened) = (seen.clone(), opened.clone());
                std::thread::spawn(move || {
                    let mut writer = stream.try_clone().unwrap();
                    let mut reader = BufReader::new(stream);
                    let line = |reader: &mut BufReader<std::net::TcpStream>| {
                        let mut line = String::new();
                        reader.read_line(&mut line).unwrap_or(0);
                        line.trim_end().to_string()
                    };
                    loop {
                        let head = line(&mut reader);
                        if head.is_empty() {
                            return;
                        }
                        let (mut length, mut chunked) = (0usize, false);
                        loop {
                            let header = line(&mut reader).to_ascii_lowercase();
                            if header.is_empty() {
                                break;
                            }
                            if let Some(v) = header.strip_prefix("content-length:") {
                                length = v.trim().parse().unwrap();
                            }
                            chunked |= header == "transfer-encoding: chunked";
                        }
                        let mut body = 0;
                        if chunked {
                            loop {
                                let size = usize::from_str_radix(&line(&mut reader), 16).unwrap();
                                let mut data = vec![0; size];
                                reader.read_exact(&mut data).unwrap();
                                line(&mut reader);
                                body += size;
                                if size == 0 {
                                    break;
                                }
                            }
                        } else {
                            let mut data = vec![0; length];
                            reader.read_exact(&mut data).unwrap();
                            body = length;
                        }
                        seen.lock().unwrap().push(head.clone());
                        let upload = "Location: /v2/app/blobs/uploads/1\r\nRange: 0-0";
                        let answer = match head.split(' ').next().unwrap() {
                            "GET" => "200 OK\r\nContent-Type: application/json".to_string(),
                            "POST" => {
                                if opened
                                    .lock()
                                    .unwrap()
                                    .recv_timeout(Duration::from_secs(5))
                                    .is_err()
                                {
                                    seen.lock().unwrap().push("POST answered after 5 s".into());
                                }
                                format!("202 Accepted\r\n{upload}")
                            }
                            "PATCH" => format!(
                                "202 Accepted\r\nLocation: /v2/app/blobs/uploads/1\r\nRange: 0-{}",
                                body - 1
                            ),
                            _ => {
                                let digest = head.split("digest=").nth(1).unwrap().split(' ').next().unwrap();
                                let digest = digest.replace("%3A", ":");
                                format!("201 Created\r\nDocker-Content-Digest: {digest}")
                            }
                        };
                        write!(writer, "HTTP/1.1 {answer}\r\nContent-Length: 0\r\n\r\n").unwrap();
                    }
                });
            }
        });
        (host, heads)
    }

    /// While the upload's POST is out, the producer is not held to its channel: what it sends
    /// goes into the window (here 8 chunks through a channel of 1), and out first once the
    /// session is open. An open registry is probed once, not before each upload's data.
    #[tokio::test]
    async fn the_producer_goes_on_while_the_session_opens() {
        let (opened_tx, opened) = std::sync::mpsc::channel();
        let (host, heads) = slow_session_registry(opened);
        let client =
            RegistryClient::new(&host, Default::default(), crate::progress::Reporter::plain()).unwrap();
        let mut expected = Vec::new();
        for blob in 0..2u8 {
            let (tx, rx) = mpsc::channel(1);
            let chunks: Vec<Bytes> = (0..8u8)
                .map(|i| Bytes::from(vec![blob * 8 + i; 64 << 10]))
                .collect();
            let data: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
            let opened_tx = opened_tx.clone();
            let producer = tokio::spawn(async move {
                for chunk in chunks {
                    tx.send(Ok(chunk)).await.unwrap();
                }
                // All taken before the session opened: let the registry answer the POST.
                opened_tx.send(()).unwrap();
            });
            let stored = client
                .push_blob_stream("app", rx, None, Resend::Window)
                .await
                .unwrap();
            producer.await.unwrap();
            assert_eq!(stored.digest, Digest::sha256_of(&data));
            assert_eq!(stored.size, data.len() as u64);
            expected.extend([
                "POST /v2/app/blobs/uploads/ HTTP/1.1",
                "PATCH /v2/app/blobs/uploads/1 HTTP/1.1",
            ]);
        }
        let heads = heads.lock().unwrap().clone();
        let probes = heads.iter().filter(|h| h.starts_with("GET /v2/ ")).count();
        assert_eq!(probes, 1, "{heads:?}");
        let data: Vec<&str> = heads
            .iter()
            .map(String::as_str)
            .filter(|h| !h.starts_with("PUT") && !h.starts_with("GET"))
            .collect();
        assert_eq!(data, expected, "{heads:?}");
    }

    #[test]
    fn ranges_give_the_bytes_held() {
        assert_eq!(range_end("0-1023"), Some(1024));
        assert_eq!(range_end("bytes=0-9"), Some(10));
        assert_eq!(range_end("0-0"), Some(0));
        assert_eq!(range_end("garbage"), None);
    }
}
