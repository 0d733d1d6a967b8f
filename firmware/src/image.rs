//! Checks on firmware files before a VM starts: the code image and a variable
//! store's size and permissions.
//!
//! Owns: the size limit of a flash bank and the "is this file usable" questions.
//! Contents are never judged: any firmware built for the `virt` machine may run,
//! and an all-zero variable store is valid (the firmware formats it). Shorter
//! images are padded in memory by the flash device, not here.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::FirmwareError;

/// Bytes in one flash bank: the largest image either bank can hold.
pub const FLASH_BANK_SIZE: u64 = 64 << 20;

/// A firmware code image that passed the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeImage {
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes (1 ..= [`FLASH_BANK_SIZE`]).
    pub size: u64,
}

impl CodeImage {
    /// Checks that `path` is a readable, non-empty regular file of at most one
    /// bank.
    pub fn check(path: &Path) -> Result<Self, FirmwareError> {
        let size = check_file("firmware image", path, false)?;
        Ok(Self {
            path: path.to_path_buf(),
            size,
        })
    }

    /// Reads the whole image.
    pub fn read(&self) -> Result<Vec<u8>, FirmwareError> {
        read_limited("firmware image", &self.path)
    }
}

/// Reads a file of at most one bank (the limit holds even if the file grew).
pub(crate) fn read_limited(what: &'static str, path: &Path) -> Result<Vec<u8>, FirmwareError> {
    let read_error = |source| FirmwareError::Read {
        what,
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(FLASH_BANK_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > FLASH_BANK_SIZE {
        return Err(FirmwareError::TooLarge {
            what,
            path: path.to_path_buf(),
            size: bytes.len() as u64,
            limit: FLASH_BANK_SIZE,
        });
    }
    Ok(bytes)
}

/// Checks a file is a regular, readable (and if `writable`, writable), non-empty
/// file of at most one bank; returns its size. Permission bits are checked as
/// well as opening, so a read-only file is refused even to root.
pub(crate) fn check_file(
    what: &'static str,
    path: &Path,
    writable: bool,
) -> Result<u64, FirmwareError> {
    let path_buf = path.to_path_buf();
    let metadata = fs::metadata(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => FirmwareError::Missing {
            what,
            path: path_buf.clone(),
        },
        _ => FirmwareError::Unreadable {
            what,
            path: path_buf.clone(),
            source,
        },
    })?;
    if !metadata.is_file() {
        return Err(FirmwareError::NotAFile {
            what,
            path: path_buf,
        });
    }
    let mode = metadata.permissions().mode();
    if mode & 0o444 == 0 {
        return Err(FirmwareError::Unreadable {
            what,
            path: path_buf,
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        });
    }
    if writable && mode & 0o222 == 0 {
        return Err(FirmwareError::ReadOnly {
            what,
            path: path_buf,
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        });
    }
    File::open(path).map_err(|source| FirmwareError::Unreadable {
        what,
        path: path_buf.clone(),
        source,
    })?;
    if writable {
        // Opening for writing changes nothing in the file.
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| FirmwareError::ReadOnly {
                what,
                path: path_buf.clone(),
                source,
            })?;
    }
    let size = metadata.len();
    if size == 0 {
        return Err(FirmwareError::Empty {
            what,
            path: path_buf,
        });
    }
    if size > FLASH_BANK_SIZE {
        return Err(FirmwareError::TooLarge {
            what,
            path: path_buf,
            size,
            limit: FLASH_BANK_SIZE,
        });
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(dir: &Path, name: &str, len: u64) -> PathBuf {
        let path = dir.join(name);
        let file = File::create(&path).unwrap();
        file.set_len(len).unwrap();
        path
    }

    #[test]
    fn accepts_short_and_full_size_images() {
        let dir = tempfile::tempdir().unwrap();
        let short = file_with(dir.path(), "short.fd", 2 << 20);
        assert_eq!(CodeImage::check(&short).unwrap().size, 2 << 20);
        let full = file_with(dir.path(), "full.fd", FLASH_BANK_SIZE);
        let image = CodeImage::check(&full).unwrap();
        assert_eq!(image.read().unwrap().len() as u64, FLASH_BANK_SIZE);
    }

    #[test]
    fn refuses_empty_oversized_missing_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let empty = file_with(dir.path(), "empty.fd", 0);
        assert!(matches!(
            CodeImage::check(&empty),
            Err(FirmwareError::Empty { .. })
        ));
        let big = file_with(dir.path(), "big.fd", FLASH_BANK_SIZE + 1);
        let error = CodeImage::check(&big).unwrap_err();
        assert!(
            matches!(error, FirmwareError::TooLarge { size, .. } if size == FLASH_BANK_SIZE + 1)
        );
        assert!(error.to_string().contains("big.fd"));
        assert!(matches!(
            CodeImage::check(&dir.path().join("nope.fd")),
            Err(FirmwareError::Missing { .. })
        ));
        assert!(matches!(
            CodeImage::check(dir.path()),
            Err(FirmwareError::NotAFile { .. })
        ));
    }

    #[test]
    fn refuses_unreadable_image_even_as_root() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_with(dir.path(), "locked.fd", 4096);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o200)).unwrap();
        assert!(matches!(
            CodeImage::check(&path),
            Err(FirmwareError::Unreadable { .. })
        ));
    }

    #[test]
    fn writable_check_refuses_read_only_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_with(dir.path(), "vars.fd", 4096);
        assert_eq!(check_file("variable store", &path, true).unwrap(), 4096);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o444)).unwrap();
        assert!(matches!(
            check_file("variable store", &path, true),
            Err(FirmwareError::ReadOnly { .. })
        ));
    }
}
