//! Reading a stream ahead while the push is not ready for it yet.
//!
//! A push asks the registry what it has (the target tag's manifest and config, `--reuse-from`,
//! a HEAD per blob) before it reads a layer, and a deploy checks the app, the token and the
//! registry credentials and lists the machines' images before that: a handful of round trips,
//! 0.5 s and more to a registry or API 80 ms away. A stream script started before that fills its pipe in moments and then
//! waits; its generation (minutes for a big image, every layer tarred twice by nixpkgs'
//! `stream_layered_image.py`) only goes on once the push reads. [`ReadAhead`] reads the stream
//! into a scratch file meanwhile (after [`GRACE`], which lookups on loopback do not outlast),
//! up to [`READ_AHEAD_LIMIT`], and gives those bytes back first once the push starts reading:
//! generation overlaps the lookups.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How much of a stream is read ahead at most: the page cache holds it, not nixfly's memory,
/// and a generator that runs this far ahead (`cat` of a ready archive) needs no overlap.
pub const READ_AHEAD_LIMIT: u64 = 256 << 20;

/// Bytes read from the stream at a time while reading ahead.
const PIECE: usize = 256 << 10;

/// How long the thread waits before it reads anything: lookups that end sooner (a registry on
/// loopback or nearby) leave the stream to the push, without a round trip through the scratch
/// file. That trip cost a `cat` of a ready 1.1 GB archive, a fresh runner's unchanged push on
/// loopback, 0.02 s (8 alternating pushes each: 0.75 s before the read-ahead, 0.77 s with it).
const GRACE: Duration = Duration::from_millis(50);

/// A stream being read ahead into a scratch file by a thread of its own, until the first
/// `read`, which gives the bytes read ahead, then the rest of the stream as it comes.
pub struct ReadAhead {
    state: State,
}

enum State {
    Ahead {
        stop: Arc<AtomicBool>,
        thread: JoinHandle<Taken>,
    },
    Replay {
        taken: Taken,
        at: u64,
    },
    /// Nothing read ahead left: the stream itself.
    Direct(Box<dyn Read + Send>),
    /// Only while a state is being replaced.
    Moved,
}

/// What the thread read ahead: the first `len` bytes of the stream in `file`, then `tail`
/// (a piece the file would not take), then the stream's end or error if it got that far.
struct Taken {
    inner: Box<dyn Read + Send>,
    file: Option<File>,
    len: u64,
    tail: Vec<u8>,
    end: Option<io::Result<()>>,
}

impl ReadAhead {
    /// Start reading `inner` ahead, up to `limit` bytes. Without a scratch file (`TMPDIR` not
    /// writable) the stream is read as it comes, as before.
    pub fn start(inner: Box<dyn Read + Send>, limit: u64) -> ReadAhead {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("nixfly-read-ahead".into())
            .spawn({
                let stop = stop.clone();
                move || read_ahead(inner, limit, &stop)
            });
        match thread {
            Ok(thread) => ReadAhead {
                state: State::Ahead { stop, thread },
            },
            // The closure, and with it the stream, is gone: nothing to fall back to.
            Err(err) => ReadAhead {
                state: State::Direct(Box::new(Failed(Some(err)))),
            },
        }
    }
}

/// The read-ahead thread: read pieces until told to stop, at the limit, or at the stream's end
/// or error. The stop is only seen between pieces: the consumer waits for the piece being
/// read, which it would have waited for anyway.
/// The scratch file is made only once the grace is over: a push that reads sooner makes none.
fn read_ahead(mut inner: Box<dyn Read + Send>, limit: u64, stop: &AtomicBool) -> Taken {
    let began = Instant::now();
    while !stop.load(Ordering::Acquire) && began.elapsed() < GRACE {
        // The consumer unparks the thread when it stops it.
        std::thread::park_timeout(GRACE.saturating_sub(began.elapsed()));
    }
    let mut taken = Taken {
        inner: Box::new(io::empty()),
        file: None,
        len: 0,
        tail: Vec::new(),
        end: None,
    };
    let file = if stop.load(Ordering::Acquire) {
        None
    } else {
        crate::scratch::unlinked("read-ahead").ok()
    };
    let Some(mut file) = file else {
        taken.inner = inner;
        return taken;
    };
    let mut piece = vec![0u8; PIECE];
    while !stop.load(Ordering::Acquire) && taken.len < limit {
        match inner.read(&mut piece) {
            Ok(0) => {
                taken.end = Some(Ok(()));
                break;
            }
            Ok(n) => {
                if file.write_all(&piece[..n]).is_err() {
                    // A full TMPDIR: the piece is kept here instead, and the rest of the
                    // stream comes as it is. Whatever part of it the file took lies past
                    // `len` and is never read.
                    taken.tail = piece[..n].to_vec();
                    break;
                }
                taken.len += n as u64;
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                taken.end = Some(Err(err));
                break;
            }
        }
    }
    taken.inner = inner;
    taken.file = Some(file);
    taken
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match &mut self.state {
                State::Ahead { .. } => {
                    let State::Ahead { stop, thread } = std::mem::replace(&mut self.state, State::Moved)
                    else {
                        unreachable!("matched above")
                    };
                    stop.store(true, Ordering::Release);
                    thread.thread().unpark();
                    let mut taken = thread
                        .join()
                        .map_err(|_| io::Error::other("the thread reading the stream ahead panicked"))?;
                    if let Some(file) = &mut taken.file {
                        file.seek(SeekFrom::Start(0))?;
                    }
                    self.state = State::Replay { taken, at: 0 };
                }
                State::Replay { taken, at } => {
                    if buf.is_empty() {
                        return Ok(0);
                    }
                    if *at < taken.len {
                        let want = buf.len().min((taken.len - *at) as usize);
                        let file = taken.file.as_mut().expect("bytes read ahead are in the file");
                        let n = file.read(&mut buf[..want])?;
                        if n == 0 {
                            return Err(io::Error::other(
                                "the scratch file of the stream read ahead is shorter than written",
                            ));
                        }
                        *at += n as u64;
                        return Ok(n);
                    }
                    let tail_at = (*at - taken.len) as usize;
                    if tail_at < taken.tail.len() {
                        let n = buf.len().min(taken.tail.len() - tail_at);
                        buf[..n].copy_from_slice(&taken.tail[tail_at..tail_at + n]);
                        *at += n as u64;
                        return Ok(n);
                    }
                    if let Some(end) = taken.end.take() {
                        // The stream ended (or failed) while being read ahead: so it does now,
                        // and a failure is reported once, as the stream itself would.
                        taken.inner = Box::new(Failed(end.err()));
                    }
                    let State::Replay { taken, .. } = std::mem::replace(&mut self.state, State::Moved) else {
                        unreachable!("matched above")
                    };
                    self.state = State::Direct(taken.inner);
                }
                State::Direct(inner) => return inner.read(buf),
                State::Moved => return Err(io::Error::other("the stream read ahead was left unusable")),
            }
        }
    }
}

impl Drop for ReadAhead {
    /// Abandoned before any read (the push failed first): the thread stops after its current
    /// piece, and drops the stream then. A script's output ends sooner, when the push kills it.
    fn drop(&mut self) {
        if let State::Ahead { stop, thread } = &self.state {
            stop.store(true, Ordering::Release);
            thread.thread().unpark();
        }
    }
}

/// A stream that has ended: with this error first, if any, then at its end.
struct Failed(Option<io::Error>);

impl Read for Failed {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        match self.0.take() {
            Some(err) => Err(err),
            None => Ok(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A stream whose pieces come from a channel, and that counts what was read of it.
    struct Fed {
        pieces: mpsc::Receiver<io::Result<Vec<u8>>>,
        read: Arc<Mutex<usize>>,
        current: Vec<u8>,
    }

    impl Read for Fed {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.current.is_empty() {
                match self.pieces.recv() {
                    Ok(piece) => self.current = piece?,
                    Err(_) => return Ok(0),
                }
            }
            let n = buf.len().min(self.current.len());
            buf[..n].copy_from_slice(&self.current[..n]);
            self.current.drain(..n);
            *self.read.lock().unwrap() += n;
            Ok(n)
        }
    }

    /// Where a test feeds the stream its pieces (or a failure).
    type Feed = mpsc::Sender<io::Result<Vec<u8>>>;

    fn fed() -> (Feed, Box<dyn Read + Send>, Arc<Mutex<usize>>) {
        let (tx, pieces) = mpsc::channel();
        let read = Arc::new(Mutex::new(0));
        let stream = Fed {
            pieces,
            read: read.clone(),
            current: Vec::new(),
        };
        (tx, Box::new(stream), read)
    }

    fn wait_for(read: &Mutex<usize>, bytes: usize) {
        for _ in 0..500 {
            if *read.lock().unwrap() >= bytes {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("only {} of {bytes} bytes were read ahead", read.lock().unwrap());
    }

    /// Before the first read, the stream is taken up to the limit and no further; then the
    /// consumer gets every byte in order: those read ahead, then the rest as it comes.
    #[test]
    fn the_stream_is_read_ahead_up_to_the_limit_and_given_back_in_order() {
        let (tx, stream, read) = fed();
        let pieces: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 1000 + i as usize]).collect();
        for piece in &pieces[..30] {
            tx.send(Ok(piece.clone())).unwrap();
        }
        let limit = 5000;
        let mut ahead = ReadAhead::start(stream, limit);
        // Read pieces are at most the stream's own (about 1 KB here): the limit is passed by
        // less than one of them.
        wait_for(&read, limit as usize);
        std::thread::sleep(Duration::from_millis(50));
        let before = *read.lock().unwrap();
        assert!(
            (limit as usize..limit as usize + 1100).contains(&before),
            "{before}"
        );
        for piece in &pieces[30..] {
            tx.send(Ok(piece.clone())).unwrap();
        }
        drop(tx);
        let mut all = Vec::new();
        ahead.read_to_end(&mut all).unwrap();
        assert_eq!(all, pieces.concat());
    }

    /// A stream that ends, or fails, while being read ahead ends or fails the same way for
    /// the consumer, after the bytes that came before.
    #[test]
    fn the_end_or_failure_met_ahead_comes_after_the_bytes() {
        let (tx, stream, read) = fed();
        tx.send(Ok(b"layer".to_vec())).unwrap();
        drop(tx);
        let mut ahead = ReadAhead::start(stream, 1 << 20);
        wait_for(&read, 5);
        let mut all = Vec::new();
        ahead.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"layer");

        let (tx, stream, read) = fed();
        tx.send(Ok(b"lay".to_vec())).unwrap();
        tx.send(Err(io::Error::other("script went quiet"))).unwrap();
        let mut ahead = ReadAhead::start(stream, 1 << 20);
        wait_for(&read, 3);
        std::thread::sleep(Duration::from_millis(50));
        let mut buf = [0u8; 16];
        assert_eq!(ahead.read(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"lay");
        let err = ahead.read(&mut buf).unwrap_err();
        assert_eq!(err.to_string(), "script went quiet");
        assert_eq!(ahead.read(&mut buf).unwrap(), 0);
    }
}
