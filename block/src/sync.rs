//! Synchronous helpers: submit the async request, then run nested blocking polls on
//! the backend's context until it completes.
//!
//! Callable from any thread; they take the (recursive) context lock for the whole
//! wait, so a caller that already holds it (a vCPU in a device handler, a callback on
//! the context) may call them too. This is the path of the original hang: the
//! iothread may be asleep in its own poll of the same context while this thread
//! polls it, and the pool completes requests from a third thread.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::backend::{IoResult, WriteMode, ZeroMode};
use crate::engine::{Request, Segments};
use crate::{BlockBackend, BlockError, IoVec};

/// Aborts the process if a synchronous wait unwinds while its request still runs:
/// the kernel or a worker could otherwise write into a freed stack buffer.
struct InFlightGuard<'a>(&'a Slot);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if !self.0.done.load(Ordering::Acquire) {
            eprintln!("block: synchronous request abandoned while in flight; aborting");
            std::process::abort();
        }
    }
}

/// Where the completion leaves the result for the waiter.
#[derive(Default)]
struct Slot {
    done: AtomicBool,
    result: Mutex<Option<IoResult>>,
}

thread_local! {
    /// This thread's slot for its next synchronous request: reused, so a
    /// request allocates no slot (flash writes come thousands at a time). A
    /// nested synchronous request (from a callback run by the outer one's
    /// poll) finds it taken and allocates its own.
    static SPARE_SLOT: Cell<Option<Arc<Slot>>> = const { Cell::new(None) };
}

fn take_slot() -> Arc<Slot> {
    SPARE_SLOT.take().unwrap_or_default()
}

/// Keeps `slot` for the next request. The completion has always dropped its
/// clone by now (completions run only under the context lock, which the
/// waiter holds throughout, so on the waiter's own thread, and the callback's
/// box is consumed as it runs); `Arc::get_mut` checks that rather than
/// assuming it.
fn give_back(mut slot: Arc<Slot>) {
    if let Some(only_ours) = Arc::get_mut(&mut slot) {
        *only_ours.done.get_mut() = false;
        SPARE_SLOT.set(Some(slot));
    }
}

impl BlockBackend {
    /// Submits `req` and waits for its completion in nested polls.
    fn run_sync(&self, req: Request) -> IoResult {
        let ctx = self.context();
        let _lock = ctx.acquire();
        let slot = take_slot();
        let writer = Arc::clone(&slot);
        let done = self.counted(move |result| {
            *writer.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
            writer.done.store(true, Ordering::Release);
        });
        // We wait for this request right away: no batching for it (and aio=threads
        // runs it on this thread, see `engine::threads`).
        crate::engine::submit_at_once(|| self.submit(req, done));
        let guard = InFlightGuard(&slot);
        ctx.poll_while(|| !slot.done.load(Ordering::Acquire));
        drop(guard);
        let result = slot.result.lock().unwrap_or_else(|p| p.into_inner()).take();
        give_back(slot);
        result.expect("completion stored before done was set")
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn pread(&self, offset: u64, buf: &mut [u8]) -> IoResult {
        // SAFETY: `buf` outlives the request: run_sync returns only after the
        // completion ran (or aborts the process).
        let iov = unsafe { IoVec::new(buf.as_mut_ptr(), buf.len()) };
        self.run_sync(Request::Read {
            offset,
            iov: Segments::One(iov),
        })
    }

    /// Writes `buf` at `offset`; returns when the data is in the file.
    pub fn pwrite(&self, offset: u64, buf: &[u8]) -> IoResult {
        self.pwrite_mode(offset, buf, WriteMode::Normal)
    }

    /// Writes `buf` at `offset`; returns when the data is on stable storage.
    pub fn pwrite_fua(&self, offset: u64, buf: &[u8]) -> IoResult {
        self.pwrite_mode(offset, buf, WriteMode::Fua)
    }

    fn pwrite_mode(&self, offset: u64, buf: &[u8], mode: WriteMode) -> IoResult {
        // SAFETY: as in `pread`; the memory is only read by a write.
        let iov = unsafe { IoVec::new(buf.as_ptr().cast_mut(), buf.len()) };
        self.run_sync(Request::Write {
            offset,
            iov: Segments::One(iov),
            fua: mode == WriteMode::Fua,
        })
    }

    /// Flushes completed writes to stable storage.
    pub fn flush(&self) -> Result<(), BlockError> {
        self.run_sync(Request::Flush).map(|_| ())
    }

    /// Discards a range and waits.
    pub fn discard(&self, offset: u64, len: u64) -> IoResult {
        self.run_sync(Request::Discard { offset, len })
    }

    /// Zeroes a range and waits.
    pub fn write_zeroes(&self, offset: u64, len: u64, mode: ZeroMode) -> IoResult {
        let unmap = mode == ZeroMode::MayUnmap && self.supports_discard();
        self.run_sync(Request::WriteZeroes { offset, len, unmap })
    }

    /// Waits in nested polls until no request of this backend is in flight.
    pub fn drain(&self) {
        let ctx = Arc::clone(self.context());
        let _lock = ctx.acquire();
        ctx.poll_while(|| self.in_flight() > 0);
    }
}
