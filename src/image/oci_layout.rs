//! An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/...`), as skopeo,
//! umoci or nix-snapshotter write it. Everything is known up front; compressed layers can be
//! pushed as they are stored, without recompressing.
//!
//! A layout is input we do not control: every file is read only if it is a regular file inside
//! the layout (a symlink to `/dev/zero` or `/etc/shadow` is refused before a byte is read), and
//! at most as many bytes as its descriptor says; a blob longer or shorter than its descriptor
//! is an error. Files without a descriptor (`oci-layout`, `index.json`) are capped.

use super::docker_archive::config_diff_ids;
use super::{
    ArchiveFormat, BlobEncoding, Image, ImageError, ImageSource, IndexedImage, IndexedParts, KnownBlob,
    KnownLayer, LayerForm,
};
use crate::blob::Algorithm;
use crate::progress::Reporter;
use crate::registry::Digest;
use crate::registry::manifest::{MediaType, docker};
use bytes::Bytes;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The most `oci-layout` or `index.json` may hold (real ones are a few hundred bytes).
const MAX_INDEX_SIZE: u64 = 4 << 20;
/// The most a manifest or config may hold: they are read into memory.
const MAX_JSON_BLOB_SIZE: u64 = 32 << 20;

pub struct OciLayout {
    dir: PathBuf,
}

impl OciLayout {
    pub fn new(dir: &Path) -> Self {
        OciLayout {
            dir: dir.to_path_buf(),
        }
    }
}

impl ImageSource for OciLayout {
    fn describe(&self) -> String {
        format!("OCI layout {}", self.dir.display())
    }

    fn open(self: Box<Self>, _reporter: &Reporter) -> Result<Image, ImageError> {
        let name = self.describe();
        let malformed = |entry: &str, detail: String| ImageError::Malformed {
            source_name: name.clone(),
            entry: entry.to_string(),
            detail,
        };
        let root = std::fs::canonicalize(&self.dir).map_err(|source| ImageError::Open {
            path: self.dir.clone(),
            source,
        })?;
        let read = |relative: &str, size: Option<u64>| -> Result<Vec<u8>, ImageError> {
            let (file, path) = open_inside(&root, &self.dir, relative, size, &name)?;
            let mut bytes = Vec::new();
            bounded(file, size, relative, MAX_INDEX_SIZE)
                .read_to_end(&mut bytes)
                .map_err(|source| ImageError::Open { path, source })?;
            Ok(bytes)
        };
        read("oci-layout", None)?;
        let index: ImageIndex = serde_json::from_slice(&read("index.json", None)?)
            .map_err(|e| malformed("index.json", e.to_string()))?;
        // The same image under several names (`skopeo copy … oci:dir:a`, then `:b`) is one image,
        // wherever its entries stand in the list.
        let mut entries = index.manifests().clone();
        let mut seen = std::collections::HashSet::new();
        entries.retain(|entry| seen.insert(entry.digest().to_string()));
        let top = match <[Descriptor; 1]>::try_from(entries) {
            Ok([descriptor]) => descriptor,
            Err(list) => {
                let names: Vec<String> = index
                    .manifests()
                    .iter()
                    .map(|entry| {
                        entry
                            .annotations()
                            .as_ref()
                            .and_then(|a| a.get("org.opencontainers.image.ref.name"))
                            .map_or_else(|| entry.digest().to_string(), |name| format!("{name:?}"))
                    })
                    .collect();
                return Err(malformed(
                    "index.json",
                    if list.is_empty() {
                        "it lists no manifest: the layout holds no image".to_string()
                    } else {
                        format!(
                            "it lists {} different manifests ({}); nixfly pushes a layout holding \
                             exactly one image: copy the one to push into a layout of its own \
                             (`skopeo copy oci:{dir}:NAME oci:NEW_DIR`)",
                            list.len(),
                            names.join(", "),
                            dir = self.dir.display()
                        )
                    },
                ));
            }
        };
        let sha256 = |descriptor: &Descriptor, entry: &str| -> Result<Digest, ImageError> {
            descriptor.digest().as_ref().parse().map_err(|_| {
                malformed(
                    entry,
                    format!("{:?} is not a sha256 digest", descriptor.digest().as_ref()),
                )
            })
        };
        let blob = |descriptor: &Descriptor, entry: &str| -> Result<(Digest, Bytes), ImageError> {
            let digest = sha256(descriptor, entry)?;
            let relative = blob_path(&digest);
            if descriptor.size() > MAX_JSON_BLOB_SIZE {
                return Err(malformed(
                    &relative,
                    format!(
                        "its descriptor says {} bytes, more than the {MAX_JSON_BLOB_SIZE} a manifest or config may have",
                        descriptor.size()
                    ),
                ));
            }
            let bytes = Bytes::from(read(&relative, Some(descriptor.size()))?);
            let actual = Digest::sha256_of(&bytes);
            if actual != digest {
                return Err(ImageError::DigestMismatch {
                    source_name: name.clone(),
                    entry: relative,
                    expected: digest,
                    actual,
                });
            }
            Ok((digest, bytes))
        };
        let manifest_descriptor = if is_index(top.media_type()) {
            let (index_digest, bytes) = blob(&top, "index.json")?;
            let entry = format!("index {index_digest}");
            let nested: ImageIndex =
                serde_json::from_slice(&bytes).map_err(|e| malformed(&entry, e.to_string()))?;
            linux_amd64(&nested).ok_or_else(|| ImageError::Unsupported {
                source_name: name.clone(),
                detail: format!(
                    "its image index has no linux/amd64 manifest, the platform Fly Machines run \
                     (it has {}); build the image for x86_64-linux",
                    platforms(&nested)
                ),
            })?
        } else {
            top
        };
        let manifest_type = manifest_descriptor.media_type();
        if *manifest_type != MediaType::ImageManifest && *manifest_type != docker::manifest() {
            return Err(ImageError::Unsupported {
                source_name: name,
                detail: format!(
                    "its index points to a {}; only an image manifest, or an index holding a \
                     linux/amd64 one, can be pushed",
                    manifest_type
                ),
            });
        }
        let (manifest_digest, manifest_bytes) = blob(&manifest_descriptor, "index.json")?;
        let manifest_entry = format!("manifest {manifest_digest}");
        let manifest: ImageManifest =
            serde_json::from_slice(&manifest_bytes).map_err(|e| malformed(&manifest_entry, e.to_string()))?;
        let (config_digest, config) = blob(manifest.config(), &manifest_entry)?;
        let diff_ids = config_diff_ids(&config, &name, &format!("config {config_digest}"))?;
        if diff_ids.len() != manifest.layers().len() {
            return Err(malformed(
                &manifest_entry,
                format!(
                    "it lists {} layers but the config has {} diff_ids",
                    manifest.layers().len(),
                    diff_ids.len()
                ),
            ));
        }
        let mut layers = Vec::with_capacity(diff_ids.len());
        let mut files = Vec::with_capacity(diff_ids.len());
        for (layer, diff_id) in manifest.layers().iter().zip(diff_ids) {
            let digest = sha256(layer, &manifest_entry)?;
            let path = blob_path(&digest);
            let blob = match layer_compression(layer.media_type()) {
                Some(Some(algorithm)) => Some(KnownBlob {
                    digest,
                    size: layer.size(),
                    encoding: BlobEncoding::Stored(algorithm),
                }),
                Some(None) if digest == diff_id => None,
                Some(None) => {
                    return Err(ImageError::DigestMismatch {
                        source_name: name,
                        entry: path,
                        expected: diff_id,
                        actual: digest,
                    });
                }
                None => {
                    return Err(ImageError::Unsupported {
                        source_name: name,
                        detail: format!(
                            "layer {digest} has media type {}, which nixfly cannot push",
                            layer.media_type()
                        ),
                    });
                }
            };
            // Checked now, so a hostile layer fails the push before anything is uploaded.
            open_inside(&root, &self.dir, &path, Some(layer.size()), &name)?;
            layers.push(KnownLayer {
                diff_id,
                uncompressed_size: blob.is_none().then_some(layer.size()),
                blob,
            });
            files.push((path, layer.size()));
        }
        Ok(Image::Indexed(Arc::new(LayoutImage {
            parts: IndexedParts {
                description: name,
                config,
                layers,
            },
            root,
            dir: self.dir,
            files,
        })))
    }
}

/// Open `relative` in the layout, refusing what is not a regular file inside it and, when the
/// descriptor gives one, a size other than `size`.
fn open_inside(
    root: &Path,
    dir: &Path,
    relative: &str,
    size: Option<u64>,
    source_name: &str,
) -> Result<(File, PathBuf), ImageError> {
    let path = dir.join(relative);
    let refuse = |detail: String| ImageError::Malformed {
        source_name: source_name.to_string(),
        entry: relative.to_string(),
        detail,
    };
    let real = std::fs::canonicalize(&path).map_err(|source| ImageError::Open {
        path: path.clone(),
        source,
    })?;
    if !real.starts_with(root) {
        return Err(refuse(format!(
            "it is a symlink to {}, outside the layout; refusing to read it",
            real.display()
        )));
    }
    let not_regular = || {
        refuse(format!(
            "{} is not a regular file (a device, pipe or directory); refusing to read it",
            real.display()
        ))
    };
    let open_error = |source| ImageError::Open {
        path: path.clone(),
        source,
    };
    // Before opening: opening a pipe waits for a writer.
    if !std::fs::metadata(&real).map_err(open_error)?.is_file() {
        return Err(not_regular());
    }
    let file = File::open(&real).map_err(open_error)?;
    // Again on the open file, for one swapped in meanwhile.
    let metadata = file.metadata().map_err(open_error)?;
    if !metadata.is_file() {
        return Err(not_regular());
    }
    if let Some(size) = size
        && metadata.len() != size
    {
        return Err(refuse(format!(
            "it is {} bytes but its descriptor says {size}: the layout is corrupt",
            metadata.len()
        )));
    }
    Ok((file, path))
}

/// A reader of exactly `size` bytes (or at most `cap` without a descriptor): a file that
/// grew or shrank after it was checked fails the read instead of sending other bytes.
fn bounded(file: File, size: Option<u64>, entry: &str, cap: u64) -> BoundedReader<File> {
    BoundedReader {
        inner: file,
        expected: size,
        limit: size.unwrap_or(cap),
        read: 0,
        entry: entry.to_string(),
    }
}

struct BoundedReader<R> {
    inner: R,
    expected: Option<u64>,
    limit: u64,
    read: u64,
    entry: String,
}

impl<R: Read> Read for BoundedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One byte past the limit is asked for, to tell "ends here" from "goes on".
        let room = (self.limit + 1 - self.read).min(buf.len() as u64) as usize;
        let n = self.inner.read(&mut buf[..room])?;
        self.read += n as u64;
        if self.read > self.limit {
            let detail = match self.expected {
                Some(size) => format!("its descriptor says {size} bytes"),
                None => format!("nixfly reads at most {} bytes of it", self.limit),
            };
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is longer than {detail}", self.entry),
            ));
        }
        if n == 0
            && let Some(size) = self.expected
            && self.read < size
        {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} ends after {} bytes but its descriptor says {size}",
                    self.entry, self.read
                ),
            ));
        }
        Ok(n)
    }
}

fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// `Some(None)`: an uncompressed tar; `Some(Some(a))`: compressed with `a`; `None`: not a
/// layer type we can push.
fn layer_compression(media_type: &MediaType) -> Option<Option<Algorithm>> {
    match media_type {
        MediaType::ImageLayer => Some(None),
        MediaType::ImageLayerGzip => Some(Some(Algorithm::Gzip)),
        MediaType::ImageLayerZstd => Some(Some(Algorithm::Zstd)),
        other if *other == docker::layer() => Some(None),
        other if *other == docker::layer_gzip() => Some(Some(Algorithm::Gzip)),
        _ => None,
    }
}

struct LayoutImage {
    parts: IndexedParts,
    /// The layout directory, resolved (symlinks must stay inside it), and as given (for messages).
    root: PathBuf,
    dir: PathBuf,
    /// Each layer's blob path in the layout and its descriptor size.
    files: Vec<(String, u64)>,
}

impl IndexedImage for LayoutImage {
    fn parts(&self) -> &IndexedParts {
        &self.parts
    }

    fn open_layer(&self, index: usize, form: LayerForm) -> Result<Box<dyn Read + Send>, ImageError> {
        let (relative, size) = &self.files[index];
        let (file, _) = open_inside(
            &self.root,
            &self.dir,
            relative,
            Some(*size),
            &self.parts.description,
        )?;
        let file = bounded(file, Some(*size), relative, *size);
        let file: Box<dyn Read + Send> = Box::new(std::io::BufReader::with_capacity(256 * 1024, file));
        Ok(match (form, &self.parts.layers[index].blob) {
            (LayerForm::Uncompressed, Some(blob)) => {
                let format = match blob.encoding {
                    BlobEncoding::Stored(algorithm) => ArchiveFormat::of(algorithm),
                    BlobEncoding::Reproducible(_) => ArchiveFormat::Gzip,
                };
                super::decompress(format, file)
            }
            _ => file,
        })
    }
}

/// An image index (OCI) or manifest list (Docker), which names one manifest per platform.
fn is_index(media_type: &MediaType) -> bool {
    *media_type == MediaType::ImageIndex
        || media_type.to_string() == "application/vnd.docker.distribution.manifest.list.v2+json"
}

/// The index's linux/amd64 image manifest, as containerd picks one for Fly's hosts
/// (`core/images/image.go`, `Manifest`, by `platforms.Match`): the first whose platform says
/// linux and amd64. Attestation manifests (`unknown/unknown`, which buildx and Docker's
/// containerd store add beside the image) and other platforms are passed over.
fn linux_amd64(index: &ImageIndex) -> Option<Descriptor> {
    index
        .manifests()
        .iter()
        .find(|d| {
            d.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == "linux"
                    && matches!(
                        p.architecture().to_string().as_str(),
                        "amd64" | "x86_64" | "x86-64"
                    )
            })
        })
        .cloned()
}

/// The platforms an index names, for the error that none is linux/amd64.
fn platforms(index: &ImageIndex) -> String {
    let names: Vec<String> = index
        .manifests()
        .iter()
        .map(|d| match d.platform() {
            Some(p) => format!("{}/{}", p.os(), p.architecture()),
            None => "no platform".to_string(),
        })
        .collect();
    if names.is_empty() {
        "no manifest".to_string()
    } else {
        names.join(", ")
    }
}
