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
/// nixpkgs-faithful generator (`bench/stream_generator.py`, 7 runs: +0.41 s to +0.26 s).
const FILL_WAIT: Duration = Duration::from_micros(500);

/// A read right after a wait that brings at least this much shows a writer that fills the
/// pipe faster than nixfly's waits let it: `cat` of a ready archive writes over 5 GB/s, fills
/// the 1 MiB pipe in a fifth of a wait, and then stands blocked until the wait ends (a wait
/// lasts up to twice [`FILL_WAIT`] on a busy VM). For such a writer the reader stops waiting.
const FAST_FILL: usize = WIDE_PIPE / 2;

/// How many short reads the reader takes without waiting once the writer has shown itself
/// fast, before it tries a wait again (a writer's pace changes: a script may `cat` one layer
/// and build the next).
const FAST_READS: u32 = 64;

/// A pipe widened to [`WIDE_PIPE`] and read in batches: after a short read, wait
/// [`FILL_WAIT`] for it to fill, unless the writer fills it faster than that (see [`Batching`]).
/// Anything that is not a pipe, or a pipe that could not be widened (the default size still
/// works, only slower), is read as it is.
pub struct WidePipe<R> {
    inner: R,
    batching: Option<Batching>,
}

impl<R: Read + AsFd> WidePipe<R> {
    pub fn new(inner: R) -> Self {
        let batching = widen(&inner).then(Batching::default);
        WidePipe { inner, batching }
    }
}

/// Whether the descriptor is now a pipe of at least [`WIDE_PIPE`]: F_SETPIPE_SZ fails on
/// anything else (a file, a terminal), and on a pipe past the unprivileged limit.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn widen(fd: &impl AsFd) -> bool {
    use std::os::fd::AsRawFd;
    let fd = fd.as_fd().as_raw_fd();
    // SAFETY: fcntl on a descriptor this process holds open; no memory is passed.
    let size = unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, WIDE_PIPE as libc::c_int) };
    size >= WIDE_PIPE as libc::c_int
}

/// F_SETPIPE_SZ is Linux's: elsewhere (macOS, where `nix run .#deploy` runs too) a pipe keeps
/// its size and is read as it comes, without the waits meant for a widened one.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn widen(_fd: &impl AsFd) -> bool {
    false
}

/// When to wait for a widened pipe to fill. A slow writer (Python's tarfile, a few KiB per
/// write) gets a wait after every short read, so that nixfly wakes once per batch rather than
/// once per write. A fast one (`cat` of a ready archive) would spend those waits blocked on a
/// full pipe: on the benchmark's 1142 MB `cat` stream (2-core AMD EPYC VM, fresh runner,
/// unchanged image, 12 interleaved runs each) not waiting for it took the push from a median
/// of 1.07 s to 0.99 s, as fast as never waiting (1.01 s). For the nixpkgs-faithful generator
/// (`bench/stream_generator.py`'s script) the waits stay as they were: 37,677 against 37,645
/// for the same stream.
#[derive(Debug, Default)]
struct Batching {
    /// The last read was a short one followed by a wait.
    waited: bool,
    /// Short reads still to take without a wait, the writer having shown itself fast.
    fast_reads: u32,
}

impl Batching {
    /// Given a read of `read` bytes, whether to wait before the next one.
    fn wait_after(&mut self, read: usize) -> bool {
        if std::mem::take(&mut self.waited) && read >= FAST_FILL {
            self.fast_reads = FAST_READS;
        }
        if read == 0 || read >= SHORT_READ {
            return false;
        }
        if self.fast_reads > 0 {
            self.fast_reads -= 1;
            return false;
        }
        self.waited = true;
        true
    }
}

impl<R: Read> Read for WidePipe<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let result = self.inner.read(buf);
        if let (Some(batching), Ok(read)) = (&mut self.batching, &result)
            && batching.wait_after(*read)
        {
            std::thread::sleep(FILL_WAIT);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn pipe_size(fd: &impl AsFd) -> i32 {
        use std::os::fd::AsRawFd;
        // SAFETY: F_GETPIPE_SZ on a descriptor this test holds open.
        unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_GETPIPE_SZ) }
    }

    /// A writer that leaves a few KiB per wait is waited for after every short read; one that
    /// fills half the pipe during a wait is not, for [`FAST_READS`] short reads, after which a
    /// wait tries its pace again. Full reads and the end never wait.
    #[test]
    fn only_a_slow_writer_is_waited_for() {
        let mut slow = Batching::default();
        for _ in 0..200 {
            assert!(slow.wait_after(8 << 10));
        }
        assert!(!slow.wait_after(SHORT_READ));
        assert!(!slow.wait_after(0));

        let mut fast = Batching::default();
        assert!(fast.wait_after(128 << 10), "a first short read waits");
        assert!(!fast.wait_after(WIDE_PIPE), "the pipe filled during the wait");
        for n in 0..FAST_READS {
            assert!(
                !fast.wait_after(128 << 10),
                "short read {n} after the writer showed its pace"
            );
        }
        assert!(fast.wait_after(128 << 10), "then a wait tries again");
        assert!(fast.wait_after(64 << 10), "and the writer has slowed down");

        // A long read that does not follow a wait says nothing of the writer's pace.
        let mut unsure = Batching::default();
        assert!(!unsure.wait_after(WIDE_PIPE));
        assert!(unsure.wait_after(128 << 10));
    }

    /// The reader only waits between short reads when the pipe really holds 1 MiB: on a
    /// 64 KiB pipe the waits would cap a fast writer at 128 MB/s. A file is never waited on.
    #[test]
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn only_a_widened_pipe_is_read_in_batches() {
        use std::process::{Command, Stdio};
        let mut child = Command::new("echo")
            .arg("hello")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let before = pipe_size(&stdout);
        let mut pipe = WidePipe::new(stdout);
        assert!(pipe.batching.is_some());
        assert!(before < WIDE_PIPE as i32 && pipe_size(&pipe.inner) >= WIDE_PIPE as i32);
        let mut text = String::new();
        pipe.read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello\n");
        child.wait().unwrap();

        let file = tempfile::tempfile().unwrap();
        assert!(WidePipe::new(file).batching.is_none());
    }
}
