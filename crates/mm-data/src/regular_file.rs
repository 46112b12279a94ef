//! The one way mm opens a file a user named: only regular files, never more than a cap.
//!
//! `File::open` on a FIFO blocks until a writer appears, and `fs::read` on `/dev/zero` or a
//! 5 GB "image" reads until memory runs out. Every file mm reads (images, captions, CSVs,
//! shards, configs, checkpoints, tokenizers) goes through here: it is opened without
//! blocking, refused unless it is a regular file, and read only up to a size cap.

use std::fs::File;
use std::io::{self, ErrorKind, Read};
use std::path::Path;

/// Caps for the small text files mm reads whole (configs, checkpoint state, class lists).
pub const MAX_TEXT_FILE_BYTES: u64 = 16 << 20;

/// Opens `path` for reading if it is a regular file (symlinks are followed). FIFOs, devices,
/// sockets and directories are errors naming what they are; opening never blocks.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // A FIFO would block in open() until a writer appears; non-blocking open returns at
        // once, and the type check below refuses it.
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    let file_type = file.metadata()?.file_type();
    if !file_type.is_file() {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!("not a regular file ({})", describe(&file_type)),
        ));
    }
    Ok(file)
}

/// What a non-regular file is, for error messages.
fn describe(file_type: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "a FIFO";
        }
        if file_type.is_char_device() || file_type.is_block_device() {
            return "a device";
        }
        if file_type.is_socket() {
            return "a socket";
        }
    }
    if file_type.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}

/// The whole of regular file `path`, refused if it holds more than `max_bytes` (checked before
/// reading, and while reading in case it grows).
pub fn read_capped(path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
    let file = open_regular(path)?;
    let size = file.metadata()?.len();
    if size > max_bytes {
        return Err(too_large(size, max_bytes));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(max_bytes + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(bytes.len() as u64, max_bytes));
    }
    Ok(bytes)
}

/// [`read_capped`] as UTF-8 text.
pub fn read_text_capped(path: &Path, max_bytes: u64) -> io::Result<String> {
    String::from_utf8(read_capped(path, max_bytes)?)
        .map_err(|_| io::Error::new(ErrorKind::InvalidData, "not UTF-8 text"))
}

/// A small text file (config, state, class list): [`read_text_capped`] at
/// [`MAX_TEXT_FILE_BYTES`].
pub fn read_text(path: &Path) -> io::Result<String> {
    read_text_capped(path, MAX_TEXT_FILE_BYTES)
}

fn too_large(size: u64, max_bytes: u64) -> io::Error {
    io::Error::new(
        ErrorKind::FileTooLarge,
        format!("{size} bytes, over the limit of {max_bytes}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_small_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.txt");
        std::fs::write(&file, "hello").unwrap();
        assert_eq!(read_capped(&file, 5).unwrap(), b"hello");
        let err = read_capped(&file, 4).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FileTooLarge);
        assert!(err.to_string().contains("5 bytes"), "{err}");

        let err = read_capped(dir.path(), 100).unwrap_err();
        assert!(err.to_string().contains("a directory"), "{err}");
        let err = read_capped(Path::new("/dev/zero"), 100).unwrap_err();
        assert!(err.to_string().contains("a device"), "{err}");
        assert_eq!(
            read_capped(&dir.path().join("missing"), 100)
                .unwrap_err()
                .kind(),
            ErrorKind::NotFound
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("x.jpg");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
        let err = read_capped(&fifo, 100).unwrap_err();
        assert!(err.to_string().contains("a FIFO"), "{err}");
    }
}
