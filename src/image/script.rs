//! An executable that writes a docker-archive to stdout: what `dockerTools.streamLayeredImage`
//! builds. Its stderr (progress lines) is shown as debug events (`-v`), and the last lines are
//! kept for the error when it fails.
//!
//! The script is a process we do not control, so it runs in its own process group, which is
//! killed whatever happens: when its output stays idle for `--stream-timeout` (a hung script),
//! when the push fails, when nixfly gets SIGINT or SIGTERM, and when the script is still running
//! a few seconds after the archive ended (it closed stdout and kept running, or writes bytes
//! after the end of the archive). The archive's own checks decide whether what it wrote is good.

use super::pipe::WidePipe;
use super::{ArchiveStream, Image, ImageError, ImageSource};
use crate::progress::Reporter;
use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lines of the script's stderr quoted in an error.
const STDERR_TAIL: usize = 10;
/// How long a script may take to exit once its archive has been read completely.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// `--stream-timeout` default: streamLayeredImage goes quiet while it hashes a big layer
/// before writing it, so this is generous.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 600;

pub struct StreamScript {
    path: PathBuf,
    idle_timeout: Duration,
}

impl StreamScript {
    pub fn new(path: &Path, idle_timeout: Duration) -> Self {
        StreamScript {
            path: path.to_path_buf(),
            idle_timeout,
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
            .process_group(0)
            .spawn()
            .map_err(|source| ImageError::ScriptSpawn {
                script: self.path.clone(),
                source,
            })?;
        let group = ProcessGroup::adopt(&child);
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
        let watch = Watch::start(self.idle_timeout, group.clone());
        let script = Script {
            child,
            group,
            watch: watch.clone(),
            path: self.path.clone(),
            stderr_thread,
            tail,
            reporter: reporter.clone(),
        };
        let finish = move |ok: bool| script.finish(ok);
        let reader = crate::blob::AlignedBufReader::with_capacity(
            1 << 20,
            IdleReader {
                inner: WidePipe::new(stdout),
                watch,
            },
        );
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

/// The running script and what is needed to end it and explain how it ended.
struct Script {
    child: Child,
    group: ProcessGroup,
    watch: Arc<Watch>,
    path: PathBuf,
    stderr_thread: std::thread::JoinHandle<()>,
    tail: Arc<Mutex<VecDeque<String>>>,
    reporter: Reporter,
}

impl Script {
    /// End the script. After a complete read its exit status decides (one still running after
    /// `EXIT_GRACE` is stopped: the archive is whole); after an abandoned read a script that
    /// already failed or went idle is the cause, and one still running is stopped.
    fn finish(mut self, ok: bool) -> Result<(), ImageError> {
        self.watch.stop();
        let spawn_error = |source| ImageError::ScriptSpawn {
            script: self.path.clone(),
            source,
        };
        if self.watch.timed_out.load(Ordering::SeqCst) {
            self.group.kill();
            self.child.wait().map_err(spawn_error)?;
            return Err(ImageError::ScriptIdle {
                script: self.path.clone(),
                seconds: self.watch.timeout.as_secs(),
                stderr: self.stderr_tail(),
            });
        }
        let grace = if ok {
            EXIT_GRACE
        } else {
            Duration::from_millis(500)
        };
        let status = match wait_until(&mut self.child, Instant::now() + grace).map_err(spawn_error)? {
            Some(status) => status,
            None => {
                self.group.kill();
                self.child.wait().map_err(spawn_error)?;
                if ok {
                    self.reporter.warn(format!(
                        "stream script {} was still running {} s after its archive ended; stopped it",
                        self.path.display(),
                        EXIT_GRACE.as_secs()
                    ));
                }
                return Ok(());
            }
        };
        // Whatever it left running in its group has no reason to live on.
        self.group.kill();
        if status.success() {
            return Ok(());
        }
        use std::os::unix::process::ExitStatusExt;
        let status = match (status.code(), status.signal()) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(signal)) => format!("was killed by signal {signal}"),
            (None, None) => format!("failed ({status})"),
        };
        Err(ImageError::ScriptFailed {
            script: self.path.clone(),
            status,
            stderr: self.stderr_tail(),
        })
    }

    /// The last stderr lines, introduced by a newline, or empty.
    fn stderr_tail(&self) -> String {
        // Let the stderr reader catch the last lines (bounded: a grandchild may hold the pipe).
        let deadline = Instant::now() + Duration::from_secs(1);
        while !self.stderr_thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        if tail.is_empty() {
            String::new()
        } else {
            format!(
                "; its last stderr lines:\n  {}",
                tail.iter().cloned().collect::<Vec<_>>().join("\n  ")
            )
        }
    }
}

impl Drop for Script {
    /// However the push ended, the script's group does not outlive it.
    fn drop(&mut self) {
        self.watch.stop();
        self.group.kill();
    }
}

/// The child's exit status if it exits before `deadline`.
fn wait_until(child: &mut Child, deadline: Instant) -> io::Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the script's stdout has gone quiet while we wait for it. A watchdog thread kills the
/// group when a read has waited `timeout`; the read then ends and reports the timeout. Time the
/// push spends elsewhere (uploading) does not count.
struct Watch {
    timeout: Duration,
    group: ProcessGroup,
    start: Instant,
    /// When the current read began, in milliseconds after `start`; `u64::MAX` when not reading.
    reading_since: AtomicU64,
    timed_out: AtomicBool,
    stopped: AtomicBool,
}

impl Watch {
    fn start(timeout: Duration, group: ProcessGroup) -> Arc<Watch> {
        let watch = Arc::new(Watch {
            timeout,
            group,
            start: Instant::now(),
            reading_since: AtomicU64::new(u64::MAX),
            timed_out: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        });
        let watchdog = watch.clone();
        std::thread::spawn(move || {
            let tick = (watchdog.timeout / 10).clamp(Duration::from_millis(10), Duration::from_millis(250));
            while !watchdog.stopped.load(Ordering::SeqCst) {
                std::thread::sleep(tick);
                let since = watchdog.reading_since.load(Ordering::SeqCst);
                if since != u64::MAX
                    && watchdog.now_ms().saturating_sub(since) >= watchdog.timeout.as_millis() as u64
                {
                    watchdog.timed_out.store(true, Ordering::SeqCst);
                    watchdog.group.kill();
                    return;
                }
            }
        });
        watch
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

/// The script's stdout, timed by the watch.
struct IdleReader {
    inner: WidePipe<ChildStdout>,
    watch: Arc<Watch>,
}

impl Read for IdleReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.watch
            .reading_since
            .store(self.watch.now_ms(), Ordering::SeqCst);
        let result = self.inner.read(buf);
        self.watch.reading_since.store(u64::MAX, Ordering::SeqCst);
        if self.watch.timed_out.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the stream script wrote nothing for {} s",
                    self.watch.timeout.as_secs()
                ),
            ));
        }
        result
    }
}

/// The script's process group (its pid: it leads the group). The group is not in the
/// terminal's foreground group, so a Ctrl-C reaches nixfly only: the push catches SIGINT and
/// SIGTERM (`crate::signals`) and calls [`kill_running_script`] before it cancels its uploads.
#[derive(Clone)]
struct ProcessGroup(i32);

/// The running script's group; 0 when none.
static RUNNING_GROUP: AtomicI32 = AtomicI32::new(0);

impl ProcessGroup {
    fn adopt(child: &Child) -> ProcessGroup {
        let group = child.id() as i32;
        RUNNING_GROUP.store(group, Ordering::SeqCst);
        ProcessGroup(group)
    }

    /// SIGKILL to the whole group (harmless when it is gone).
    fn kill(&self) {
        // SAFETY: a plain syscall on a process group id we created.
        unsafe {
            libc::killpg(self.0, libc::SIGKILL);
        }
        let _ = RUNNING_GROUP.compare_exchange(self.0, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// Kill the process group of the stream script being read, if one is: what a push does when
/// it is interrupted. Its reader then sees the pipe close and ends.
pub fn kill_running_script() {
    let group = RUNNING_GROUP.load(Ordering::SeqCst);
    if group > 0 {
        ProcessGroup(group).kill();
    }
}
