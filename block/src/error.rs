//! The crate's error type: one enum, each variant naming the operation that failed.
//!
//! Guest-visible mapping is the device's job: `OutOfRange`, `Misaligned` and
//! `ReadOnly` are request errors (the request never reached the file), `Io` and
//! `NoSpace` are medium errors reported by the host file.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// The kind of request a [`BlockError`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// A (vectored) read.
    Read,
    /// A (vectored) write, FUA or not.
    Write,
    /// A flush (fdatasync).
    Flush,
    /// A discard (hole punch).
    Discard,
    /// A write-zeroes (zero range, or hole punch when unmapping is allowed).
    WriteZeroes,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Discard => "discard",
            Op::WriteZeroes => "write-zeroes",
        };
        f.write_str(name)
    }
}

/// Everything that can fail in the block layer.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// An option list had a key this crate does not know.
    #[error("unknown disk option `{key}`")]
    UnknownOption {
        /// The key as written.
        key: String,
    },
    /// An option had a value outside its domain.
    #[error("bad value `{value}` for disk option `{key}` (expected {expected})")]
    BadOptionValue {
        /// The key as written.
        key: String,
        /// The value as written.
        value: String,
        /// What the key accepts.
        expected: &'static str,
    },
    /// An option list named no image path.
    #[error("disk option list has no `path=`")]
    MissingPath,
    /// Opening the image file failed.
    #[error("opening image {path}")]
    Open {
        /// The image path.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// Another open file description (another VM, usually) holds a conflicting lock.
    #[error("image {path} is locked by another user (is another VM using it?)")]
    Locked {
        /// The image path.
        path: PathBuf,
    },
    /// Taking the advisory lock failed for a reason other than a conflict.
    #[error("locking image {path}")]
    Lock {
        /// The image path.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// Querying the image (size, type, block size) failed.
    #[error("querying image {path}")]
    Query {
        /// The image path.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The path is neither a regular file nor a block device.
    #[error("image {path} is neither a regular file nor a block device")]
    NotAnImage {
        /// The image path.
        path: PathBuf,
    },
    /// Setting up the I/O engine (io_uring ring, eventfd, fd handler) failed.
    #[error("setting up the {engine} I/O engine")]
    EngineSetup {
        /// `threads` or `io_uring`.
        engine: &'static str,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// Registering with the event loop failed.
    #[error("registering with the event loop")]
    EventLoop(#[source] event_loop::Error),
    /// A modifying request on a read-only backend; it never reached the file.
    #[error("{op} on a read-only image")]
    ReadOnly {
        /// The refused request.
        op: Op,
    },
    /// A request past the end of the image; it never reached the file.
    #[error("{op} of {len} bytes at offset {offset} is beyond the image end ({size} bytes)")]
    OutOfRange {
        /// The refused request.
        op: Op,
        /// Its byte offset.
        offset: u64,
        /// Its length in bytes.
        len: u64,
        /// The image size.
        size: u64,
    },
    /// A request whose offset or length is not a multiple of the O_DIRECT block size;
    /// it never reached the file.
    #[error("{op} of {len} bytes at offset {offset} is not aligned to {align} bytes (cache=none)")]
    Misaligned {
        /// The refused request.
        op: Op,
        /// Its byte offset.
        offset: u64,
        /// Its length in bytes.
        len: u64,
        /// The required alignment.
        align: u64,
    },
    /// A scatter-gather list longer than the kernel accepts in one call.
    #[error("{op} with {count} segments exceeds the limit of {max}")]
    TooManySegments {
        /// The refused request.
        op: Op,
        /// Segments given.
        count: usize,
        /// Segments allowed.
        max: usize,
    },
    /// The host file system is full (ENOSPC, real or injected).
    #[error("{op} at offset {offset}: no space left on the host")]
    NoSpace {
        /// The failed request.
        op: Op,
        /// Its byte offset (0 for flush).
        offset: u64,
    },
    /// A read hit the end of the file before the image end (the file shrank).
    #[error("read at offset {offset} hit end of file")]
    UnexpectedEof {
        /// The offset where data ran out.
        offset: u64,
    },
    /// The host I/O failed (EIO and anything else, real or injected).
    #[error("{op} at offset {offset}")]
    Io {
        /// The failed request.
        op: Op,
        /// Its byte offset (0 for flush).
        offset: u64,
        /// What the kernel (or the fault injector) said.
        #[source]
        source: io::Error,
    },
}

impl BlockError {
    /// Classifies an errno from the host into `NoSpace` or `Io`.
    pub fn from_errno(op: Op, offset: u64, errno: i32) -> BlockError {
        if errno == libc::ENOSPC || errno == libc::EDQUOT {
            BlockError::NoSpace { op, offset }
        } else {
            BlockError::Io {
                op,
                offset,
                source: io::Error::from_raw_os_error(errno),
            }
        }
    }

    /// Like [`BlockError::from_errno`] for an `io::Error`.
    pub fn from_io(op: Op, offset: u64, err: io::Error) -> BlockError {
        match err.raw_os_error() {
            Some(errno) => BlockError::from_errno(op, offset, errno),
            None => BlockError::Io {
                op,
                offset,
                source: err,
            },
        }
    }

    /// True for errors found before the request reached the file (bad request).
    pub fn is_request_error(&self) -> bool {
        matches!(
            self,
            BlockError::ReadOnly { .. }
                | BlockError::OutOfRange { .. }
                | BlockError::Misaligned { .. }
                | BlockError::TooManySegments { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_is_classified_as_no_space() {
        let err = BlockError::from_errno(Op::Write, 512, libc::ENOSPC);
        assert!(matches!(
            err,
            BlockError::NoSpace {
                op: Op::Write,
                offset: 512
            }
        ));
    }

    #[test]
    fn eio_keeps_its_errno() {
        let err = BlockError::from_errno(Op::Flush, 0, libc::EIO);
        match err {
            BlockError::Io { op, source, .. } => {
                assert_eq!(op, Op::Flush);
                assert_eq!(source.raw_os_error(), Some(libc::EIO));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn request_errors_are_flagged() {
        assert!(BlockError::ReadOnly { op: Op::Write }.is_request_error());
        assert!(!BlockError::NoSpace {
            op: Op::Write,
            offset: 0
        }
        .is_request_error());
    }
}
