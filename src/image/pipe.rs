//! Reading a pipe another process writes (a stream script's stdout, or stdin), in fewer and
//! larger pieces.

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::time::Duration;

/// The pipe's size once widened: 1 MiB instead of Linux's 64 KiB, so that the writer and nixfly
/// take turns 16 times less often. On a fresh runner whose registry has every layer, nixfly
/// only hashes what passes, and those switches were a large part of what it added to the
/// script's own time.
pub const WIDE_PIPE: usize = 1 << 20;

/// A read shorter than this found the pipe nearly empty: the writer writes in small pieces
/// (Python's tarfile writes a few KiB at a time) and nixfly, which only hashes what passes,
/// keeps up with every one of them.
const SHORT_READ: usize = 256 << 10;

/// How long the reader lets the pipe fill after a short read. Reading every write as it lands
/// woke nixfly once per few KiB (over 100,000 times for a 1 GB stream), and each wake-up took
/// the writer's core from it for a moment; waiting this long between short reads halves the
/// switches and took 0.15 s off a fresh runner's unchanged 1.1 GB stream from a
/// nixpkgs-faithful generator (`bench/stream_generator.py`, 7 runs: +0.41 s to +0.26 s). The
/// wait cannot slow the writer down: a 1 MiB pipe holds what a writer producing under 2 GB/s
/// writes meanwhile, and a writer only blocks on a full pipe.
const FILL_WAIT: Duration = Duration::from_micros(500);

/// A pipe widened to [`WIDE_PIPE`] and read in batches: after a short read, wait
/// [`FILL_WAIT`] for it to fill. Anything that is not a pipe, or a pipe that could not be
/// widened (the default size still works, only slower), is read as it is.
pub struct WidePipe<R> {
    inner: R,
    batch: bool,
}

impl<R: Read + AsFd> WidePipe<R> {
    pub fn new(inner: R) -> Self {
        let batch = widen(&inner);
        WidePipe { inner, batch }
    }
}

/// Whether the descriptor is now a pipe of at least [`WIDE_PIPE`]: F_SETPIPE_SZ fails on
/// anything else (a file, a terminal), and on a pipe past the unprivileged limit.
fn widen(fd: &impl AsFd) -> bool {
    use std::os::fd::AsRawFd;
    let fd = fd.as_fd().as_raw_fd();
    // SAFETY: fcntl on a descriptor this process holds open; no memory is passed.
    let size = unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, WIDE_PIPE as libc::c_int) };
    size >= WIDE_PIPE as libc::c_int
}

impl<R: Read> Read for WidePipe<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let result = self.inner.read(buf);
        if self.batch
            && let Ok(read) = result
            && read > 0
            && read < SHORT_READ
        {
            std::thread::sleep(FILL_WAIT);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::process::{Command, Stdio};

    fn pipe_size(fd: &impl AsFd) -> i32 {
        // SAFETY: F_GETPIPE_SZ on a descriptor this test holds open.
        unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_GETPIPE_SZ) }
    }

    /// The reader only waits between short reads when the pipe really holds 1 MiB: on a
    /// 64 KiB pipe the waits would cap a fast writer at 128 MB/s. A file is never waited on.
    #[test]
    fn only_a_widened_pipe_is_read_in_batches() {
        let mut child = Command::new("echo")
            .arg("hello")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let before = pipe_size(&stdout);
        let mut pipe = WidePipe::new(stdout);
        assert!(pipe.batch);
        assert!(before < WIDE_PIPE as i32 && pipe_size(&pipe.inner) >= WIDE_PIPE as i32);
        let mut text = String::new();
        pipe.read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello\n");
        child.wait().unwrap();

        let file = tempfile::tempfile().unwrap();
        assert!(!WidePipe::new(file).batch);
    }
}
