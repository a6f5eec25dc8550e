//! Scratch files: temp files in `TMPDIR` removed as soon as they are created, so that nothing is
//! left behind whatever way nixfly ends, and readable by this process only.

use std::fs::File;
use std::io;

/// A new empty scratch file, open for reading and writing. `kind` names it while it has a
/// name (a few microseconds), for whoever lists `TMPDIR` then.
pub fn unlinked(kind: &str) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::env::temp_dir();
    for attempt in 0u32.. {
        let path = dir.join(format!(".nixfly-{kind}-{}-{attempt}", std::process::id()));
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => {
                std::fs::remove_file(&path)?;
                return Ok(file);
            }
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists && attempt < 1000 => {}
            Err(err) => return Err(err),
        }
    }
    unreachable!("the loop returns")
}
