//! `-`: a docker-archive piped in (uncompressed, gzip or zstd, by magic bytes), read once.

use super::{ArchiveStream, Image, ImageError, ImageSource};
use crate::progress::Reporter;

pub struct Stdin;

impl ImageSource for Stdin {
    fn describe(&self) -> String {
        "docker-archive on stdin".into()
    }

    fn open(self: Box<Self>, _reporter: &Reporter) -> Result<Image, ImageError> {
        let description = self.describe();
        // Piped in, stdin is read like a stream script's stdout (see `super::pipe`).
        let stdin = crate::blob::AlignedBufReader::with_capacity(
            1 << 20,
            super::pipe::WidePipe::new(std::io::stdin()),
        );
        let (format, reader) = super::decompressed_stream(Box::new(stdin), &description)?;
        Ok(Image::Stream(ArchiveStream::without_finish(
            format!("{description} ({})", format.name()),
            reader,
        )))
    }
}
