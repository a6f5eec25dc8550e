//! The layer plan: what Nix records at build time so that a push needs no image tarball.
//! Schema: `docs/layer-plan.md` (these structs mirror it and refuse unknown fields).
//!
//! The image config is made here too, byte for byte as `stream_layered_image.py` makes it
//! (`json.dumps(image_json, indent=4)`), so an image pushed from a plan has the same config
//! digest (image id) and diff_ids as the one the stream script of the same image produces.

use super::store_tar::{TarOptions, store_tar_reader};
use super::thread_reader::ThreadReader;
use crate::blob::{self, BlobError, Compression, SinkClosed};
use crate::progress::Reporter;
use crate::registry::Digest;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

pub const PLAN_VERSION: u32 = 1;

/// The marker that makes a plan recognisable among other JSON files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlanKind {
    #[serde(rename = "nixfly-layer-plan")]
    LayerPlan,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerPlan {
    pub kind: PlanKind,
    pub version: u32,
    /// The config blob exactly as pushed; its sha256 is the image id.
    pub config: String,
    /// Bottom layer first, in the order of the config's `rootfs.diff_ids`.
    pub layers: Vec<PlannedLayer>,
}

/// One layer: where its bytes come from and what they hash to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedLayer {
    pub source: LayerSource,
    /// The digest of the uncompressed tar (checked to be `sha256:<hex>` when the plan is read).
    pub diff_id: Digest,
    /// Size of the uncompressed tar.
    pub size: u64,
    /// The digest of the compressed blob.
    pub digest: Digest,
    pub compressed_size: u64,
    /// How the blob was compressed; the push regenerates it with exactly this setting.
    pub compression: Compression,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerSource {
    /// The reproducible tar of these store paths, in this order (`store_tar`).
    StorePaths {
        paths: Vec<String>,
        mtime: u64,
        uid: u64,
        gid: u64,
        uname: String,
        gname: String,
    },
    /// An uncompressed layer tar that is already a file (streamLayeredImage's customisation
    /// layer, `<store path>/layer.tar`).
    Tar { path: String },
    /// A layer of the base image (streamLayeredImage's `fromImage`): the entry `member` (as
    /// the base's manifest.json names it) of the uncompressed docker-archive `archive`.
    BaseLayer { archive: String, member: String },
}

impl LayerSource {
    pub fn store_paths(paths: Vec<String>, tar: &TarOptions) -> Self {
        LayerSource::StorePaths {
            paths,
            mtime: tar.mtime,
            uid: tar.uid,
            gid: tar.gid,
            uname: tar.uname.clone(),
            gname: tar.gname.clone(),
        }
    }

    /// The layer's uncompressed tar, made again from the store paths (read under `root` when
    /// given: a chroot store) or read from the tar file. `reporter` hears of a base image
    /// that is slow to read ([`BaseImage::shared`]).
    pub fn open(&self, root: Option<&Path>, reporter: &Reporter) -> Result<Box<dyn Read + Send>, PlanError> {
        match self {
            LayerSource::StorePaths {
                paths,
                mtime,
                uid,
                gid,
                uname,
                gname,
            } => {
                let options = TarOptions {
                    mtime: *mtime,
                    uid: *uid,
                    gid: *gid,
                    uname: uname.clone(),
                    gname: gname.clone(),
                    root: root.map(Path::to_path_buf),
                };
                let tar = store_tar_reader(paths.clone(), options).map_err(PlanError::Spawn)?;
                Ok(Box::new(tar))
            }
            LayerSource::Tar { path } => {
                let file = File::open(path).map_err(|source| PlanError::Read {
                    path: path.clone(),
                    source,
                })?;
                Ok(Box::new(BufReader::with_capacity(1 << 20, file)))
            }
            LayerSource::BaseLayer { archive, member } => {
                BaseImage::shared(archive, reporter)?.open_layer(member)
            }
        }
    }

    /// The store paths or files this layer is made from.
    pub fn paths(&self) -> Vec<&str> {
        match self {
            LayerSource::StorePaths { paths, .. } => paths.iter().map(String::as_str).collect(),
            LayerSource::Tar { path } => vec![path.as_str()],
            LayerSource::BaseLayer { archive, .. } => vec![archive.as_str()],
        }
    }

    /// What the layer is made from, for messages.
    pub fn describe(&self) -> String {
        match self {
            LayerSource::StorePaths { paths, .. } => format!("store paths {}", paths.join(" ")),
            LayerSource::Tar { path } => format!("the layer tar {path}"),
            LayerSource::BaseLayer { archive, member } => {
                format!("{member} of the base image {archive}")
            }
        }
    }

    /// What the stream script names in the layer's history comment (`LayerInfo.paths` in
    /// nixpkgs' stream_layered_image.py): a store layer's paths, and for the customisation
    /// layer the directory it reads `layer.tar` and `checksum` from, not the tar itself.
    /// A base layer's is its entry's name in the base archive (`add_base_layers`).
    fn history_paths(&self) -> Vec<&str> {
        match self {
            LayerSource::Tar { path } => {
                vec![path.strip_suffix("/layer.tar").unwrap_or(path)]
            }
            LayerSource::StorePaths { .. } => self.paths(),
            LayerSource::BaseLayer { member, .. } => vec![member.as_str()],
        }
    }
}

/// A base image (`fromImage`) as a layer plan reads it: a docker-archive, uncompressed
/// (`pullImage`'s, indexed through its headers) or compressed (buildLayeredImage's default,
/// read front to back). nixpkgs' stream_layered_image.py (`add_base_layers`) copies each
/// layer its manifest.json lists, in order, and takes the diff_ids from its config without
/// hashing them; a plan hashes them when it records them.
pub struct BaseImage {
    path: String,
    bytes: BaseBytes,
    /// Each manifest layer's place, in the order of `members`.
    places: Vec<Place>,
    /// The base config's `config` object (`overlay_base_config` reads its `Env`).
    pub config: Value,
    /// The manifest's layer names, bottom first.
    pub members: Vec<String>,
    pub diff_ids: Vec<Digest>,
    /// Why a compressed base's layers are read by inflating it again (no temporary copy could
    /// be made or written), for a push to say so: that is slower, the more layers the slower.
    slow: Option<String>,
}

/// Where the checking pass over a compressed base puts the decompressed tar.
enum BaseCopy {
    /// Nowhere: the base is opened for its metadata.
    Skip,
    /// A temporary file, read from for each layer afterwards.
    Into(File),
    /// Nowhere, because the temporary file could not be made or written.
    Lost(std::io::Error),
}

/// A base layer that is not what the base's config says it is.
fn damaged_base(path: &str, member: &str, actual: &Digest, declared: &Digest) -> PlanError {
    PlanError::Base(format!(
        "{member} of the base image {path} hashes to {actual}, but the base image's config says \
         {declared}: the base image is damaged; fetch or build it again"
    ))
}

/// The base image's error: a layer that is not its config's diff_id is called damaged.
fn base_error(path: &str, err: PlanError) -> PlanError {
    match err {
        PlanError::Image(crate::image::ImageError::DigestMismatch {
            entry,
            expected,
            actual,
            ..
        }) => damaged_base(path, &entry, &actual, &expected),
        PlanError::Image(other) => PlanError::Base(format!("{:#}", anyhow::Error::new(other))),
        other => other,
    }
}

/// Where a base image's layers are read from; each layer's [`Place`] is an offset in it.
enum BaseBytes {
    /// An uncompressed tar file: the base itself, or the temporary file a compressed base was
    /// decompressed into when a push opened it.
    File(std::sync::Arc<File>),
    /// The compressed base's own decompressed tar, reached by inflating it again from its
    /// start for each layer read: a base opened only for its metadata, or one no temporary file
    /// could be made or written for.
    Inflated(crate::image::ArchiveFormat),
}

/// Where one layer of a base image is.
#[derive(Clone)]
enum Place {
    At(crate::image::docker_archive::Extent),
    /// A layer the archive reader kept in memory as possible metadata and handed over at the
    /// end (`ArchiveLayer::held`: a newer docker save's `blobs/sha256/...` of up to 1 MiB, or
    /// a layer named like metadata, such as `*.json`).
    Held(bytes::Bytes),
}

impl BaseImage {
    /// The base image at `path`, opened once per process to read its layers: a push that
    /// uploads several of its layers, in parallel, reads the file once. A compressed base is
    /// decompressed on that pass into a temporary file (unlinked at once, so it goes with
    /// nixfly), and every layer is then read from its place there, instead of inflating the
    /// base from its start again for each layer: a `buildLayeredImage` base has up to 100
    /// layers. The other uploads of that base wait for the first to open it. A failed open is
    /// not kept, so a later call tries again. A base that has to be inflated again for each
    /// layer read, because no temporary copy could be made, is reported once, with the reason.
    pub fn shared(path: &str, reporter: &Reporter) -> Result<std::sync::Arc<Self>, PlanError> {
        type Slot = std::sync::Arc<std::sync::Mutex<Option<std::sync::Arc<BaseImage>>>>;
        static OPENED: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, Slot>>> =
            std::sync::OnceLock::new();
        let slot = OPENED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(path.to_string())
            .or_default()
            .clone();
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(base) = &*slot {
            return Ok(base.clone());
        }
        let (file, format) = sniff_base(path)?;
        let copy = match format {
            crate::image::ArchiveFormat::Tar => BaseCopy::Skip,
            _ => tempfile::tempfile().map_or_else(BaseCopy::Lost, BaseCopy::Into),
        };
        let base = std::sync::Arc::new(Self::open_sniffed(path, file, format, copy)?);
        if let Some(why) = &base.slow {
            reporter.warn(why.clone());
        }
        *slot = Some(base.clone());
        Ok(base)
    }

    /// The base image at `path`, for its metadata (a compressed one is read once, every layer
    /// hashed and checked against the config on the way, and not kept).
    pub fn open(path: &str) -> Result<Self, PlanError> {
        let (file, format) = sniff_base(path)?;
        Self::open_sniffed(path, file, format, BaseCopy::Skip)
    }

    /// `open` of a file `sniff_base` has opened and named the format of; a compressed base is
    /// decompressed into `copy` (a temporary file), to read its layers from there.
    fn open_sniffed(
        path: &str,
        file: File,
        format: crate::image::ArchiveFormat,
        copy: BaseCopy,
    ) -> Result<Self, PlanError> {
        let shown = format!("base image {path}");
        let (config, members, diff_ids, bytes, places, slow) = match format {
            crate::image::ArchiveFormat::Tar => {
                let index = crate::image::docker_archive::index_file(&file, &shown)
                    .map_err(|err| base_error(path, err.into()))?;
                let places = index.layers.into_iter().map(Place::At).collect();
                let bytes = BaseBytes::File(std::sync::Arc::new(file));
                (
                    index.config,
                    index.layer_names,
                    index.diff_ids,
                    bytes,
                    places,
                    None,
                )
            }
            format => {
                // One pass, every layer hashed (and so checked against the config) on the way,
                // and where it sits in the decompressed tar noted. No temporary file, or no
                // room for it in TMPDIR: each layer is read by inflating the base again, up to
                // its place, slower but the very bytes checked here.
                let mut copy = copy;
                let position = std::rc::Rc::new(std::cell::Cell::new(0u64));
                let image = stream_base(path, file, format, &mut copy, &position, |layer| {
                    let start = position.get();
                    let mut held = Vec::new();
                    let keep = layer.held;
                    let reader = Collect {
                        inner: layer.reader,
                        into: keep.then_some(&mut held),
                    };
                    let (diff_id, _) =
                        blob::hash_layer(reader, |_| {}).map_err(|source| PlanError::Build {
                            what: format!("{} of the {shown}", layer.name),
                            source,
                        })?;
                    let place = match keep {
                        true => Place::Held(held.into()),
                        false => Place::At(crate::image::docker_archive::Extent {
                            offset: start,
                            size: layer.size,
                        }),
                    };
                    Ok((diff_id, place))
                })?;
                let diff_ids =
                    crate::image::docker_archive::config_diff_ids(&image.config, &shown, "its config")
                        .map_err(|err| base_error(path, err.into()))?;
                let (bytes, slow) = match copy {
                    BaseCopy::Into(file) => (BaseBytes::File(std::sync::Arc::new(file)), None),
                    BaseCopy::Skip => (BaseBytes::Inflated(format), None),
                    BaseCopy::Lost(err) => (
                        BaseBytes::Inflated(format),
                        Some(format!(
                            "the base image {path} is decompressed again from its start for each \
                             of its layers, which is slower: its decompressed copy ({} bytes) \
                             could not be written to {}: {err}. Point TMPDIR at a directory \
                             with room for it.",
                            position.get(),
                            std::env::temp_dir().display()
                        )),
                    ),
                };
                (
                    image.config,
                    image.layer_names,
                    diff_ids,
                    bytes,
                    image.layers,
                    slow,
                )
            }
        };
        let config: Value = serde_json::from_slice(&config)
            .map_err(|err| PlanError::Base(format!("{shown}: its config is not JSON: {err}")))?;
        Ok(BaseImage {
            path: path.to_string(),
            bytes,
            places,
            config: config.get("config").cloned().unwrap_or(Value::Null),
            members,
            diff_ids,
            slow,
        })
    }

    /// The uncompressed bytes of the layer the manifest calls `member`.
    pub fn open_layer(&self, member: &str) -> Result<Box<dyn Read + Send>, PlanError> {
        let index = self.members.iter().position(|m| m == member).ok_or_else(|| {
            PlanError::Base(format!(
                "the base image {} has no layer {member} (its manifest.json lists {:?}): was the \
                 plan made from another base image?",
                self.path, self.members
            ))
        })?;
        // An entry stored compressed (`docker save` with containerd's image store) is read
        // decompressed, as it was hashed when the base was opened.
        use crate::image::docker_archive::layer_content;
        match (&self.places[index], &self.bytes) {
            (Place::Held(bytes), _) => Ok(Box::new(std::io::Cursor::new(bytes.clone()))),
            (Place::At(extent), BaseBytes::File(file)) => {
                let reader = crate::image::docker_archive::PositionedReader {
                    file: file.clone(),
                    offset: extent.offset,
                };
                Ok(Box::new(layer_content(BufReader::with_capacity(
                    1 << 20,
                    reader.take(extent.size),
                ))))
            }
            (Place::At(extent), BaseBytes::Inflated(format)) => Ok(Box::new(layer_content(inflated_range(
                &self.path, *format, *extent,
            )?))),
        }
    }

    /// The source of each of its layers, bottom first.
    pub fn sources(&self) -> Vec<LayerSource> {
        self.members
            .iter()
            .map(|member| LayerSource::BaseLayer {
                archive: self.path.clone(),
                member: member.clone(),
            })
            .collect()
    }

    /// Every layer's record of the base image at `path`: each layer compressed with
    /// `compression` and checked against the diff_id the base's config gives it (nixpkgs'
    /// script puts that diff_id in the image without hashing the layer: a base whose layer
    /// differs would make an image no runtime can unpack). A compressed base is read once,
    /// front to back.
    pub fn records(
        path: &str,
        compression: Compression,
        workers: usize,
        reporter: &Reporter,
    ) -> Result<Vec<PlannedLayer>, PlanError> {
        let (file, format) = sniff_base(path)?;
        if format == crate::image::ArchiveFormat::Tar {
            let base = Self::open_sniffed(path, file, format, BaseCopy::Skip)?;
            let mut records = Vec::with_capacity(base.members.len());
            for ((source, member), declared) in base.sources().iter().zip(&base.members).zip(&base.diff_ids) {
                let record = PlannedLayer::build(source, None, compression, workers, reporter, |_| Ok(()))?;
                if record.diff_id != *declared {
                    return Err(damaged_base(path, member, &record.diff_id, declared));
                }
                records.push(record);
            }
            return Ok(records);
        }
        let shown = format!("base image {path}");
        let position = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let image = stream_base(path, file, format, &mut BaseCopy::Skip, &position, |layer| {
            let digests = blob::compress_layer(layer.reader, compression, workers, |_| Ok(()), |_| {})
                .map_err(|source| PlanError::Build {
                    what: format!("{} of the {shown}", layer.name),
                    source,
                })?;
            Ok((digests.diff_id.clone(), digests))
        })?;
        Ok(image
            .layers
            .into_iter()
            .zip(image.layer_names)
            .map(|(digests, member)| PlannedLayer {
                source: LayerSource::BaseLayer {
                    archive: path.to_string(),
                    member,
                },
                diff_id: digests.diff_id,
                size: digests.uncompressed_size,
                digest: digests.digest,
                compressed_size: digests.size,
                compression,
            })
            .collect())
    }
}

/// The base image file at `path`, at its start, and its format (told by its first bytes).
fn sniff_base(path: &str) -> Result<(File, crate::image::ArchiveFormat), PlanError> {
    let read_error = |source| PlanError::Read {
        path: path.to_string(),
        source,
    };
    let mut file = File::open(path).map_err(read_error)?;
    let head = crate::image::ArchiveFormat::head(&file).map_err(read_error)?;
    std::io::Seek::rewind(&mut file).map_err(read_error)?;
    let format = crate::image::ArchiveFormat::sniff(&head).ok_or_else(|| {
        PlanError::Base(format!(
            "the base image {path} is not a docker-archive (neither a tar nor gzip or zstd)"
        ))
    })?;
    Ok((file, format))
}

/// A compressed base image read front to back, `on_layer` given each layer as it passes; the
/// layers' sha256s are checked against the config's diff_ids at the end (a mismatch is a
/// damaged base). The decompressed tar is written to `copy` as it passes (a failed write loses
/// the copy, and says why), and `position` counts how much of it has been read: in `on_layer`, where the
/// layer's bytes start.
fn stream_base<T: Clone>(
    path: &str,
    file: File,
    format: crate::image::ArchiveFormat,
    copy: &mut BaseCopy,
    position: &std::rc::Rc<std::cell::Cell<u64>>,
    on_layer: impl FnMut(crate::image::docker_archive::ArchiveLayer<'_>) -> Result<(Digest, T), PlanError>,
) -> Result<crate::image::docker_archive::StreamedImage<T>, PlanError> {
    let reader = Tee {
        inner: crate::image::decompress(format, Box::new(BufReader::new(file))),
        copy,
        position: position.clone(),
    };
    crate::image::docker_archive::read_stream(reader, &format!("base image {path}"), on_layer)
        .map_err(|err| base_error(path, err))
}

/// A reader that copies what passes to a file, and counts it.
struct Tee<'a, R> {
    inner: R,
    copy: &'a mut BaseCopy,
    position: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let BaseCopy::Into(file) = self.copy
            && let Err(err) = std::io::Write::write_all(file, &buf[..n])
        {
            *self.copy = BaseCopy::Lost(err);
        }
        self.position.set(self.position.get() + n as u64);
        Ok(n)
    }
}

/// A reader that keeps a copy of what passes, when given somewhere to keep it.
struct Collect<'a, R> {
    inner: R,
    into: Option<&'a mut Vec<u8>>,
}

impl<R: Read> Read for Collect<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(into) = &mut self.into {
            into.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
}

/// One layer of a compressed archive, by its place in the decompressed tar: a thread inflates
/// the archive from its start, skips to the layer and writes its bytes; an archive that ends
/// first, or a read that fails, ends the stream with an error rather than a short layer.
fn inflated_range(
    path: &str,
    format: crate::image::ArchiveFormat,
    extent: crate::image::docker_archive::Extent,
) -> Result<ThreadReader, PlanError> {
    let file = File::open(path).map_err(|source| PlanError::Read {
        path: path.to_string(),
        source,
    })?;
    let path = path.to_string();
    ThreadReader::spawn("base-layer", move |mut writer| {
        let mut reader = crate::image::decompress(format, Box::new(BufReader::new(file)));
        let failed = |err: std::io::Error| {
            std::io::Error::other(format!("reading the base image {path} again: {err}"))
        };
        let skipped =
            std::io::copy(&mut (&mut reader).take(extent.offset), &mut std::io::sink()).map_err(failed)?;
        let copied = match skipped == extent.offset {
            true => std::io::copy(&mut reader.take(extent.size), &mut writer).map_err(failed)?,
            false => 0,
        };
        if copied != extent.size {
            return Err(std::io::Error::other(format!(
                "the base image {path} is shorter than when it was opened: was it replaced?"
            )));
        }
        Ok(())
    })
    .map_err(PlanError::Spawn)
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid nixfly layer plan (schema: docs/layer-plan.md)")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{path} is a version {found} layer plan; this nixfly reads version {PLAN_VERSION}: \
         rebuild the plan with this nixfly (the plan and the pushing nixfly must match)"
    )]
    Version { path: String, found: u32 },
    #[error("{path}: {problem}")]
    Inconsistent { path: String, problem: String },
    #[error("cannot start the thread that writes the layer tar")]
    Spawn(#[source] std::io::Error),
    #[error("the streamLayeredImage conf: {0}")]
    Conf(String),
    #[error("{0}")]
    Base(String),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error("cannot make the layer of {what}")]
    Build {
        what: String,
        #[source]
        source: BlobError,
    },
}

impl PlannedLayer {
    /// Make the layer's bytes from `source`, compress them with `compression`, pass the blob
    /// to `sink` chunk by chunk, and return the record of what came out.
    pub fn build(
        source: &LayerSource,
        root: Option<&Path>,
        compression: Compression,
        workers: usize,
        reporter: &Reporter,
        sink: impl FnMut(bytes::Bytes) -> Result<(), SinkClosed> + Send,
    ) -> Result<Self, PlanError> {
        let tar = source.open(root, reporter)?;
        let digests =
            blob::compress_layer(tar, compression, workers, sink, |_| {}).map_err(|source_err| {
                PlanError::Build {
                    what: source.describe(),
                    source: source_err,
                }
            })?;
        Ok(PlannedLayer {
            source: source.clone(),
            diff_id: digests.diff_id,
            size: digests.uncompressed_size,
            digest: digests.digest,
            compressed_size: digests.size,
            compression,
        })
    }
}

impl LayerPlan {
    pub fn load(path: &Path) -> Result<Self, PlanError> {
        let shown = path.display().to_string();
        let text = std::fs::read(path).map_err(|source| PlanError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    pub fn parse(text: &[u8], shown: &str) -> Result<Self, PlanError> {
        // The version is checked before the strict parse, so that a plan from a newer nixfly
        // gets the version message rather than an unknown-field one.
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        if let Ok(Versioned { version }) = serde_json::from_slice(text)
            && version != PLAN_VERSION
        {
            return Err(PlanError::Version {
                path: shown.into(),
                found: version,
            });
        }
        let plan: LayerPlan = serde_json::from_slice(text).map_err(|source| PlanError::Parse {
            path: shown.into(),
            source,
        })?;
        plan.check().map_err(|problem| PlanError::Inconsistent {
            path: shown.into(),
            problem,
        })?;
        Ok(plan)
    }

    /// The plan's own consistency (its digests were checked as they were read): the config's
    /// diff_ids are the layers' diff_ids in order.
    fn check(&self) -> Result<(), String> {
        let config: Value =
            serde_json::from_str(&self.config).map_err(|e| format!("the config is not JSON: {e}"))?;
        let diff_ids: Vec<&str> = config
            .pointer("/rootfs/diff_ids")
            .and_then(Value::as_array)
            .map(|ids| ids.iter().filter_map(Value::as_str).collect())
            .ok_or("the config has no rootfs.diff_ids list")?;
        let layers: Vec<&str> = self.layers.iter().map(|l| l.diff_id.as_str()).collect();
        if diff_ids != layers {
            return Err(format!(
                "the config's rootfs.diff_ids {diff_ids:?} are not the layers' diff_ids {layers:?}"
            ));
        }
        Ok(())
    }

    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("a plan serialises");
        text.push('\n');
        text
    }
}

/// The parts of streamLayeredImage's conf JSON (`passthru.conf`) a plan needs. Unknown keys
/// are ignored: nixpkgs adds some from time to time.
#[derive(Debug, Deserialize)]
pub struct StreamConf {
    pub architecture: String,
    #[serde(default)]
    pub config: Value,
    pub created: String,
    // mtime/uid/gid/uname/gname mirror nixpkgs' conf (its other keys, such as `variant`, are
    // ignored); the Nix side passes them to `nixfly layer build` as flags, and the tests check the two agree.
    /// Newer nixpkgs has a separate file mtime; older ones use `created`.
    #[serde(default)]
    #[cfg_attr(not(test), allow(dead_code))]
    pub mtime: Option<String>,
    #[serde(default, deserialize_with = "number_or_string")]
    #[cfg_attr(not(test), allow(dead_code))]
    pub uid: u64,
    #[serde(default, deserialize_with = "number_or_string")]
    #[cfg_attr(not(test), allow(dead_code))]
    pub gid: u64,
    #[serde(default = "root")]
    #[cfg_attr(not(test), allow(dead_code))]
    pub uname: String,
    #[serde(default = "root")]
    #[cfg_attr(not(test), allow(dead_code))]
    pub gname: String,
    pub store_layers: Vec<Vec<String>>,
    pub customisation_layer: String,
    #[serde(default)]
    pub from_image: Option<String>,
}

fn root() -> String {
    "root".into()
}

/// jq's `--arg` makes the conf's uid and gid strings; Python's `int()` accepts both.
fn number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    use serde::de::Error;
    match Value::deserialize(d)? {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| D::Error::custom(format!("{n} is not a uid/gid"))),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| D::Error::custom(format!("{s:?} is not a uid/gid"))),
        other => Err(D::Error::custom(format!("{other} is not a uid/gid"))),
    }
}

impl StreamConf {
    pub fn load(path: &Path) -> Result<Self, PlanError> {
        let text = std::fs::read(path).map_err(|source| PlanError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let conf: StreamConf = serde_json::from_slice(&text).map_err(|source| PlanError::Parse {
            path: path.display().to_string(),
            source,
        })?;
        Ok(conf)
    }

    /// Ownership and time of the store layers' files, as the stream script stamps them (the
    /// Nix side passes these to `nixfly layer build` as flags; the tests check both agree).
    #[cfg(test)]
    pub fn tar_options(&self) -> Result<TarOptions, PlanError> {
        let mtime = self.mtime.as_deref().unwrap_or(&self.created);
        Ok(TarOptions {
            mtime: epoch_seconds(mtime)?,
            uid: self.uid,
            gid: self.gid,
            uname: self.uname.clone(),
            gname: self.gname.clone(),
            root: None,
        })
    }

    /// The image config blob for these layers (the base image's, the store layers, then the
    /// customisation layer), as the stream script writes it; `base` is the base image's config
    /// object, when the conf has one.
    pub fn image_config(&self, layers: &[PlannedLayer], base: Option<&Value>) -> Result<String, PlanError> {
        let created = isoformat(&self.created)?;
        let text = |s: &str| Ordered::Scalar(Value::String(s.to_string()));
        let diff_ids = layers.iter().map(|l| text(l.diff_id.as_str())).collect();
        let history = layers
            .iter()
            .map(|l| {
                Ordered::Object(vec![
                    ("created".into(), text(&created)),
                    (
                        "comment".into(),
                        text(&python_repr_list(&l.source.history_paths())),
                    ),
                ])
            })
            .collect();
        // The stream script's key order.
        let image = Ordered::Object(vec![
            ("created".into(), text(&created)),
            ("architecture".into(), text(&self.architecture)),
            ("os".into(), text("linux")),
            ("config".into(), with_base_env(&self.config, base)?),
            (
                "rootfs".into(),
                Ordered::Object(vec![
                    ("diff_ids".into(), Ordered::Array(diff_ids)),
                    ("type".into(), text("layers")),
                ]),
            ),
            ("history".into(), Ordered::Array(history)),
        ]);
        let mut out = String::new();
        image.write_python(&mut out, 0);
        Ok(out)
    }
}

/// nixpkgs' stream_layered_image.py (`overlay_base_config`): with a base image, the image's
/// `Env` is the base config's, then the conf's, one entry per name (the part before the first
/// `=`): a name keeps the place where it first appears and takes its last value. The conf's
/// `config` is a Python dict, so an `Env` it lacked is added last.
fn with_base_env(config: &Value, base: Option<&Value>) -> Result<Ordered, PlanError> {
    let ordered = Ordered::from_value(config)?;
    let Some(base) = base else { return Ok(ordered) };
    let Ordered::Object(mut fields) = ordered else {
        return Err(PlanError::Conf("the image config is not an object".into()));
    };
    let env_of = |config: &Value, whose: &str| -> Result<Vec<String>, PlanError> {
        match config.get("Env") {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| PlanError::Conf(format!("{whose} Env has {item}, not a string")))
                })
                .collect(),
            Some(other) => Err(PlanError::Conf(format!("{whose} Env is {other}, not a list"))),
        }
    };
    let mut merged: Vec<(String, String)> = Vec::new();
    for entry in env_of(base, "the base image's")?
        .into_iter()
        .chain(env_of(config, "the image's")?)
    {
        let name = entry.split('=').next().unwrap_or_default().to_string();
        match merged.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = entry,
            None => merged.push((name, entry)),
        }
    }
    if merged.is_empty() {
        return Ok(Ordered::Object(fields));
    }
    let env = Ordered::Array(
        merged
            .into_iter()
            .map(|(_, e)| Ordered::Scalar(Value::String(e)))
            .collect(),
    );
    match fields.iter_mut().find(|(key, _)| key == "Env") {
        Some(slot) => slot.1 = env,
        None => fields.push(("Env".into(), env)),
    }
    Ok(Ordered::Object(fields))
}

const INDENT: &str = "    ";

/// JSON with its object keys in a chosen order, written as Python's `json.dumps(indent=4)`.
enum Ordered {
    Scalar(Value),
    Array(Vec<Ordered>),
    Object(Vec<(String, Ordered)>),
}

impl Ordered {
    /// serde_json's map is ordered by key, which is also the order Nix's `builtins.toJSON`
    /// gives the conf's `config`, so its keys come out as the stream script writes them.
    fn from_value(value: &Value) -> Result<Self, PlanError> {
        Ok(match value {
            Value::Array(items) => {
                Ordered::Array(items.iter().map(Ordered::from_value).collect::<Result<_, _>>()?)
            }
            Value::Object(map) => Ordered::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), Ordered::from_value(v)?)))
                    .collect::<Result<_, PlanError>>()?,
            ),
            Value::Number(n) if n.is_f64() => {
                return Err(PlanError::Conf(format!(
                    "the image config has a non-integer number ({n}); Python and Rust print \
                     those differently, so the config could not be reproduced"
                )));
            }
            scalar => Ordered::Scalar(scalar.clone()),
        })
    }

    fn write_python(&self, out: &mut String, depth: usize) {
        let newline = |out: &mut String, depth: usize| {
            out.push('\n');
            out.push_str(&INDENT.repeat(depth));
        };
        match self {
            Ordered::Scalar(Value::String(s)) => python_string(out, s),
            Ordered::Scalar(scalar) => out.push_str(&scalar.to_string()),
            Ordered::Array(items) if items.is_empty() => out.push_str("[]"),
            Ordered::Object(fields) if fields.is_empty() => out.push_str("{}"),
            Ordered::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    newline(out, depth + 1);
                    item.write_python(out, depth + 1);
                }
                newline(out, depth);
                out.push(']');
            }
            Ordered::Object(fields) => {
                out.push('{');
                for (i, (key, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    newline(out, depth + 1);
                    python_string(out, key);
                    out.push_str(": ");
                    value.write_python(out, depth + 1);
                }
                newline(out, depth);
                out.push('}');
            }
        }
    }
}

/// A JSON string as Python's `json.dumps` writes it (`ensure_ascii=True`): everything outside
/// printable ASCII as `\uXXXX`, astral characters as surrogate pairs.
fn python_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// `f"store paths: {paths}"` for a list of store paths: Python's list repr. Store path names
/// hold no quotes or backslashes, so each is quoted with single quotes as repr does.
fn python_repr_list(paths: &[&str]) -> String {
    let quoted: Vec<String> = paths.iter().map(|p| format!("'{p}'")).collect();
    format!("store paths: [{}]", quoted.join(", "))
}

/// `datetime.fromisoformat(s).isoformat()` for the ISO 8601 times a conf holds (`date
/// -Iseconds` output, `...Z`, an optional fraction), or the current UTC time for `now`.
fn isoformat(s: &str) -> Result<String, PlanError> {
    let (time, offset) = if s == "now" {
        let now = jiff::Timestamp::now();
        (
            jiff::tz::Offset::UTC.to_datetime(now),
            Some(jiff::tz::Offset::UTC),
        )
    } else {
        parse_conf_time(s)?
    };
    // Python prints microseconds only when there are any, and an offset only when given.
    let micros = time.subsec_nanosecond() / 1000;
    let fraction = if micros == 0 {
        String::new()
    } else {
        format!(".{micros:06}")
    };
    let offset = offset.map_or_else(String::new, |offset| {
        let minutes = offset.seconds() / 60;
        let sign = if minutes < 0 { '-' } else { '+' };
        format!("{sign}{:02}:{:02}", minutes.abs() / 60, minutes.abs() % 60)
    });
    Ok(format!(
        "{}{fraction}{offset}",
        time.strftime("%Y-%m-%dT%H:%M:%S")
    ))
}

/// `int(datetime.fromisoformat(s).timestamp())`, or now for `now`. A time without offset is
/// taken as UTC (Nix builds run with TZ unset).
pub fn epoch_seconds(s: &str) -> Result<u64, PlanError> {
    if s == "now" {
        return Ok(u64::try_from(jiff::Timestamp::now().as_second()).unwrap_or(0));
    }
    let (time, offset) = parse_conf_time(s)?;
    let at = offset
        .unwrap_or(jiff::tz::Offset::UTC)
        .to_timestamp(time)
        .map_err(|e| PlanError::Conf(format!("time {s:?} is out of range: {e}")))?;
    u64::try_from(at.as_second())
        .ok()
        .filter(|_| at.as_nanosecond() >= 0)
        .ok_or_else(|| PlanError::Conf(format!("{s:?} is before 1970")))
}

/// An ISO 8601 date and time with an optional UTC offset (`Z`, `+HH:MM`, `+HHMM`), read by
/// jiff. Python's datetime keeps microseconds and whole-minute offsets: finer values, a date
/// without a time and a time zone name are refused rather than silently rounded.
fn parse_conf_time(s: &str) -> Result<(jiff::civil::DateTime, Option<jiff::tz::Offset>), PlanError> {
    let bad = || {
        PlanError::Conf(format!(
            "time {s:?} is not in the form YYYY-MM-DDTHH:MM:SS[.ffffff][Z|+HH:MM]"
        ))
    };
    let pieces = jiff::fmt::temporal::Pieces::parse(s).map_err(|_| bad())?;
    let time = pieces.time().ok_or_else(bad)?;
    if pieces.time_zone_annotation().is_some() || time.subsec_nanosecond() % 1000 != 0 {
        return Err(bad());
    }
    let offset = pieces.offset().map(|o| o.to_numeric_offset());
    if offset.is_some_and(|o| o.seconds() % 60 != 0) {
        return Err(bad());
    }
    Ok((pieces.date().to_datetime(time), offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::Algorithm;
    use std::process::Command;

    const HELLO: &str = "/nix/store/0c8hs4ylm4jxzwdr9x1ll7bq1fdb9g0r-hello-2.12.1";
    const GLIBC: &str = "/nix/store/7yx1q4m8dz4v0rwj3ggr0nvb1i0a2c9s-glibc-2.40";
    const CUSTOM: &str = "/nix/store/2a3fh9vq0j5wd4zw1z6qkh2ps8mz8n0x-hello-customisation-layer";

    fn digest(fill: char) -> Digest {
        format!("sha256:{}", fill.to_string().repeat(64)).parse().unwrap()
    }

    fn layer(source: LayerSource, fill: char) -> PlannedLayer {
        PlannedLayer {
            source,
            diff_id: digest(fill),
            size: 10240,
            digest: digest('f'),
            compressed_size: 321,
            compression: Compression::default(),
        }
    }

    /// A conf as streamLayeredImage writes it: uid/gid as strings (jq --arg), config keys
    /// sorted (builtins.toJSON), awkward strings in the config.
    fn conf() -> StreamConf {
        serde_json::from_value(serde_json::json!({
            "architecture": "amd64",
            "config": {
                "Cmd": ["/bin/hello", "--greeting", "grüße \"du\" \\ 日本 🚀\u{7f}\t"],
                "Env": ["PATH=/bin", "EMPTY="],
                "ExposedPorts": {"8080/tcp": {}},
                "Healthcheck": {"Interval": 30_000_000_000u64, "Retries": 3, "Test": []},
                "Labels": null,
                "StopSignal": "SIGTERM",
                "ArgsEscaped": true
            },
            "created": "1970-01-01T00:00:01+00:00",
            "mtime": "1970-01-01T00:00:01Z",
            "uid": "0",
            "gid": "0",
            "uname": "root",
            "gname": "root",
            "store_layers": [[GLIBC], [HELLO]],
            "customisation_layer": CUSTOM,
            "from_image": null,
            "store_dir": "/nix/store",
            "repo_tag": "hello:latest"
        }))
        .unwrap()
    }

    fn layers_of(conf: &StreamConf) -> Vec<PlannedLayer> {
        let tar = conf.tar_options().unwrap();
        let mut layers: Vec<PlannedLayer> = conf
            .store_layers
            .iter()
            .zip(['a', 'b'])
            .map(|(paths, fill)| layer(LayerSource::store_paths(paths.clone(), &tar), fill))
            .collect();
        layers.push(layer(
            LayerSource::Tar {
                path: format!("{CUSTOM}/layer.tar"),
            },
            'c',
        ));
        layers
    }

    /// What the stream script computes (`image_json` and `json.dumps(..., indent=4)`), in
    /// Python itself, from the conf alone: each history comment lists the conf's store layer
    /// paths, and for the customisation layer the conf's `customisation_layer` directory
    /// (nixpkgs' stream_layered_image.py, `add_customisation_layer`).
    const PYTHON_CONFIG: &str = r#"
import json, sys
from datetime import datetime
conf, diff_ids = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
created = datetime.fromisoformat(conf["created"]).isoformat()
paths = conf["store_layers"] + [[conf["customisation_layer"]]]
image = {
    "created": created,
    "architecture": conf["architecture"],
    "os": "linux",
    "config": conf["config"],
    "rootfs": {"diff_ids": diff_ids, "type": "layers"},
    "history": [{"created": created, "comment": f"store paths: {p}"} for p in paths],
}
sys.stdout.write(json.dumps(image, indent=4))
"#;

    #[test]
    fn image_config_is_byte_identical_to_the_stream_scripts() {
        let conf = conf();
        let layers = layers_of(&conf);
        let ours = conf.image_config(&layers, None).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let conf_file = dir.path().join("conf.json");
        let raw_conf = serde_json::json!({
            "created": conf.created, "architecture": conf.architecture, "config": conf.config,
            "store_layers": conf.store_layers, "customisation_layer": conf.customisation_layer,
        });
        std::fs::write(&conf_file, serde_json::to_vec(&raw_conf).unwrap()).unwrap();
        let layers_file = dir.path().join("diff_ids.json");
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
        std::fs::write(&layers_file, serde_json::to_vec(&diff_ids).unwrap()).unwrap();
        let out = Command::new("python3")
            .args(["-c", PYTHON_CONFIG])
            .arg(&conf_file)
            .arg(&layers_file)
            .output()
            .expect("python3 runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(ours, String::from_utf8(out.stdout).unwrap());
        assert!(
            ours.contains(
                r#""comment": "store paths: ['/nix/store/7yx1q4m8dz4v0rwj3ggr0nvb1i0a2c9s-glibc-2.40']""#
            ),
            "{ours}"
        );
    }

    /// Issue 11: the plan named `<dir>/layer.tar` where nixpkgs names `<dir>`, so switching
    /// `layering` changed the image id.
    #[test]
    fn regression_issue_11_customisation_history_names_the_directory() {
        let conf = conf();
        let ours = conf.image_config(&layers_of(&conf), None).unwrap();
        assert!(
            ours.contains(&format!(r#""comment": "store paths: ['{CUSTOM}']""#)),
            "{ours}"
        );
        assert!(!ours.contains("layer.tar"), "{ours}");
    }

    #[test]
    fn plan_round_trips_and_checks_its_diff_ids() {
        let conf = conf();
        let layers = layers_of(&conf);
        let plan = LayerPlan {
            kind: PlanKind::LayerPlan,
            version: PLAN_VERSION,
            config: conf.image_config(&layers, None).unwrap(),
            layers,
        };
        let json = plan.to_json();
        assert!(json.contains(r#""kind": "nixfly-layer-plan""#), "{json}");
        assert!(json.contains(r#""type": "store_paths""#), "{json}");
        assert_eq!(LayerPlan::parse(json.as_bytes(), "plan.json").unwrap(), plan);

        let mut swapped = plan.clone();
        swapped.layers.swap(0, 1);
        let err = LayerPlan::parse(swapped.to_json().as_bytes(), "plan.json").unwrap_err();
        assert!(err.to_string().contains("rootfs.diff_ids"), "{err}");

        // A malformed digest is refused as the plan is read, naming it.
        let bad = plan
            .to_json()
            .replacen(plan.layers[2].digest.as_str(), "sha256:ABC", 1);
        let err = LayerPlan::parse(bad.as_bytes(), "plan.json").unwrap_err();
        let text = format!("{:#}", anyhow::Error::from(err));
        assert!(text.contains("invalid digest \"sha256:ABC\""), "{text}");
    }

    #[test]
    fn unknown_fields_and_other_versions_are_refused_with_their_names() {
        let conf = conf();
        let layers = layers_of(&conf);
        let plan = LayerPlan {
            kind: PlanKind::LayerPlan,
            version: PLAN_VERSION,
            config: conf.image_config(&layers, None).unwrap(),
            layers,
        };
        let mut value = serde_json::to_value(&plan).unwrap();
        value["layers"][0]["source"]["extra"] = true.into();
        let err = LayerPlan::parse(&serde_json::to_vec(&value).unwrap(), "p.json").unwrap_err();
        let chain = format!("{:#}", anyhow::Error::from(err));
        assert!(chain.contains("unknown field `extra`"), "{chain}");

        value = serde_json::to_value(&plan).unwrap();
        value["version"] = 2.into();
        value["new_thing"] = 1.into();
        let err = LayerPlan::parse(&serde_json::to_vec(&value).unwrap(), "p.json").unwrap_err();
        assert!(matches!(err, PlanError::Version { found: 2, .. }), "{err}");
        assert!(err.to_string().contains("rebuild the plan"), "{err}");

        value = serde_json::to_value(&plan).unwrap();
        value["kind"] = "something-else".into();
        assert!(LayerPlan::parse(&serde_json::to_vec(&value).unwrap(), "p.json").is_err());
    }

    #[test]
    fn conf_times_follow_python() {
        // Python itself is the oracle: what the stream script's datetime makes of each form.
        let inputs = [
            "1970-01-01T00:00:01Z",
            "1970-01-01T00:00:01+00:00",
            "2024-02-29T12:00:00+02:00",
            "2000-01-01T00:00:00.9Z",
            "2024-02-29T12:00:00.5-05:30",
            "2024-02-29T12:00:00",
            "2024-02-29 12:00:00Z",
            "2024-01-01T00:00:00+0100",
            "2024-02-29T12:00",
            "1999-12-31T23:59:59.123456+14:00",
        ];
        let script = "import sys\nfrom datetime import datetime, timezone\n\
            for s in sys.argv[1:]:\n    d = datetime.fromisoformat(s)\n    \
            t = d if d.tzinfo else d.replace(tzinfo=timezone.utc)\n    \
            print(d.isoformat(), int(t.timestamp()))\n";
        let out = Command::new("python3")
            .args(["-c", script])
            .args(inputs)
            .output()
            .expect("python3 runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let python = String::from_utf8(out.stdout).unwrap();
        for (input, line) in inputs.iter().zip(python.lines()) {
            let (iso, seconds) = line.split_once(' ').unwrap();
            assert_eq!(isoformat(input).unwrap(), iso, "{input}");
            assert_eq!(epoch_seconds(input).unwrap().to_string(), seconds, "{input}");
        }
        assert_eq!(python.lines().count(), inputs.len());
        assert!(isoformat("now").unwrap().ends_with("+00:00"));
        for bad in [
            "yesterday",
            "2024-13-01T00:00:00Z",
            "2024-02-29",
            "2024-02-29T12:00:00.1234567Z",
            "1969-12-31T23:59:59Z",
        ] {
            assert!(epoch_seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn conf_ownership_and_base_images() {
        let mut conf = conf();
        let tar = conf.tar_options().unwrap();
        assert_eq!(
            (tar.mtime, tar.uid, tar.gid, tar.uname.as_str()),
            (1, 0, 0, "root")
        );
        conf.mtime = None;
        conf.created = "1970-01-01T00:01:00Z".into();
        assert_eq!(conf.tar_options().unwrap().mtime, 60);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conf.json");
        let mut raw = serde_json::json!({
            "architecture": "arm64", "created": "now", "uid": 1000, "gid": "100",
            "store_layers": [], "customisation_layer": CUSTOM,
            "from_image": "/nix/store/xyz-base.tar.gz",
        });
        std::fs::write(&path, raw.to_string()).unwrap();
        let conf = StreamConf::load(&path).unwrap();
        assert_eq!(conf.from_image.as_deref(), Some("/nix/store/xyz-base.tar.gz"));
        raw["from_image"] = Value::Null;
        std::fs::write(&path, raw.to_string()).unwrap();
        let conf = StreamConf::load(&path).unwrap();
        assert_eq!((conf.uid, conf.gid), (1000, 100));
        assert_eq!(
            Compression::new(Algorithm::Zstd, None).unwrap().key(),
            "zstd-3-libzstd-1.5",
            "the compression key recorded in plans"
        );
    }

    #[test]
    fn non_integer_numbers_in_the_config_are_refused() {
        let mut conf = conf();
        conf.config = serde_json::json!({"Weird": 1.5});
        let err = conf.image_config(&[], None).unwrap_err();
        assert!(err.to_string().contains("non-integer number (1.5)"), "{err}");
    }

    /// The base image's Env under the image's, against Python: the rule of nixpkgs'
    /// `overlay_base_config` run by python3 on the same JSON (a dict keyed by name keeps the
    /// first place and the last value; an Env the image lacked goes last).
    #[test]
    fn base_env_merges_as_python_does() {
        const PYTHON: &str = "import json, sys\n\
            base, final = json.loads(sys.argv[1]), json.loads(sys.argv[2])\n\
            env = base.get('Env', []) + final.get('Env', [])\n\
            if env:\n    final['Env'] = list({e.split('=', 1)[0]: e for e in env}.values())\n\
            print(json.dumps(final, indent=4))";
        let cases = [
            (
                serde_json::json!({"Env": ["PATH=/bin", "LANG=C"]}),
                serde_json::json!({"Cmd": ["/app"], "User": "1000", "WorkingDir": "/srv"}),
            ),
            (
                serde_json::json!({"Env": ["A=base", "B=1", "A=again", "URL=x=y"]}),
                serde_json::json!({"Cmd": ["/app"], "Env": ["B=2", "C=3", "NOVALUE"], "User": "1"}),
            ),
            (
                serde_json::json!({"Env": []}),
                serde_json::json!({"Cmd": ["/app"]}),
            ),
            (serde_json::json!({}), serde_json::json!({"Env": ["X=1", "X=2"]})),
        ];
        for (base, config) in cases {
            let out = std::process::Command::new("python3")
                .args(["-c", PYTHON, &base.to_string(), &config.to_string()])
                .output()
                .expect("python3");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let python = String::from_utf8(out.stdout).unwrap();
            let mut ours = String::new();
            with_base_env(&config, Some(&base))
                .unwrap()
                .write_python(&mut ours, 0);
            assert_eq!(ours, python.trim_end(), "base {base}, image {config}");
        }
        let config = serde_json::json!({"Env": ["A=1"]});
        let mut alone = String::new();
        with_base_env(&config, None).unwrap().write_python(&mut alone, 0);
        assert_eq!(alone, "{\n    \"Env\": [\n        \"A=1\"\n    ]\n}");
    }

    /// A docker-archive: `entries` (name, bytes) in order, then `links` (name, target) as
    /// symlinks, a config declaring `diff_ids` and a manifest listing `layers`.
    fn base_archive(
        entries: &[(&str, &[u8])],
        links: &[(&str, &str)],
        layers: &[&str],
        diff_ids: &[Digest],
    ) -> Vec<u8> {
        let diff_ids: Vec<&str> = diff_ids.iter().map(Digest::as_str).collect();
        let config =
            serde_json::json!({"config": {}, "rootfs": {"type": "layers", "diff_ids": diff_ids}}).to_string();
        let config_name = format!("{}.json", Digest::sha256_of(config.as_bytes()).hex());
        let manifest =
            serde_json::json!([{"Config": config_name, "RepoTags": ["b:1"], "Layers": layers}]).to_string();
        let mut archive = tar::Builder::new(Vec::new());
        let file = |archive: &mut tar::Builder<Vec<u8>>, name: &str, body: &[u8]| {
            let mut header = tar::Header::new_ustar();
            header.set_size(body.len() as u64);
            header.set_mode(0o444);
            header.set_cksum();
            archive.append_data(&mut header, name, body).unwrap();
        };
        for (name, body) in entries {
            file(&mut archive, name, body);
        }
        for (name, target) in links {
            let mut link = tar::Header::new_ustar();
            link.set_entry_type(tar::EntryType::Symlink);
            link.set_size(0);
            archive.append_link(&mut link, name, target).unwrap();
        }
        file(&mut archive, &config_name, config.as_bytes());
        file(&mut archive, "manifest.json", manifest.as_bytes());
        archive.into_inner().unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    /// `tar` written into `dir` as it is and gzipped: a base image in both forms.
    fn plain_and_gzipped(dir: &std::path::Path, tar: &[u8]) -> [std::path::PathBuf; 2] {
        let plain = dir.join("base.tar");
        std::fs::write(&plain, tar).unwrap();
        let gzipped = dir.join("base.tar.gz");
        std::fs::write(&gzipped, gzip(tar)).unwrap();
        [plain, gzipped]
    }

    /// A base from `docker save` with containerd's image store: its layer entry is the gzip
    /// blob, its config lists the tar's diff_id. The base opens (it is not damaged), from the
    /// file and from a .tar.gz of it, and the layer reads as the tar.
    #[test]
    fn a_base_layer_stored_compressed_reads_as_its_tar() {
        let layer = b"the layer tar, stored as its gzip blob".repeat(50);
        let tar = base_archive(
            &[("blobs/sha256/aa", &gzip(&layer))],
            &[],
            &["blobs/sha256/aa"],
            &[Digest::sha256_of(&layer)],
        );
        let dir = tempfile::tempdir().unwrap();
        for path in plain_and_gzipped(dir.path(), &tar) {
            let base = BaseImage::open(path.to_str().unwrap()).unwrap();
            let mut read = Vec::new();
            base.open_layer("blobs/sha256/aa")
                .unwrap()
                .read_to_end(&mut read)
                .unwrap();
            assert!(read == layer, "{}: {} bytes read", path.display(), read.len());
        }
    }

    /// A base layer listed under a link (`docker save` links a layer it already wrote) is
    /// read from the entry the link names, whether the base is compressed or not.
    #[test]
    fn a_base_layer_listed_under_a_link_is_read_from_its_entry() {
        let layer = b"not really a tar, but bytes with a digest".repeat(100);
        let tar = base_archive(
            &[("a/layer.tar", &layer)],
            &[("b/layer.tar", "../a/layer.tar")],
            &["b/layer.tar"],
            &[Digest::sha256_of(&layer)],
        );
        let dir = tempfile::tempdir().unwrap();
        for path in plain_and_gzipped(dir.path(), &tar) {
            let base = BaseImage::open(path.to_str().unwrap()).unwrap();
            assert_eq!(base.members, ["b/layer.tar"]);
            let mut read = Vec::new();
            base.open_layer("b/layer.tar")
                .unwrap()
                .read_to_end(&mut read)
                .unwrap();
            assert!(read == layer, "{}: {} bytes read", path.display(), read.len());
            let err = base.open_layer("c/layer.tar").err().unwrap();
            assert!(err.to_string().contains("has no layer c/layer.tar"), "{err}");
            // A push opens each of its layers, several at once: the base is read once.
            let start = std::sync::Barrier::new(4);
            let opened: Vec<_> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..4)
                    .map(|_| {
                        scope.spawn(|| {
                            start.wait();
                            BaseImage::shared(path.to_str().unwrap(), &Reporter::plain()).unwrap()
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert!(opened.iter().all(|b| std::sync::Arc::ptr_eq(b, &opened[0])));
            let again = BaseImage::shared(path.to_str().unwrap(), &Reporter::plain()).unwrap();
            assert!(std::sync::Arc::ptr_eq(&opened[0], &again));
        }
    }
    /// A push reads a compressed base once: its layers, a docker-archive's usual ones and a
    /// newer docker save's small `blobs/sha256/` one, come from a copy made on that pass, so
    /// they are still read whole after the base file is gone (inflating the base again for
    /// each layer, as before, would fail here). Only opening for metadata makes no copy. The
    /// oracle is each layer's sha256 as written.
    #[test]
    fn a_compressed_base_is_inflated_once_for_all_its_layers() {
        let big = b"layer bytes, more than a pipe holds ".repeat(80_000);
        let small = b"a small layer docker 25 keeps under blobs/".repeat(10);
        let third = b"and another".repeat(5_000);
        let small_name = format!("blobs/sha256/{}", Digest::sha256_of(&small).hex());
        let layers: [(&str, &[u8]); 3] = [
            ("a/layer.tar", &big),
            (&small_name, &small),
            ("c/layer.tar", &third),
        ];
        let names: Vec<&str> = layers.iter().map(|(name, _)| *name).collect();
        let diff_ids: Vec<Digest> = layers.iter().map(|(_, body)| Digest::sha256_of(body)).collect();
        let compressed = gzip(&base_archive(&layers, &[], &names, &diff_ids));
        let dir = tempfile::tempdir().unwrap();
        let gzipped = dir.path().join("base.tar.gz");
        std::fs::write(&gzipped, &compressed).unwrap();
        let path = gzipped.to_str().unwrap();

        let metadata_only = BaseImage::open(path).unwrap();
        assert!(matches!(metadata_only.bytes, BaseBytes::Inflated(_)));
        assert_eq!(metadata_only.diff_ids, diff_ids);

        let base = BaseImage::shared(path, &Reporter::plain()).unwrap();
        assert!(base.slow.is_none());
        std::fs::remove_file(&gzipped).unwrap();
        for (name, diff_id) in names.iter().zip(&diff_ids) {
            let mut read = Vec::new();
            base.open_layer(name).unwrap().read_to_end(&mut read).unwrap();
            assert_eq!(&Digest::sha256_of(&read), diff_id, "{name}: {} bytes", read.len());
        }
        // A copy that cannot be written (a full disk) leaves each layer to be found by
        // inflating the base again: the same bytes, from the base file.
        std::fs::write(&gzipped, &compressed).unwrap();
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let (file, format) = sniff_base(path).unwrap();
        let fallback = BaseImage::open_sniffed(path, file, format, BaseCopy::Into(full)).unwrap();
        assert!(matches!(fallback.bytes, BaseBytes::Inflated(_)));
        let why = fallback.slow.as_deref().unwrap();
        assert!(
            why.contains(&format!("the base image {path} is decompressed again"))
                && why.contains("No space left on device"),
            "{why}"
        );
        for (name, diff_id) in names.iter().zip(&diff_ids) {
            let mut read = Vec::new();
            fallback.open_layer(name).unwrap().read_to_end(&mut read).unwrap();
            assert_eq!(&Digest::sha256_of(&read), diff_id, "{name} (fallback)");
        }
        // Two readers of one layer at once do not disturb each other.
        let mut first = base.open_layer("a/layer.tar").unwrap();
        let mut second = base.open_layer("a/layer.tar").unwrap();
        let (mut a, mut b) = (vec![0; 1000], vec![0; 1000]);
        first.read_exact(&mut a).unwrap();
        second.read_exact(&mut b).unwrap();
        first.read_exact(&mut a).unwrap();
        assert_eq!(a, big[1000..2000]);
        assert_eq!(b, big[..1000]);
    }
    /// An archive that repeats an entry name: the archive reader takes the last one, checks it
    /// against the config, and inflating the base again reads that same entry, by its place.
    #[test]
    fn a_repeated_entry_name_reads_the_entry_that_was_checked() {
        let (stale, layer) = (
            b"the first, overwritten".repeat(50),
            b"the last, checked".repeat(70),
        );
        let tar = base_archive(
            &[("a/layer.tar", &stale), ("a/layer.tar", &layer)],
            &[],
            &["a/layer.tar"],
            &[Digest::sha256_of(&layer)],
        );
        let dir = tempfile::tempdir().unwrap();
        let gzipped = dir.path().join("base.tar.gz");
        std::fs::write(&gzipped, gzip(&tar)).unwrap();

        let base = BaseImage::open(gzipped.to_str().unwrap()).unwrap();
        assert!(matches!(base.bytes, BaseBytes::Inflated(_)));
        let mut read = Vec::new();
        base.open_layer("a/layer.tar")
            .unwrap()
            .read_to_end(&mut read)
            .unwrap();
        assert!(read == layer, "{} bytes read", read.len());
    }
}
