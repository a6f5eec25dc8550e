//! An executable that writes a docker-archive to stdout: what `dockerTools.streamLayeredImage`
//! builds. Its stderr (progress lines) is shown as debug events (`-v`), and the last lines are
//! kept for the error when it fails.

use super::{ArchiveStream, Image, ImageError, ImageSource};
use crate::progress::Reporter;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lines of the script's stderr quoted in an error.
const STDERR_TAIL: usize = 10;

pub struct StreamScript {
    path: PathBuf,
}

impl StreamScript {
    pub fn new(path: &Path) -> Self {
        StreamScript {
            path: path.to_path_buf(),
        }
    }
}

impl ImageSource for StreamScript {
    fn describe(&self) -> String {
        format!("stream script {}", self.path.display())
    }

    fn open(self: Box<Self>, reporter: &Reporter) -> Result<Image, ImageError> {
        let description = self.describe();
        // A bare file name would be looked up in PATH; the user means the file here.
        let program = if self.path.components().count() == 1 {
            Path::new(".").join(&self.path)
        } else {
            self.path.clone()
        };
        let mut child = Command::new(&program)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ImageError::ScriptSpawn {
                script: self.path.clone(),
                source,
            })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let stderr_thread = {
            let tail = tail.clone();
            let reporter = reporter.clone();
            let name = self.path.display().to_string();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    reporter.debug(format!("{name}: {line}"));
                    let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                    if tail.len() == STDERR_TAIL {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            })
        };
        let script = self.path.clone();
        let finish = move |ok: bool| finish(child, ok, script, stderr_thread, tail);
        let reader = BufReader::with_capacity(1 << 20, stdout);
        match super::decompressed_stream(Box::new(reader), &description) {
            Ok((_, reader)) => Ok(Image::Stream(ArchiveStream {
                description,
                reader,
                finish: Box::new(finish),
                identity: None,
            })),
            // Nothing usable came out: the script's own failure explains it best.
            Err(err) => Err(finish(false).err().unwrap_or(err)),
        }
    }
}

/// Wait for the script. After a complete read its exit status decides; after an abandoned read
/// a script that already failed is the cause, and one still running is stopped.
fn finish(
    mut child: Child,
    ok: bool,
    script: PathBuf,
    stderr_thread: std::thread::JoinHandle<()>,
    tail: Arc<Mutex<VecDeque<String>>>,
) -> Result<(), ImageError> {
    let status = if ok {
        child.wait()
    } else {
        let deadline = Instant::now() + Duration::from_millis(500);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Ok(());
                }
                Err(err) => break Err(err),
            }
        }
    };
    let status = status.map_err(|source| ImageError::ScriptSpawn {
        script: script.clone(),
        source,
    })?;
    if status.success() {
        return Ok(());
    }
    // Let the stderr reader catch the last lines (bounded: a grandchild may hold the pipe).
    let deadline = Instant::now() + Duration::from_secs(1);
    while !stderr_thread.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    use std::os::unix::process::ExitStatusExt;
    let status = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("failed ({status})"),
    };
    let tail = tail.lock().unwrap_or_else(|e| e.into_inner());
    let stderr = if tail.is_empty() {
        String::new()
    } else {
        format!(
            "; its last stderr lines:\n  {}",
            tail.iter().cloned().collect::<Vec<_>>().join("\n  ")
        )
    };
    Err(ImageError::ScriptFailed {
        script,
        status,
        stderr,
    })
}
