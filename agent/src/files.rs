//! Reading files an operator (or an attacker) controls: only regular files,
//! never more than a cap. A FIFO would block the reader forever, a symlink
//! to `/dev/zero` would read until memory runs out, and a directory named
//! `x.json` is not a service file; each is refused with a reason.

use std::io::Read;
use std::path::Path;

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("is {0}, not a regular file")]
    NotRegular(&'static str),
    #[error("is larger than {0} bytes")]
    TooLarge(u64),
    #[error("is not UTF-8 text")]
    NotText,
}

/// What kind of file `meta` describes, in words.
fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Reads `path` as UTF-8 text if it is (or links to) a regular file of at
/// most `max` bytes. The file is opened non-blocking and checked after
/// opening, so a file swapped for a FIFO between a check and the open
/// cannot block the reader.
pub fn read_regular(path: &Path, max: u64) -> Result<String, ReadError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular(kind(&meta)));
    }
    if meta.len() > max {
        return Err(ReadError::TooLarge(max));
    }
    let mut bytes = Vec::new();
    // The file may grow after the check: read one byte past the cap to tell.
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge(max));
    }
    String::from_utf8(bytes).map_err(|_| ReadError::NotText)
}

/// Why a directory entry is not a readable regular file, following
/// symlinks, or `None` if it is one.
pub fn not_regular(path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => None,
        Ok(m) => Some(format!("is {}, not a regular file", kind(&m))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Some("is a dangling symbolic link".into())
        }
        Err(e) => Some(format!("cannot be read: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_cap_are_read() {
        let dir =
            std::env::temp_dir().join(format!("dockhand-files-{}", crate::store::random_hex(6)));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a");
        std::fs::write(&f, "hello").unwrap();
        assert_eq!(read_regular(&f, 5).unwrap(), "hello");
        assert!(matches!(read_regular(&f, 4), Err(ReadError::TooLarge(4))));
        assert!(matches!(
            read_regular(&dir, 10),
            Err(ReadError::NotRegular("a directory"))
        ));
        let zero = dir.join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(matches!(
            read_regular(&zero, 10),
            Err(ReadError::NotRegular("a device"))
        ));
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if matches!(made, Ok(s) if s.success()) {
            assert!(matches!(
                read_regular(&fifo, 10),
                Err(ReadError::NotRegular("a FIFO"))
            ));
            assert_eq!(not_regular(&fifo).unwrap(), "is a FIFO, not a regular file");
        }
        let dangling = dir.join("dangling");
        std::os::unix::fs::symlink(dir.join("nothing"), &dangling).unwrap();
        assert_eq!(
            not_regular(&dangling).unwrap(),
            "is a dangling symbolic link"
        );
        assert!(not_regular(&f).is_none());
        std::fs::remove_dir_all(dir).ok();
    }
}
