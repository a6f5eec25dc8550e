//! The docker-archive format (`docker save` v1.2, what dockerTools writes): reading it as a
//! forward-only stream, or indexing it when it is a seekable uncompressed file.
//!
//! Entries: `manifest.json` (`[{"Config", "RepoTags", "Layers"}]`), the config JSON, and one tar
//! per layer (`<id>/layer.tar`; `blobs/sha256/<hex>` in newer docker saves), plus metadata we
//! ignore (`repositories`, `<id>/json`, `<id>/VERSION`). Layers may be symlinks to an earlier
//! layer. Order is not fixed: Nix writes `manifest.json` last, buildImage sorts by name.

use super::ImageError;
use crate::registry::Digest;
use bytes::Bytes;
use std::collections::HashMap;
use std::io::{self, Read};

/// Metadata entries larger than this are refused: configs are kilobytes.
const MAX_METADATA: u64 = 32 << 20;

/// One image of `manifest.json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveManifest {
    pub config: String,
    pub layers: Vec<String>,
}

#[derive(serde::Deserialize)]
struct ManifestItem {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

pub fn parse_manifest(bytes: &[u8], source_name: &str) -> Result<ArchiveManifest, ImageError> {
    let malformed = |detail: String| ImageError::Malformed {
        source_name: source_name.to_string(),
        entry: "manifest.json".into(),
        detail,
    };
    let items: Vec<ManifestItem> = serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
    match <[ManifestItem; 1]>::try_from(items) {
        Ok([item]) => Ok(ArchiveManifest {
            config: normalise(&item.config),
            layers: item.layers.iter().map(|l| normalise(l)).collect(),
        }),
        Err(items) => Err(malformed(format!(
            "it lists {} images; nixfly pushes an archive holding exactly one",
            items.len()
        ))),
    }
}

/// The config's `rootfs.diff_ids`, checked to be sha256 digests.
pub fn config_diff_ids(config: &[u8], source_name: &str, entry: &str) -> Result<Vec<Digest>, ImageError> {
    let malformed = |detail: String| ImageError::Malformed {
        source_name: source_name.to_string(),
        entry: entry.to_string(),
        detail,
    };
    // Only the rootfs is read: the rest of the config is pushed byte for byte, whatever it holds.
    #[derive(serde::Deserialize)]
    struct Config {
        rootfs: oci_spec::image::RootFs,
    }
    let config: Config =
        serde_json::from_slice(config).map_err(|e| malformed(format!("not an image config: {e}")))?;
    config
        .rootfs
        .diff_ids()
        .iter()
        .map(|d| {
            d.parse()
                .map_err(|_| malformed(format!("rootfs.diff_ids has {d:?}, not a sha256 digest")))
        })
        .collect()
}

/// The digest an entry's name suggests for its content, if it has that shape:
/// `<hex>/layer.tar`, `<hex>.tar`, `<hex>.json` or `blobs/sha256/<hex>`. Nix names store layers
/// by their diff_id, but buildImage's layer IDs and base-image layers look the same and are
/// not: a layer's name is only a hint (for skipping), the config's diff_ids decide.
pub fn claimed_digest(name: &str) -> Option<Digest> {
    let hex = name
        .strip_suffix("/layer.tar")
        .or_else(|| name.strip_suffix(".tar"))
        .or_else(|| name.strip_suffix(".json"))
        .or_else(|| name.strip_prefix("blobs/sha256/"))?;
    format!("sha256:{hex}").parse().ok()
}

/// Entry names as written by different tools: `./x` and `x` are the same entry.
fn normalise(name: &str) -> String {
    name.trim_start_matches("./").trim_end_matches('/').to_string()
}

/// Refuse absolute names and `..` components: such an archive was not made by dockerTools and
/// would point outside itself.
pub fn check_entry_name(name: &str, source_name: &str) -> Result<(), ImageError> {
    if name.starts_with('/') || name.split('/').any(|part| part == "..") {
        return Err(ImageError::UnsafeEntry {
            source_name: source_name.to_string(),
            entry: name.to_string(),
        });
    }
    Ok(())
}

/// `blobs/sha256/<hex>` entries (newer docker saves) up to this size are kept in memory: one of
/// them is the config, and which one is only known from `manifest.json` at the end.
const SMALL_BLOB: u64 = 1 << 20;

/// Small entries kept in memory (manifest, configs); the rest are layers, handled as they pass.
fn is_metadata(name: &str, size: u64) -> bool {
    matches!(
        name,
        "manifest.json" | "repositories" | "index.json" | "oci-layout"
    ) || name.ends_with(".json")
        || name.ends_with("/json")
        || name.ends_with("/VERSION")
        || (name.starts_with("blobs/") && size <= SMALL_BLOB)
}

/// Symlinks and hardlinks between entries (docker saves a repeated layer as a link).
#[derive(Default)]
struct Links(HashMap<String, String>);

impl Links {
    fn add(&mut self, entry: &tar::EntryType, name: &str, target: &[u8]) {
        let target = String::from_utf8_lossy(target);
        let resolved = if entry.is_symlink() {
            // Relative to the link's directory.
            let dir = name.rsplit_once('/').map_or("", |(dir, _)| dir);
            let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
            for part in target.split('/') {
                match part {
                    "" | "." => {}
                    ".." => {
                        parts.pop();
                    }
                    part => parts.push(part),
                }
            }
            parts.join("/")
        } else {
            normalise(&target)
        };
        self.0.insert(name.to_string(), resolved);
    }

    /// Follow links (a few hops at most: a loop is not an entry).
    fn resolve<'a>(&'a self, mut name: &'a str) -> &'a str {
        for _ in 0..8 {
            match self.0.get(name) {
                Some(target) => name = target,
                None => break,
            }
        }
        name
    }
}

/// A layer entry as it passes in a stream.
pub struct ArchiveLayer<'a> {
    pub name: &'a str,
    pub size: u64,
    /// The diff_id the entry's name suggests: a hint, checked against the config at the end.
    pub claimed_diff_id: Option<Digest>,
    /// The entry's bytes; reading past a truncated archive is an error, not a short read.
    pub reader: &'a mut dyn Read,
    /// The entry was kept in memory as possible metadata and is handed over after the stream
    /// ended, instead of being read from the stream as it passed.
    pub held: bool,
}

/// An archive read to its end: the config blob and whatever `on_layer` returned for each
/// layer, in manifest order.
pub struct StreamedImage<T> {
    pub config: Bytes,
    pub layers: Vec<T>,
    /// The layers' names in manifest.json, in its order.
    pub layer_names: Vec<String>,
    /// The regular-file entry each of those names is, its links followed.
    pub layer_entries: Vec<String>,
}

/// Read a docker-archive tar stream once. `on_layer` must read its entry to the end and
/// returns the entry's sha256 (its diff_id) and a result kept for the end, when every layer's
/// sha256 is checked against the config's diff_ids.
pub fn read_stream<T: Clone, E: From<ImageError>>(
    reader: impl Read,
    source_name: &str,
    on_layer: impl FnMut(ArchiveLayer<'_>) -> Result<(Digest, T), E>,
) -> Result<StreamedImage<T>, E> {
    read_stream_deferred(reader, source_name, on_layer, Ok)
}

/// [`read_stream`] for an `on_layer` whose sha256 may still be being computed when it
/// returns (`D`): `resolve` turns each into the digest, once the whole stream is read.
pub fn read_stream_deferred<D, T: Clone, E: From<ImageError>>(
    reader: impl Read,
    source_name: &str,
    mut on_layer: impl FnMut(ArchiveLayer<'_>) -> Result<(D, T), E>,
    mut resolve: impl FnMut(D) -> Result<Digest, E>,
) -> Result<StreamedImage<T>, E> {
    let read_error = |source| ImageError::Read {
        source_name: source_name.to_string(),
        source,
    };
    let mut archive = tar::Archive::new(reader);
    let mut metadata: HashMap<String, Bytes> = HashMap::new();
    let mut read: Vec<(String, D, T)> = Vec::new();
    let mut links = Links::default();
    let mut saw_entry = false;
    for entry in archive.entries().map_err(read_error)? {
        let mut entry = entry.map_err(|e| header_error(e, source_name))?;
        saw_entry = true;
        let Some(name) = file_name(&entry, &mut links, source_name)? else {
            continue;
        };
        let size = entry.size();
        if is_metadata(&name, size) {
            metadata.insert(name.clone(), read_metadata(&mut entry, &name, size, source_name)?);
            continue;
        }
        let mut strict = StrictEntry {
            inner: &mut entry,
            name: &name,
            size,
            read: 0,
        };
        let mut content = layer_content(&mut strict);
        let (diff_id, result) = on_layer(ArchiveLayer {
            name: &name,
            size,
            claimed_diff_id: claimed_digest(&name),
            reader: &mut content,
            held: false,
        })?;
        read.push((name, diff_id, result));
    }
    if !saw_entry {
        return Err(ImageError::NotAnArchive {
            source_name: source_name.to_string(),
            detail: "the tar stream has no entries".into(),
        }
        .into());
    }
    let mut layers: HashMap<String, (Digest, T)> = HashMap::with_capacity(read.len());
    for (name, diff_id, result) in read {
        layers.insert(name, (resolve(diff_id)?, result));
    }
    let manifest = parse_manifest(required(&metadata, "manifest.json", source_name)?, source_name)?;
    let config = required(&metadata, links.resolve(&manifest.config), source_name)?.clone();
    check_config_name(&manifest.config, &config, source_name)?;
    let diff_ids = config_diff_ids(&config, source_name, &manifest.config)?;
    check_layer_count(&manifest, &diff_ids, source_name)?;
    let mut ordered = Vec::with_capacity(manifest.layers.len());
    let mut entries = Vec::with_capacity(manifest.layers.len());
    for (name, declared) in manifest.layers.iter().zip(&diff_ids) {
        let resolved = links.resolve(name);
        entries.push(resolved.to_string());
        // A small layer kept in memory as possible metadata is handled now.
        if !layers.contains_key(resolved)
            && let Some(bytes) = metadata.get(resolved)
        {
            let mut held = &bytes[..];
            let mut content = layer_content(&mut held);
            let (diff_id, result) = on_layer(ArchiveLayer {
                name: resolved,
                size: bytes.len() as u64,
                claimed_diff_id: claimed_digest(resolved),
                reader: &mut content,
                held: true,
            })?;
            layers.insert(resolved.to_string(), (resolve(diff_id)?, result));
        }
        let (diff_id, result) = layers.get(resolved).ok_or_else(|| ImageError::MissingEntry {
            source_name: source_name.to_string(),
            entry: format!("layer {name} (listed in manifest.json)"),
        })?;
        if diff_id != declared {
            return Err(ImageError::DigestMismatch {
                source_name: source_name.to_string(),
                entry: name.clone(),
                expected: declared.clone(),
                actual: diff_id.clone(),
            }
            .into());
        }
        ordered.push(result.clone());
    }
    Ok(StreamedImage {
        config,
        layers: ordered,
        layer_names: manifest.layers,
        layer_entries: entries,
    })
}

/// The name of a regular-file entry, checked; links are recorded, other entries skipped.
fn file_name<R: Read>(
    entry: &tar::Entry<R>,
    links: &mut Links,
    source_name: &str,
) -> Result<Option<String>, ImageError> {
    let name = normalise(&String::from_utf8_lossy(&entry.path_bytes()));
    check_entry_name(&name, source_name)?;
    let kind = entry.header().entry_type();
    if kind.is_symlink() || kind.is_hard_link() {
        if let Some(target) = entry.link_name_bytes() {
            links.add(&kind, &name, &target);
        }
        return Ok(None);
    }
    Ok(kind.is_file().then_some(name))
}

/// An error met while reading a tar header. Decoder and truncation errors pass through; the
/// tar crate's own complaints quote the broken header's bytes, so only their first words
/// are kept.
fn header_error(error: io::Error, source_name: &str) -> ImageError {
    let ours = error
        .get_ref()
        .is_some_and(|inner| inner.is::<super::CorruptCompression>() || inner.is::<TruncatedEntry>());
    if ours || error.kind() == io::ErrorKind::UnexpectedEof {
        return ImageError::Read {
            source_name: source_name.to_string(),
            source: error,
        };
    }
    let message = error.to_string();
    let detail = message.split(':').next().unwrap_or(&message).trim().to_string();
    ImageError::CorruptTar {
        source_name: source_name.to_string(),
        detail,
    }
}

fn required<'a>(
    metadata: &'a HashMap<String, Bytes>,
    name: &str,
    source_name: &str,
) -> Result<&'a Bytes, ImageError> {
    metadata.get(name).ok_or_else(|| ImageError::MissingEntry {
        source_name: source_name.to_string(),
        entry: name.to_string(),
    })
}

fn check_config_name(name: &str, config: &[u8], source_name: &str) -> Result<(), ImageError> {
    if let Some(claimed) = claimed_digest(name) {
        let actual = Digest::sha256_of(config);
        if actual != claimed {
            return Err(ImageError::DigestMismatch {
                source_name: source_name.to_string(),
                entry: name.to_string(),
                expected: claimed,
                actual,
            });
        }
    }
    Ok(())
}

fn check_layer_count(
    manifest: &ArchiveManifest,
    diff_ids: &[Digest],
    source_name: &str,
) -> Result<(), ImageError> {
    if manifest.layers.len() != diff_ids.len() {
        return Err(ImageError::Malformed {
            source_name: source_name.to_string(),
            entry: "manifest.json".into(),
            detail: format!(
                "it lists {} layers but the config {} has {} diff_ids",
                manifest.layers.len(),
                manifest.config,
                diff_ids.len()
            ),
        });
    }
    Ok(())
}

fn read_metadata(
    entry: &mut impl Read,
    name: &str,
    size: u64,
    source_name: &str,
) -> Result<Bytes, ImageError> {
    if size > MAX_METADATA {
        return Err(ImageError::Malformed {
            source_name: source_name.to_string(),
            entry: name.to_string(),
            detail: format!("{size} bytes is too large for image metadata"),
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    let mut strict = StrictEntry {
        inner: entry,
        name,
        size,
        read: 0,
    };
    strict
        .read_to_end(&mut bytes)
        .map_err(|source| ImageError::Read {
            source_name: source_name.to_string(),
            source,
        })?;
    Ok(Bytes::from(bytes))
}

/// An entry reader that fails when the archive ends before the entry's declared size (the
/// tar crate would return a short read).
/// A layer entry's content, the uncompressed tar its diff_id is the digest of: an entry that
/// is a gzip or zstd stream is decompressed. `docker save` with containerd's image store (the
/// default of Docker 29 and of Docker Desktop since 4.34) writes each layer as its compressed
/// blob, `blobs/sha256/<blob digest>`, while the config's diff_ids stay those of the tars
/// (containerd `core/images/archive/exporter.go`); skopeo decompresses such layers as it reads
/// them (containers/image `docker/internal/tarfile/src.go`, `prepareLayerData`, `GetBlob`).
///
/// Nothing is read before the first read: what reads the stream around it (a layer plan noting
/// where each layer starts) sees the entry begin where it does.
pub fn layer_content<R: Read>(reader: R) -> LayerContent<R> {
    LayerContent(Content::Unread(reader))
}

/// What [`layer_content`] reads: the entry as it is, or decompressed.
pub struct LayerContent<R: Read>(Content<R>);

enum Content<R: Read> {
    Unread(R),
    Tar(Peeked<R>),
    Gzip(Box<flate2::read::MultiGzDecoder<io::BufReader<Peeked<R>>>>),
    Zstd(zstd::stream::read::Decoder<'static, io::BufReader<Peeked<R>>>),
    /// Its first bytes could not be read.
    Failed,
}

impl<R: Read> Read for LayerContent<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if matches!(self.0, Content::Unread(_)) {
            let Content::Unread(mut reader) = std::mem::replace(&mut self.0, Content::Failed) else {
                unreachable!("matched just above")
            };
            // The first read goes straight into `buf`, as every read would without this
            // check: a read of 4 bytes first would leave the rest of the layer's copies out of
            // the kernel's alignment with the caller's page-aligned buffers, and a fresh
            // runner's unchanged 1.1 GB stream took 0.05 s longer (`bench/ab.py`, 5 runs each).
            let mut n = 0;
            while n < MAGIC.min(buf.len()) {
                match reader.read(&mut buf[n..])? {
                    0 => break,
                    read => n += read,
                }
            }
            let head = if buf.len() < MAGIC {
                // Too small a read to tell: the rest of the magic is read aside.
                let mut head = buf[..n].to_vec();
                (&mut reader).take((MAGIC - n) as u64).read_to_end(&mut head)?;
                head
            } else {
                buf[..n].to_vec()
            };
            let peeked = |head| Peeked {
                head,
                at: 0,
                inner: reader,
            };
            self.0 = match super::ArchiveFormat::sniff(&head) {
                Some(super::ArchiveFormat::Gzip) => Content::Gzip(Box::new(
                    flate2::read::MultiGzDecoder::new(io::BufReader::with_capacity(256 * 1024, peeked(head))),
                )),
                Some(super::ArchiveFormat::Zstd) => {
                    Content::Zstd(zstd::stream::read::Decoder::new(peeked(head))?)
                }
                // The tar itself: what was read is in `buf` already, but for what a short
                // `buf` could not take.
                _ => {
                    let aside = head[n..].to_vec();
                    self.0 = Content::Tar(peeked(aside));
                    return Ok(n);
                }
            };
        }
        match &mut self.0 {
            Content::Tar(r) => r.read(buf),
            Content::Gzip(r) => r.read(buf),
            Content::Zstd(r) => r.read(buf),
            Content::Unread(_) | Content::Failed => {
                Err(io::Error::other("the layer's first bytes could not be read"))
            }
        }
    }
}

/// How many first bytes tell a gzip or zstd stream from a tar (their magic numbers).
const MAGIC: usize = 4;

/// A reader whose first bytes were read ahead to tell what it holds; they are handed out first.
pub struct Peeked<R> {
    head: Vec<u8>,
    at: usize,
    inner: R,
}

impl<R: Read> Read for Peeked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at < self.head.len() {
            let n = (self.head.len() - self.at).min(buf.len());
            buf[..n].copy_from_slice(&self.head[self.at..self.at + n]);
            self.at += n;
            return Ok(n);
        }
        self.inner.read(buf)
    }
}

struct StrictEntry<'a, R> {
    inner: R,
    name: &'a str,
    size: u64,
    read: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("the archive ends inside entry {name} after {read} of {size} bytes: it is truncated")]
pub struct TruncatedEntry {
    name: String,
    read: u64,
    size: u64,
}

impl<R: Read> Read for StrictEntry<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if n == 0 && !buf.is_empty() && self.read < self.size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                TruncatedEntry {
                    name: self.name.to_string(),
                    read: self.read,
                    size: self.size,
                },
            ));
        }
        Ok(n)
    }
}

/// Reads a file from a position without moving a shared cursor, so that several layers of one
/// file can be read at once.
pub struct PositionedReader<F> {
    pub file: F,
    pub offset: u64,
}

impl<F: std::borrow::Borrow<std::fs::File>> Read for PositionedReader<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.borrow().read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// Where a layer's bytes are in an uncompressed archive file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub size: u64,
}

/// An uncompressed archive file read through its headers only (bodies are skipped by seeking).
pub struct ArchiveIndex {
    pub config: Bytes,
    pub diff_ids: Vec<Digest>,
    pub layers: Vec<Extent>,
    /// The layers' names in manifest.json, in its order.
    pub layer_names: Vec<String>,
    /// The regular-file entry each of those names is, its links followed.
    pub layer_entries: Vec<String>,
}

pub fn index_file(file: &std::fs::File, source_name: &str) -> Result<ArchiveIndex, ImageError> {
    let read_error = |source| ImageError::Read {
        source_name: source_name.to_string(),
        source,
    };
    let file_size = file.metadata().map_err(read_error)?.len();
    // Whoever looked at the magic bytes moved the shared cursor.
    io::Seek::seek(&mut &*file, io::SeekFrom::Start(0)).map_err(read_error)?;
    let mut archive = tar::Archive::new(file);
    let mut extents: HashMap<String, Extent> = HashMap::new();
    let mut links = Links::default();
    for entry in archive.entries_with_seek().map_err(read_error)? {
        let entry = entry.map_err(|e| header_error(e, source_name))?;
        if let Some(name) = file_name(&entry, &mut links, source_name)? {
            let extent = Extent {
                offset: entry.raw_file_position(),
                size: entry.size(),
            };
            if extent.offset + extent.size > file_size {
                return Err(read_error(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    TruncatedEntry {
                        name,
                        read: file_size.saturating_sub(extent.offset),
                        size: extent.size,
                    },
                )));
            }
            extents.insert(name, extent);
        }
    }
    let read_entry = |name: &str| -> Result<Bytes, ImageError> {
        let extent = extents.get(name).ok_or_else(|| ImageError::MissingEntry {
            source_name: source_name.to_string(),
            entry: name.to_string(),
        })?;
        let mut at = PositionedReader {
            file,
            offset: extent.offset,
        }
        .take(extent.size);
        read_metadata(&mut at, name, extent.size, source_name)
    };
    let manifest = parse_manifest(&read_entry("manifest.json")?, source_name)?;
    let config = read_entry(links.resolve(&manifest.config))?;
    check_config_name(&manifest.config, &config, source_name)?;
    let diff_ids = config_diff_ids(&config, source_name, &manifest.config)?;
    check_layer_count(&manifest, &diff_ids, source_name)?;
    let mut layers = Vec::with_capacity(diff_ids.len());
    let mut layer_entries = Vec::with_capacity(diff_ids.len());
    for name in &manifest.layers {
        let resolved = links.resolve(name);
        let extent = extents.get(resolved).ok_or_else(|| ImageError::MissingEntry {
            source_name: source_name.to_string(),
            entry: format!("layer {name} (listed in manifest.json)"),
        })?;
        layers.push(*extent);
        layer_entries.push(resolved.to_string());
    }
    Ok(ArchiveIndex {
        config,
        diff_ids,
        layers,
        layer_names: manifest.layers,
        layer_entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer entry reads as its tar whether it is the tar, its gzip or its zstd, with reads
    /// of any size (down to 1 byte, less than the magic numbers).
    #[test]
    fn layer_content_reads_the_tar_from_any_entry_with_any_read_size() {
        use std::io::Write as _;
        let tar = b"ustar-looking layer bytes that are not gzip or zstd".repeat(300);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::stream::encode_all(&tar[..], 1).unwrap();
        for (what, entry) in [("tar", &tar), ("gzip", &gz), ("zstd", &zst)] {
            for size in [1, 3, 4, 5, 4096, 1 << 20] {
                let mut content = layer_content(&entry[..]);
                let mut out = Vec::new();
                let mut buf = vec![0; size];
                loop {
                    let n = content.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    out.extend_from_slice(&buf[..n]);
                }
                assert!(out == tar, "{what}, reads of {size}: {} bytes", out.len());
            }
        }
        // Shorter than the magic numbers, and empty.
        let mut out = Vec::new();
        layer_content(&b"ab"[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, b"ab");
        out.clear();
        layer_content(&b""[..]).read_to_end(&mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn claimed_digests_come_from_nix_and_docker_names() {
        let hex = "a".repeat(64);
        for name in [
            format!("{hex}/layer.tar"),
            format!("{hex}.tar"),
            format!("blobs/sha256/{hex}"),
            format!("{hex}.json"),
        ] {
            assert_eq!(
                claimed_digest(&name).map(String::from),
                Some(format!("sha256:{hex}")),
                "{name}"
            );
        }
        assert_eq!(claimed_digest("0123abcd/layer.tar"), None);
        assert_eq!(claimed_digest(&format!("{}/layer.tar", "A".repeat(64))), None);
    }

    #[test]
    fn unsafe_names_are_refused() {
        for name in ["/etc/passwd", "../x/layer.tar", "a/../../b", "a/.."] {
            assert!(
                matches!(check_entry_name(name, "t"), Err(ImageError::UnsafeEntry { .. })),
                "{name}"
            );
        }
        for name in ["manifest.json", "abc/layer.tar", "a..b/layer.tar"] {
            assert!(check_entry_name(name, "t").is_ok(), "{name}");
        }
    }

    #[test]
    fn manifest_must_hold_exactly_one_image() {
        let one = br#"[{"Config":"c.json","RepoTags":["x:y"],"Layers":["./a/layer.tar"]}]"#;
        assert_eq!(
            parse_manifest(one, "t").unwrap(),
            ArchiveManifest {
                config: "c.json".into(),
                layers: vec!["a/layer.tar".into()]
            }
        );
        let err = parse_manifest(b"[]", "t").unwrap_err();
        assert!(err.to_string().contains("lists 0 images"), "{err}");
        let err = parse_manifest(b"{", "t").unwrap_err();
        assert!(
            err.to_string().starts_with("t: manifest.json is malformed"),
            "{err}"
        );
    }

    #[test]
    fn config_diff_ids_must_be_digests() {
        let err = config_diff_ids(
            br#"{"rootfs":{"type":"layers","diff_ids":["md5:x"]}}"#,
            "t",
            "c.json",
        )
        .unwrap_err();
        assert!(err.to_string().contains("not a sha256 digest"), "{err}");
        let err = config_diff_ids(b"{}", "t", "c.json").unwrap_err();
        assert!(err.to_string().contains("not an image config"), "{err}");
    }

    #[test]
    fn symlinks_resolve_relative_to_their_directory() {
        let mut links = Links::default();
        links.add(&tar::EntryType::Symlink, "b/layer.tar", b"../a/layer.tar");
        links.add(&tar::EntryType::Link, "c/layer.tar", b"./b/layer.tar");
        assert_eq!(links.resolve("b/layer.tar"), "a/layer.tar");
        assert_eq!(links.resolve("c/layer.tar"), "a/layer.tar");
        assert_eq!(links.resolve("d/layer.tar"), "d/layer.tar");
    }
}
