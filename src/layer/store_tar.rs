//! The reproducible tar of a layer's store paths, byte for byte as nixpkgs'
//! `dockerTools.streamLayeredImage` writes it (`stream_layered_image.py`, `archive_paths_to`),
//! so a layer made here has the same diff_id as the one the stream script makes.
//!
//! What that script does, through Python's `tarfile` in its default PAX format:
//! - `/nix/` and `/nix/store/` directory entries first, mode 0755;
//! - then, for each store path in the order given, the path itself and everything below it
//!   (symlinks are not followed), sorted as `pathlib` sorts: component by component, which is a
//!   depth-first walk with each directory's entries sorted by name;
//! - absolute names (`/nix/store/...`), a trailing `/` on directories;
//! - every entry gets the same mtime, uid, gid, uname and gname; the permission bits are kept;
//! - hardlinks are stored as regular files;
//! - a ustar header per entry, preceded by a PAX extended header only when a name, link target,
//!   uname or gname is longer than its ustar field or not ASCII (the ustar field then holds the
//!   first bytes with non-ASCII characters replaced by `?`), or a number does not fit;
//! - two zero blocks at the end, then zero padding to a multiple of 10240 bytes.
//!
//! `layer_cli::layer_plans_match_nixpkgs` holds this, and the plan's config, to the diff_ids and
//! config that nixpkgs' own script streamed (`tests/fixtures/stream-image/cases.json`).

use std::ffi::OsString;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

const BLOCK: usize = 512;
/// Python's `tarfile.RECORDSIZE`: the archive is padded to a multiple of this.
const RECORD: u64 = 20 * BLOCK as u64;
const NAME_FIELD: usize = 100;
const OWNER_NAME_FIELD: usize = 32;

/// Ownership and time stamped on every entry: `streamLayeredImage`'s `uid`, `gid`, `uname`,
/// `gname` and `mtime` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarOptions {
    pub mtime: u64,
    pub uid: u64,
    pub gid: u64,
    pub uname: String,
    pub gname: String,
    /// Where the store paths are on disk when not at their own path: a Nix chroot store
    /// (`nix --store /some/root`) keeps `/nix/store/x` at `/some/root/nix/store/x`. Entry names
    /// are always the store paths themselves.
    pub root: Option<PathBuf>,
}

impl Default for TarOptions {
    /// `streamLayeredImage`'s defaults: root-owned, mtime 1970-01-01T00:00:01Z.
    fn default() -> Self {
        TarOptions {
            mtime: 1,
            uid: 0,
            gid: 0,
            uname: "root".into(),
            gname: "root".into(),
            root: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreTarError {
    #[error("store path {0:?} is not a normalised absolute path (expected /nix/store/<hash>-<name>)")]
    NotAbsolute(String),
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "file name {path:?} is not valid UTF-8; the layer tar cannot reproduce how Python names it, \
         so this store path cannot go into a layer plan (use the stream-script layering instead)"
    )]
    NotUtf8 { path: PathBuf },
    #[error("{path} is a socket or device; Nix store paths contain only files, directories and symlinks")]
    UnsupportedFileType { path: PathBuf },
    #[error("{path} changed while it was archived: expected {expected} bytes, read {actual}")]
    SizeChanged {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("cannot write the layer tar")]
    Write(#[source] io::Error),
}

/// Writes the tar of `store_paths` (in the given order, as in `store_layers`) to `out` and
/// returns its length in bytes. `out` should be buffered.
pub fn write_store_tar<W: Write>(
    store_paths: &[String],
    options: &TarOptions,
    out: W,
) -> Result<u64, StoreTarError> {
    let mut tar = TarWriter {
        out,
        written: 0,
        options,
        copy_buf: vec![0; 256 * 1024],
    };
    tar.directory_entry("/nix", 0o755)?;
    tar.directory_entry("/nix/store", 0o755)?;
    for store_path in store_paths {
        check_store_path(store_path)?;
        let on_disk = match &options.root {
            Some(root) => root.join(store_path.trim_start_matches('/')),
            None => PathBuf::from(store_path),
        };
        tar.add_tree(store_path.clone(), &on_disk)?;
    }
    tar.finish()?;
    Ok(tar.written)
}

/// The layer tar as a byte stream, for a compressor that pulls: a thread writes the tar into
/// a pipe, and a disk error on its side ends the stream with that error.
pub fn store_tar_reader(
    store_paths: Vec<String>,
    options: TarOptions,
) -> io::Result<super::thread_reader::ThreadReader> {
    super::thread_reader::ThreadReader::spawn("layer-tar", move |sender| {
        let out = io::BufWriter::with_capacity(1 << 20, sender);
        write_store_tar(&store_paths, &options, out)
            .map(|_| ())
            .map_err(io::Error::other)
    })
}

fn check_store_path(path: &str) -> Result<(), StoreTarError> {
    let normal = path.starts_with('/')
        && !path.ends_with('/')
        && !path.contains("//")
        && Path::new(path)
            .components()
            .skip(1)
            .all(|c| matches!(c, Component::Normal(_)));
    if normal {
        Ok(())
    } else {
        Err(StoreTarError::NotAbsolute(path.to_string()))
    }
}

struct TarWriter<'a, W> {
    out: W,
    written: u64,
    options: &'a TarOptions,
    copy_buf: Vec<u8>,
}

enum EntryKind<'a> {
    File,
    Directory,
    Symlink(&'a str),
}

impl<W: Write> TarWriter<'_, W> {
    /// `name` and everything below it, without following symlinks. Recursion depth is the
    /// depth of the tree, which is small for store paths.
    fn add_tree(&mut self, name: String, on_disk: &Path) -> Result<(), StoreTarError> {
        let meta = fs::symlink_metadata(on_disk).map_err(|source| read_error(on_disk, source))?;
        let mode = meta.mode() & 0o7777;
        let file_type = meta.file_type();
        if file_type.is_symlink() {
            let target = fs::read_link(on_disk).map_err(|source| read_error(on_disk, source))?;
            let target = target
                .to_str()
                .ok_or_else(|| StoreTarError::NotUtf8 { path: on_disk.into() })?;
            self.entry(&name, mode, 0, EntryKind::Symlink(target))
        } else if file_type.is_file() {
            self.file_entry(&name, mode, &meta, on_disk)
        } else if file_type.is_dir() {
            self.entry(&format!("{name}/"), mode, 0, EntryKind::Directory)?;
            for child in sorted_children(on_disk)? {
                let child_str = child.to_str().ok_or_else(|| StoreTarError::NotUtf8 {
                    path: on_disk.join(&child),
                })?;
                self.add_tree(format!("{name}/{child_str}"), &on_disk.join(&child))?;
            }
            Ok(())
        } else {
            Err(StoreTarError::UnsupportedFileType { path: on_disk.into() })
        }
    }

    fn directory_entry(&mut self, name: &str, mode: u32) -> Result<(), StoreTarError> {
        self.entry(&format!("{name}/"), mode, 0, EntryKind::Directory)
    }

    fn file_entry(
        &mut self,
        name: &str,
        mode: u32,
        meta: &Metadata,
        on_disk: &Path,
    ) -> Result<(), StoreTarError> {
        let size = meta.len();
        let file = File::open(on_disk).map_err(|source| read_error(on_disk, source))?;
        self.entry(name, mode, size, EntryKind::File)?;
        // Exactly `size` bytes, as tarfile does: a file that grew is cut at the size it had.
        let mut remaining = size;
        let mut reader = file.take(size);
        while remaining > 0 {
            let n = match reader.read(&mut self.copy_buf) {
                Ok(0) => {
                    return Err(StoreTarError::SizeChanged {
                        path: on_disk.into(),
                        expected: size,
                        actual: size - remaining,
                    });
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(read_error(on_disk, source)),
            };
            self.out
                .write_all(&self.copy_buf[..n])
                .map_err(StoreTarError::Write)?;
            remaining -= n as u64;
        }
        self.written += size;
        self.pad_to_block()
    }

    fn entry(&mut self, name: &str, mode: u32, size: u64, kind: EntryKind<'_>) -> Result<(), StoreTarError> {
        let (typeflag, linkname) = match kind {
            EntryKind::File => (b'0', ""),
            EntryKind::Directory => (b'5', ""),
            EntryKind::Symlink(target) => (b'2', target),
        };
        let header = Header {
            name,
            mode,
            uid: self.options.uid,
            gid: self.options.gid,
            size,
            mtime: self.options.mtime,
            typeflag,
            linkname,
            uname: &self.options.uname,
            gname: &self.options.gname,
        };
        let bytes = header.encode();
        self.write(&bytes)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreTarError> {
        self.out.write_all(bytes).map_err(StoreTarError::Write)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad_to_block(&mut self) -> Result<(), StoreTarError> {
        let rem = (self.written % BLOCK as u64) as usize;
        if rem != 0 {
            self.write(&[0; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), StoreTarError> {
        self.write(&[0; 2 * BLOCK])?;
        let rem = self.written % RECORD;
        if rem != 0 {
            let zeros = vec![0; (RECORD - rem) as usize];
            self.write(&zeros)?;
        }
        self.out.flush().map_err(StoreTarError::Write)
    }
}

fn read_error(path: &Path, source: io::Error) -> StoreTarError {
    StoreTarError::Read {
        path: path.into(),
        source,
    }
}

/// A directory's entries by name in byte order, which for UTF-8 names is the code point order
/// Python's string comparison uses.
fn sorted_children(dir: &Path) -> Result<Vec<OsString>, StoreTarError> {
    let mut names = fs::read_dir(dir)
        .and_then(|entries| {
            entries
                .map(|entry| entry.map(|e| e.file_name()))
                .collect::<io::Result<Vec<_>>>()
        })
        .map_err(|source| read_error(dir, source))?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// One entry's metadata, encoded as Python's `TarInfo.tobuf(PAX_FORMAT)` does.
struct Header<'a> {
    name: &'a str,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    typeflag: u8,
    linkname: &'a str,
    uname: &'a str,
    gname: &'a str,
}

impl Header<'_> {
    fn encode(&self) -> Vec<u8> {
        let mut pax: Vec<(&str, String)> = Vec::new();
        for (key, value, field) in [
            ("path", self.name, NAME_FIELD),
            ("linkpath", self.linkname, NAME_FIELD),
            ("uname", self.uname, OWNER_NAME_FIELD),
            ("gname", self.gname, OWNER_NAME_FIELD),
        ] {
            // tarfile compares the length in characters, which for ASCII is the byte length.
            if !value.is_ascii() || value.len() > field {
                pax.push((key, value.to_string()));
            }
        }
        let mut numbers = [
            ("uid", self.uid, 8),
            ("gid", self.gid, 8),
            ("size", self.size, 12),
            ("mtime", self.mtime, 12),
        ];
        for (key, value, digits) in &mut numbers {
            if !fits_octal(*value, *digits) {
                pax.push((key, value.to_string()));
                *value = 0;
            }
        }
        let [(_, uid, _), (_, gid, _), (_, size, _), (_, mtime, _)] = numbers;

        let mut out = Vec::with_capacity(3 * BLOCK);
        if !pax.is_empty() {
            let records = pax_records(&pax);
            out.extend_from_slice(&ustar_block(&UstarFields {
                name: "././@PaxHeader",
                mode: 0,
                uid: 0,
                gid: 0,
                size: records.len() as u64,
                mtime: 0,
                typeflag: b'x',
                linkname: "",
                uname: "",
                gname: "",
            }));
            out.extend_from_slice(&records);
            out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
        }
        out.extend_from_slice(&ustar_block(&UstarFields {
            name: self.name,
            mode: self.mode,
            uid,
            gid,
            size,
            mtime,
            typeflag: self.typeflag,
            linkname: self.linkname,
            uname: self.uname,
            gname: self.gname,
        }));
        out
    }
}

struct UstarFields<'a> {
    name: &'a str,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    typeflag: u8,
    linkname: &'a str,
    uname: &'a str,
    gname: &'a str,
}

fn ustar_block(f: &UstarFields<'_>) -> [u8; BLOCK] {
    let mut block = [0u8; BLOCK];
    put_text(&mut block[0..100], f.name);
    put_octal(&mut block[100..108], u64::from(f.mode));
    put_octal(&mut block[108..116], f.uid);
    put_octal(&mut block[116..124], f.gid);
    put_octal(&mut block[124..136], f.size);
    put_octal(&mut block[136..148], f.mtime);
    block[148..156].fill(b' ');
    block[156] = f.typeflag;
    put_text(&mut block[157..257], f.linkname);
    block[257..265].copy_from_slice(b"ustar\x0000");
    put_text(&mut block[265..297], f.uname);
    put_text(&mut block[297..329], f.gname);
    // devmajor, devminor and prefix stay NUL: tarfile writes device numbers only for devices
    // and never splits names into a prefix in PAX format.
    let checksum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    block[148..155].copy_from_slice(format!("{checksum:06o}\0").as_bytes());
    block
}

fn fits_octal(value: u64, digits: u32) -> bool {
    value < 8u64.pow(digits - 1)
}

/// `digits - 1` octal digits and a NUL; callers have checked that the value fits.
fn put_octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    field[..digits].copy_from_slice(format!("{value:0digits$o}").as_bytes());
    field[digits] = 0;
}

/// The text encoded as ASCII with every other character replaced by `?`, cut to the field.
fn put_text(field: &mut [u8], text: &str) {
    for (slot, c) in field.iter_mut().zip(text.chars()) {
        *slot = if c.is_ascii() { c as u8 } else { b'?' };
    }
}

/// PAX records `"<len> <key>=<value>\n"`, where `<len>` counts the whole record including
/// its own digits.
fn pax_records(entries: &[(&str, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in entries {
        let body = key.len() + value.len() + 3;
        // The same fixed-point search as tarfile, from the same start, so that where two
        // lengths would be self-consistent the same one is chosen.
        let mut len = 0;
        loop {
            let next = body + len.to_string().len();
            if next == len {
                break;
            }
            len = next;
        }
        out.extend_from_slice(format!("{len} {key}={value}\n").as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::fixture::{self, BIG, FakeStore, HELLO, LINK, SCRIPT};
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    fn tar_of(store: &FakeStore, paths: &[String]) -> Vec<u8> {
        let mut out = Vec::new();
        let len = write_store_tar(paths, &store.options(), &mut out).unwrap();
        assert_eq!(len, out.len() as u64);
        out
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    /// The same archive made by Python's own `tarfile`, following the steps of nixpkgs'
    /// `archive_paths_to`; the store paths are read under `root`, named as themselves.
    const PYTHON_REFERENCE: &str = r#"
import pathlib, sys, tarfile
root, out, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
def stamp(info):
    info.mtime, info.uid, info.gid, info.uname, info.gname = 1, 0, 0, "root", "root"
    return info
with open(out, "wb") as f, tarfile.open(fileobj=f, mode="w|") as tar:
    for d in ("/nix", "/nix/store"):
        info = tarfile.TarInfo(d)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(stamp(info))
    for store_path in paths:
        top = pathlib.Path(root + store_path)
        members = [top] if top.is_symlink() else [top, *top.rglob("*")]
        for member in sorted(members):
            info = tar.gettarinfo(member)
            info.name = store_path + str(member)[len(str(top)):]
            if info.islnk():
                info.type, info.linkname, info.size = tarfile.REGTYPE, "", member.stat().st_size
            stamp(info)
            if info.isfile():
                with open(member, "rb") as content:
                    tar.addfile(info, content)
            else:
                tar.addfile(info)
"#;

    #[test]
    fn tar_is_byte_identical_to_python_tarfile() {
        let store = fixture::build();
        let paths = FakeStore::all_paths();
        let ours = tar_of(&store, &paths);
        let reference = store.root().join("reference.tar");
        let status = Command::new("python3")
            .arg("-c")
            .arg(PYTHON_REFERENCE)
            .arg(store.root())
            .arg(&reference)
            .args(&paths)
            .status()
            .expect("python3 runs (Debian: apt-get install python3)");
        assert!(status.success());
        let theirs = fs::read(&reference).unwrap();
        assert_eq!(ours.len(), theirs.len(), "tar lengths differ");
        if let Some(at) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
            panic!(
                "first difference at byte {at} (block {}, offset {}):\nours   {:?}\npython {:?}",
                at / BLOCK,
                at % BLOCK,
                String::from_utf8_lossy(&ours[at - at % BLOCK..][..BLOCK]),
                String::from_utf8_lossy(&theirs[at - at % BLOCK..][..BLOCK]),
            );
        }
    }

    #[test]
    fn golden_digest_of_the_fixture_tar() {
        let store = fixture::build();
        let tar = tar_of(&store, &FakeStore::all_paths());
        assert_eq!(
            (tar.len(), sha256_hex(&tar).as_str()),
            (GOLDEN_TAR_SIZE, GOLDEN_TAR_SHA256)
        );
    }

    // Pinned once the byte-for-byte comparison with Python's tarfile above passed; a change
    // here means every layer digest nixfly records changes too.
    const GOLDEN_TAR_SIZE: usize = 3_287_040;
    const GOLDEN_TAR_SHA256: &str = "fbaed739b8f9a92ad7883e9fd641778ce7f4589db5eb5663b2c23ac8dc316aae";

    #[test]
    fn an_independent_reader_sees_every_entry_as_written() {
        let store = fixture::build();
        let tar = tar_of(&store, &FakeStore::all_paths());
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let header = entry.header().clone();
            let name = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
            assert_eq!(header.mtime().unwrap(), 1, "{name}");
            assert_eq!(header.uid().unwrap(), 0, "{name}");
            assert_eq!(header.username().unwrap(), Some("root"), "{name}");
            assert_eq!(header.groupname().unwrap(), Some("root"), "{name}");
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            let kind = header.entry_type();
            if kind.is_file() {
                let on_disk = fs::read(store.path(&name)).unwrap();
                assert_eq!(content, on_disk, "{name}");
            }
            let link = entry
                .link_name_bytes()
                .map(|l| String::from_utf8(l.into_owned()).unwrap());
            seen.push((name, header.mode().unwrap(), kind, link));
        }
        let find = |name: &str| {
            seen.iter()
                .find(|(n, ..)| n == name)
                .unwrap_or_else(|| panic!("{name} missing from {seen:#?}"))
        };
        assert_eq!(seen[0].0, "/nix/");
        assert_eq!(seen[1].0, "/nix/store/");
        assert_eq!(seen[2].0, format!("{HELLO}/"));
        assert_eq!(find("/nix/").1, 0o755);
        assert_eq!(find(&format!("{HELLO}/bin/")).1, 0o555);
        assert_eq!(find(&format!("{HELLO}/bin/hello")).1, 0o555);
        assert_eq!(find(&format!("{HELLO}/share/doc/README")).1, 0o444);
        assert!(find(&format!("{HELLO}/share/doc/README.hardlink")).2.is_file());
        let lib = find(&format!("{HELLO}/lib/libhello.so.1"));
        assert!(lib.2.is_symlink());
        assert_eq!(lib.3.as_deref(), Some("libhello.so.1.0"));
        find(&format!("{HELLO}/share/{}", "l".repeat(120)));
        find(&format!("{HELLO}/share/grüße-日本語.txt"));
        let absolute = find(&format!("{HELLO}/share/absolute-long-link"));
        assert!(absolute.3.as_deref().unwrap().ends_with("/hello.mo"));
        let script = find(SCRIPT);
        assert!(script.2.is_file());
        assert_eq!(script.1, 0o555);
        assert_eq!(find(LINK).3.as_deref(), Some(HELLO));
        find(&format!("{BIG}/blob"));
        // Store paths in the order given; inside one, depth first with sorted names.
        let names: Vec<&str> = seen.iter().map(|(n, ..)| n.as_str()).collect();
        let position = |n: String| names.iter().position(|x| *x == n).unwrap();
        assert!(position(format!("{HELLO}/sort/a/b")) < position(format!("{HELLO}/sort/a-b")));
        assert!(position(format!("{HELLO}/sort/B")) < position(format!("{HELLO}/sort/a/")));
        assert!(position(format!("{HELLO}/share/")) < position(SCRIPT.to_string()));
        assert!(position(SCRIPT.to_string()) < position(LINK.to_string()));
        assert_eq!(tar.len() % RECORD as usize, 0);
    }

    #[test]
    fn gnu_tar_lists_the_same_names() {
        let store = fixture::build();
        let tar = tar_of(&store, &[HELLO.to_string()]);
        let file = store.root().join("layer.tar");
        fs::write(&file, &tar).unwrap();
        // Literal quoting: without a UTF-8 locale (a Nix build has none) tar escapes
        // non-ASCII names.
        let out = Command::new("tar")
            .args(["--list", "--numeric-owner", "--quoting-style=literal", "-f"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let listing = String::from_utf8(out.stdout).unwrap();
        assert!(
            listing.contains(&format!("{HELLO}/share/ü{}\n", "l".repeat(120))),
            "{listing}"
        );
        assert!(
            listing.contains(&format!("{HELLO}/share/grüße-日本語.txt\n")),
            "{listing}"
        );
    }

    #[test]
    fn same_tree_same_bytes_whatever_the_order_files_were_created_in() {
        let store = fixture::build();
        let paths = vec![HELLO.to_string()];
        let first = tar_of(&store, &paths);
        // Recreate the sort fixture in reverse order: the directory order on disk changes.
        let sort = store.path(HELLO).join("sort");
        fs::remove_dir_all(&sort).unwrap();
        fs::create_dir_all(sort.join("a")).unwrap();
        for (name, content) in [("B", "upper case first"), ("a-b", "a-b"), ("a/b", "a/b")] {
            fs::write(sort.join(name), content).unwrap();
            fs::set_permissions(sort.join(name), fs::Permissions::from_mode(0o444)).unwrap();
        }
        assert_eq!(sha256_hex(&tar_of(&store, &paths)), sha256_hex(&first));
    }

    #[test]
    fn bad_store_paths_are_named_in_the_error() {
        let store = fixture::build();
        for bad in ["nix/store/x", "/nix/store/x/", "/nix//store/x", "/nix/store/../x"] {
            let err = write_store_tar(&[bad.to_string()], &store.options(), io::sink()).unwrap_err();
            assert!(matches!(err, StoreTarError::NotAbsolute(_)), "{bad}: {err}");
            assert!(err.to_string().contains(bad), "{err}");
        }
        let missing = "/nix/store/00000000000000000000000000000000-missing";
        let err = write_store_tar(&[missing.to_string()], &store.options(), io::sink()).unwrap_err();
        assert!(err.to_string().contains("-missing"), "{err}");
    }

    #[test]
    fn non_utf8_names_are_refused_not_mangled() {
        use std::os::unix::ffi::OsStringExt;
        let store = fixture::build();
        let path = format!("{SCRIPT}.d");
        let dir = store.path(&path);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(OsString::from_vec(b"bad-\xff".to_vec())), b"").unwrap();
        let err = write_store_tar(&[path], &store.options(), io::sink()).unwrap_err();
        assert!(matches!(err, StoreTarError::NotUtf8 { .. }), "{err}");
    }
}
