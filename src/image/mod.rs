//! Image sources: where the image Nix built comes from, one module per kind behind one trait.
//!
//! A source opens as one of two shapes:
//! - [`Image::Indexed`]: the config and every layer's diff_id (and maybe its compressed blob)
//!   are known before any layer byte is read, and each layer's bytes can be (re)generated on
//!   demand, in any order, several at once. Push asks the registry about every layer up front
//!   and never reads the ones it has. (Uncompressed `.tar` files, OCI layouts, layer plans.)
//! - [`Image::Stream`]: a docker-archive tar read once, front to back. `manifest.json` comes last
//!   in Nix archives, so layers are handled as they pass and matched to the config at the end.
//!   (`.tar.gz`, `.tar.zst`, stream scripts, stdin.)

pub mod arch;
pub mod docker_archive;
pub mod file;
pub mod oci_layout;
pub mod pipe;
pub mod plan;
pub mod read_ahead;
pub mod script;
pub mod stdin;

use crate::blob::{Algorithm, Compression};
use crate::progress::Reporter;
use crate::registry::Digest;
use bytes::Bytes;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `--source-kind`: what the source argument is, when detection should not guess.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SourceKind {
    /// Decide by content: magic bytes, an `oci-layout` file, the executable bit.
    #[default]
    Auto,
    /// A docker-archive file, uncompressed or gzip/zstd-compressed (or `-`).
    Archive,
    /// An executable that writes a docker-archive to stdout (dockerTools.streamLayeredImage).
    Script,
    /// An OCI image layout directory.
    OciLayout,
    /// A nixfly layer plan (JSON made by mkFlyDeploy with layering = "plan").
    Plan,
}

/// A place an image can be read from.
pub trait ImageSource: Send {
    /// What the source is, for messages: `docker-archive ./result (gzip)`.
    fn describe(&self) -> String;
    /// Open it. `reporter` receives what a child process prints (as debug events).
    fn open(self: Box<Self>, reporter: &Reporter) -> Result<Image, ImageError>;
}

pub enum Image {
    Indexed(Arc<dyn IndexedImage>),
    Stream(ArchiveStream),
}

/// An image whose layers are known before any is read.
pub trait IndexedImage: Send + Sync {
    /// What every indexed source knows up front.
    fn parts(&self) -> &IndexedParts;
    fn describe(&self) -> String {
        self.parts().description.clone()
    }
    /// The config blob, byte for byte.
    fn config(&self) -> Bytes {
        self.parts().config.clone()
    }
    /// The layers in manifest order; `diff_id`s equal the config's `rootfs.diff_ids`.
    fn layers(&self) -> &[KnownLayer] {
        &self.parts().layers
    }
    /// Read layer `index` in the given form. `Stored` is only asked for when the layer has a
    /// blob with `BlobEncoding::Stored`. Called from blocking threads, several at once.
    fn open_layer(&self, index: usize, form: LayerForm) -> Result<Box<dyn Read + Send>, ImageError>;
}

/// The description, config blob and layers of an indexed image.
pub struct IndexedParts {
    pub description: String,
    pub config: Bytes,
    pub layers: Vec<KnownLayer>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerForm {
    /// The uncompressed layer tar (what the diff_id is the digest of).
    Uncompressed,
    /// The blob bytes as the source stores them (`KnownBlob` with `BlobEncoding::Stored`).
    Stored,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownLayer {
    /// The digest of the uncompressed tar.
    pub diff_id: Digest,
    pub uncompressed_size: Option<u64>,
    /// A compressed form whose digest is known without reading the layer.
    pub blob: Option<KnownBlob>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownBlob {
    pub digest: Digest,
    pub size: u64,
    pub encoding: BlobEncoding,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobEncoding {
    /// The source stores this blob (compressed with this algorithm) and can hand it out as is
    /// (`LayerForm::Stored`): an OCI layout's gzip or zstd layer.
    Stored(Algorithm),
    /// Compressing the uncompressed layer with `crate::blob` and this setting gives exactly
    /// this blob (a layer plan's precomputed digest).
    Reproducible(Compression),
}

/// A docker-archive tar stream, uncompressed, read once.
pub struct ArchiveStream {
    pub description: String,
    pub reader: Box<dyn Read + Send>,
    /// Called once the stream has been read (`ok`) or abandoned (`!ok`): for a script, waits
    /// for it and turns a non-zero exit into an error, which is the one to report.
    pub finish: Box<dyn FnOnce(bool) -> Result<(), ImageError> + Send>,
    /// For a file: what identifies its content without reading it (path, inode, size, times).
    /// Push remembers what it found in the archive under this key, so that a re-push of the
    /// same file can ask the registry first and skip reading it.
    pub identity: Option<String>,
}

impl ArchiveStream {
    fn without_finish(description: String, reader: Box<dyn Read + Send>) -> Self {
        ArchiveStream {
            description,
            reader,
            finish: Box::new(|_| Ok(())),
            identity: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is not an image: expected a docker-archive (tar, tar.gz, tar.zst), an executable \
         stream script, an OCI layout directory, a nixfly layer plan or - for stdin; use --source-kind to \
         say which"
    )]
    NotAnImage { path: PathBuf },
    #[error(
        "{path} is a nix2container image, whose layers nix2container itself makes when it pushes; \
         nixfly does not push those. Push it with nix2container (nix run .#IMAGE.copyToRegistry, to \
         registry.fly.io/APP:TAG with the Fly token as password) and deploy that with `nixfly rollout \
         --image registry.fly.io/APP:TAG`, or build the image with dockerTools.streamLayeredImage \
         (mkFlyDeploy's `package` does)"
    )]
    Nix2Container { path: PathBuf },
    #[error("{source_name} is not a docker-archive: {detail}")]
    NotAnArchive { source_name: String, detail: String },
    #[error("reading {source_name} failed")]
    Read {
        source_name: String,
        #[source]
        source: io::Error,
    },
    #[error("{source_name} is not a valid tar stream ({detail}): the archive is corrupt")]
    CorruptTar { source_name: String, detail: String },
    #[error("{source_name}: unsafe entry name {entry:?} (absolute or containing ..): refusing the archive")]
    UnsafeEntry { source_name: String, entry: String },
    #[error("{source_name} has no {entry}")]
    MissingEntry { source_name: String, entry: String },
    #[error("{source_name}: {entry} is malformed: {detail}")]
    Malformed {
        source_name: String,
        entry: String,
        detail: String,
    },
    #[error("{source_name}: {entry} has sha256 {actual} but is declared as {expected}: the image is corrupt")]
    DigestMismatch {
        source_name: String,
        entry: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{source_name}: {detail}")]
    Unsupported { source_name: String, detail: String },
    #[error("stream script {script} {status}{stderr}")]
    ScriptFailed {
        script: PathBuf,
        status: String,
        /// The last lines it printed on stderr, introduced by a newline, or empty.
        stderr: String,
    },
    #[error(
        "stream script {script} wrote nothing for {seconds} s, so it was stopped; if it is just slow \
         (a huge layer), raise --stream-timeout (NIXFLY_STREAM_TIMEOUT){stderr}"
    )]
    ScriptIdle {
        script: PathBuf,
        seconds: u64,
        stderr: String,
    },
    #[error("cannot run stream script {script}")]
    ScriptSpawn {
        script: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Choose the source for the `source` argument (`-` is stdin).
pub fn detect(source: &str, kind: SourceKind) -> Result<Box<dyn ImageSource>, ImageError> {
    detect_with(
        source,
        kind,
        std::time::Duration::from_secs(script::DEFAULT_IDLE_TIMEOUT_SECS),
    )
}

/// `detect`, with how long a stream script may stay silent before it is stopped.
pub fn detect_with(
    source: &str,
    kind: SourceKind,
    script_timeout: std::time::Duration,
) -> Result<Box<dyn ImageSource>, ImageError> {
    if source == "-" {
        return match kind {
            SourceKind::Auto | SourceKind::Archive => Ok(Box::new(stdin::Stdin)),
            SourceKind::Script | SourceKind::OciLayout | SourceKind::Plan => Err(ImageError::Unsupported {
                source_name: "stdin".into(),
                detail: "only a docker-archive can be read from stdin (--source-kind archive)".into(),
            }),
        };
    }
    let path = Path::new(source);
    let metadata = std::fs::metadata(path).map_err(|source| ImageError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let kind = match kind {
        SourceKind::Auto => detect_kind(path, &metadata)?,
        forced => forced,
    };
    Ok(match kind {
        SourceKind::OciLayout => Box::new(oci_layout::OciLayout::new(path)),
        SourceKind::Plan => Box::new(plan::PlanFile::new(path)),
        SourceKind::Script => Box::new(script::StreamScript::new(path, script_timeout)),
        SourceKind::Archive | SourceKind::Auto => Box::new(file::ArchiveFile::new(path)),
    })
}

fn detect_kind(path: &Path, metadata: &std::fs::Metadata) -> Result<SourceKind, ImageError> {
    if metadata.is_dir() {
        return if path.join("oci-layout").is_file() {
            Ok(SourceKind::OciLayout)
        } else {
            Err(ImageError::NotAnImage {
                path: path.to_path_buf(),
            })
        };
    }
    let head = std::fs::File::open(path)
        .and_then(ArchiveFormat::head)
        .map_err(|source| ImageError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    if ArchiveFormat::sniff(&head).is_some() {
        return Ok(SourceKind::Archive);
    }
    match plan::json_image(path, &head) {
        Some(plan::JsonImage::Plan) => return Ok(SourceKind::Plan),
        Some(plan::JsonImage::Nix2Container) => {
            return Err(ImageError::Nix2Container {
                path: path.to_path_buf(),
            });
        }
        None => {}
    }
    use std::os::unix::fs::PermissionsExt;
    if metadata.permissions().mode() & 0o111 != 0 {
        return Ok(SourceKind::Script);
    }
    Err(ImageError::NotAnImage {
        path: path.to_path_buf(),
    })
}

/// How a docker-archive's bytes are wrapped, by magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveFormat {
    Tar,
    Gzip,
    Zstd,
}

impl ArchiveFormat {
    /// The first bytes of a file or stream, as many as [`ArchiveFormat::sniff`] looks at (a tar
    /// header's 512), fewer if it is shorter.
    pub fn head(reader: impl Read) -> io::Result<Vec<u8>> {
        let mut head = Vec::with_capacity(512);
        reader.take(512).read_to_end(&mut head)?;
        Ok(head)
    }

    /// Recognise the first bytes of a file or stream (up to 512 are looked at).
    pub fn sniff(head: &[u8]) -> Option<Self> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Some(ArchiveFormat::Gzip)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(ArchiveFormat::Zstd)
        } else if head.len() >= 263 && &head[257..262] == b"ustar" {
            Some(ArchiveFormat::Tar)
        } else {
            None
        }
    }

    /// The compression of a compressed format; none for a tar.
    pub fn algorithm(self) -> Option<Algorithm> {
        match self {
            ArchiveFormat::Tar => None,
            ArchiveFormat::Gzip => Some(Algorithm::Gzip),
            ArchiveFormat::Zstd => Some(Algorithm::Zstd),
        }
    }

    /// The format of bytes compressed with `algorithm`.
    pub fn of(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Gzip => ArchiveFormat::Gzip,
            Algorithm::Zstd => ArchiveFormat::Zstd,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ArchiveFormat::Tar => "tar",
            ArchiveFormat::Gzip => "gzip",
            ArchiveFormat::Zstd => "zstd",
        }
    }
}

/// Look at the start of a stream to tell its format, then give back a reader of the
/// uncompressed tar (the looked-at bytes included).
pub fn decompressed_stream(
    mut reader: Box<dyn Read + Send>,
    source_name: &str,
) -> Result<(ArchiveFormat, Box<dyn Read + Send>), ImageError> {
    let head = ArchiveFormat::head(&mut reader).map_err(|source| ImageError::Read {
        source_name: source_name.to_string(),
        source,
    })?;
    let format = ArchiveFormat::sniff(&head).ok_or_else(|| ImageError::NotAnArchive {
        source_name: source_name.to_string(),
        detail: if head.is_empty() {
            "it is empty".to_string()
        } else {
            "it starts with neither a tar header nor gzip or zstd magic bytes".to_string()
        },
    })?;
    let whole: Box<dyn Read + Send> = Box::new(io::Cursor::new(head).chain(reader));
    Ok((format, decompress(format, whole)))
}

/// The uncompressed bytes of a stream in `format`. Decoder errors say which format was broken.
pub fn decompress(format: ArchiveFormat, reader: Box<dyn Read + Send>) -> Box<dyn Read + Send> {
    match format {
        ArchiveFormat::Tar => reader,
        ArchiveFormat::Gzip => Box::new(Named {
            format: "gzip",
            inner: flate2::read::MultiGzDecoder::new(crate::blob::AlignedBufReader::with_capacity(
                256 * 1024,
                reader,
            )),
        }),
        ArchiveFormat::Zstd => match zstd::stream::read::Decoder::new(reader) {
            Ok(decoder) => Box::new(Named {
                format: "zstd",
                inner: decoder,
            }),
            // The decoder only fails to allocate its context; report that on first read.
            Err(err) => Box::new(FailingReader(Some(err))),
        },
    }
}

/// A decoder whose errors say which compressed format was corrupt or truncated.
struct Named<R> {
    format: &'static str,
    inner: R,
}

#[derive(Debug, thiserror::Error)]
#[error("{format} data is corrupt or truncated")]
pub struct CorruptCompression {
    format: &'static str,
    #[source]
    source: io::Error,
}

impl<R: Read> Read for Named<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|source| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                CorruptCompression {
                    format: self.format,
                    source,
                },
            )
        })
    }
}

struct FailingReader(Option<io::Error>);

impl Read for FailingReader {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(self
            .0
            .take()
            .unwrap_or_else(|| io::Error::other("decoder unavailable")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_head() -> Vec<u8> {
        let mut header = tar::Header::new_ustar();
        header.set_path("manifest.json").unwrap();
        header.set_size(0);
        header.set_cksum();
        header.as_bytes().to_vec()
    }

    #[test]
    fn formats_are_sniffed_by_magic_bytes() {
        assert_eq!(ArchiveFormat::sniff(&tar_head()), Some(ArchiveFormat::Tar));
        assert_eq!(
            ArchiveFormat::sniff(&[0x1f, 0x8b, 8, 0]),
            Some(ArchiveFormat::Gzip)
        );
        assert_eq!(
            ArchiveFormat::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Some(ArchiveFormat::Zstd)
        );
        assert_eq!(ArchiveFormat::sniff(b"#!/bin/sh\n"), None);
        assert_eq!(ArchiveFormat::sniff(b""), None);
    }

    #[test]
    fn detection_uses_content_not_names() {
        let dir = tempfile::tempdir().unwrap();
        // A tar named .gz is still a tar; a script named .tar is still a script.
        let tar = dir.path().join("image.tar.gz");
        std::fs::write(&tar, tar_head()).unwrap();
        let script = dir.path().join("image.tar");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let layout = dir.path().join("layout");
        std::fs::create_dir(&layout).unwrap();
        std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "hello").unwrap();

        let kind = |p: &Path| detect_kind(p, &std::fs::metadata(p).unwrap());
        assert_eq!(kind(&tar).unwrap(), SourceKind::Archive);
        assert_eq!(kind(&script).unwrap(), SourceKind::Script);
        assert_eq!(kind(&layout).unwrap(), SourceKind::OciLayout);
        assert!(matches!(kind(&text), Err(ImageError::NotAnImage { .. })));
        assert!(matches!(kind(dir.path()), Err(ImageError::NotAnImage { .. })));
    }

    /// nix2container's image JSON (the keys its buildImage writes: version, image-config,
    /// layers with digest, size, diff_ids, paths and mediatype, arch, created) is named as
    /// such, with what to do, rather than "not an image".
    #[test]
    fn a_nix2container_image_is_named_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image.json");
        let digest = format!("sha256:{}", "a".repeat(64));
        let json = serde_json::json!({
            "version": 1,
            "image-config": {"Entrypoint": ["/nix/store/00000000000000000000000000000000-hello/bin/hello"]},
            "layers": [{
                "digest": digest, "size": 10240, "diff_ids": digest,
                "paths": [{"path": "/nix/store/00000000000000000000000000000000-hello"}],
                "mediatype": "application/vnd.oci.image.layer.v1.tar",
            }],
            "arch": "amd64",
            "created": "1970-01-01T00:00:01Z",
        });
        std::fs::write(&image, json.to_string()).unwrap();
        let err = detect_kind(&image, &std::fs::metadata(&image).unwrap()).unwrap_err();
        assert!(matches!(err, ImageError::Nix2Container { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains("is a nix2container image"), "{message}");
        assert!(message.contains("nixfly rollout --image"), "{message}");
        // Other JSON is still just not an image.
        let other = dir.path().join("other.json");
        std::fs::write(&other, r#"{"layers": []}"#).unwrap();
        let err = detect_kind(&other, &std::fs::metadata(&other).unwrap()).unwrap_err();
        assert!(matches!(err, ImageError::NotAnImage { .. }), "{err}");
    }

    #[test]
    fn corrupt_gzip_names_the_format() {
        let reader: Box<dyn Read + Send> = Box::new(io::Cursor::new(vec![
            0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff,
        ]));
        let (format, mut out) = decompressed_stream(reader, "test").unwrap();
        assert_eq!(format, ArchiveFormat::Gzip);
        let err = out.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(err.to_string(), "gzip data is corrupt or truncated");
    }

    #[test]
    fn empty_and_unknown_streams_are_not_archives() {
        let err = decompressed_stream(Box::new(io::empty()), "stdin").err().unwrap();
        assert_eq!(err.to_string(), "stdin is not a docker-archive: it is empty");
        let err = decompressed_stream(Box::new(&b"hello world"[..]), "stdin")
            .err()
            .unwrap();
        assert!(err.to_string().contains("neither a tar header"), "{err}");
    }
}
