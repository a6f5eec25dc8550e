//! Running Debian's Nix 2.8 against this checkout, offline, with the nixpkgs stand-in
//! (`nix/tests/nixpkgs-standin`, see its README) in place of nixpkgs.
//!
//! The setup that works here: the system store as root with no daemon, no substituters and
//! `build-users-group` empty, with builds in Nix's sandbox as nixpkgs' are on NixOS. The
//! stand-in's builders use the host's tools, the Rust toolchain and cargo's crate cache (both
//! under the invoking user's home), which its `sandbox-paths` script lets into the sandbox, and
//! nothing else of the host. Evaluation is `--impure` because the stand-in reads where those are
//! from the environment.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub struct Nix {
    /// The flake reference of this checkout (git+file: only tracked files, no target/).
    pub checkout: String,
    /// `path:` reference of the nixpkgs stand-in.
    pub standin: String,
    env: Vec<(&'static str, String)>,
    /// What the stand-in's `sandbox-paths` printed for `env`.
    sandbox_paths: String,
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

impl Nix {
    /// `None` (after saying so on stderr) when `nix` is not installed; CI installs it.
    pub fn get() -> Option<&'static Nix> {
        static NIX: OnceLock<Option<Nix>> = OnceLock::new();
        NIX.get_or_init(|| {
            if Command::new("nix").arg("--version").output().is_err() {
                // scripts/test (and so CI) installs Nix and says so: there a missing nix is a
                // failure, not the Nix tests passing without running.
                assert!(
                    std::env::var_os("CI").is_none() && std::env::var_os("NIXFLY_TESTS_NEED_NIX").is_none(),
                    "`nix` is not installed, and scripts/test (NIXFLY_TESTS_NEED_NIX) or CI needs the Nix tests to run: apt-get install nix-bin"
                );
                eprintln!(
                    "SKIPPED: `nix` is not installed (apt-get install nix-bin); scripts/test installs it"
                );
                return None;
            }
            // The setup below needs the store itself (root, no daemon): say so plainly instead
            // of failing later on a lock file.
            let root = Command::new("id")
                .arg("-u")
                .output()
                .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
            assert!(
                root,
                "the Nix tests run nix as root on the system store (no daemon, no build users): \
                 run `cargo test` as root, as scripts/test does in CI"
            );
            Some(Nix::setup())
        })
        .as_ref()
    }

    fn setup() -> Nix {
        // The real toolchain directory (not rustup's proxy, which needs $HOME): cargo sets
        // CARGO to its own executable.
        let toolchain_bin = Path::new(env!("CARGO"))
            .parent()
            .expect("CARGO has a parent directory")
            .to_path_buf();
        // `cargo fetch` only when a crate is missing: it waits for the package-cache lock,
        // which the `cargo test` running this may hold.
        let crates = match crate_cache() {
            Some(cache) if missing_crates(&cache).is_empty() => cache,
            _ => {
                let fetch = Command::new(env!("CARGO"))
                    .args(["fetch", "--locked", "--quiet"])
                    .current_dir(manifest_dir())
                    .status()
                    .expect("run cargo fetch");
                assert!(fetch.success(), "cargo fetch --locked failed");
                let cache = crate_cache().expect("cargo fetch fills cargo's crates.io cache");
                let missing = missing_crates(&cache);
                assert!(missing.is_empty(), "not in {}: {missing:?}", cache.display());
                cache
            }
        };
        let standin = manifest_dir().join("nix/tests/nixpkgs-standin");
        let env = vec![
            (
                "NIXFLY_STANDIN_PATH",
                format!("{}:/usr/bin:/bin", toolchain_bin.display()),
            ),
            ("NIXFLY_STANDIN_CRATES", crates.display().to_string()),
            // One cache for the whole machine: every checkout (worktree, CI job) shares the
            // compiled dependencies instead of building them again.
            (
                "NIXFLY_STANDIN_CARGO_TARGET",
                std::env::temp_dir()
                    .join("nixfly-nix-standin-target")
                    .display()
                    .to_string(),
            ),
        ];
        let sandbox_paths =
            super::run(Command::new(standin.join("sandbox-paths")).envs(env.iter().map(|(k, v)| (k, v))));
        super::assert_success(&sandbox_paths);
        Nix {
            checkout: format!("git+file://{}", manifest_dir().display()),
            standin: format!("path:{}", standin.display()),
            env,
            sandbox_paths: String::from_utf8(sandbox_paths.stdout)
                .expect("sandbox-paths prints paths")
                .trim()
                .to_owned(),
        }
    }

    /// `nix <subcommand...>` with the offline options and the stand-in environment. Add
    /// `override_input` args for flake commands.
    ///
    /// Without a daemon, concurrent nix processes on one store fail with "SQLite database
    /// '/nix/var/nix/db/db.sqlite' is busy" instead of waiting; `flock` runs them one at a time,
    /// across test threads and across processes (two checkouts testing on one machine).
    pub fn command(&self, subcommand: &[&str]) -> Command {
        let mut cmd = Command::new("flock");
        cmd.args(["/nix/var/nix/nixfly-tests.lock", "nix"])
            .args(["--extra-experimental-features", "nix-command flakes"])
            .args(["--option", "substituters", ""])
            .args(["--option", "sandbox", "true"])
            .args(["--option", "build-users-group", ""])
            // The store's database is not flushed to disk after each write: a test store need
            // not survive a power cut. On a cold store (a fresh CI machine), the first 51 s of
            // `nix flake check` built 303 of its 343 crate derivations instead of 189-199, and
            // the Nix tests took 556 s instead of 578 s.
            .args(["--option", "fsync-metadata", "false"])
            .args(["--option", "extra-sandbox-paths", &self.sandbox_paths])
            .args(subcommand)
            .arg("--impure");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Arguments that put the stand-in in place of `input` (e.g. "nixpkgs").
    pub fn override_input(&self, input: &str) -> [String; 3] {
        ["--override-input".into(), input.into(), self.standin.clone()]
    }
}

/// `<name>-<version>.crate` files of Cargo.lock's registry packages that `cache` lacks.
fn missing_crates(cache: &Path) -> Vec<String> {
    let lock: toml::Table = std::fs::read_to_string(manifest_dir().join("Cargo.lock"))
        .expect("read Cargo.lock")
        .parse()
        .expect("Cargo.lock is TOML");
    let packages = lock["package"].as_array().expect("Cargo.lock lists packages");
    packages
        .iter()
        .filter(|p| p.get("source").is_some())
        .map(|p| {
            format!(
                "{}-{}.crate",
                p["name"].as_str().unwrap_or("?"),
                p["version"].as_str().unwrap_or("?")
            )
        })
        .filter(|file| !cache.join(file).is_file())
        .collect()
}

/// cargo's download cache of crates.io, where `cargo fetch` leaves the `.crate` files.
fn crate_cache() -> Option<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| dirs::home_dir().map(|h| h.join(".cargo")))?;
    std::fs::read_dir(cargo_home.join("registry/cache"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("index.crates.io-"))
        })
}
