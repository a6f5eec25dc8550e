//! Compress and hash a layer in one pass.
//!
//! A layer's uncompressed tar is read once; on the way through we compute its diff_id (sha256 of
//! the uncompressed bytes) and, on the compressed side, the blob digest and size, while the
//! compressed bytes go out in chunks to whoever uploads them.
//!
//! # Determinism
//! The output depends only on (input bytes, algorithm, engine, level): never on the number of
//! worker threads nor on how the reader happens to chunk its reads. Layer plans pin compressed
//! digests at build time and record the [`Engine`] and level with them, so the format below is a
//! contract:
//!
//! - The input is cut into blocks at fixed offsets (`GZIP_BLOCK` / `ZSTD_BLOCK` bytes; the last
//!   block may be shorter, and an empty input is one empty block).
//! - gzip: each block is one complete gzip member made by libdeflate (`gzip_compress`: header
//!   `1f 8b 08 00 00000000 <xfl> ff`, no name, mtime 0; the block's CRC-32 and size as trailer).
//!   RFC 1952 allows members one after another, and every reader a registry's clients use reads
//!   them all: Go's `compress/gzip` (Docker, containerd, skopeo; `multistream` is on by default),
//!   `gzip -d`, pigz; `tests/it/gzip_readers.rs` checks Go's reader and skopeo on our output,
//!   and has a containerd daemon of its own (Debian's 1.6.20, `ctr images pull --plain-http
//!   --snapshotter native`) unpack a pushed image to the chain IDs of its config's diff_ids.
//! - zstd: one independent frame per block (zstd decoders read concatenated frames), each with
//!   its content size and no checksum.
//!
//! Blocks are compressed by `workers` threads in parallel and emitted in order, so one large
//! layer uses every core.
//!
//! # Engine and level
//! gzip is libdeflate (bundled C source, pinned to one release in Cargo.toml because another
//! release may choose other matches), level 2 by default. Measured with `bench/deflate.py` on the
//! first 400 MB of the benchmark image (15 layers of this machine's /usr: binaries, libraries,
//! Python, man pages, locales), one core per row unless it says otherwise, MB/s of input, on a
//! quiet 2-core machine (load under 1):
//!
//! | engine, level | MB/s | compressed/original |
//! |---|---:|---:|
//! | zlib-rs 1 / 2 / 6 (one stream; nixfly before) | 233 / 138 / 79 | 0.484 / 0.402 / 0.375 |
//! | libdeflate 1 / 2 / 4 (1 MiB members) | 231 / 184 / 161 | 0.397 / 0.379 / 0.373 |
//! | libdeflate 5 / 6 / 9 (1 MiB members) | 134 / 110 / 38 | 0.365 / 0.363 / 0.360 |
//! | libdeflate 2 in 256 KiB / 4 MiB members | 183 / 186 | 0.380 / 0.378 |
//! | nixfly level 1 / 2, both cores (hashes included) | 360 / 295 | 0.397 / 0.379 |
//! | ISA-L igzip 1 / 3 (command line) | 564 / 377 | 0.418 / 0.407 |
//! | zstd 3, both cores (`--compression zstd`) | 497 | 0.358 |
//!
//! On the whole 1120 MB image (`bench/push.py`), skopeo 1.9.3 (pgzip) pushed 396.6 MB; nixfly
//! pushed 406.5 MB at level 1 and 390.5 MB at level 2. Level 2 is the fastest libdeflate level
//! that stays under skopeo's bytes, and compression, not hashing or the loopback upload, is what
//! a cold push waits for: this compressor alone, with no registry, takes 0.49-0.51x of skopeo's
//! whole push (`bench/push.py` prints it). zlib-rs at the same level is slower and 6% larger.
//! ISA-L is faster, but its best ratio (level 3) is 7% larger than libdeflate 2's, and every
//! byte is uploaded again on every changed layer; mixing engines per member would need to know
//! each member's outcome in advance to pay off (`bench/engine_mix.py`, README). `--level 1` (fast) to `--level 12` (small)
//! covers the rest. The members cost 0.1-0.2% against one stream (no shared window at block starts) and buy
//! block parallelism, since libdeflate compresses whole buffers only.
//!
//! zstd defaults to level 3 (its own default).

use crate::registry::Digest;
use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use std::io::{self, BufRead, Read};
use std::ops::{Deref, DerefMut};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Alignment of the buffers layer bytes are read into: a memory page.
const IO_ALIGN: usize = 4096;

/// A byte buffer whose first byte starts a memory page, for `read(2)` to copy into.
///
/// The kernel copies a pipe's or a file's bytes into a destination that does not start a page
/// more slowly, and the allocator hands out large buffers (a 1 MiB `Vec`, a `BufReader`'s
/// 1 MiB) 16 bytes past a page boundary, the slowest case measured. On the benchmark's 1142 MB
/// `cat` stream (2-core AMD EPYC VM, 2026-12-02), a fresh runner's unchanged push spent 1.2 to
/// 1.6 s of system time with such buffers, 0.6 to 0.7 s with page-aligned ones; Python's
/// `readinto` from the same pipe into one mmap'd region at offset 0, 64 and 16 took 0.9 to
/// 1.0 s, 1.0 to 1.1 s and 1.5 s.
pub struct AlignedBuf {
    /// The allocation; the buffer is `raw[start..]`.
    raw: Vec<u8>,
    start: usize,
}

impl AlignedBuf {
    /// `len` zeroed bytes, page-aligned.
    pub fn zeroed(len: usize) -> Self {
        let mut raw = vec![0u8; len + IO_ALIGN];
        let start = raw.as_ptr().align_offset(IO_ALIGN);
        raw.truncate(start + len);
        AlignedBuf { raw, start }
    }

    /// Fill up to `size` bytes from `reader`, fewer only at its end; the buffer is then as
    /// long as what was read, and the reads go straight into its page-aligned part.
    pub fn read_from(reader: &mut impl Read, size: usize) -> io::Result<Self> {
        let mut raw: Vec<u8> = Vec::with_capacity(size + IO_ALIGN);
        let start = raw.as_ptr().align_offset(IO_ALIGN);
        raw.resize(start, 0);
        reader.take(size as u64).read_to_end(&mut raw)?;
        Ok(AlignedBuf { raw, start })
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.raw[self.start..]
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..]
    }
}

/// `std::io::BufReader` with a page-aligned buffer ([`AlignedBuf`]), for the pipes and
/// decoders layer bytes pass through: each refill is one read into the aligned buffer, and a
/// read at least as large as the buffer bypasses it when it is empty, as `BufReader`'s does.
pub struct AlignedBufReader<R> {
    inner: R,
    buf: AlignedBuf,
    pos: usize,
    filled: usize,
}

impl<R: Read> AlignedBufReader<R> {
    pub fn with_capacity(capacity: usize, inner: R) -> Self {
        AlignedBufReader {
            inner,
            buf: AlignedBuf::zeroed(capacity.max(1)),
            pos: 0,
            filled: 0,
        }
    }
}

impl<R: Read> Read for AlignedBufReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.filled && out.len() >= self.buf.len() {
            return self.inner.read(out);
        }
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for AlignedBufReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.filled {
            self.filled = self.inner.read(&mut self.buf)?;
            self.pos = 0;
        }
        Ok(&self.buf[self.pos..self.filled])
    }

    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.filled);
    }
}

/// Block size for gzip: every block is a gzip member of its own, so larger blocks lose less
/// context at block starts (0.3% of size at 1 MiB, measured), smaller ones get two workers going
/// sooner on small layers and keep less in flight (a few blocks per worker).
const GZIP_BLOCK: usize = 1024 * 1024;
/// Block size for zstd: frames are independent (no shared window), so larger blocks keep the
/// ratio close to single-frame compression.
const ZSTD_BLOCK: usize = 1024 * 1024;

/// The compression algorithm of layer blobs.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// gzip (every registry and runtime).
    #[default]
    Gzip,
    /// zstd (smaller and faster; needs --format oci and a recent containerd).
    Zstd,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Gzip => "gzip",
            Algorithm::Zstd => "zstd",
        }
    }

    pub fn default_level(self) -> i32 {
        match self {
            Algorithm::Gzip => 2,
            Algorithm::Zstd => 3,
        }
    }

    pub fn levels(self) -> std::ops::RangeInclusive<i32> {
        match self {
            Algorithm::Gzip => 1..=12,
            Algorithm::Zstd => 1..=19,
        }
    }

    fn block_size(self) -> usize {
        match self {
            Algorithm::Gzip => GZIP_BLOCK,
            Algorithm::Zstd => ZSTD_BLOCK,
        }
    }

    /// The library this build compresses with.
    fn engine(self) -> Engine {
        match self {
            Algorithm::Gzip => Engine::Libdeflate126,
            Algorithm::Zstd => Engine::Zstd15,
        }
    }
}

/// The library (and release) that made a blob: the same level of another one gives other bytes.
/// Recorded in layer plans and cache keys so that digests made by one are never expected from
/// another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Engine {
    /// nixfly before libdeflate: plans without an engine were made with it. Never produced now.
    #[serde(rename = "zlib-rs")]
    ZlibRs,
    /// libdeflate 1.26 (`libdeflate-sys` =1.26.1 bundles it).
    #[serde(rename = "libdeflate-1.26")]
    Libdeflate126,
    /// libzstd 1.5 (bundled by `zstd-sys`).
    #[serde(rename = "libzstd-1.5")]
    Zstd15,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::ZlibRs => "zlib-rs",
            Engine::Libdeflate126 => "libdeflate-1.26",
            Engine::Zstd15 => "libzstd-1.5",
        }
    }
}

/// How layer blobs are compressed: everything the output bytes depend on besides the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Compression {
    pub algorithm: Algorithm,
    /// Absent in plans written before nixfly recorded it: those were zlib-rs.
    #[serde(default = "legacy_engine")]
    pub engine: Engine,
    pub level: i32,
}

fn legacy_engine() -> Engine {
    Engine::ZlibRs
}

impl Default for Compression {
    fn default() -> Self {
        Compression::new(Algorithm::Gzip, None).expect("default level is valid")
    }
}

impl Compression {
    /// `level` None means the algorithm's default.
    pub fn new(algorithm: Algorithm, level: Option<i32>) -> Result<Self, BlobError> {
        let level = level.unwrap_or(algorithm.default_level());
        if !algorithm.levels().contains(&level) {
            return Err(BlobError::Level {
                algorithm: algorithm.name(),
                level,
                min: *algorithm.levels().start(),
                max: *algorithm.levels().end(),
            });
        }
        Ok(Compression {
            algorithm,
            engine: algorithm.engine(),
            level,
        })
    }

    /// A stable name for caches and messages: `gzip-2-libdeflate-1.26`, `zstd-3-libzstd-1.5`.
    pub fn key(&self) -> String {
        format!("{}-{}-{}", self.algorithm.name(), self.level, self.engine.name())
    }
}

/// What one pass over a layer found out.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerDigests {
    /// The digest of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: Digest,
    pub uncompressed_size: u64,
    /// The digest of the compressed blob (the manifest's layer digest).
    pub digest: Digest,
    /// Size of the compressed blob.
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("reading the layer failed")]
    Read(#[source] io::Error),
    #[error("{algorithm} compression failed")]
    Compress {
        algorithm: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the upload of the compressed layer stopped before the layer was complete")]
    SinkClosed,
    #[error("{algorithm} level {level} is out of range: use {min} to {max}")]
    Level {
        algorithm: &'static str,
        level: i32,
        min: i32,
        max: i32,
    },
}

/// Returned by a sink that can take no more chunks (the upload ended).
#[derive(Debug)]
pub struct SinkClosed;

/// Number of compression threads to use for one layer by default: every core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Hash an uncompressed layer without compressing it (when its blob is already in the
/// registry and only the content needs checking). Returns (diff_id, size); `on_read` gets the
/// byte count of every read. One layer on its own: a stream of several uses [`LayerHasher`].
pub fn hash_layer(reader: impl Read, on_read: impl FnMut(u64)) -> Result<(Digest, u64), BlobError> {
    Ok(LayerHasher::new(HASH_BUFFERS_ALONE, 1)
        .hash(reader, on_read)?
        .wait())
}

/// Size of one buffer a [`LayerHasher`] reads into.
const HASH_BUFFER: usize = 1024 * 1024;
/// Buffers for a single layer hashed on its own: the reader fills one while the hasher works
/// through the others.
const HASH_BUFFERS_ALONE: usize = 3;

/// Hashes the layers a stream passes, on threads of their own, several layers at once.
///
/// For a stream whose layers the registry has, the pipe's copy and SHA-256 are all the work
/// there is, and SHA-256 is the larger part (about 2.2 GB/s on one core with SHA-NI). One
/// layer's SHA-256 cannot be split across cores, so the reader does not wait for a layer's
/// hash to finish: it reads on into the next layer, which a second thread hashes while the
/// first works through what is left of the previous one. The buffers all layers share are the
/// bound on memory: `buffers` MiB in flight at most, whatever the number or size of the layers;
/// when they are all full the reader waits.
///
/// On the benchmark's 1142 MB `cat` stream (2 cores, 9 runs, medians) this took a fresh
/// runner's unchanged push from +0.61 s over generation (one layer hashed at a time) to
/// +0.55 s. The buffers are page-aligned ([`AlignedBuf`]): on a slower machine (SHA-256 at
/// 1.34 GB/s) that took the same push from 1.30-1.76 s to 0.92-1.01 s, the pipe's system time
/// from 1.2-1.6 s to 0.6-0.7 s. More buffers do not help: 48 instead of 16 (`HASH_BUFFERS` in
/// `push::pipeline`), 7 alternating pushes each with `bench/ab.py --scenario fresh-stream`,
/// gave 0.82 s both (0.78-0.89 s and 0.77-0.84 s), 2026-12-03.
pub struct LayerHasher {
    empty: Receiver<AlignedBuf>,
    recycle: SyncSender<AlignedBuf>,
    permits: Receiver<()>,
    release: SyncSender<()>,
}

/// A layer's digest, still being computed.
pub struct PendingDigest {
    size: u64,
    /// From the layer's hash thread, which is not joined: a finished one leaves nothing behind.
    result: Receiver<Digest>,
}

impl PendingDigest {
    /// Wait for the hash: (diff_id, size).
    pub fn wait(self) -> (Digest, u64) {
        let digest = self
            .result
            .recv()
            .expect("the layer's hash thread sends its digest unless it panicked");
        (digest, self.size)
    }
}

impl LayerHasher {
    /// `buffers` buffers of 1 MiB shared by all layers (at least 2), and at most `threads`
    /// layers hashed at once (at least 1).
    pub fn new(buffers: usize, threads: usize) -> Self {
        let buffers = buffers.max(2);
        let threads = threads.max(1);
        let (recycle, empty) = sync_channel(buffers);
        for _ in 0..buffers {
            recycle
                .send(AlignedBuf::zeroed(HASH_BUFFER))
                .expect("room for every buffer");
        }
        let (release, permits) = sync_channel(threads);
        for _ in 0..threads {
            release.send(()).expect("room for every permit");
        }
        LayerHasher {
            empty,
            recycle,
            permits,
            release,
        }
    }

    /// Read a layer to its end and start hashing it; the digest comes from
    /// [`PendingDigest::wait`]. `on_read` gets the byte count of every read. A read error stops
    /// this layer's hash and is returned here.
    pub fn hash(
        &self,
        mut reader: impl Read,
        mut on_read: impl FnMut(u64),
    ) -> Result<PendingDigest, BlobError> {
        self.permits.recv().expect("the hasher holds a sender of permits");
        let (full_tx, full_rx) = std::sync::mpsc::channel::<(AlignedBuf, usize)>();
        let (result_tx, result) = sync_channel(1);
        let recycle = self.recycle.clone();
        let release = self.release.clone();
        let thread = std::thread::spawn(move || {
            let mut hasher = Sha256::new();
            for (buffer, len) in full_rx {
                hasher.update(&buffer[..len]);
                // The reader may be gone; then the buffer is simply dropped.
                let _ = recycle.send(buffer);
            }
            let _ = result_tx.send(Digest::from_hasher(hasher));
            let _ = release.send(());
        });
        let mut size = 0u64;
        loop {
            let mut buffer = self.empty.recv().expect("the hasher holds a sender of buffers");
            // One read per buffer, however short: a read of a whole buffer passes a pipe's
            // BufReader by (it copies straight into `buffer`), where filling the buffer
            // would copy most of the stream once more through the BufReader's own.
            let read = loop {
                match reader.read(&mut buffer) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    other => break other,
                }
            };
            match read {
                Ok(0) => {
                    self.recycle
                        .send(buffer)
                        .expect("room for a buffer taken from the pool");
                    break;
                }
                Ok(n) => {
                    size += n as u64;
                    on_read(n as u64);
                    full_tx
                        .send((buffer, n))
                        .expect("the hash thread runs until its layer's sender is dropped");
                }
                Err(e) => {
                    self.recycle
                        .send(buffer)
                        .expect("room for a buffer taken from the pool");
                    drop(full_tx);
                    // Its digest is of no use; it ends when its queue is drained.
                    let _ = thread.join();
                    return Err(BlobError::Read(e));
                }
            }
        }
        drop(full_tx);
        Ok(PendingDigest { size, result })
    }
}

/// One block of input on its way to a worker.
struct Job {
    input: AlignedBuf,
}

/// Compress `reader` (an uncompressed layer tar) and hash both sides in one pass, with
/// `workers` threads (1 = no parallelism; the output is the same either way).
///
/// `sink` receives the compressed blob in order, in chunks; if it returns `SinkClosed` the work
/// stops with `BlobError::SinkClosed`. `on_read` gets the byte count of every block read, for
/// progress. Memory in flight is a few blocks per worker.
pub fn compress_layer(
    reader: impl Read,
    compression: Compression,
    workers: usize,
    mut sink: impl FnMut(Bytes) -> Result<(), SinkClosed> + Send,
    on_read: impl FnMut(u64),
) -> Result<LayerDigests, BlobError> {
    let workers = workers.max(1);
    std::thread::scope(|scope| {
        let mut job_senders = Vec::with_capacity(workers);
        let mut done_receivers = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (job_tx, job_rx) = sync_channel::<Job>(1);
            let (done_tx, done_rx) = sync_channel::<Result<Vec<u8>, BlobError>>(1);
            scope.spawn(move || compress_worker(compression, job_rx, done_tx));
            job_senders.push(job_tx);
            done_receivers.push(done_rx);
        }
        let collector = scope.spawn(move || collect(done_receivers, &mut sink));
        let read = read_blocks(reader, compression.algorithm, &job_senders, on_read);
        drop(job_senders);
        let collected = collector
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        match (read, collected) {
            (Ok((diff_id, uncompressed_size)), Ok((digest, size))) => Ok(LayerDigests {
                diff_id,
                uncompressed_size,
                digest,
                size,
            }),
            // A read error is the cause; the collector only saw the pipeline stop.
            (Err(err @ BlobError::Read(_)), _) => Err(err),
            (_, Err(err)) | (Err(err), Ok(_)) => Err(err),
        }
    })
}

/// The reader side: cut the input into fixed blocks, hash it, deal blocks to workers in turn.
/// Returns (diff_id, uncompressed size).
fn read_blocks(
    mut reader: impl Read,
    algorithm: Algorithm,
    workers: &[SyncSender<Job>],
    mut on_read: impl FnMut(u64),
) -> Result<(Digest, u64), BlobError> {
    let block_size = algorithm.block_size();
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut worker = workers.iter().cycle();
    loop {
        let input = AlignedBuf::read_from(&mut reader, block_size).map_err(BlobError::Read)?;
        let at_end = input.len() < block_size;
        // An empty input is one empty block (a valid empty member); otherwise an empty read
        // only means the previous block ended exactly at the end.
        if input.is_empty() && total > 0 {
            break;
        }
        hasher.update(&*input);
        total += input.len() as u64;
        on_read(input.len() as u64);
        let next = worker.next().expect("at least one worker");
        next.send(Job { input }).map_err(|_| BlobError::SinkClosed)?;
        if at_end {
            break;
        }
    }
    Ok((Digest::from_hasher(hasher), total))
}

fn compress_worker(
    compression: Compression,
    jobs: Receiver<Job>,
    done: SyncSender<Result<Vec<u8>, BlobError>>,
) {
    let mut encoder = match Encoder::new(compression) {
        Ok(encoder) => encoder,
        Err(err) => {
            let _ = done.send(Err(err));
            return;
        }
    };
    for job in jobs {
        let result = encoder.block(&job.input);
        let failed = result.is_err();
        if done.send(result).is_err() || failed {
            return;
        }
    }
}

/// Receive blocks in sequence (round-robin over the workers), hash them and pass them on, until
/// the workers run out of blocks.
fn collect(
    workers: Vec<Receiver<Result<Vec<u8>, BlobError>>>,
    sink: &mut impl FnMut(Bytes) -> Result<(), SinkClosed>,
) -> Result<(Digest, u64), BlobError> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    for worker in workers.iter().cycle() {
        // Blocks are dealt in turn, so the first worker with nothing more means the end (or
        // that the reader stopped early: its error is then the one reported).
        let Ok(output) = worker.recv() else { break };
        let output = output?;
        hasher.update(&output);
        size += output.len() as u64;
        sink(Bytes::from(output)).map_err(|SinkClosed| BlobError::SinkClosed)?;
    }
    Ok((Digest::from_hasher(hasher), size))
}

enum Encoder {
    /// The compressor and a scratch buffer of `gzip_compress_bound(GZIP_BLOCK)` bytes.
    Gzip(libdeflater::Compressor, Vec<u8>),
    Zstd(zstd::bulk::Compressor<'static>),
}

impl Encoder {
    fn new(compression: Compression) -> Result<Self, BlobError> {
        let level = compression.level;
        Ok(match compression.algorithm {
            Algorithm::Gzip => {
                let level = libdeflater::CompressionLvl::new(level).map_err(|_| BlobError::Level {
                    algorithm: "gzip",
                    level,
                    min: *Algorithm::Gzip.levels().start(),
                    max: *Algorithm::Gzip.levels().end(),
                })?;
                let mut compressor = libdeflater::Compressor::new(level);
                let scratch = vec![0; compressor.gzip_compress_bound(GZIP_BLOCK)];
                Encoder::Gzip(compressor, scratch)
            }
            Algorithm::Zstd => {
                Encoder::Zstd(
                    zstd::bulk::Compressor::new(level).map_err(|source| BlobError::Compress {
                        algorithm: "zstd",
                        source,
                    })?,
                )
            }
        })
    }

    fn block(&mut self, input: &[u8]) -> Result<Vec<u8>, BlobError> {
        match self {
            Encoder::Gzip(compressor, scratch) => {
                let size = compressor
                    .gzip_compress(input, scratch)
                    .map_err(|err| BlobError::Compress {
                        algorithm: "gzip",
                        source: io::Error::other(format!("libdeflate: {err:?}")),
                    })?;
                // Copied out at its exact size: what waits for the upload is the compressed
                // size, not the scratch buffer's worst case.
                Ok(scratch[..size].to_vec())
            }
            Encoder::Zstd(compressor) => compressor.compress(input).map_err(|source| BlobError::Compress {
                algorithm: "zstd",
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Input with some structure (so that compression does something) and some noise.
    fn sample(len: usize) -> Vec<u8> {
        let mut state = 0x2545_f491_u32;
        (0..len)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                if (i / 4096) % 3 == 0 {
                    (state & 0xff) as u8
                } else {
                    b"nix store path /nix/store/abc-hello-2.12/bin/hello\n"[i % 51]
                }
            })
            .collect()
    }

    /// A reader that hands out at most `step` bytes per read, to show chunking does not matter.
    struct Dribble<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn compress(
        data: &[u8],
        compression: Compression,
        workers: usize,
        step: usize,
    ) -> (LayerDigests, Vec<u8>) {
        let mut out = Vec::new();
        let mut read = 0u64;
        let digests = compress_layer(
            Dribble { data, step },
            compression,
            workers,
            |chunk| {
                out.extend_from_slice(&chunk);
                Ok(())
            },
            |n| read += n,
        )
        .unwrap();
        assert_eq!(read, data.len() as u64);
        (digests, out)
    }

    fn gunzip(blob: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(blob)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn gzip_output_is_valid_and_digests_match_both_sides() {
        let data = sample(3 * GZIP_BLOCK + 12345);
        let (digests, blob) = compress(&data, Compression::default(), 2, 70_000);
        assert_eq!(gunzip(&blob), data);
        assert_eq!(digests.diff_id, Digest::sha256_of(&data));
        assert_eq!(digests.uncompressed_size, data.len() as u64);
        assert_eq!(digests.digest, Digest::sha256_of(&blob));
        assert_eq!(digests.size, blob.len() as u64);
        assert!(
            blob.len() < data.len() / 2,
            "compressed {} of {}",
            blob.len(),
            data.len()
        );
    }

    #[test]
    fn output_does_not_depend_on_workers_or_read_sizes() {
        for compression in [
            Compression::default(),
            Compression::new(Algorithm::Gzip, Some(6)).unwrap(),
            Compression::new(Algorithm::Zstd, None).unwrap(),
        ] {
            let data = sample(2 * ZSTD_BLOCK + 777);
            let (reference, blob) = compress(&data, compression, 1, 1 << 20);
            for (workers, step) in [(2, 4096), (3, 1000), (8, 333_333)] {
                let (digests, other) = compress(&data, compression, workers, step);
                assert_eq!(
                    digests, reference,
                    "{compression:?} workers={workers} step={step}"
                );
                assert_eq!(other, blob);
            }
        }
    }

    #[test]
    fn sizes_at_block_boundaries_round_trip() {
        for len in [0, 1, GZIP_BLOCK - 1, GZIP_BLOCK, GZIP_BLOCK + 1, 2 * GZIP_BLOCK] {
            let data = sample(len);
            let (digests, blob) = compress(&data, Compression::default(), 2, 50_000);
            assert_eq!(gunzip(&blob), data, "len {len}");
            assert_eq!(digests.diff_id, Digest::sha256_of(&data));
        }
    }

    #[test]
    fn gzip_tool_accepts_the_output() {
        let data = sample(GZIP_BLOCK * 2 + 5);
        let (_, blob) = compress(&data, Compression::default(), 2, 1 << 16);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("layer.gz");
        std::fs::write(&path, &blob).unwrap();
        let status = std::process::Command::new("gzip")
            .arg("-t")
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success(), "gzip -t rejected the blob");
    }

    #[test]
    fn zstd_output_decodes_as_concatenated_frames() {
        let data = sample(ZSTD_BLOCK * 2 + 99);
        let compression = Compression::new(Algorithm::Zstd, Some(3)).unwrap();
        let (digests, blob) = compress(&data, compression, 2, 100_000);
        assert_eq!(zstd::decode_all(&blob[..]).unwrap(), data);
        assert_eq!(digests.digest, Digest::sha256_of(&blob));
    }

    #[test]
    fn golden_digest_of_the_block_format() {
        // Pinned: layer plans store digests made by this format. If this changes, every plan
        // built before must be rebuilt, so the format must not change silently.
        let data = sample(GZIP_BLOCK + 1000);
        let (digests, _) = compress(&data, Compression::default(), 2, 4096);
        assert_eq!(digests.digest.as_str(), GOLDEN_GZIP2);
        assert_eq!(Compression::default().key(), "gzip-2-libdeflate-1.26");
    }

    const GOLDEN_GZIP2: &str = "sha256:84dd02b8fe0bd46076da45f26c8162bf7fdb0905c4e285dbe413add7ab71d21d";

    #[test]
    fn gzip_is_one_member_per_block_each_complete() {
        let data = sample(2 * GZIP_BLOCK + 5);
        let (_, blob) = compress(&data, Compression::default(), 2, 1 << 16);
        // Walk the members with a single-member decoder: each must hold exactly one block.
        let mut rest = &blob[..];
        let mut blocks = Vec::new();
        while !rest.is_empty() {
            let mut decoder = flate2::bufread::GzDecoder::new(rest);
            let mut block = Vec::new();
            decoder.read_to_end(&mut block).unwrap();
            let header = decoder.header().expect("a gzip header");
            assert_eq!((header.mtime(), header.filename()), (0, None), "no name, mtime 0");
            blocks.push(block);
            rest = decoder.into_inner();
        }
        let sizes: Vec<usize> = blocks.iter().map(Vec::len).collect();
        assert_eq!(sizes, [GZIP_BLOCK, GZIP_BLOCK, 5]);
        assert_eq!(blocks.concat(), data);
    }

    #[test]
    fn plans_without_an_engine_were_zlib_rs_and_do_not_match() {
        let old: Compression = serde_json::from_str(r#"{"algorithm":"gzip","level":2}"#).unwrap();
        assert_eq!(old.engine, Engine::ZlibRs);
        assert_ne!(
            old,
            Compression::default(),
            "their digests are not ours to reproduce"
        );
        let ours: Compression =
            serde_json::from_str(&serde_json::to_string(&Compression::default()).unwrap()).unwrap();
        assert_eq!(ours, Compression::default());
    }

    #[test]
    fn read_errors_are_reported_as_such() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, "truncated"))
            }
        }
        let err = compress_layer(Failing, Compression::default(), 2, |_| Ok(()), |_| {}).unwrap_err();
        assert!(matches!(err, BlobError::Read(_)), "{err:?}");
    }

    #[test]
    fn a_closed_sink_stops_the_work() {
        let data = sample(4 * GZIP_BLOCK);
        let err =
            compress_layer(&data[..], Compression::default(), 2, |_| Err(SinkClosed), |_| {}).unwrap_err();
        assert!(matches!(err, BlobError::SinkClosed), "{err:?}");
    }

    #[test]
    fn hash_layer_matches_sha256_for_any_size_and_read_pattern() {
        for len in [0, 1, 1024 * 1024, 3 * 1024 * 1024 + 17] {
            let data = sample(len);
            let mut read = 0;
            let (diff_id, size) = hash_layer(
                Dribble {
                    data: &data,
                    step: 70_001,
                },
                |n| read += n,
            )
            .unwrap();
            assert_eq!(
                (diff_id, size, read),
                (Digest::sha256_of(&data), len as u64, len as u64)
            );
        }
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("cut"))
            }
        }
        assert!(matches!(hash_layer(Failing, |_| {}), Err(BlobError::Read(_))));
    }

    /// Layers are read one after another without anyone waiting for the digests before them:
    /// more layers than threads and buffers go through before any digest is asked for (a
    /// thread's permit and buffers come back without a `wait`), and each digest is the layer's
    /// own. The oracle is sha256 of each layer's bytes.
    #[test]
    fn a_layer_hasher_needs_no_wait_between_layers_and_gives_each_its_own_digest() {
        let hasher = LayerHasher::new(2, 2);
        let layers: Vec<Vec<u8>> = [0, 1, HASH_BUFFER + 1, 5 * HASH_BUFFER / 2, 10, 3 * HASH_BUFFER]
            .iter()
            .enumerate()
            .map(|(i, &len)| sample(len).into_iter().map(|b| b ^ i as u8).collect())
            .collect();
        let pending: Vec<PendingDigest> = layers
            .iter()
            .map(|data| {
                let mut read = 0;
                let pending = hasher
                    .hash(Dribble { data, step: 300_007 }, |n| read += n)
                    .unwrap();
                assert_eq!(read, data.len() as u64);
                pending
            })
            .collect();
        for (data, pending) in layers.iter().zip(pending) {
            assert_eq!(pending.wait(), (Digest::sha256_of(data), data.len() as u64));
        }
    }

    /// Layer bytes are read into page-aligned memory (see [`AlignedBuf`]): every read the
    /// hasher makes, and the first read of every block the compressor makes, whose later reads
    /// follow whole 64 KiB pieces. The reader records where each read that gets bytes lands.
    #[test]
    fn layer_bytes_are_read_into_page_aligned_buffers() {
        struct Recording<'a> {
            data: &'a [u8],
            starts: Vec<usize>,
        }
        impl Read for Recording<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if !self.data.is_empty() {
                    self.starts.push(buf.as_ptr() as usize % IO_ALIGN);
                }
                let n = buf.len().min(self.data.len()).min(64 << 10);
                buf[..n].copy_from_slice(&self.data[..n]);
                self.data = &self.data[n..];
                Ok(n)
            }
        }
        let data = sample(3 * HASH_BUFFER + 5);
        let mut reader = Recording {
            data: &data,
            starts: Vec::new(),
        };
        let (digest, size) = LayerHasher::new(3, 1).hash(&mut reader, |_| {}).unwrap().wait();
        assert_eq!((digest, size), (Digest::sha256_of(&data), data.len() as u64));
        assert!(reader.starts.len() > 3, "{:?}", reader.starts);
        assert!(reader.starts.iter().all(|&at| at == 0), "{:?}", reader.starts);

        let mut reader = Recording {
            data: &data,
            starts: Vec::new(),
        };
        let digests = compress_layer(&mut reader, Compression::default(), 2, |_| Ok(()), |_| {}).unwrap();
        assert_eq!(digests.diff_id, Digest::sha256_of(&data));
        assert!(reader.starts.iter().all(|&at| at == 0), "{:?}", reader.starts);

        let block = AlignedBuf::read_from(&mut &data[..1000], 4096).unwrap();
        assert_eq!((&*block, block.as_ptr() as usize % IO_ALIGN), (&data[..1000], 0));
    }

    /// Reads of every size through an [`AlignedBufReader`] give the bytes in order (the
    /// oracle is the data itself), and every refill lands page-aligned.
    #[test]
    fn an_aligned_buf_reader_reads_like_a_buf_reader() {
        let data = sample(300_001);
        for capacity in [1, 4096, 65_536] {
            for step in [1, 511, 4096, 70_000, 1 << 20] {
                let mut reader = AlignedBufReader::with_capacity(
                    capacity,
                    Dribble {
                        data: &data,
                        step: 9_999,
                    },
                );
                let mut out = Vec::new();
                let mut piece = vec![0; step];
                loop {
                    let n = reader.read(&mut piece).unwrap();
                    if n == 0 {
                        break;
                    }
                    out.extend_from_slice(&piece[..n]);
                }
                assert_eq!(out, data, "capacity {capacity}, reads of {step}");
                assert_eq!(reader.buf.as_ptr() as usize % IO_ALIGN, 0);
            }
        }
        let mut reader = AlignedBufReader::with_capacity(16, &b"line one\nline two\n"[..]);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "line one\n");
    }

    /// A read error ends that layer's hash and leaves the hasher whole: its buffer and thread
    /// come back, and the next layer hashes as before.
    #[test]
    fn a_read_error_leaves_the_layer_hasher_usable() {
        struct FailAfter<'a>(&'a [u8]);
        impl Read for FailAfter<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() {
                    return Err(io::Error::other("cut"));
                }
                let n = buf.len().min(self.0.len()).min(1000);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let hasher = LayerHasher::new(2, 1);
        let data = sample(3 * HASH_BUFFER);
        for _ in 0..3 {
            let err = hasher.hash(FailAfter(&data), |_| {}).err().unwrap();
            assert!(matches!(err, BlobError::Read(_)), "{err:?}");
        }
        let pending = hasher.hash(&data[..], |_| {}).unwrap();
        assert_eq!(pending.wait().0, Digest::sha256_of(&data));
    }

    #[test]
    fn levels_out_of_range_are_rejected() {
        let err = Compression::new(Algorithm::Gzip, Some(13)).unwrap_err();
        assert!(Compression::new(Algorithm::Gzip, Some(12)).is_ok());
        assert_eq!(err.to_string(), "gzip level 13 is out of range: use 1 to 12");
        assert!(Compression::new(Algorithm::Zstd, Some(19)).is_ok());
    }
}
