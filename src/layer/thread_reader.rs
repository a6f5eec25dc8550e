//! A byte stream for a reader that pulls, made by a thread that writes it into a pipe: a layer
//! tar made from store paths, or one entry of a compressed base image. The writer's error is
//! returned by the read that would otherwise have seen the end of the stream, so a short
//! stream never passes for a whole one.

use std::io::{self, Read};
use std::thread::JoinHandle;

pub struct ThreadReader {
    pipe: io::PipeReader,
    writer: Option<JoinHandle<io::Result<()>>>,
}

impl ThreadReader {
    /// Run `write` on a thread called `name`, reading what it writes.
    pub fn spawn(
        name: &str,
        write: impl FnOnce(io::PipeWriter) -> io::Result<()> + Send + 'static,
    ) -> io::Result<Self> {
        let (pipe, sender) = io::pipe()?;
        let writer = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || write(sender))?;
        Ok(ThreadReader {
            pipe,
            writer: Some(writer),
        })
    }
}

impl Read for ThreadReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.pipe.read(buf)?;
        if n == 0
            && !buf.is_empty()
            && let Some(writer) = self.writer.take()
        {
            writer
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        }
        Ok(n)
    }
}
