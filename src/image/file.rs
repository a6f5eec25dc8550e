//! A docker-archive file on disk: `.tar`, `.tar.gz` or `.tar.zst`, told apart by magic bytes.
//! An uncompressed file is indexed (headers only, bodies skipped by seeking) so that layers the
//! registry already has are never read; a compressed one is read once as a stream.

use super::docker_archive::{self, Extent, PositionedReader};
use super::{
    ArchiveFormat, ArchiveStream, BlobEncoding, Image, ImageError, ImageSource, IndexedImage, IndexedParts,
    KnownBlob, KnownLayer, LayerForm,
};
use crate::progress::Reporter;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct ArchiveFile {
    path: PathBuf,
}

impl ArchiveFile {
    pub fn new(path: &Path) -> Self {
        ArchiveFile {
            path: path.to_path_buf(),
        }
    }
}

impl ImageSource for ArchiveFile {
    fn describe(&self) -> String {
        format!("docker-archive {}", self.path.display())
    }

    fn open(self: Box<Self>, _reporter: &Reporter) -> Result<Image, ImageError> {
        let open_error = |source| ImageError::Open {
            path: self.path.clone(),
            source,
        };
        let file = File::open(&self.path).map_err(open_error)?;
        let head = ArchiveFormat::head(&file).map_err(open_error)?;
        let description = self.describe();
        let format = ArchiveFormat::sniff(&head).ok_or_else(|| ImageError::NotAnArchive {
            source_name: description.clone(),
            detail: "it starts with neither a tar header nor gzip or zstd magic bytes".into(),
        })?;
        if format == ArchiveFormat::Tar {
            let index = docker_archive::index_file(&file, &description)?;
            // A layer stored compressed (`docker save` with containerd's image store) is read
            // decompressed, and its size is not the tar's. When its entry is named by its digest,
            // `blobs/sha256/<hex>` (the OCI layout that such an archive also is), that blob
            // goes up as it is, as skopeo copies it (containers/image `copy/compression.go`: a blob
            // already compressed with the wanted algorithm is not recompressed): the push
            // reads only its bytes and the registry gets the blob Docker pulled.
            let mut layers = Vec::with_capacity(index.layers.len());
            for ((diff_id, extent), entry) in
                index.diff_ids.iter().zip(&index.layers).zip(&index.layer_entries)
            {
                let head = ArchiveFormat::head(
                    PositionedReader {
                        file: &file,
                        offset: extent.offset,
                    }
                    .take(extent.size.min(4)),
                )
                .map_err(open_error)?;
                let algorithm = ArchiveFormat::sniff(&head).and_then(ArchiveFormat::algorithm);
                let blob = algorithm.and_then(|algorithm| {
                    let digest = stored_digest(entry)?;
                    Some(KnownBlob {
                        digest,
                        size: extent.size,
                        encoding: BlobEncoding::Stored(algorithm),
                    })
                });
                layers.push(KnownLayer {
                    diff_id: diff_id.clone(),
                    uncompressed_size: algorithm.is_none().then_some(extent.size),
                    blob,
                });
            }
            return Ok(Image::Indexed(Arc::new(TarFile {
                parts: IndexedParts {
                    description,
                    config: index.config,
                    layers,
                },
                file: Arc::new(file),
                extents: index.layers,
            })));
        }
        let identity = identity(&self.path, &file).map_err(open_error)?;
        let reader = PositionedReader { file, offset: 0 };
        let mut stream = ArchiveStream::without_finish(
            format!("{description} ({})", format.name()),
            super::decompress(format, Box::new(reader)),
        );
        stream.identity = Some(identity);
        Ok(Image::Stream(stream))
    }
}

/// What tells this file's content apart without reading it: its real path and the metadata
/// that any rewrite changes (what git's index and make trust). Nix store files never change.
fn identity(path: &Path, file: &File) -> std::io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let real = std::fs::canonicalize(path)?;
    let meta = file.metadata()?;
    Ok(format!(
        "{} dev={} ino={} size={} mtime={}.{} ctime={}.{}",
        real.display(),
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    ))
}

/// An indexed uncompressed archive: layers are read straight from their place in the file.
struct TarFile {
    parts: IndexedParts,
    file: Arc<File>,
    extents: Vec<Extent>,
}

impl IndexedImage for TarFile {
    fn parts(&self) -> &IndexedParts {
        &self.parts
    }

    fn open_layer(&self, index: usize, form: LayerForm) -> Result<Box<dyn Read + Send>, ImageError> {
        let extent = self.extents[index];
        let entry = PositionedReader {
            file: self.file.clone(),
            offset: extent.offset,
        }
        .take(extent.size);
        Ok(match form {
            LayerForm::Stored => {
                debug_assert!(
                    self.parts.layers[index].blob.is_some(),
                    "layer {index} has no stored blob"
                );
                Box::new(entry)
            }
            LayerForm::Uncompressed => Box::new(docker_archive::layer_content(entry)),
        })
    }
}

/// The digest a compressed layer entry is stored under: `blobs/sha256/<hex>`, an OCI layout's
/// content address, which the upload checks as it hashes the bytes. Other names (a layer ID's
/// `<id>/layer.tar`, Nix's `<diff_id>.tar`) do not name the compressed bytes.
fn stored_digest(entry: &str) -> Option<crate::registry::Digest> {
    entry.strip_prefix("blobs/sha256/")?;
    docker_archive::claimed_digest(entry)
}
