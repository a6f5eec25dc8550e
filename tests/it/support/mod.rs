//! Shared harness for the integration tests: the nixfly command, temp dirs, and the real
//! components (registry, Fly API double) started on loopback. Each test binary uses only part
//! of it, hence the allow.
#![allow(dead_code)]

pub use fly_api_double as fly_api;
pub use test_images as images;
pub mod nix;
pub mod rollout;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A temp dir that lives as long as the test, with its own nixfly cache and HOME so that no
/// test sees the developer's tokens, Docker credentials or cache.
pub struct TestDir {
    pub dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> Self {
        TestDir {
            dir: tempfile::tempdir().expect("create temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `nixfly` with an environment isolated from the developer's: HOME, XDG_CACHE_HOME and
    /// DOCKER_CONFIG point into this dir, and every Fly/registry credential variable is removed.
    pub fn nixfly(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nixfly"));
        for var in [
            "FLY_API_TOKEN",
            "FLY_ACCESS_TOKEN",
            "FLY_AUTH_TOKEN",
            "FLY_APP",
            "FLY_REGISTRY_HOST",
            "FLY_FLAPS_BASE_URL",
            "FLY_API_BASE_URL",
            "FLY_CONFIG_DIR",
            "REGISTRY_AUTH_FILE",
            "NIXFLY_OUTPUT",
            // Trust only the system's CAs (a test names its own CA file where it needs one).
            "SSL_CERT_FILE",
            "SSL_CERT_DIR",
            // No proxy but the one a test sets.
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "NO_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "no_proxy",
        ] {
            cmd.env_remove(var);
        }
        let home = self.join("home");
        std::fs::create_dir_all(&home).expect("create home");
        cmd.env("HOME", &home)
            .env("XDG_CACHE_HOME", self.join("cache"))
            .env("DOCKER_CONFIG", home.join(".docker"))
            .current_dir(self.path());
        cmd
    }
}

/// Run a command, returning its output; panics with both streams if it could not start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Poll `done` every 20 ms until it holds; panics with `what` after `seconds`.
#[track_caller]
pub fn wait_until(what: &str, seconds: u64, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Send `signal` (`INT`, `TERM`) to process `pid` with kill(1).
#[track_caller]
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Assert success, showing stdout and stderr when it failed.
#[track_caller]
pub fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "command failed with {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A layer tar for `layer build --tar`: `member` (a path inside `dir`) written to `out` by GNU
/// tar, sorted by name and owned by root as nixpkgs' customisation layer is
/// (`pkgs/build-support/docker/default.nix`), with mtime 1 where nixpkgs uses
/// SOURCE_DATE_EPOCH, and without its `--hard-dereference` (these trees hold no hard links).
#[track_caller]
pub fn customisation_tar(out: &Path, dir: &Path, member: &str) {
    let status = Command::new("tar")
        .args([
            "--sort=name",
            "--mtime=@1",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-cf",
        ])
        .arg(out)
        .arg("-C")
        .arg(dir)
        .arg(member)
        .status()
        .expect("GNU tar runs");
    assert!(status.success(), "tar of {member} in {} failed", dir.display());
}

pub mod proxy;
pub mod readback;
pub mod registry;

/// A stream script that streams more than a pipe holds (a streamLayeredImage archive of two
/// layers of this machine's files, over 4 MiB), written in `t`: it writes its pid to `pid`,
/// `cat`s the archive, writes the time it finished (seconds since the epoch) to `done`, then
/// runs `tail` in its shell. Its path and what it streams.
pub fn slow_to_drain_script(t: &TestDir, tail: &str) -> (PathBuf, images::Written) {
    let layers = [
        images::Layer::of(&["/usr/bin/perl"]),
        images::Layer::of(&["/usr/bin/bash", "/usr/lib/x86_64-linux-gnu/libc.so.6"]),
    ];
    let tar = t.join("image.tar");
    let written =
        images::write_stream_layered(std::fs::File::create(&tar).unwrap(), &layers, images::Fault::None)
            .unwrap();
    assert!(
        std::fs::metadata(&tar).unwrap().len() > 4 << 20,
        "more than the 1 MiB pipe holds"
    );
    let script = t.join("stream-image");
    images::write_executable(
        &script,
        &format!(
            "#!/bin/sh\nset -e\necho $$ > '{pid}'\ncat '{tar}'\ndate +%s.%N > '{done}'\n{tail}\n",
            pid = t.join("pid").display(),
            tar = tar.display(),
            done = t.join("done").display(),
        ),
    )
    .unwrap();
    (script, written)
}

/// Now, in seconds since the epoch (what `date +%s.%N` writes).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Seconds from `began` (a [`unix_now`]) to when a [`slow_to_drain_script`] in `t` finished.
pub fn script_finished_after(t: &TestDir, began: f64) -> f64 {
    let done = std::fs::read_to_string(t.join("done")).expect("the script finished");
    done.trim().parse::<f64>().unwrap() - began
}
