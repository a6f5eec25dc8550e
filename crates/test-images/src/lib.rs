//! Fixture images shaped as nixpkgs dockerTools writes them, from real files on this machine,
//! for every source kind nixfly reads, plus broken variants for the error tests.
//!
//! - streamLayeredImage (`stream_layered_image.py`): per layer one `<sha256 of layer tar>/layer.tar`
//!   (no directory entries), then `<sha256 of config>.json`, then `manifest.json` last. The outer
//!   archive is byte for byte what the script's `tarfile.open(mode="w|")` writes for these entries
//!   (headers, then zero padding to a whole 10240-byte record), and the config and manifest are
//!   its `json.dumps(indent=4)`, keys in the order its `main()` builds them
//!   (`push_fixtures::stream_layered_archive_is_what_pythons_tarfile_and_json_write` holds both
//!   to Python). There is no customisation layer. buildLayeredImage is that stream piped through
//!   a compressor.
//! - Layer tars (the inner archives) have nixpkgs' entries in its order: `/nix` and `/nix/store`
//!   (0755), then each store path's files sorted, absolute names, hardlinks as regular files,
//!   fixed mtime/uid/gid. They are not its bytes: GNU headers without owner names, no trailing
//!   `/` on directories, GNU long names, no record padding, where nixpkgs' tarfile writes PAX
//!   with `root`. So a fixture layer's diff_id is not the one nixpkgs would give the same paths.
//!   nixpkgs' exact layer bytes are `src/layer/store_tar.rs`'s job, held to the diff_ids
//!   nixpkgs' own script streamed (`layer_cli::layer_plans_match_nixpkgs`); the Nix tests
//!   stream with the nixpkgs stand-in's `stream.py`, which writes them.
//! - buildImage: `<layerID>/{VERSION,json,layer.tar}`, `<config sha>.json`, `manifest.json`,
//!   `repositories`, sorted by name; the layer directory is not the diff_id. Its config is the
//!   stream's, not the jq output nixpkgs' buildImage writes.
//!
//! Layer tars are generated twice (once to hash, once to write), never held in memory, so
//! the same code makes the benchmark's large images.

use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// dockerTools' default mtime: 1970-01-01T00:00:01Z.
const MTIME: u64 = 1;

/// One layer: real paths on this machine, each stored as `/nix/store/<hash>-<basename>`.
#[derive(Clone, Debug)]
pub struct Layer {
    pub paths: Vec<PathBuf>,
}

impl Layer {
    pub fn of(paths: &[&str]) -> Self {
        Layer {
            paths: paths.iter().map(PathBuf::from).collect(),
        }
    }
}

/// What a fixture is, for comparing with what the registry holds afterwards.
#[derive(Clone, Debug)]
pub struct Written {
    pub config: Vec<u8>,
    pub config_digest: String,
    pub diff_ids: Vec<String>,
    pub layer_sizes: Vec<u64>,
}

/// Ways to break an archive, for the error tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    /// Layer `n`'s bytes differ from the digest its name and the config declare.
    LayerContent(usize),
    /// The config declares another diff_id for layer `n` (its entry name is still the truth).
    ConfigDiffId(usize),
    /// No manifest.json at all.
    NoManifest,
    /// manifest.json is not JSON.
    BadManifest,
    /// An extra entry whose name escapes the archive.
    DotDotEntry,
    /// Not broken, but not for Fly: the config names this architecture, as
    /// stream_layered_image.py writes `conf["architecture"]` (pkgs.go.GOARCH) for an
    /// aarch64-linux package set ("arm64").
    Architecture(&'static str),
    /// An extra entry with an absolute name.
    AbsoluteEntry,
}

/// The lowercase hex sha256 of `bytes` (sha2, independent of nixfly).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The `/nix/store/<hash>-<name>` a real path is stored as (hash derived from the path).
fn store_path(path: &Path) -> String {
    let hash = &sha256_hex(path.as_os_str().as_encoded_bytes())[..32];
    let name = path
        .file_name()
        .map_or("root".into(), |n| n.to_string_lossy().into_owned());
    format!("/nix/store/{hash}-{name}")
}

/// Every file under `root` (itself included), sorted like Python's `sorted(Path.rglob("*"))`
/// by full path. Unreadable entries are left out.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let meta = match fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(_) => return vec![],
    };
    if meta.is_dir() {
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                if let Ok(m) = fs::symlink_metadata(&path) {
                    if m.is_dir() {
                        stack.push(path.clone());
                    }
                    if m.is_dir() || m.is_file() || m.file_type().is_symlink() {
                        out.push(path);
                    }
                }
            }
        }
    }
    out[1..].sort();
    out
}

/// Write one layer tar (the inner archive) to `out`.
fn write_layer_tar(layer: &Layer, out: impl Write) -> io::Result<()> {
    let mut builder = tar::Builder::new(out);
    builder.mode(tar::HeaderMode::Deterministic);
    for dir in ["/nix", "/nix/store"] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_mtime(MTIME);
        header.set_size(0);
        append_absolute(&mut builder, &mut header, dir, io::empty())?;
    }
    for root in &layer.paths {
        let prefix = store_path(root);
        for file in walk(root) {
            let Ok(meta) = fs::symlink_metadata(&file) else {
                continue;
            };
            let relative = file.strip_prefix(root).expect("walked under root");
            let name = if relative.as_os_str().is_empty() {
                prefix.clone()
            } else {
                format!("{prefix}/{}", relative.display())
            };
            let mut header = tar::Header::new_gnu();
            header.set_mtime(MTIME);
            header.set_uid(0);
            header.set_gid(0);
            use std::os::unix::fs::PermissionsExt;
            header.set_mode(meta.permissions().mode() & 0o7777);
            if meta.file_type().is_symlink() {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                header.set_link_name(fs::read_link(&file)?)?;
                append_absolute(&mut builder, &mut header, &name, io::empty())?;
            } else if meta.is_dir() {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                append_absolute(&mut builder, &mut header, &name, io::empty())?;
            } else {
                let Ok(mut f) = fs::File::open(&file) else {
                    continue;
                };
                // The size at open time: a file that changes underneath is read to that size.
                let size = f.metadata()?.len();
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(size);
                let mut reader = (&mut f).take(size).chain(io::repeat(0)).take(size);
                append_absolute(&mut builder, &mut header, &name, &mut reader)?;
            }
        }
    }
    builder.into_inner()?.flush()
}

/// dockerTools writes absolute names (`/nix/store/...`); the tar crate refuses them in
/// `append_data`, so the name is set on the header directly.
fn append_absolute<W: Write>(
    builder: &mut tar::Builder<W>,
    header: &mut tar::Header,
    name: &str,
    data: impl Read,
) -> io::Result<()> {
    if name.len() < 100 {
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        builder.append(header, data)
    } else {
        // Long names take a GNU long-name entry, which append_data writes for relative names;
        // the leading slash is kept by writing the long name entry ourselves.
        let mut long = tar::Header::new_gnu();
        long.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        long.set_mode(0o644);
        long.set_entry_type(tar::EntryType::GNULongName);
        let bytes = [name.as_bytes(), &[0]].concat();
        long.set_size(bytes.len() as u64);
        long.set_cksum();
        builder.append(&long, &bytes[..])?;
        header.as_old_mut().name[..99].copy_from_slice(&name.as_bytes()[..99]);
        header.set_cksum();
        builder.append(header, data)
    }
}

/// Counts and hashes what is written.
struct HashingSink {
    hasher: Sha256,
    size: u64,
}

impl Write for HashingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.size += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// (hex sha256, size) of a layer tar, without keeping it.
fn hash_layer(layer: &Layer) -> io::Result<(String, u64)> {
    let mut sink = HashingSink {
        hasher: Sha256::new(),
        size: 0,
    };
    write_layer_tar(layer, &mut sink)?;
    Ok((hex::encode(sink.hasher.finalize()), sink.size))
}

/// Outer archive writer: entries are appended with their exact bytes, the layers streamed.
/// `python`: headers and end as stream_layered_image.py's `tarfile.open(mode="w|")` writes them
/// (see [`python_header`]); else as this crate writes buildImage's (ustar by the tar crate).
struct Outer<W: Write> {
    out: W,
    python: bool,
    written: u64,
}

impl<W: Write> Outer<W> {
    fn new(out: W, python: bool) -> Self {
        Outer {
            out,
            python,
            written: 0,
        }
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.written += bytes.len() as u64;
        self.out.write_all(bytes)
    }

    fn header(&mut self, name: &str, size: u64, kind: tar::EntryType) -> io::Result<()> {
        if self.python {
            return self.write(&python_header(name, size));
        }
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        header.set_mtime(MTIME);
        let bytes = name.as_bytes();
        header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        header.set_cksum();
        self.write(header.as_bytes())
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rest = (512 - size % 512) % 512;
        self.write(&vec![0u8; rest as usize])
    }

    fn file(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.header(name, bytes.len() as u64, tar::EntryType::Regular)?;
        self.write(bytes)?;
        self.pad(bytes.len() as u64)
    }

    fn layer(&mut self, name: &str, layer: &Layer, size: u64, corrupt: bool) -> io::Result<()> {
        self.header(name, size, tar::EntryType::Regular)?;
        if corrupt {
            let mut bytes = Vec::new();
            write_layer_tar(layer, &mut bytes)?;
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x55;
            self.write(&bytes)?;
        } else {
            write_layer_tar(layer, &mut self.out)?;
            self.written += size;
        }
        self.pad(size)
    }

    /// Two zero blocks; Python's tarfile then pads the archive to a whole record (10240 bytes,
    /// `tarfile.RECORDSIZE`), so a stream goes on past the end-of-archive blocks.
    fn end(mut self) -> io::Result<W> {
        self.write(&[0u8; 1024])?;
        if self.python {
            let rest = (10240 - self.written % 10240) % 10240;
            self.write(&vec![0u8; rest as usize])?;
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

/// The header Python's `tarfile` writes for `TarInfo(name)` with a size and mtime 1, in its
/// default PAX format (`TarInfo._create_header`, used by stream_layered_image.py's `add_bytes`
/// and for each layer): mode 0644, uid and gid 0 as octal, empty owner names, magic
/// `ustar\0` `00`, no device numbers, the checksum as six octal digits, NUL, space. Names here
/// are short and ASCII, so no PAX extended header precedes it.
fn python_header(name: &str, size: u64) -> [u8; 512] {
    assert!(
        name.len() < 100 && name.is_ascii(),
        "a PAX header would be needed for {name}"
    );
    let mut h = [0u8; 512];
    let octal = |field: &mut [u8], value: u64| {
        let text = format!("{value:0width$o}", width = field.len() - 1);
        field[..text.len()].copy_from_slice(text.as_bytes());
    };
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], MTIME);
    h[148..156].copy_from_slice(b"        ");
    h[156] = b'0';
    h[257..265].copy_from_slice(b"ustar\x0000");
    let checksum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{checksum:06o}\0 ").as_bytes());
    h
}

/// Python's `json.dumps(value, indent=4)`.
fn python_json(value: &impl serde::Serialize) -> Vec<u8> {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    serde::Serialize::serialize(value, &mut ser).expect("json");
    out
}

/// A JSON value whose objects keep their keys in the order given, for writing with
/// [`python_json`] what Python's `json.dumps(value, indent=4)` writes from a dict built in that
/// order (serde_json's maps sort their keys). The strings here are ASCII, so `ensure_ascii`
/// changes none.
enum Py {
    Str(String),
    List(Vec<Py>),
    Dict(Vec<(&'static str, Py)>),
}

impl Py {
    fn str(text: impl Into<String>) -> Py {
        Py::Str(text.into())
    }

    fn strs<T: AsRef<str>>(items: &[T]) -> Py {
        Py::List(items.iter().map(|i| Py::str(i.as_ref())).collect())
    }
}

impl serde::Serialize for Py {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Py::Str(text) => serializer.serialize_str(text),
            Py::List(items) => serializer.collect_seq(items),
            Py::Dict(items) => serializer.collect_map(items.iter().map(|(k, v)| (k, v))),
        }
    }
}

/// Python's `repr` of a list of strings (the history comments' `store paths: [...]`).
fn python_list_repr(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("'{i}'")).collect();
    format!("[{}]", quoted.join(", "))
}

/// The config stream_layered_image.py writes: its keys in the order `main()` builds them, one
/// history entry per layer whose comment lists the layer's store paths.
fn image_config(diff_ids: &[String], layer_paths: &[Vec<String>], architecture: &str) -> Vec<u8> {
    let created = "1970-01-01T00:00:01+00:00";
    let config = Py::Dict(vec![
        ("created", Py::str(created)),
        ("architecture", Py::str(architecture)),
        ("os", Py::str("linux")),
        (
            "config",
            Py::Dict(vec![
                ("Cmd", Py::strs(&["/bin/hello"])),
                ("Env", Py::strs(&["PATH=/bin"])),
            ]),
        ),
        (
            "rootfs",
            Py::Dict(vec![
                ("diff_ids", Py::strs(diff_ids)),
                ("type", Py::str("layers")),
            ]),
        ),
        (
            "history",
            Py::List(
                layer_paths
                    .iter()
                    .map(|paths| {
                        Py::Dict(vec![
                            ("created", Py::str(created)),
                            (
                                "comment",
                                Py::str(format!("store paths: {}", python_list_repr(paths))),
                            ),
                        ])
                    })
                    .collect(),
            ),
        ),
    ]);
    python_json(&config)
}

/// Each layer's store paths, as the stream script names them.
fn store_paths(layer: &Layer) -> Vec<String> {
    layer.paths.iter().map(|p| store_path(p)).collect()
}

/// An uncompressed streamLayeredImage archive (what the script prints, what buildLayeredImage
/// with `compressor = "none"` stores).
pub fn write_stream_layered(out: impl Write, layers: &[Layer], fault: Fault) -> io::Result<Written> {
    let hashed: Vec<(String, u64)> = layers.iter().map(hash_layer).collect::<io::Result<_>>()?;
    let mut diff_ids: Vec<String> = hashed.iter().map(|(hex, _)| format!("sha256:{hex}")).collect();
    if let Fault::ConfigDiffId(n) = fault {
        diff_ids[n] = format!("sha256:{}", "0".repeat(64));
    }
    let architecture = match fault {
        Fault::Architecture(architecture) => architecture,
        _ => "amd64",
    };
    let paths: Vec<Vec<String>> = layers.iter().map(store_paths).collect();
    let config = image_config(&diff_ids, &paths, architecture);
    let config_digest = format!("sha256:{}", sha256_hex(&config));
    let mut outer = Outer::new(out, true);
    let mut names = Vec::new();
    for (index, (layer, (hex, size))) in layers.iter().zip(&hashed).enumerate() {
        let name = format!("{hex}/layer.tar");
        outer.layer(&name, layer, *size, fault == Fault::LayerContent(index))?;
        names.push(name);
    }
    match fault {
        Fault::DotDotEntry => outer.file("../escape", b"x")?,
        Fault::AbsoluteEntry => outer.file("/etc/escape", b"x")?,
        _ => {}
    }
    let config_name = format!("{}.json", &config_digest["sha256:".len()..]);
    outer.file(&config_name, &config)?;
    let manifest = python_json(&Py::List(vec![Py::Dict(vec![
        ("Config", Py::str(&config_name)),
        ("RepoTags", Py::strs(&["hello:latest"])),
        ("Layers", Py::strs(&names)),
    ])]));
    match fault {
        Fault::NoManifest => {}
        Fault::BadManifest => outer.file("manifest.json", b"[{\"Config\": ")?,
        _ => outer.file("manifest.json", &manifest)?,
    }
    outer.end()?;
    Ok(Written {
        config,
        config_digest,
        diff_ids,
        layer_sizes: hashed.iter().map(|(_, size)| *size).collect(),
    })
}

/// A buildImage archive (one layer, uncompressed; compress it with `gzip_file`).
pub fn write_build_image(out: impl Write, layer: &Layer) -> io::Result<Written> {
    let (hex, size) = hash_layer(layer)?;
    let diff_ids = vec![format!("sha256:{hex}")];
    let config = image_config(&diff_ids, &[store_paths(layer)], "amd64");
    let config_digest = format!("sha256:{}", sha256_hex(&config));
    // buildImage's layer ID is a hash of the layer's metadata, not of its content.
    let layer_id = sha256_hex(format!("layer-id {hex}").as_bytes());
    let config_name = format!("{}.json", &config_digest["sha256:".len()..]);
    let layer_json = python_json(&serde_json::json!({"id": layer_id, "created": "1970-01-01T00:00:01Z"}));
    let manifest = python_json(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": ["hello:latest"],
        "Layers": [format!("{layer_id}/layer.tar")],
    }]));
    let repositories = python_json(&serde_json::json!({"hello": {"latest": layer_id}}));
    enum Entry<'a> {
        Dir,
        Bytes(&'a [u8]),
        Layer,
    }
    let mut entries: Vec<(String, Entry)> = vec![
        (layer_id.clone(), Entry::Dir),
        (format!("{layer_id}/VERSION"), Entry::Bytes(b"1.0")),
        (format!("{layer_id}/json"), Entry::Bytes(&layer_json)),
        (format!("{layer_id}/layer.tar"), Entry::Layer),
        (config_name.clone(), Entry::Bytes(&config)),
        ("manifest.json".into(), Entry::Bytes(&manifest)),
        ("repositories".into(), Entry::Bytes(&repositories)),
    ];
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut outer = Outer::new(out, false);
    for (name, entry) in entries {
        match entry {
            Entry::Dir => outer.header(&format!("{name}/"), 0, tar::EntryType::Directory)?,
            Entry::Bytes(bytes) => outer.file(&name, bytes)?,
            Entry::Layer => outer.layer(&name, layer, size, false)?,
        }
    }
    outer.end()?;
    Ok(Written {
        config,
        config_digest,
        diff_ids,
        layer_sizes: vec![size],
    })
}

/// `pigz -nTR`-like gzip of a file (one member, no name, mtime 0).
pub fn gzip_file(from: &Path, to: &Path) -> io::Result<()> {
    let mut input = fs::File::open(from)?;
    let mut encoder = flate2::write::GzEncoder::new(fs::File::create(to)?, flate2::Compression::new(6));
    io::copy(&mut input, &mut encoder)?;
    encoder.finish()?.sync_all()
}

pub fn zstd_file(from: &Path, to: &Path) -> io::Result<()> {
    let mut input = fs::File::open(from)?;
    let mut encoder = zstd::stream::write::Encoder::new(fs::File::create(to)?, 3)?;
    io::copy(&mut input, &mut encoder)?;
    encoder.finish()?.sync_all()
}

/// An executable stream script: prints progress on stderr like stream_layered_image.py and
/// the archive on stdout. With `exit_code` != 0 it stops half-way and fails.
pub fn write_stream_script(path: &Path, archive: &Path, exit_code: i32) -> io::Result<()> {
    let body = if exit_code == 0 {
        format!(
            "echo \"No 'fromImage' provided\" >&2\necho 'Creating layer 1 from paths: [...]' >&2\ncat '{}'\necho 'Done.' >&2\n",
            archive.display()
        )
    } else {
        let half = fs::metadata(archive)?.len() / 2;
        format!(
            "echo 'Creating layer 1 from paths: [...]' >&2\nhead -c {half} '{}'\necho 'error: cannot read /nix/store/xyz' >&2\nexit {exit_code}\n",
            archive.display()
        )
    };
    write_executable(path, &format!("#!/bin/sh\nset -e\n{body}"))
}

/// Writes an executable file through a child process (`install`), never through a file
/// descriptor of this process. Tests run in threads: a thread that forks while this process
/// holds the file open for writing keeps that descriptor until it execs, and running the file
/// meanwhile fails with ETXTBSY ("Text file busy"), a flaky "could not be run".
pub fn write_executable(path: &Path, text: &str) -> io::Result<()> {
    use std::process::{Command, Stdio};
    let mut child = Command::new("install")
        .args(["-m", "755", "/dev/stdin"])
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(text.as_bytes())?;
    let status = child.wait()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "install {} failed: {status}",
            path.display()
        )))
    }
}

/// An OCI image layout of the same layers, gzip- (or with `zstd`, zstd-) compressed by the
/// libraries directly, not by nixfly's code.
pub fn write_oci_layout(dir: &Path, layers: &[Layer], zstd: bool) -> io::Result<Written> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8]| -> io::Result<(String, u64)> {
        let hex = sha256_hex(bytes);
        fs::write(blobs.join(&hex), bytes)?;
        Ok((format!("sha256:{hex}"), bytes.len() as u64))
    };
    let mut diff_ids = Vec::new();
    let mut descriptors = Vec::new();
    let mut sizes = Vec::new();
    for layer in layers {
        let mut tar = Vec::new();
        write_layer_tar(layer, &mut tar)?;
        diff_ids.push(format!("sha256:{}", sha256_hex(&tar)));
        sizes.push(tar.len() as u64);
        let (blob, media_type) = if zstd {
            (
                zstd::encode_all(&tar[..], 3)?,
                "application/vnd.oci.image.layer.v1.tar+zstd",
            )
        } else {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            encoder.write_all(&tar)?;
            (encoder.finish()?, "application/vnd.oci.image.layer.v1.tar+gzip")
        };
        let (digest, size) = put(&blob)?;
        descriptors.push(serde_json::json!({"mediaType": media_type, "digest": digest, "size": size}));
    }
    let paths: Vec<Vec<String>> = layers.iter().map(store_paths).collect();
    let config = image_config(&diff_ids, &paths, "amd64");
    let (config_digest, config_size) = put(&config)?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": descriptors,
    }))?;
    let (manifest_digest, manifest_size) = put(&manifest)?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion": "1.0.0"}"#)?;
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest_size}],
        }))?,
    )?;
    Ok(Written {
        config,
        config_digest,
        diff_ids,
        layer_sizes: sizes,
    })
}

/// A small image from real files: a few directories that exist on any Debian machine.
pub fn small_layers() -> Vec<Layer> {
    vec![
        Layer::of(&["/usr/share/doc/tar", "/usr/share/doc/gzip"]),
        Layer::of(&["/usr/bin/gzip", "/usr/bin/tar"]),
        Layer::of(&["/etc/debian_version", "/usr/share/common-licenses/GPL-3"]),
    ]
}
