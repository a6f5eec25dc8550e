//! `nixfly push` through a loopback proxy that injects faults between it and the real
//! registry: recoverable faults end in a complete, verified image; an unrecoverable one in a
//! clear error and an unchanged tag.

use crate::support;

use support::TestDir;
use support::images::{self, Fault as ImageFault, Layer};
use support::proxy::{Fault, FaultProxy, Rule};
use support::readback::{
    assert_same_image, layer_outcomes, push, push_via, pushed_json_reference, pushed_reference,
};
use support::registry::{AuthMode, Registry};

/// An image whose first layer compresses to well over the cut point below.
fn image(t: &TestDir) -> (std::path::PathBuf, images::Written) {
    let path = t.join("image.tar.gz");
    let tar = t.join("image.tar");
    let layers = [
        Layer::of(&["/usr/bin/tar", "/usr/bin/gzip", "/usr/share/common-licenses"]),
        Layer::of(&["/etc/debian_version"]),
    ];
    let written =
        images::write_stream_layered(std::fs::File::create(&tar).unwrap(), &layers, ImageFault::None)
            .unwrap();
    images::gzip_file(&tar, &path).unwrap();
    (path, written)
}

/// Flags for a push of [`image`] whose first PATCH a `CutAfter(150_000)` rule is to cut: one
/// upload at a time, so that the first PATCH is the first layer's, the only one longer than
/// the cut (uploads side by side made it the 15-byte second layer's now and then, which went
/// through whole, and the cut never happened).
const CUT_FIRST_LAYER: &[&str] = &["-v", "--jobs", "1"];

/// A push through `proxy` that came through its faults: it succeeded, exactly `faults` rules
/// fired, and the registry itself (read around the proxy) holds what was written.
#[track_caller]
fn assert_survived(
    registry: &Registry,
    proxy: &FaultProxy,
    out: &std::process::Output,
    faults: usize,
    written: &images::Written,
) {
    let reference = pushed_reference(out, &proxy.host(), "app");
    assert_eq!(proxy.fired().len(), faults, "faults fired: {:?}", proxy.fired());
    assert_same_image(registry, &proxy.direct(&reference), written);
}

/// `push_via` of `source` to `app:v1` through `proxy`.
fn push_through(
    t: &TestDir,
    registry: &Registry,
    proxy: &FaultProxy,
    source: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    push_via(
        t,
        registry,
        &proxy.host(),
        source.to_str().unwrap(),
        "app",
        "v1",
        extra,
    )
}

#[test]
fn a_cut_upload_and_rate_limits_are_survived() {
    let registry = Registry::start(AuthMode::htpasswd());
    let proxy = FaultProxy::start(
        registry.addr,
        vec![
            Rule::new("PATCH", "/blobs/uploads/", 1, Fault::CutAfter(150_000)),
            Rule::new("HEAD", "/blobs/sha256:", 1, Fault::status(503, &[])),
            Rule::new(
                "PUT",
                "/manifests/",
                1,
                Fault::status(429, &[("Retry-After", "1")]),
            ),
        ],
    );
    let t = TestDir::new();
    let (source, written) = image(&t);
    let out = push_through(&t, &registry, &proxy, &source, CUT_FIRST_LAYER);
    assert_survived(&registry, &proxy, &out, 3, &written);
}

/// A commit the registry did, whose answer a proxy lost (a 502 or a timeout after the work
/// was done): the retried `PUT` meets the session the first one closed, which distribution
/// answers 404 BLOB_UPLOAD_UNKNOWN, and the blob is there. No blob is uploaded again; nixfly
/// used to fail the push on that 404.
#[test]
fn a_commit_whose_answer_was_lost_is_not_uploaded_again() {
    let t = TestDir::new();
    let (source, written) = image(&t);
    let sessions = |proxy: &FaultProxy| {
        proxy
            .requests()
            .iter()
            .filter(|r| r.starts_with("POST ") && r.contains("/blobs/uploads/"))
            .count()
    };
    // The upload sessions of this image's push without faults.
    let clean = {
        let registry = Registry::start(AuthMode::htpasswd());
        let proxy = FaultProxy::start(registry.addr, vec![]);
        let out = push_through(&t, &registry, &proxy, &source, &[]);
        pushed_reference(&out, &proxy.host(), "app");
        sessions(&proxy)
    };

    let registry = Registry::start(AuthMode::htpasswd());
    let proxy = FaultProxy::start(
        registry.addr,
        vec![Rule::new("PUT", "/blobs/uploads/", 1, Fault::LoseAnswer(502))],
    );
    let out = push_through(&t, &registry, &proxy, &source, &["-v"]);
    assert_survived(&registry, &proxy, &out, 1, &written);
    assert_eq!(sessions(&proxy), clean, "{:#?}", proxy.requests());
}

/// Every commit's answer lost (a proxy that answers 502 to each `PUT` after the registry did
/// it, as one might whose idle limit a slow commit outlasts): the retried commits meet closed
/// sessions, and their answers are lost too. The blobs are there; a HEAD finds each, and the
/// push succeeds without uploading any blob twice. Before, the push failed on the last 502.
/// The same with `--upload-mode monolithic`, whose PUT carries the whole layer: found by a
/// HEAD before it would be sent again.
#[test]
fn commits_whose_every_answer_is_lost_are_found_by_a_head() {
    let t = TestDir::new();
    let (source, written) = image(&t);
    for mode in ["stream", "monolithic"] {
        let registry = Registry::start(AuthMode::htpasswd());
        let proxy = FaultProxy::start(
            registry.addr,
            vec![Rule::new("PUT", "/blobs/uploads/", 0, Fault::LoseAnswer(502))],
        );
        let out = push_through(&t, &registry, &proxy, &source, &["-v", "--upload-mode", mode]);
        let reference = pushed_reference(&out, &proxy.host(), "app");
        assert!(!proxy.fired().is_empty(), "{mode}");
        assert_same_image(&registry, &proxy.direct(&reference), &written);
        let requests = proxy.requests();
        let sessions = requests
            .iter()
            .filter(|r| r.starts_with("POST ") && r.contains("/blobs/uploads/"))
            .count();
        // The config and the image's layers, one session each.
        assert_eq!(sessions, 1 + written.diff_ids.len(), "{mode}: {requests:#?}");
    }
}

/// A registry whose blob checks fail (500 on every HEAD, after the retries) while its uploads
/// work: a layer whose blob cannot be checked is uploaded, with a warning, as Docker uploads
/// one whose existence check failed. Before, the first failed check ended the push.
#[test]
fn a_blob_check_that_keeps_failing_uploads_the_layer() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let (source, written) = image(&t);
    // A first push fills the cache: the second asks about each layer's blob.
    let first = push(&t, &registry, source.to_str().unwrap(), "app", "v1", &[]);
    pushed_reference(&first, &registry.host(), "app");
    let proxy = FaultProxy::start(
        registry.addr,
        vec![Rule::new("HEAD", "/blobs/sha256:", 0, Fault::status(500, &[]))],
    );
    let out = push_through(&t, &registry, &proxy, &source, &["--output", "json"]);
    let reference = support::readback::pushed_json_reference(&out);
    assert!(!proxy.fired().is_empty());
    let warnings = support::readback::events(&out, "warning");
    assert!(
        warnings.iter().any(|w| w["message"]
            .as_str()
            .unwrap()
            .contains("could not check for blob")),
        "{warnings:?}"
    );
    assert_eq!(layer_outcomes(&out), ["uploaded"; 2]);
    assert_same_image(&registry, &proxy.direct(&reference), &written);
}

/// A registry that does not say where an upload stands (405 to the session's GET, which
/// docker, crane and skopeo never send): after a cut the layer starts again in a new session.
#[test]
fn a_cut_upload_without_an_upload_status_starts_again() {
    let registry = Registry::start(AuthMode::htpasswd());
    let proxy = FaultProxy::start(
        registry.addr,
        vec![
            Rule::new("PATCH", "/blobs/uploads/", 1, Fault::CutAfter(150_000)),
            Rule::new("GET", "/blobs/uploads/", 0, Fault::status(405, &[])),
        ],
    );
    let t = TestDir::new();
    let (source, written) = image(&t);
    let out = push_through(&t, &registry, &proxy, &source, CUT_FIRST_LAYER);
    assert_survived(&registry, &proxy, &out, 2, &written);
}

#[test]
fn an_unrecoverable_refusal_is_a_clear_error_and_the_tag_stays() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let (source, _) = image(&t);
    let good = t.join("good.tar");
    images::write_stream_layered(
        std::fs::File::create(&good).unwrap(),
        &images::small_layers()[..1],
        ImageFault::None,
    )
    .unwrap();
    let out = push(&t, &registry, good.to_str().unwrap(), "app", "stable", &[]);
    pushed_reference(&out, &registry.host(), "app");
    let before = registry.skopeo_manifest(&format!("{}/app:stable", registry.host()));

    let proxy = FaultProxy::start(
        registry.addr,
        vec![Rule::new("PUT", "/manifests/", 1, Fault::status(403, &[]))],
    );
    let out = push_via(
        &t,
        &registry,
        &proxy.host(),
        source.to_str().unwrap(),
        "app",
        "stable",
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(stderr.contains("putting the manifest stable in"), "{stderr}");
    assert!(stderr.contains("403"), "{stderr}");
    assert_eq!(
        registry.skopeo_manifest(&format!("{}/app:stable", registry.host())),
        before
    );
}

/// Issue 13 point 2: a registry that accepts a request and never answers (a blob check, then a
/// layer upload that takes no more data) costs one idle timeout each, then the push goes on.
#[test]
fn issue_13_a_request_never_answered_times_out_and_is_retried() {
    let registry = Registry::start(AuthMode::htpasswd());
    let proxy = FaultProxy::start(
        registry.addr,
        vec![
            Rule::new("HEAD", "/blobs/sha256:", 1, Fault::Hang),
            Rule::new("PATCH", "/blobs/uploads/", 1, Fault::Hang),
        ],
    );
    let t = TestDir::new();
    let (source, written) = image(&t);
    let out = push_through(
        &t,
        &registry,
        &proxy,
        &source,
        &["-v", "--registry-timeout", "2s"],
    );
    assert_survived(&registry, &proxy, &out, 2, &written);
}

/// Issue 13 point 2: a registry that never answers at all ends the push with a clear error
/// naming the limit, instead of hanging, and the tag is unchanged.
#[test]
fn issue_13_a_registry_that_never_answers_is_a_clear_error() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let (source, _) = image(&t);
    let rules = ["GET", "HEAD", "POST", "PATCH", "PUT"]
        .iter()
        .map(|method| Rule::new(method, "/v2/", 0, Fault::Hang))
        .collect();
    let proxy = FaultProxy::start(registry.addr, rules);
    let started = std::time::Instant::now();
    let mut cmd = t.nixfly();
    cmd.args(["push", source.to_str().unwrap(), "--to"])
        .arg(format!("{}/app", proxy.host()))
        .args(["--tag", "v1", "--creds", &registry.creds()])
        .env("NIXFLY_REGISTRY_TIMEOUT", "1s");
    let out = support::run(&mut cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("neither answered nor took data for 1 s")
            && stderr.contains("NIXFLY_REGISTRY_TIMEOUT"),
        "{stderr}"
    );
    assert!(started.elapsed().as_secs() < 60, "took {:?}", started.elapsed());
    assert!(registry.skopeo_inspect_fails(&format!("{}/app:v1", registry.host())));
}

/// Issue 13 point 7: with `--output json` the failure is the last JSON event on stdout (the
/// whole chain and the exit code), not only a line on stderr.
#[test]
fn issue_13_json_output_ends_with_an_error_event() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let (source, _) = image(&t);
    let proxy = FaultProxy::start(
        registry.addr,
        vec![Rule::new("PUT", "/manifests/", 1, Fault::status(403, &[]))],
    );
    let out = push_through(&t, &registry, &proxy, &source, &["--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let last = events.last().expect("no events");
    assert_eq!(last["event"], "error", "{stdout}");
    assert_eq!(last["exit_code"], 1);
    let message = last["message"].as_str().unwrap();
    assert!(
        message.contains("putting the manifest v1") && message.contains("403"),
        "{message}"
    );
    assert!(!message.contains(&registry.creds()), "{message}");
    assert!(events.iter().all(|e| e["event"] != "pushed"), "{stdout}");
    assert!(registry.skopeo_inspect_fails(&format!("{}/app:v1", registry.host())));
}

/// Columns of the pseudo-terminal below; indicatif pads its lines to it and lets them wrap.
const COLUMNS: usize = 120;

/// What a terminal `COLUMNS` wide shows at the end of `output`: enough of a VT100 for what
/// indicatif writes (cursor up and down, carriage return, line and screen clears, auto-wrap).
fn final_screen(output: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(output);
    let mut lines: Vec<String> = vec![String::new()];
    let (mut row, mut col) = (0usize, 0usize);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => col = 0,
            '\n' => {
                row += 1;
                col = 0;
                if row == lines.len() {
                    lines.push(String::new());
                }
            }
            '\x1b' if chars.peek() == Some(&'[') => {
                chars.next();
                let mut arg = String::new();
                let mut command = ' ';
                for c in chars.by_ref() {
                    if c.is_ascii_digit() || c == ';' || c == '?' {
                        arg.push(c);
                    } else {
                        command = c;
                        break;
                    }
                }
                let n: usize = arg.parse().unwrap_or(1);
                match command {
                    'A' => row = row.saturating_sub(n),
                    'B' => {
                        row += n;
                        while lines.len() <= row {
                            lines.push(String::new());
                        }
                    }
                    'K' => {
                        let line = &mut lines[row];
                        if arg == "2" {
                            line.clear();
                        } else {
                            *line = line.chars().take(col).collect();
                        }
                    }
                    'J' => {
                        lines[row] = lines[row].chars().take(col).collect();
                        lines.truncate(row + 1);
                    }
                    _ => {}
                }
            }
            c if !c.is_control() => {
                if col >= COLUMNS {
                    row += 1;
                    col = 0;
                    if row == lines.len() {
                        lines.push(String::new());
                    }
                }
                let line = &mut lines[row];
                let mut chars: Vec<char> = line.chars().collect();
                while chars.len() < col {
                    chars.push(' ');
                }
                if col < chars.len() {
                    chars[col] = c;
                } else {
                    chars.push(c);
                }
                *line = chars.into_iter().collect();
                col += 1;
            }
            _ => {}
        }
    }
    lines
}

/// Issue 13 point 7: on a terminal the pushed reference stays on screen after the progress
/// bars are cleared. `script` gives nixfly a pseudo-terminal; the screen is replayed from what
/// it wrote.
#[test]
fn issue_13_on_a_terminal_the_reference_survives_the_bars() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let (source, _) = image(&t);
    let command = format!(
        "stty cols {COLUMNS} rows 40; exec {} push {} --to {}/app --tag v1 --creds {}",
        env!("CARGO_BIN_EXE_nixfly"),
        source.display(),
        registry.host(),
        registry.creds()
    );
    let mut cmd = t.nixfly();
    cmd.args(["-q", "-e", "-c", &command, "/dev/null"])
        .env("TERM", "xterm");
    cmd.env_remove("NO_COLOR");
    let mut cmd = {
        let mut script = std::process::Command::new("script");
        script.args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(value) => script.env(key, value),
                None => script.env_remove(key),
            };
        }
        script.current_dir(t.path());
        script
    };
    let out = support::run(&mut cmd);
    support::assert_success(&out);
    let screen = final_screen(&out.stdout);
    let prefix = format!("{}/app@sha256:", registry.host());
    assert!(
        screen.iter().any(|line| line.trim_end().starts_with(&prefix)),
        "the reference is not on the final screen:\n{}\n--- raw\n{:?}",
        screen.join("\n"),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A gzip stream archive of one layer of `mib` MiB of noise (incompressible: the blob is as
/// big), and the same archive uncompressed (`noisy.tar`). One layer, so that the n-th upload
/// request a fault rule counts is that layer's.
fn noisy_image(t: &TestDir, mib: usize) -> (std::path::PathBuf, images::Written) {
    use std::io::Read;
    let noise = t.join("noise.bin");
    let mut bytes = vec![0u8; mib << 20];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    std::fs::write(&noise, &bytes).unwrap();
    let tar = t.join("noisy.tar");
    let layers = [Layer::of(&[noise.to_str().unwrap()])];
    let written =
        images::write_stream_layered(std::fs::File::create(&tar).unwrap(), &layers, ImageFault::None)
            .unwrap();
    let path = t.join("noisy.tar.gz");
    images::gzip_file(&tar, &path).unwrap();
    (path, written)
}

/// Issue 13 point 6: `--upload-mode monolithic` pushes a layer bigger than the 8 MiB resend
/// window (kept in an unlinked temp file, not memory), sends it again after a cut PUT, and
/// leaves no upload session behind.
#[test]
fn issue_13_monolithic_mode_pushes_a_layer_over_the_window_and_survives_a_cut() {
    let registry = Registry::start(AuthMode::htpasswd());
    let proxy = FaultProxy::start(
        registry.addr,
        vec![
            Rule::new("PUT", "/blobs/uploads/", 1, Fault::CutAfter(5 << 20)),
            Rule::new("PUT", "/blobs/uploads/", 2, Fault::status(503, &[])),
        ],
    );
    let t = TestDir::new();
    let (source, written) = noisy_image(&t, 12);
    let out = push_through(
        &t,
        &registry,
        &proxy,
        &source,
        &["-v", "--upload-mode", "monolithic"],
    );
    assert_survived(&registry, &proxy, &out, 2, &written);
    assert!(
        proxy.requests().iter().all(|r| !r.starts_with("PATCH")),
        "{:?}",
        proxy.requests()
    );
    // The PUT cut after 5 MiB may leave its session behind: distribution 2.8 refuses every
    // later request on it, DELETE included ("upload resumed at wrong offest"), and keeps the
    // bytes until its purge runs. The session the 503 hit is cancelled; nothing else is left.
    let left = registry.open_upload_sessions();
    assert!(
        left.len() <= 1,
        "{left:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for session in left {
        assert_eq!(std::fs::metadata(session.join("data")).unwrap().len(), 5 << 20);
    }
}

/// Issue 13 point 5: a push that fails part-way (a 403 on an upload request, in chunked mode
/// so that each layer's session has moved through several Locations) leaves no upload session
/// open in the registry, and the tag is unchanged.
#[test]
fn issue_13_a_failed_push_leaves_no_upload_session() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let (source, _) = noisy_image(&t, 12);
    let refused = |method: &str, nth| Rule::new(method, "/blobs/uploads/", nth, Fault::status(403, &[]));
    let cases = [
        // Refused mid-layer, after two chunks moved the session on.
        ("chunked", vec![refused("PATCH", 3)]),
        ("stream", vec![refused("PATCH", 1)]),
        // A 503 mid-upload, then asking where the upload stands is refused: the session the
        // upload was resuming must still be cancelled.
        (
            "stream",
            vec![
                Rule::new("PATCH", "/blobs/uploads/", 1, Fault::status(503, &[])),
                refused("GET", 1),
            ],
        ),
    ];
    for (mode, rules) in cases {
        let faults = rules.len();
        let proxy = FaultProxy::start(registry.addr, rules);
        let out = push_through(&t, &registry, &proxy, &source, &["-v", "--upload-mode", mode]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{mode}: {stderr}");
        assert!(stderr.contains("403"), "{mode}: {stderr}");
        assert_eq!(proxy.fired().len(), faults, "{mode}: {:?}", proxy.fired());
        assert_eq!(
            registry.open_upload_sessions(),
            Vec::<std::path::PathBuf>::new(),
            "{mode}: {stderr}"
        );
        assert!(registry.skopeo_inspect_fails(&format!("{}/app:v1", registry.host())));
    }
}

/// Issue 13 point 1: faults past the 8 MiB resend window. A stream source keeps what left the
/// window in a spill file; an indexed one is read again. A cut 10 MiB into the layer, a 503 on
/// every second upload request, and a 307 on the PATCH all end in a complete image, with no
/// upload session left open but the one a cut leaves on distribution 2.8.
#[test]
fn issue_13_faults_past_the_window_are_survived_by_every_source() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let (gz, written) = noisy_image(&t, 12);
    let tar = t.join("noisy.tar");
    let cut = || {
        vec![Rule::new(
            "PATCH",
            "/blobs/uploads/",
            1,
            Fault::CutAfter(10 << 20),
        )]
    };
    let cases: Vec<(&str, &std::path::Path, Vec<Rule>)> = vec![
        ("stream-cut", &gz, cut()),
        (
            "stream-503",
            &gz,
            vec![Rule::every("*", "/blobs/uploads/", 2, Fault::status(503, &[]))],
        ),
        (
            "stream-307",
            &gz,
            vec![Rule::new("PATCH", "/blobs/uploads/", 1, Fault::Redirect(307))],
        ),
        ("indexed-cut", &tar, cut()),
        // Read again after the first cut, the layer is kept whole the second time.
        (
            "indexed-twice-cut",
            &tar,
            vec![
                Rule::new("PATCH", "/blobs/uploads/", 1, Fault::CutAfter(10 << 20)),
                Rule::new("PATCH", "/blobs/uploads/", 2, Fault::CutAfter(10 << 20)),
            ],
        ),
    ];
    for (name, source, rules) in cases {
        let proxy = FaultProxy::start(registry.addr, rules);
        let out = push_via(
            &t,
            &registry,
            &proxy.host(),
            source.to_str().unwrap(),
            name,
            "v1",
            &["-v"],
        );
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let reference = pushed_reference(&out, &proxy.host(), name);
        assert!(!proxy.fired().is_empty(), "{name}: no fault fired");
        // Only an indexed source is read again, and once is enough.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let rereads = usize::from(name.starts_with("indexed"));
        assert_eq!(
            stderr.matches("reading it again").count(),
            rereads,
            "{name}: {stderr}"
        );
        assert_same_image(&registry, &proxy.direct(&reference), &written);
        let left: Vec<_> = registry
            .open_upload_sessions()
            .into_iter()
            .filter(|s| s.to_string_lossy().contains(&format!("/repositories/{name}/")))
            .collect();
        assert!(
            left.len() <= usize::from(name.ends_with("cut")) * (1 + usize::from(name.contains("twice"))),
            "{name}: {left:?}"
        );
    }
}

/// A Ctrl-C (or SIGTERM) in the middle of an upload: nixfly stops, cancels the upload sessions
/// it opened and exits with 130, saying so; nothing is tagged. The proxy holds every upload's
/// data request unanswered (unread), so the registry's sessions are clean and cancellable.
#[test]
fn a_signal_mid_upload_cancels_the_sessions_and_exits_130() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let (gz, _) = noisy_image(&t, 2);
    let tar = t.join("noisy.tar");
    for (signal, source) in [("INT", &tar), ("TERM", &gz)] {
        let hang = |method: &str| Rule::new(method, "/blobs/uploads/", 0, Fault::Hang);
        let proxy = FaultProxy::start(registry.addr, vec![hang("PATCH"), hang("PUT")]);
        let mut cmd = t.nixfly();
        cmd.args(["push", source.to_str().unwrap(), "--to"])
            .arg(format!("{}/app", proxy.host()))
            .args(["--tag", "v1", "--creds", &registry.creds(), "-v"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let child = cmd.spawn().unwrap();
        support::wait_until("no upload reached the proxy", 30, || !proxy.fired().is_empty());
        support::send_signal(child.id(), signal);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "SIG{signal}: {stderr}");
        assert!(
            stderr.contains(&format!("interrupted by SIG{signal}: nothing was tagged, and the 1 upload session(s) it had open were cancelled")),
            "{stderr}"
        );
        assert_eq!(
            registry.open_upload_sessions(),
            Vec::<std::path::PathBuf>::new(),
            "SIG{signal}: {stderr}"
        );
        assert!(registry.skopeo_inspect_fails(&format!("{}/app:v1", registry.host())));
    }
}

/// A signal while the manifest PUT is out: whether the registry took it is unknown, so the
/// message says the tag may have moved (to a complete image), not "nothing was tagged".
#[test]
fn a_signal_during_the_manifest_put_says_the_tag_may_have_moved() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let (source, _) = image(&t);
    let proxy = FaultProxy::start(
        registry.addr,
        vec![Rule::new("PUT", "/manifests/", 0, Fault::Hang)],
    );
    let child = t
        .nixfly()
        .args(["push", source.to_str().unwrap(), "--to"])
        .arg(format!("{}/app", proxy.host()))
        .args(["--tag", "v1", "--creds", &registry.creds()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    support::wait_until("the manifest never reached the proxy", 30, || {
        !proxy.fired().is_empty()
    });
    support::send_signal(child.id(), "INT");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted by SIGINT: the signal came as the manifest went out, so the tag may point at the new image")
            && !stderr.contains("nothing was tagged"),
        "{stderr}"
    );
}

/// A registry that will not mount a blob from another repository: registry.fly.io, with a
/// deploy token for one app asked to mount from another app's repository, refuses (401); a
/// token service may refuse the scope (403); a registry that is not distribution answers a
/// repository it does not know with its own errors (registry.fly.io: "unknown: app repository
/// not found"; distribution maps UNKNOWN to 500), or a method it does not take with 405. The
/// layers are uploaded instead, a mount answered 500 is not retried (it only saves an upload),
/// and the push of the second repository succeeds with the same image.
#[test]
fn a_refused_cross_repository_mount_falls_back_to_uploading() {
    let mut tried = std::collections::BTreeMap::new();
    for status in [401, 403, 400, 405, 500] {
        let registry = Registry::start(AuthMode::htpasswd());
        let refusal = if status == 401 {
            Fault::status(status, &[("WWW-Authenticate", r#"Basic realm="registry""#)])
        } else {
            Fault::Respond {
                status,
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: r#"{"errors":[{"code":"UNKNOWN","message":"unknown: app repository not found"}]}"#
                    .into(),
            }
        };
        let proxy = FaultProxy::start(registry.addr, vec![Rule::new("POST", "mount=", 0, refusal)]);
        let t = TestDir::new();
        let (source, written) = image(&t);
        let json = ["--output", "json"];
        let first = push_through(&t, &registry, &proxy, &source, &json);
        support::assert_success(&first);
        let other = push_via(
            &t,
            &registry,
            &proxy.host(),
            source.to_str().unwrap(),
            "other",
            "v1",
            &json,
        );
        support::assert_success(&other);
        assert_eq!(layer_outcomes(&other), ["uploaded"; 2], "{status}");
        assert!(!proxy.fired().is_empty(), "no mount was tried ({status})");
        tried.insert(status, proxy.fired().len());
        assert_same_image(&registry, &proxy.direct(&pushed_json_reference(&other)), &written);
    }
    assert_eq!(
        tried[&500], tried[&403],
        "a mount answered 500 was retried: {tried:?}"
    );
}

/// A login session's token: macaroons, which `session_registry` takes, and an OAuth token,
/// which it refuses.
const SESSION_MACAROONS: &str = "fm2_lJPECAAAAAAAAMZ3nixflymacaroon0123456789";
const SESSION_OAUTH: &str = "fo1_nixflytestoauthtoken0123456789abcdef";

/// A registry taking only the session's macaroons, behind a proxy that answers requests
/// matching (`method`, `path`) with a Basic 401: no access to that repository.
fn session_registry(method: &str, path: &str) -> (Registry, FaultProxy) {
    let registry = Registry::start(AuthMode::fly(SESSION_MACAROONS));
    let refusal = Fault::status(401, &[("WWW-Authenticate", r#"Basic realm="registry""#)]);
    let proxy = FaultProxy::start(registry.addr, vec![Rule::new(method, path, 0, refusal)]);
    (registry, proxy)
}

/// `nixfly push SOURCE --to <proxy>/<repo> --tag v1 --output json` plus `extra`, with the
/// session's token as FLY_API_TOKEN and the proxy as registry.fly.io.
fn session_push(
    t: &TestDir,
    proxy: &FaultProxy,
    source: &std::path::Path,
    repo: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut cmd = t.nixfly();
    cmd.env("FLY_REGISTRY_HOST", proxy.host())
        .env(
            "FLY_API_TOKEN",
            format!("FlyV1 {SESSION_MACAROONS},{SESSION_OAUTH}"),
        )
        .args([
            "push",
            source.to_str().unwrap(),
            "--to",
            &format!("{}/{repo}", proxy.host()),
        ])
        .args(["--tag", "v1", "--output", "json"])
        .args(extra);
    support::run(&mut cmd)
}

/// Whether any output of `out` shows the session's token.
fn shows_session_token(out: &std::process::Output) -> bool {
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    output.contains(SESSION_MACAROONS) || output.contains(SESSION_OAUTH)
}

/// A login session's token whose macaroons the registry takes, and a mount it refuses (401: no
/// access to the other app): the refusal is about the other repository, so the push goes on
/// with the macaroons, and never switches to the OAuth token (fly-go's `Tokens.Docker()` sends
/// no OAuth token while there are macaroons).
#[test]
fn a_refused_mount_keeps_a_sessions_macaroons() {
    let (registry, proxy) = session_registry("POST", "mount=");
    let t = TestDir::new();
    let (source, written) = image(&t);
    support::assert_success(&session_push(&t, &proxy, &source, "app", &[]));
    let other = session_push(&t, &proxy, &source, "other", &[]);
    support::assert_success(&other);
    assert_eq!(layer_outcomes(&other), ["uploaded"; 2]);
    assert!(!proxy.fired().is_empty(), "no mount was tried");
    assert_same_image(&registry, &proxy.direct(&pushed_json_reference(&other)), &written);
    assert!(!shows_session_token(&other));
}

/// The same session token, and a `--reuse-from` image of another app the registry will not
/// let it read (401 on every request for that repository): the push warns and goes on with the
/// macaroons. Before, the refused read switched the whole push to the OAuth token, which this
/// registry refuses, and the push failed.
#[test]
fn a_refused_read_of_another_repository_keeps_a_sessions_macaroons() {
    let (registry, proxy) = session_registry("*", "/v2/other/");
    let t = TestDir::new();
    let (source, written) = image(&t);
    let out = session_push(&t, &proxy, &source, "app", &["--reuse-from", "other:v1"]);
    support::assert_success(&out);
    assert!(!proxy.fired().is_empty(), "the other repository was never read");
    let warnings = support::readback::events(&out, "warning");
    assert!(
        warnings
            .iter()
            .any(|w| w["message"].as_str().unwrap().contains("not reusing layers of")),
        "{warnings:?}"
    );
    assert!(!shows_session_token(&out));
    assert_same_image(&registry, &proxy.direct(&pushed_json_reference(&out)), &written);
}

/// The same refusal from a token service: asked for a token that would also read the other
/// repository, it answers 403. The mount is given up, not the push.
#[test]
fn a_token_service_refusing_the_mount_scope_falls_back_to_uploading() {
    let registry = Registry::start(AuthMode::Token {
        lifetime: std::time::Duration::from_secs(300),
        advertised: std::time::Duration::from_secs(300),
        one_repository: true,
    });
    let t = TestDir::new();
    let (source, written) = image(&t);
    let json = ["--output", "json"];
    support::assert_success(&push(&t, &registry, source.to_str().unwrap(), "app", "v1", &json));
    let other = push(&t, &registry, source.to_str().unwrap(), "other", "v1", &json);
    support::assert_success(&other);
    assert_eq!(layer_outcomes(&other), ["uploaded"; 2]);
    let asked = registry
        .token_server
        .as_ref()
        .unwrap()
        .requests
        .lock()
        .unwrap()
        .clone();
    assert!(
        asked
            .iter()
            .any(|scopes| scopes.contains("repository:app:pull") && scopes.contains("repository:other:")),
        "no mount scope was asked for: {asked:?}"
    );
    assert_same_image(&registry, &pushed_json_reference(&other), &written);
}

/// A chunk the registry refuses as not for this upload (416, after a first chunk went in: what
/// distribution's `registry/handlers/blobupload.go` answers a `Content-Range` that does not
/// start where the upload stands)
/// ends the chunks: the layer goes in one PUT, in a new session, since a PUT's body is added
/// to what the session holds and the chunk already sent would come twice. Before, that PUT
/// went to the old session, met a digest mismatch (400), and only the next one worked. The
/// same when the registry's status of the session has no `Range` (read as holding nothing).
#[test]
fn a_refused_chunk_sends_the_layer_again_in_one_put_in_a_new_session() {
    let refused = || Rule::new("PATCH", "/blobs/uploads/", 2, Fault::status(416, &[]));
    let no_range = Rule::new(
        "GET",
        "/blobs/uploads/",
        1,
        Fault::Respond {
            status: 204,
            headers: Vec::new(),
            body: String::new(),
        },
    );
    for rules in [vec![refused()], vec![refused(), no_range]] {
        let faults = rules.len();
        let registry = Registry::start(AuthMode::htpasswd());
        let proxy = FaultProxy::start(registry.addr, rules);
        let t = TestDir::new();
        // 6 MiB: a 4 MiB chunk goes in, the rest is refused; all of it is still in the window.
        let (source, written) = noisy_image(&t, 6);
        let out = push_through(
            &t,
            &registry,
            &proxy,
            &source,
            &["-v", "--upload-mode", "chunked"],
        );
        assert_survived(&registry, &proxy, &out, faults, &written);
        assert_one_put_each_and_no_session_left(&registry, &proxy, &out);
    }
}

/// Two blob PUTs went through `proxy` (the one layer's and the config's: the layer went in one
/// PUT, not again after a failed one), and `registry` holds no upload session open.
#[track_caller]
fn assert_one_put_each_and_no_session_left(
    registry: &Registry,
    proxy: &FaultProxy,
    out: &std::process::Output,
) {
    let puts: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PUT") && r.contains("/blobs/uploads/"))
        .collect();
    assert_eq!(
        puts.len(),
        2,
        "{puts:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = registry.open_upload_sessions();
    assert!(left.is_empty(), "{left:?}");
}

/// A registry whose `Range` on a PATCH's answer stays behind what was sent (ECR's stops after
/// the first chunk): the bytes sent count, as Docker, skopeo and go-containerregistry count
/// them. Trusting the `Range`, a streamed PATCH was sent again without a `Content-Range` and
/// appended the bytes twice, and a chunked one fell to a monolithic upload from byte 0.
#[test]
fn a_stale_range_on_a_patch_answer_does_not_resend_bytes() {
    let registry = Registry::start(AuthMode::htpasswd());
    let t = TestDir::new();
    let (gz, written) = image(&t);
    for mode in ["stream", "chunked"] {
        let proxy = FaultProxy::start(
            registry.addr,
            vec![Rule::new("PATCH", "/blobs/uploads/", 0, Fault::StaleRange(1023))],
        );
        let out = push_through(&t, &registry, &proxy, &gz, &["-v", "--upload-mode", mode]);
        assert!(
            out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let reference = pushed_reference(&out, &proxy.host(), "app");
        assert_same_image(&registry, &proxy.direct(&reference), &written);
        let requests = proxy.requests();
        let patches = requests.iter().filter(|r| r.starts_with("PATCH ")).count();
        let puts = requests
            .iter()
            .filter(|r| r.starts_with("PUT ") && r.contains("/blobs/uploads/"))
            .count();
        let layers = written.layer_sizes.len() + 1; // and the config
        assert!(
            puts <= layers,
            "{mode}: one commit per blob at most: {requests:#?}"
        );
        if mode == "stream" {
            assert!(patches <= layers, "{mode}: one PATCH per blob: {requests:#?}");
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("monolithic"), "{mode}: {stderr}");
    }
}

/// A registry that refuses `Content-Range` chunks with 400 (a bad request stays bad, however
/// often it is sent): after a failed streamed PATCH (a proxy's 502), the first refused chunk
/// ends the chunks and the layer goes in one PUT, in a new session, as Docker sends a layer
/// again from byte 0.
/// Before, each chunk was retried until the upload gave up and the push failed. No registry
/// here refuses chunks, and registry.fly.io is not shown to take them: Docker and skopeo never
/// send any (moby's `distribution/push_v2.go` and containers/image's
/// `docker/docker_image_dest.go` stream a layer in one PATCH).
#[test]
fn a_registry_refusing_chunks_with_400_gets_the_layer_in_one_put() {
    let registry = Registry::start(AuthMode::htpasswd());
    let proxy = FaultProxy::start(
        registry.addr,
        vec![
            Rule::new("PATCH", "/blobs/uploads/", 1, Fault::status(502, &[])),
            Rule::new("PATCH", "/blobs/uploads/", 0, Fault::status(400, &[])),
        ],
    );
    let t = TestDir::new();
    // 6 MiB of noise, one layer: all of it stays in the 8 MiB window.
    let (source, written) = noisy_image(&t, 6);
    let out = push_through(&t, &registry, &proxy, &source, &["-v"]);
    // The streamed PATCH and one refused chunk.
    assert_survived(&registry, &proxy, &out, 2, &written);
    assert_one_put_each_and_no_session_left(&registry, &proxy, &out);
}
