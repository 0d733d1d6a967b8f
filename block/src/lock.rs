//! Advisory image locking with open-file-description (OFD) locks, as QEMU does.
//!
//! A read-write opener takes a write lock on one byte, a read-only opener a read
//! lock on it: two readers may share an image, a writer excludes everyone. OFD locks
//! belong to the open file description, so they conflict between two opens in one
//! process as well as between processes, and they go away when the file is closed
//! (also when a VM crashes). The byte lies past any data QEMU's own scheme uses for
//! permissions, so the two schemes do not interfere with each other's bytes, but
//! QEMU and Hangar do not see each other's locks either.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::BlockError;

/// The locked byte (locks beyond end of file are fine and do not grow it).
const LOCK_BYTE: i64 = 0x7fff_0000;

/// Takes the image lock on `file`, or fails with `BlockError::Locked` if another
/// open file description holds a conflicting one.
pub(crate) fn lock_image(file: &File, path: &Path, readonly: bool) -> Result<(), BlockError> {
    // SAFETY: all-zero is a valid `struct flock`.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = if readonly {
        libc::F_RDLCK
    } else {
        libc::F_WRLCK
    } as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = LOCK_BYTE;
    fl.l_len = 1;
    fl.l_pid = 0; // required for OFD locks
                  // SAFETY: fcntl on an fd we own with a valid flock struct that outlives the call.
    let ret = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if ret == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Err(BlockError::Locked {
            path: path.to_path_buf(),
        }),
        _ => Err(BlockError::Lock {
            path: path.to_path_buf(),
            source: err,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn open(path: &Path, write: bool) -> File {
        OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .unwrap()
    }

    #[test]
    fn two_writers_conflict_in_one_process() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let a = open(tmp.path(), true);
        let b = open(tmp.path(), true);
        lock_image(&a, tmp.path(), false).unwrap();
        assert!(matches!(
            lock_image(&b, tmp.path(), false),
            Err(BlockError::Locked { .. })
        ));
        drop(a);
        lock_image(&b, tmp.path(), false).unwrap();
    }

    #[test]
    fn readers_share_but_exclude_a_writer() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let r1 = open(tmp.path(), false);
        let r2 = open(tmp.path(), false);
        let w = open(tmp.path(), true);
        lock_image(&r1, tmp.path(), true).unwrap();
        lock_image(&r2, tmp.path(), true).unwrap();
        assert!(matches!(
            lock_image(&w, tmp.path(), false),
            Err(BlockError::Locked { .. })
        ));
    }
}
