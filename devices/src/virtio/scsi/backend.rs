//! The disk I/O interface the SCSI emulation needs ([`ScsiBackend`]), so the
//! command set does not depend on how images are opened or which engine serves
//! them. `block_backend.rs` implements it for `block::BlockBackend`; tests use
//! `MemBackend` (feature `test-utils`).
//!
//! Contract: requests complete through [`IoCompletion::complete`], which
//! consumes the completion (so it runs once), on the thread that dispatches
//! the device's `AioContext` (the iothread, a nested poller, or a pool worker
//! delivering its own job's completion) — possibly even
//! before `submit` returns.

use std::fmt;

/// One host buffer of a scatter-gather list: a window into guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostBuf {
    pub ptr: *mut u8,
    pub len: usize,
}

// SAFETY: a `HostBuf` is a plain address range into guest memory that the device
// keeps mapped (it holds a `GuestMemoryMmap` clone) until the request completes;
// sending the address to another thread does not by itself access it.
unsafe impl Send for HostBuf {}

/// A scatter-gather list: nearly always one buffer, kept inline.
#[derive(Debug)]
pub enum HostBufs {
    One(HostBuf),
    Many(Vec<HostBuf>),
}

impl std::ops::Deref for HostBufs {
    type Target = [HostBuf];
    fn deref(&self) -> &[HostBuf] {
        match self {
            HostBufs::One(one) => std::slice::from_ref(one),
            HostBufs::Many(many) => many,
        }
    }
}

/// A disk request with byte offsets. Lengths are multiples of the block size.
#[derive(Debug)]
pub enum BackendRequest {
    /// Read into the buffers, in order, from `offset`.
    Read { offset: u64, bufs: HostBufs },
    /// Write the buffers, in order, at `offset`; `fua`: durable before completion.
    Write {
        offset: u64,
        bufs: HostBufs,
        fua: bool,
    },
    /// Make every completed write durable.
    Flush,
    /// Deallocate a range (reads may then return anything; we advertise LBPRZ=0).
    Discard { offset: u64, len: u64 },
    /// Write zeroes to a range; `unmap`: deallocating is allowed.
    WriteZeroes { offset: u64, len: u64, unmap: bool },
}

/// Why a backend request failed. Reaches the guest as MEDIUM ERROR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendError {
    /// The errno, when the failure came from the host kernel.
    pub errno: Option<i32>,
    pub message: String,
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errno {
            Some(errno) => write!(f, "{} (errno {errno})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for BackendError {}

/// Called once with the number of bytes transferred, or the error
/// ([`IoCompletion::complete`]).
///
/// A concrete type rather than a boxed closure: the device's own per-command
/// completion (nearly every request) is carried inline, so a request costs no
/// allocation here; a backend that boxes it (as `block` does) boxes it once.
/// Other completions (tests, multi-part commands) are boxed closures.
pub struct IoCompletion(Kind);

enum Kind {
    /// One command's single disk request.
    Command(super::device::CommandCompletion),
    Boxed(Box<dyn FnOnce(Result<usize, BackendError>) + Send>),
}

impl IoCompletion {
    /// A completion that runs `done`.
    pub fn new(done: impl FnOnce(Result<usize, BackendError>) + Send + 'static) -> IoCompletion {
        IoCompletion(Kind::Boxed(Box::new(done)))
    }

    pub(super) fn command(done: super::device::CommandCompletion) -> IoCompletion {
        IoCompletion(Kind::Command(done))
    }

    /// Completes the request with the bytes transferred, or the error.
    pub fn complete(self, result: Result<usize, BackendError>) {
        match self.0 {
            Kind::Command(done) => done.run(result),
            Kind::Boxed(done) => done(result),
        }
    }
}

impl fmt::Debug for IoCompletion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Kind::Command(_) => "IoCompletion(command)",
            Kind::Boxed(_) => "IoCompletion(boxed)",
        })
    }
}

/// A disk image as the SCSI emulation sees it.
pub trait ScsiBackend: Send + Sync {
    /// Image size in bytes.
    fn size_bytes(&self) -> u64;
    /// Logical block size reported to the guest.
    fn block_size(&self) -> u32 {
        512
    }
    /// Writes are refused with DATA PROTECT.
    fn read_only(&self) -> bool;
    /// UNMAP and WRITE SAME with UNMAP reach the image as discards.
    fn discard(&self) -> bool;
    /// Starts `request`; `done` is completed once, on the context's dispatching thread.
    ///
    /// # Safety
    ///
    /// Every [`HostBuf`] in `request` must stay valid for reads and writes of its
    /// whole length, and not be accessed by anyone else, until `done` has run.
    unsafe fn submit(&self, request: BackendRequest, done: IoCompletion);
}
