//! Synchronous helpers: submit the async request, then run nested blocking polls on
//! the backend's context until it completes.
//!
//! Callable from any thread; they take the (recursive) context lock for the whole
//! wait, so a caller that already holds it (a vCPU in a device handler, a callback on
//! the context) may call them too. This is the path of the original hang: the
//! iothread may be asleep in its own poll of the same context while this thread
//! polls it, and the pool completes requests from a third thread.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::backend::{IoResult, WriteMode, ZeroMode};
use crate::engine::{Completion, Request, Segments};
use crate::{BlockBackend, BlockError, IoVec};

/// Where the completion leaves the result for the waiter: on the waiter's
/// stack, for the whole wait. No `Arc` and no mutex: the synchronous path runs
/// for every flash write, and each shared count or lock round is a locked
/// instruction the plain `pwrite(2)` it is compared with does not pay.
struct Slot<'a> {
    /// The backend's in-flight count, which the completion decrements (a
    /// `drain` in a callback that our own nested poll runs must see this
    /// request finish, so the count cannot wait for our poll to return).
    in_flight: &'a AtomicUsize,
    /// Set (Release) after `result` is written; the waiter reads `result` only
    /// after seeing it (Acquire).
    done: AtomicBool,
    result: UnsafeCell<Option<IoResult>>,
}

impl Slot<'_> {
    fn take(&self) -> IoResult {
        assert!(
            self.done.load(Ordering::Acquire),
            "result taken before done"
        );
        // SAFETY: `done` is set (Acquire pairs with `fill`'s Release), so the
        // one writer has finished, and nobody writes again: the completion ran.
        unsafe { &mut *self.result.get() }
            .take()
            .expect("completion stored before done was set")
    }
}

/// The completion's pointer to the waiter's [`Slot`].
///
/// Completions run only under the context lock (the pool's workers deliver
/// their own only when they can take it, the io_uring reap is an fd handler,
/// refused requests go through the pool's BH), and the waiter holds that lock
/// for the whole wait: so `fill` runs on the waiter's own thread, inside its
/// nested poll, and the slot cannot be freed under it. Debug builds check it.
struct SlotPtr {
    slot: *const Slot<'static>,
    #[cfg(debug_assertions)]
    waiter: std::thread::ThreadId,
}

// SAFETY: the pointer is only dereferenced by `fill`, which (see above) runs on
// the waiter's thread while the slot lives; `Send` is needed only because
// completions are `Send` boxes in general.
unsafe impl Send for SlotPtr {}

impl SlotPtr {
    /// Stores the result and wakes the waiter's condition. Consumes the pointer:
    /// a completion runs once.
    fn fill(self, result: IoResult) {
        #[cfg(debug_assertions)]
        debug_assert_eq!(
            std::thread::current().id(),
            self.waiter,
            "a synchronous request completed off its waiter's thread"
        );
        // SAFETY: the slot outlives the request: `run_sync` returns only after
        // `done` is set, the last access here, and it aborts the process rather
        // than unwind while the request is in flight (`InFlightGuard`).
        let slot = unsafe { &*self.slot };
        // The pointer's job ends here: no abort on drop (see `Drop`).
        std::mem::forget(self);
        // SAFETY: only this call writes `result`, and the waiter reads it only
        // after the Release store of `done` below.
        unsafe { *slot.result.get() = Some(result) };
        slot.in_flight.fetch_sub(1, Ordering::AcqRel);
        slot.done.store(true, Ordering::Release);
    }
}

impl Drop for SlotPtr {
    /// A completion dropped without running would leave its waiter polling
    /// forever: fail loudly instead (no engine does that; this names the bug).
    fn drop(&mut self) {
        eprintln!(
            "block: a synchronous request's completion was dropped without running; aborting"
        );
        std::process::abort();
    }
}

/// Aborts the process if a synchronous wait unwinds while its request still runs:
/// the kernel or a worker could otherwise write into a freed stack buffer (and the
/// completion into the freed slot).
struct InFlightGuard<'a>(&'a AtomicBool);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if !self.0.load(Ordering::Acquire) {
            eprintln!("block: synchronous request abandoned while in flight; aborting");
            std::process::abort();
        }
    }
}

impl BlockBackend {
    /// Submits `req` and waits for its completion in nested polls.
    fn run_sync(&self, req: Request) -> IoResult {
        let ctx = self.context();
        let _lock = ctx.acquire();
        let slot = Slot {
            in_flight: self.in_flight_count(),
            done: AtomicBool::new(false),
            result: UnsafeCell::new(None),
        };
        // Counted in flight as `counted` does, without its `Arc` of the count:
        // the slot points at it.
        self.in_flight_count().fetch_add(1, Ordering::AcqRel);
        let target = SlotPtr {
            slot: std::ptr::from_ref(&slot).cast::<Slot<'static>>(),
            #[cfg(debug_assertions)]
            waiter: std::thread::current().id(),
        };
        let done = Completion::new(move |result| target.fill(result));
        let guard = InFlightGuard(&slot.done);
        // We wait for this request right away: no batching for it (and aio=threads
        // runs it on this thread, see `engine::threads`).
        crate::engine::submit_at_once(|| self.submit(req, done));
        ctx.poll_while(|| !slot.done.load(Ordering::Acquire));
        drop(guard);
        slot.take()
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
