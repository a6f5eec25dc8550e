//! An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/...`), as skopeo,
//! umoci or nix-snapshotter write it. Everything is known up front; compressed layers can be
//! pushed as they are stored, without recompressing.

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
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
        let read = |relative: &str| -> Result<Vec<u8>, ImageError> {
            let path = self.dir.join(relative);
            std::fs::read(&path).map_err(|source| ImageError::Open { path, source })
        };
        read("oci-layout")?;
        let index: ImageIndex = serde_json::from_slice(&read("index.json")?)
            .map_err(|e| malformed("index.json", e.to_string()))?;
        let manifest_descriptor = match <[Descriptor; 1]>::try_from(index.manifests().clone()) {
            Ok([descriptor]) => descriptor,
            Err(list) => {
                return Err(malformed(
                    "index.json",
                    format!(
                        "it lists {} manifests; nixfly pushes a layout holding exactly one image",
                        list.len()
                    ),
                ));
            }
        };
        let manifest_type = manifest_descriptor.media_type();
        if *manifest_type != MediaType::ImageManifest && *manifest_type != docker::manifest() {
            return Err(ImageError::Unsupported {
                source_name: name,
                detail: format!(
                    "its index points to a {}; only a single-platform image manifest can be pushed (copy one \
                     platform out with `skopeo copy --override-arch`)",
                    manifest_type
                ),
            });
        }
        let sha256 = |descriptor: &Descriptor, entry: &str| -> Result<Digest, ImageError> {
            descriptor.digest().as_ref().parse().map_err(|_| {
                malformed(
                    entry,
                    format!("{:?} is not a sha256 digest", descriptor.digest().as_ref()),
                )
            })
        };
        let blob = |digest: &Digest| -> Result<Bytes, ImageError> {
            let relative = blob_path(digest);
            let bytes = Bytes::from(read(&relative)?);
            let actual = Digest::sha256_of(&bytes);
            if actual != *digest {
                return Err(ImageError::DigestMismatch {
                    source_name: name.clone(),
                    entry: relative,
                    expected: digest.clone(),
                    actual,
                });
            }
            Ok(bytes)
        };
        let manifest_digest = sha256(&manifest_descriptor, "index.json")?;
        let manifest_bytes = blob(&manifest_digest)?;
        let manifest_entry = format!("manifest {manifest_digest}");
        let manifest: ImageManifest =
            serde_json::from_slice(&manifest_bytes).map_err(|e| malformed(&manifest_entry, e.to_string()))?;
        let config_digest = sha256(manifest.config(), &manifest_entry)?;
        let config = blob(&config_digest)?;
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
        let mut paths = Vec::with_capacity(diff_ids.len());
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
            layers.push(KnownLayer {
                diff_id,
                uncompressed_size: blob.is_none().then_some(layer.size()),
                blob,
            });
            paths.push(self.dir.join(path));
        }
        Ok(Image::Indexed(Arc::new(LayoutImage {
            parts: IndexedParts {
                description: name,
                config,
                layers,
            },
            paths,
        })))
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
    paths: Vec<PathBuf>,
}

impl IndexedImage for LayoutImage {
    fn parts(&self) -> &IndexedParts {
        &self.parts
    }

    fn open_layer(&self, index: usize, form: LayerForm) -> Result<Box<dyn Read + Send>, ImageError> {
        let path = &self.paths[index];
        let file = std::fs::File::open(path).map_err(|source| ImageError::Open {
            path: path.clone(),
            source,
        })?;
        let file: Box<dyn Read + Send> = Box::new(std::io::BufReader::with_capacity(256 * 1024, file));
        Ok(match (form, &self.parts.layers[index].blob) {
            (LayerForm::Uncompressed, Some(blob)) => {
                let format = match blob.encoding {
                    BlobEncoding::Stored(Algorithm::Zstd) => ArchiveFormat::Zstd,
                    _ => ArchiveFormat::Gzip,
                };
                super::decompress(format, file)
            }
            _ => file,
        })
    }
}
