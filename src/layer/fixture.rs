//! A fake Nix store with the awkward cases a layer tar must get right, built under a temp dir
//! (a chroot store: `/nix/store/x` lives at `<root>/nix/store/x`). Content and permissions are
//! set explicitly, so the tree is the same on every machine and under every umask.

use super::store_tar::TarOptions;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

pub const HELLO: &str = "/nix/store/0c8hs4ylm4jxzwdr9x1ll7bq1fdb9g0r-hello-2.12.1";
pub const SCRIPT: &str = "/nix/store/2a3fh9vq0j5wd4zw1z6qkh2ps8mz8n0x-start.sh";
pub const LINK: &str = "/nix/store/9kl4vx0hbb3m7a8r0qy5zq1c4s2w0x7i-current";
pub const BIG: &str = "/nix/store/7yx1q4m8dz4v0rwj3ggr0nvb1i0a2c9s-big-data";

pub struct FakeStore {
    pub dir: tempfile::TempDir,
}

impl FakeStore {
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, store_path: &str) -> PathBuf {
        self.root().join(store_path.trim_start_matches('/'))
    }

    pub fn options(&self) -> TarOptions {
        TarOptions {
            root: Some(self.root().to_path_buf()),
            ..TarOptions::default()
        }
    }

    /// Every fixture store path, in the order a layer lists them.
    pub fn all_paths() -> Vec<String> {
        [HELLO, SCRIPT, LINK, BIG].map(String::from).to_vec()
    }
}

impl Drop for FakeStore {
    fn drop(&mut self) {
        // Read-only directories would stop the temp dir's removal when not running as root.
        let _ = chmod(&self.path(&format!("{HELLO}/bin")), 0o755);
    }
}

/// Deterministic bytes that compress somewhat, like real binaries: runs of text between
/// pseudo-random stretches (xorshift, fixed seed).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        if state.is_multiple_of(4) {
            out.extend_from_slice(b"the quick brown fox jumps over the lazy dog ");
        } else {
            out.extend_from_slice(&state.to_le_bytes());
        }
    }
    out.truncate(len);
    out
}

fn chmod(path: &Path, mode: u32) -> std::io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

fn write(path: &Path, content: &[u8], mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
    chmod(path, mode).unwrap();
}

pub fn build() -> FakeStore {
    let store = FakeStore {
        dir: tempfile::tempdir().unwrap(),
    };
    let hello = store.path(HELLO);
    write(&hello.join("bin/hello"), b"#!/bin/sh\necho hello\n", 0o555);
    write(&hello.join("share/doc/README"), b"hello, the GNU way\n", 0o444);
    fs::hard_link(
        hello.join("share/doc/README"),
        hello.join("share/doc/README.hardlink"),
    )
    .unwrap();
    write(&hello.join("share/.hidden"), b"", 0o444);
    write(&hello.join("share/exactly-512"), &[b'x'; 512], 0o444);
    write(&hello.join("share/exactly-513"), &[b'y'; 513], 0o644);
    fs::create_dir_all(hello.join("share/empty-dir")).unwrap();
    write(
        &hello.join("lib/libhello.so.1.0"),
        &pseudo_random(100_000, 7),
        0o555,
    );
    symlink("libhello.so.1.0", hello.join("lib/libhello.so.1")).unwrap();
    // "a/b" sorts before "a-b" component-wise although '-' < '/' in a plain string sort.
    write(&hello.join("sort/a/b"), b"a/b", 0o444);
    write(&hello.join("sort/a-b"), b"a-b", 0o444);
    write(&hello.join("sort/B"), b"upper case first", 0o444);
    // Names needing PAX records: over 100 bytes, non-ASCII, and both; a long link target.
    let long = "l".repeat(120);
    write(&hello.join(format!("share/{long}")), b"long name", 0o444);
    write(&hello.join("share/grüße-日本語.txt"), b"unicode", 0o444);
    write(&hello.join(format!("share/ü{long}")), b"both", 0o444);
    let deep = hello.join("share/locale/de_DE.UTF-8/LC_MESSAGES/deeply/nested/directory/for/a/long/path");
    write(&deep.join("hello.mo"), b"deep", 0o444);
    symlink(
        format!(
            "{HELLO}/share/locale/de_DE.UTF-8/LC_MESSAGES/deeply/nested/directory/for/a/long/path/hello.mo"
        ),
        hello.join("share/absolute-long-link"),
    )
    .unwrap();

    write(&store.path(SCRIPT), b"#!/bin/sh\nexec hello\n", 0o555);
    fs::create_dir_all(store.path(LINK).parent().unwrap()).unwrap();
    symlink(HELLO, store.path(LINK)).unwrap();
    write(&store.path(BIG).join("blob"), &pseudo_random(3 << 20, 42), 0o444);
    // Directories were made under the caller's umask; give them fixed modes.
    chmod_dirs(&hello, 0o755);
    chmod_dirs(&store.path(BIG), 0o755);
    chmod(&hello.join("bin"), 0o555).unwrap();
    store
}

fn chmod_dirs(dir: &Path, mode: u32) {
    chmod(dir, mode).unwrap();
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            chmod_dirs(&entry.path(), mode);
        }
    }
}
