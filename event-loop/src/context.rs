//! The `AioContext`: the event loop's state, its lock, and `poll`.

use std::os::unix::io::RawFd;
use std::sync::Arc;

use crate::{BottomHalf, Error, ThreadPool, Timer};

/// A handler run when an fd becomes readable or writable. Runs on whichever thread
/// polls the context, with the context lock held.
pub type FdHandler = Box<dyn FnMut() + Send>;

/// The event loop. Always shared as `Arc<AioContext>`; `Send + Sync`.
pub struct AioContext {
    _todo: (),
}

/// Proof that this thread holds the context lock. Dropping it releases one level
/// of the (recursive) lock.
pub struct ContextGuard<'a> {
    _ctx: &'a AioContext,
}

impl AioContext {
    /// Creates a context with its epoll instance and notifier eventfd.
    pub fn new() -> Result<Arc<AioContext>, Error> {
        todo!()
    }

    /// The context lock: recursive (the same thread may take it again). A thread must
    /// hold it to dispatch handlers; nested pollers hold it for the whole nested poll.
    pub fn acquire(&self) -> ContextGuard<'_> {
        todo!()
    }

    /// One iteration: dispatch ready fd handlers, BHs and expired timers; if
    /// `blocking` and nothing was ready, wait in the kernel until something is.
    /// Returns whether progress was made (a handler, BH or timer ran).
    ///
    /// Caller holds the context lock (nested use from any thread).
    pub fn poll(&self, _blocking: bool) -> bool {
        todo!()
    }

    /// Nested wait helper (like QEMU's `AIO_WAIT_WHILE`): while `cond()` is true,
    /// `poll(true)`. Caller holds the context lock.
    pub fn poll_while(&self, _cond: impl FnMut() -> bool) {
        todo!()
    }

    /// Creates a bottom half that runs `cb` on this context. Any thread may call it.
    pub fn new_bh(
        self: &Arc<Self>,
        _name: &'static str,
        _cb: impl FnMut() + Send + 'static,
    ) -> BottomHalf {
        todo!()
    }

    /// Sets (or with both `None`, removes) the read/write handlers of `fd`. Any
    /// thread may call it, also from inside a handler; pollers are woken so that the
    /// new interest takes effect.
    pub fn set_fd_handler(
        &self,
        _fd: RawFd,
        _read: Option<FdHandler>,
        _write: Option<FdHandler>,
    ) -> Result<(), Error> {
        todo!()
    }

    /// Removes both handlers of `fd` (no-op if it has none). Any thread.
    pub fn remove_fd_handler(&self, _fd: RawFd) {
        todo!()
    }

    /// Creates an unarmed timer that runs `cb` on this context after its deadline
    /// (CLOCK_MONOTONIC, see [`crate::now_ns`]).
    pub fn new_timer(self: &Arc<Self>, _cb: impl FnMut() + Send + 'static) -> Timer {
        todo!()
    }

    /// Wakes every poller of this context that is (or is about to be) asleep in the
    /// kernel. Any thread; writes the eventfd only if someone could be sleeping.
    pub fn notify(&self) {
        todo!()
    }

    /// The context's worker thread pool (created on first use; workers start lazily).
    pub fn thread_pool(self: &Arc<Self>) -> &ThreadPool {
        todo!()
    }

    /// The per-context trace ring as text, oldest first, newest last.
    pub fn trace_dump(&self) -> String {
        todo!()
    }

    /// Turns a test-only fault on or off (feature `fault-knobs`; positive controls).
    #[cfg(feature = "fault-knobs")]
    pub fn set_fault(&self, _fault: crate::Fault, _on: bool) {
        todo!()
    }
}
