//! The local cache in `$XDG_CACHE_HOME/nixfly` (default `~/.cache/nixfly`): what compressing a
//! layer gave last time, and which repositories of which registry hold which blobs. It only
//! saves work: every entry is checked against the registry (HEAD) before it is trusted, a
//! broken entry is a warning and a miss, and a failed write is a warning.
//!
//! Layout (one small JSON file per entry, written to a temp file and renamed, so concurrent
//! pushes never see half a file):
//! - `v1/compressed/<compression>/<diff_id hex>.json`: `{"digest", "size"}`
//! - `v1/blobs/<registry>/<digest hex>.json`: `["repository", ...]`, most recent first
//! - `v1/archives/<sha256 of the file's identity>.json`: `{"config", "diff_ids"}` of a
//!   compressed archive file read before
//!
//! Archive entries hold image configs, whose `Env` may carry secrets: the cache is private to
//! its owner (directories 0700, files 0600, and the root tightened to 0700 if an older
//! version left it readable).

use crate::blob::Compression;
use crate::progress::Reporter;
use crate::registry::Digest;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Repositories remembered per blob: enough to find a mount source.
const MAX_REPOSITORIES: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedBlob {
    pub digest: Digest,
    pub size: u64,
}

/// What a compressed archive file held: enough to ask the registry before reading it again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveSummary {
    /// The config blob (JSON, so UTF-8), byte for byte.
    pub config: String,
    pub diff_ids: Vec<Digest>,
}

pub struct Cache {
    /// None: disabled (`--no-cache`, or no cache directory could be found).
    root: Option<PathBuf>,
    reporter: Reporter,
    warned_write: AtomicBool,
    temp_counter: AtomicU64,
    /// The root's mode was checked (once per process, on the first write).
    root_private: AtomicBool,
}

impl Cache {
    /// The user's cache, or a disabled one.
    pub fn open(enabled: bool, reporter: Reporter) -> Self {
        let root = if enabled {
            let root = dirs::cache_dir().map(|dir| dir.join("nixfly"));
            if root.is_none() {
                reporter.warn("no cache directory (set XDG_CACHE_HOME or HOME): pushing without a cache");
            }
            root
        } else {
            None
        };
        Self::with_root(root, reporter)
    }

    pub fn with_root(root: Option<PathBuf>, reporter: Reporter) -> Self {
        Cache {
            root,
            reporter,
            warned_write: AtomicBool::new(false),
            temp_counter: AtomicU64::new(0),
            root_private: AtomicBool::new(false),
        }
    }

    /// The blob that compressing layer `diff_id` with `compression` gave before.
    pub fn compressed(&self, diff_id: &Digest, compression: &Compression) -> Option<CachedBlob> {
        let path = self.compressed_path(diff_id, compression)?;
        self.read(&path)
    }

    pub fn record_compressed(&self, diff_id: &Digest, compression: &Compression, blob: &CachedBlob) {
        if let Some(path) = self.compressed_path(diff_id, compression) {
            self.write(&path, blob);
        }
    }

    /// Repositories of `registry` known to hold `digest`, most recent first.
    pub fn repositories_with(&self, registry: &str, digest: &Digest) -> Vec<String> {
        self.location_path(registry, digest)
            .and_then(|path| self.read(&path))
            .unwrap_or_default()
    }

    pub fn record_location(&self, registry: &str, digest: &Digest, repository: &str) {
        let Some(path) = self.location_path(registry, digest) else {
            return;
        };
        let mut repositories: Vec<String> = self.read(&path).unwrap_or_default();
        if repositories.first().is_some_and(|r| r == repository) {
            return;
        }
        repositories.retain(|r| r != repository);
        repositories.insert(0, repository.to_string());
        repositories.truncate(MAX_REPOSITORIES);
        self.write(&path, &repositories);
    }

    /// What the archive file with this identity held when it was last read.
    pub fn archive(&self, identity: &str) -> Option<ArchiveSummary> {
        self.read(&self.archive_path(identity)?)
    }

    pub fn record_archive(&self, identity: &str, summary: &ArchiveSummary) {
        if let Some(path) = self.archive_path(identity) {
            self.write(&path, summary);
        }
    }

    fn archive_path(&self, identity: &str) -> Option<PathBuf> {
        let key = Digest::sha256_of(identity.as_bytes());
        let key = key.hex();
        Some(
            self.root
                .as_ref()?
                .join("v1/archives")
                .join(format!("{key}.json")),
        )
    }

    fn compressed_path(&self, diff_id: &Digest, compression: &Compression) -> Option<PathBuf> {
        let hex = diff_id.hex();
        Some(
            self.root
                .as_ref()?
                .join("v1/compressed")
                .join(compression.key())
                .join(format!("{hex}.json")),
        )
    }

    fn location_path(&self, registry: &str, digest: &Digest) -> Option<PathBuf> {
        let hex = digest.hex();
        // host:port is not a portable file name; `_` cannot occur in a host name.
        let registry = registry.to_ascii_lowercase().replace(':', "_");
        Some(
            self.root
                .as_ref()?
                .join("v1/blobs")
                .join(registry)
                .join(format!("{hex}.json")),
        )
    }

    fn read<T: for<'de> Deserialize<'de>>(&self, path: &Path) -> Option<T> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
            Err(err) => {
                self.reporter
                    .warn(format!("ignoring cache entry {}: {err}", path.display()));
                return None;
            }
        };
        match serde_json::from_slice(&bytes) {
            Ok(value) => Some(value),
            Err(err) => {
                self.reporter.warn(format!(
                    "ignoring corrupt cache entry {} ({err}); it will be rewritten",
                    path.display()
                ));
                None
            }
        }
    }

    fn write<T: Serialize>(&self, path: &Path, value: &T) {
        if let Err(err) = self.try_write(path, value)
            && !self.warned_write.swap(true, Ordering::Relaxed)
        {
            self.reporter.warn(format!(
                "cannot write the cache at {} ({err}); the next push will check the registry again",
                path.display()
            ));
        }
    }

    fn try_write<T: Serialize>(&self, path: &Path, value: &T) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        let dir = path.parent().expect("cache paths have a directory");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        if let Some(root) = &self.root
            && !self.root_private.swap(true, Ordering::Relaxed)
            && std::fs::metadata(root)?.permissions().mode() & 0o077 != 0
        {
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))?;
        }
        let temp = dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            self.temp_counter.fetch_add(1, Ordering::Relaxed)
        ));
        let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?
            .write_all(&bytes)?;
        std::fs::rename(&temp, path).inspect_err(|_| {
            let _ = std::fs::remove_file(&temp);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::Algorithm;

    fn digest(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64)).parse().unwrap()
    }

    fn cache(dir: &Path) -> Cache {
        Cache::with_root(Some(dir.to_path_buf()), Reporter::plain())
    }

    #[test]
    fn compressed_entries_are_per_compression_setting() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path());
        let gzip = Compression::default();
        let zstd = Compression::new(Algorithm::Zstd, None).unwrap();
        let blob = CachedBlob {
            digest: digest('b'),
            size: 42,
        };
        assert_eq!(cache.compressed(&digest('a'), &gzip), None);
        cache.record_compressed(&digest('a'), &gzip, &blob);
        assert_eq!(cache.compressed(&digest('a'), &gzip), Some(blob));
        assert_eq!(cache.compressed(&digest('a'), &zstd), None);
        // Survives a new process.
        assert!(self::cache(dir.path()).compressed(&digest('a'), &gzip).is_some());
    }

    #[test]
    fn locations_keep_the_most_recent_repository_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path());
        cache.record_location("127.0.0.1:5000", &digest('c'), "one");
        cache.record_location("127.0.0.1:5000", &digest('c'), "two");
        cache.record_location("127.0.0.1:5000", &digest('c'), "one");
        assert_eq!(
            cache.repositories_with("127.0.0.1:5000", &digest('c')),
            ["one", "two"]
        );
        assert!(cache.repositories_with("other.example", &digest('c')).is_empty());
    }

    #[test]
    fn a_corrupt_entry_is_a_miss_and_gets_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path());
        let gzip = Compression::default();
        let path = cache.compressed_path(&digest('d'), &gzip).unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"{\"digest\": tru").unwrap();
        assert_eq!(cache.compressed(&digest('d'), &gzip), None);
        let blob = CachedBlob {
            digest: digest('e'),
            size: 1,
        };
        cache.record_compressed(&digest('d'), &gzip, &blob);
        assert_eq!(cache.compressed(&digest('d'), &gzip), Some(blob));
    }

    #[test]
    fn an_unwritable_cache_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        let cache = cache(&file);
        cache.record_location("r", &digest('f'), "repo");
        assert!(cache.repositories_with("r", &digest('f')).is_empty());
    }

    #[test]
    fn archives_are_keyed_by_identity() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path());
        let summary = ArchiveSummary {
            config: "{}".into(),
            diff_ids: vec![digest('a')],
        };
        cache.record_archive("/nix/store/x-image.tar.gz ino=1", &summary);
        assert_eq!(cache.archive("/nix/store/x-image.tar.gz ino=1"), Some(summary));
        assert_eq!(cache.archive("/nix/store/x-image.tar.gz ino=2"), None);
    }

    /// Issue 13: configs (with their `Env`) are cached; nobody but the owner may read them,
    /// even when an older version left the root world-readable.
    #[test]
    fn issue_13_entries_are_private_to_the_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("nixfly");
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cache = cache(&root);
        let summary = ArchiveSummary {
            config: r#"{"config":{"Env":["SECRET=x"]}}"#.into(),
            diff_ids: vec![digest('a')],
        };
        cache.record_archive("identity", &summary);
        cache.record_location("r", &digest('b'), "repo");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        let mut seen = 0;
        let mut stack = vec![root.clone()];
        while let Some(path) = stack.pop() {
            for entry in std::fs::read_dir(&path).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    assert_eq!(mode(&path), 0o700, "{}", path.display());
                    stack.push(path);
                } else {
                    assert_eq!(mode(&path), 0o600, "{}", path.display());
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, 2);
    }

    #[test]
    fn a_disabled_cache_remembers_nothing() {
        let cache = Cache::with_root(None, Reporter::plain());
        cache.record_location("r", &digest('a'), "repo");
        assert!(cache.repositories_with("r", &digest('a')).is_empty());
    }
}
