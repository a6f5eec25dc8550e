//! Issue 13: hostile inputs. An OCI layout whose files are symlinks to devices or to files
//! outside it, or whose blobs disagree with their descriptors, is refused before a byte is
//! uploaded, and the tag stays as it was.

use crate::support;

use std::path::{Path, PathBuf};
use support::TestDir;
use support::images;
use support::proxy::FaultProxy;
use support::readback::{assert_same_image, push, push_via, pushed_reference};
use support::registry::{AuthMode, Registry};

/// `blobs/sha256/<hex>` of the layout's manifest, config and first layer.
fn layout_files(layout: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let blob = |digest: &str| layout.join("blobs/sha256").join(&digest["sha256:".len()..]);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_path = blob(index["manifests"][0]["digest"].as_str().unwrap());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    (
        manifest_path,
        blob(manifest["config"]["digest"].as_str().unwrap()),
        blob(manifest["layers"][0]["digest"].as_str().unwrap()),
    )
}

fn replace_with_symlink(path: &Path, target: &Path) {
    std::fs::remove_file(path).unwrap();
    std::os::unix::fs::symlink(target, path).unwrap();
}

#[test]
fn issue_13_hostile_oci_layouts_are_refused_before_any_upload() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let good = t.join("good");
    images::write_oci_layout(&good, &images::small_layers(), false).unwrap();
    let out = push(
        &t,
        &registry,
        good.to_str().unwrap(),
        "app",
        "stable",
        &["--format", "oci"],
    );
    pushed_reference(&out, &registry.host(), "app");
    let before = registry.skopeo_manifest(&format!("{}/app:stable", registry.host()));
    let outside = t.join("secret.txt");

    type Spoil = fn(&Path, &Path);
    let cases: [(&str, Spoil, &str); 6] = [
        (
            "layer-dev-zero",
            |l, _| replace_with_symlink(&layout_files(l).2, Path::new("/dev/zero")),
            "outside the layout",
        ),
        (
            "layer-outside",
            |l, outside| {
                let layer = layout_files(l).2;
                // Same size as the descriptor says: only the symlink check can stop it.
                std::fs::copy(&layer, outside).unwrap();
                replace_with_symlink(&layer, outside);
            },
            "outside the layout",
        ),
        (
            "config-dev-zero",
            |l, _| replace_with_symlink(&layout_files(l).1, Path::new("/dev/zero")),
            "outside the layout",
        ),
        (
            "index-dev-zero",
            |l, _| replace_with_symlink(&l.join("index.json"), Path::new("/dev/zero")),
            "outside the layout",
        ),
        (
            "layer-longer",
            |l, _| {
                use std::io::Write;
                let layer = layout_files(l).2;
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(layer)
                    .unwrap()
                    .write_all(b"extra")
                    .unwrap();
            },
            "but its descriptor says",
        ),
        (
            "layer-fifo",
            |l, _| {
                let layer = layout_files(l).2;
                std::fs::remove_file(&layer).unwrap();
                let status = std::process::Command::new("mkfifo").arg(&layer).status().unwrap();
                assert!(status.success());
            },
            "not a regular file",
        ),
    ];
    for (name, spoil, expected) in cases {
        let layout = t.join(name);
        images::write_oci_layout(&layout, &images::small_layers(), false).unwrap();
        spoil(&layout, &outside);
        let proxy = FaultProxy::start(registry.addr, Vec::new());
        let started = std::time::Instant::now();
        let out = push_via(
            &t,
            &registry,
            &proxy.host(),
            layout.to_str().unwrap(),
            "app",
            "stable",
            &["--format", "oci"],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(
            started.elapsed().as_secs() < 30,
            "{name} took {:?}",
            started.elapsed()
        );
        let uploads: Vec<String> = proxy
            .requests()
            .into_iter()
            .filter(|r| r.starts_with("PATCH") || r.starts_with("PUT"))
            .collect();
        assert!(uploads.is_empty(), "{name}: uploaded {uploads:?}");
        assert_eq!(
            registry.skopeo_manifest(&format!("{}/app:stable", registry.host())),
            before,
            "{name}"
        );
    }
}

#[test]
fn issue_13_symlinks_inside_the_layout_are_followed() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let layout = t.join("layout");
    let written = images::write_oci_layout(&layout, &images::small_layers(), false).unwrap();
    let layer = layout_files(&layout).2;
    let moved = layout.join("elsewhere");
    std::fs::rename(&layer, &moved).unwrap();
    std::os::unix::fs::symlink("../../elsewhere", &layer).unwrap();
    let out = push(
        &t,
        &registry,
        layout.to_str().unwrap(),
        "app",
        "v1",
        &["--format", "oci"],
    );
    let reference = pushed_reference(&out, &registry.host(), "app");
    assert_same_image(&registry, &reference, &written);
}

/// A streamLayeredImage-shaped archive on disk, and what it holds.
fn archive(t: &TestDir) -> (PathBuf, images::Written) {
    let path = t.join("image.tar");
    let written = images::write_stream_layered(
        std::fs::File::create(&path).unwrap(),
        &images::small_layers(),
        images::Fault::None,
    )
    .unwrap();
    (path, written)
}

/// An executable shell script in `t` whose body may use `$ARCHIVE` and `$DIR`; it records its
/// pid in `$DIR/script.pid`.
fn script(t: &TestDir, name: &str, archive: &Path, body: &str) -> PathBuf {
    let path = t.join(name);
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nARCHIVE='{}'\nDIR='{}'\necho $$ > \"$DIR/script.pid\"\n{body}\n",
            archive.display(),
            t.path().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Whether the process whose pid is in `file` has ended (gone, or a zombie nobody reaped yet).
fn ended(file: &Path) -> bool {
    let pid = std::fs::read_to_string(file).unwrap();
    match std::fs::read_to_string(format!("/proc/{}/status", pid.trim())) {
        Err(_) => true,
        Ok(status) => status.lines().any(|l| l.starts_with("State:") && l.contains('Z')),
    }
}

#[track_caller]
fn assert_ended(t: &TestDir, pid_files: &[&str]) {
    for name in pid_files {
        let file = t.join(name);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !ended(&file) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(ended(&file), "{name}: the process is still running");
    }
}

/// Issue 13 point 4: a script that writes a whole archive and then closes stdout and keeps
/// running, or keeps writing after the end of the archive, does not hang the push: the image
/// is pushed and the script (with what it started) is stopped.
#[test]
fn issue_13_a_script_that_lingers_after_its_archive_is_stopped() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let (tar, written) = archive(&t);
    let cases = [
        (
            "closes-stdout",
            "cat \"$ARCHIVE\"\nexec >&-\nsleep 600 &\necho $! > \"$DIR/child.pid\"\nwait",
        ),
        (
            "trailing-bytes",
            "cat \"$ARCHIVE\"\nyes &\necho $! > \"$DIR/child.pid\"\nwait",
        ),
    ];
    for (name, body) in cases {
        let path = script(&t, name, &tar, body);
        let started = std::time::Instant::now();
        let out = push(&t, &registry, path.to_str().unwrap(), "app", name, &[]);
        let reference = pushed_reference(&out, &registry.host(), "app");
        assert!(
            started.elapsed().as_secs() < 60,
            "{name} took {:?}",
            started.elapsed()
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("was still running 5 s after its archive ended"),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_same_image(&registry, &reference, &written);
        assert_ended(&t, &["script.pid", "child.pid"]);
    }
}

/// Issue 13 point 4: a script that goes silent mid-archive is stopped after --stream-timeout,
/// with its process group, and the push fails naming the limit; the tag stays.
#[test]
fn issue_13_a_silent_script_times_out_and_its_group_is_killed() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let (tar, _) = archive(&t);
    let path = script(
        &t,
        "hangs",
        &tar,
        "head -c 3000 \"$ARCHIVE\"\nsleep 600 &\necho $! > \"$DIR/child.pid\"\nwait",
    );
    let started = std::time::Instant::now();
    let out = push(
        &t,
        &registry,
        path.to_str().unwrap(),
        "app",
        "v1",
        &["--stream-timeout", "2s"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("wrote nothing for 2 s") && stderr.contains("--stream-timeout"),
        "{stderr}"
    );
    assert!(started.elapsed().as_secs() < 30, "took {:?}", started.elapsed());
    assert_ended(&t, &["script.pid", "child.pid"]);
    assert!(registry.skopeo_inspect_fails(&format!("{}/app:v1", registry.host())));
}

/// Issue 13 point 4: SIGTERM or SIGINT to nixfly stops the script's whole process group, and
/// nixfly exits with 130 after its cleanup.
#[test]
fn issue_13_a_signal_to_nixfly_stops_the_script() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let (tar, _) = archive(&t);
    for signal in ["TERM", "INT"] {
        let path = script(
            &t,
            "waits",
            &tar,
            "sleep 600 &\necho $! > \"$DIR/child.pid\"\nwait",
        );
        let _ = std::fs::remove_file(t.join("child.pid"));
        let mut cmd = t.nixfly();
        cmd.args(["push", path.to_str().unwrap(), "--to"])
            .arg(format!("{}/app", registry.host()))
            .args(["--tag", "v1", "--creds", &registry.creds()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().unwrap();
        support::wait_until("the script never started", 30, || {
            std::fs::read_to_string(t.join("child.pid")).is_ok_and(|s| !s.trim().is_empty())
        });
        support::send_signal(child.id(), signal);
        let mut exit = None;
        support::wait_until(&format!("nixfly ignored SIG{signal}"), 10, || {
            exit = child.try_wait().unwrap();
            exit.is_some()
        });
        let exit = exit.unwrap();
        // Caught, not died of: the push cleaned up and says it was interrupted.
        assert_eq!(exit.code(), Some(130), "SIG{signal}: {exit:?}");
        assert_ended(&t, &["script.pid", "child.pid"]);
    }
}
