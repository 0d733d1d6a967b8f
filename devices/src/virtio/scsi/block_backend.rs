//! [`ScsiBackend`] for the block layer's [`block::BlockBackend`]: READ/WRITE
//! scatter-gather lists go to `aio_readv`/`aio_writev` as they are (pointing
//! into guest memory, no copy); completions arrive on the backend's context.
//!
//! Owns: the mapping between the two APIs, nothing else.

use block::{BlockBackend, BlockError, IoVec, WriteMode, ZeroMode};

use super::backend::{BackendError, BackendRequest, HostBuf, HostBufs, IoCompletion, ScsiBackend};

fn backend_error(error: BlockError) -> BackendError {
    let mut message = error.to_string();
    let mut errno = None;
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            errno = errno.or(io.raw_os_error());
        }
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    BackendError { errno, message }
}

/// # Safety
///
/// Each buffer must satisfy [`IoVec::new`]'s contract (the caller of
/// [`ScsiBackend::submit`] promised exactly that).
unsafe fn iovecs(bufs: &[HostBuf]) -> Vec<IoVec> {
    bufs.iter()
        // SAFETY: forwarded from this function's contract.
        .map(|b| unsafe { IoVec::new(b.ptr, b.len) })
        .collect()
}

impl ScsiBackend for BlockBackend {
    fn size_bytes(&self) -> u64 {
        self.size()
    }

    fn block_size(&self) -> u32 {
        self.logical_block_size()
    }

    fn read_only(&self) -> bool {
        self.is_readonly()
    }

    fn discard(&self) -> bool {
        self.supports_discard()
    }

    unsafe fn submit(&self, request: BackendRequest, done: IoCompletion) {
        // The device's completion moves into `block`'s one box per request.
        let done =
            move |result: Result<usize, BlockError>| done.complete(result.map_err(backend_error));
        match request {
            BackendRequest::Read {
                offset,
                bufs: HostBufs::One(b),
            } => {
                // SAFETY: `submit`'s contract is `IoVec::new`'s contract.
                let iov = unsafe { IoVec::new(b.ptr, b.len) };
                self.aio_read(offset, iov, done)
            }
            BackendRequest::Read { offset, bufs } => {
                // SAFETY: `submit`'s contract is `IoVec::new`'s contract.
                let iov = unsafe { iovecs(&bufs) };
                self.aio_readv(offset, iov, done)
            }
            BackendRequest::Write { offset, bufs, fua } => {
                let mode = if fua {
                    WriteMode::Fua
                } else {
                    WriteMode::Normal
                };
                if let HostBufs::One(b) = bufs {
                    // SAFETY: as above.
                    let iov = unsafe { IoVec::new(b.ptr, b.len) };
                    return self.aio_write(offset, iov, mode, done);
                }
                // SAFETY: as above.
                let iov = unsafe { iovecs(&bufs) };
                self.aio_writev(offset, iov, mode, done)
            }
            BackendRequest::Flush => self.aio_flush(done),
            BackendRequest::Discard { offset, len } => self.aio_discard(offset, len, done),
            BackendRequest::WriteZeroes { offset, len, unmap } => {
                let mode = if unmap {
                    ZeroMode::MayUnmap
                } else {
                    ZeroMode::Allocate
                };
                self.aio_write_zeroes(offset, len, mode, done)
            }
        }
    }
}
