//! The recursive context lock.
//!
//! A thread must hold it to dispatch handlers of the context. It is recursive
//! because a handler may itself run a nested poll on the same context (the
//! synchronous block helpers do), exactly as QEMU's `aio_context_acquire` allows.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::{self, ThreadId};

/// Who holds the lock and how many times.
struct Owner {
    thread: Option<ThreadId>,
    depth: usize,
    /// Threads blocked in `lock`; unlock signals the condvar only if non-zero
    /// (std's `notify_one` is a futex syscall even with nobody waiting).
    waiters: usize,
}

/// A recursive mutex built from a `Mutex` and a `Condvar` (no unsafe code).
pub(crate) struct RecursiveLock {
    owner: Mutex<Owner>,
    released: Condvar,
}

impl RecursiveLock {
    pub(crate) fn new() -> Self {
        RecursiveLock {
            owner: Mutex::new(Owner {
                thread: None,
                depth: 0,
                waiters: 0,
            }),
            released: Condvar::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, Owner> {
        // A panic while holding this short inner mutex cannot leave Owner
        // inconsistent (every update is a single assignment pair), so poisoning is ignored.
        self.owner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the lock, waiting if another thread holds it.
    pub(crate) fn lock(&self) {
        let me = thread::current().id();
        let mut owner = self.state();
        while owner.thread.is_some_and(|t| t != me) {
            owner.waiters += 1;
            owner = self.released.wait(owner).unwrap_or_else(|p| p.into_inner());
            owner.waiters -= 1;
        }
        owner.thread = Some(me);
        owner.depth += 1;
    }

    /// Takes the lock if it is free or already ours; returns whether it did.
    #[cfg(test)]
    pub(crate) fn try_lock(&self) -> bool {
        let me = thread::current().id();
        let mut owner = self.state();
        if owner.thread.is_some_and(|t| t != me) {
            return false;
        }
        owner.thread = Some(me);
        owner.depth += 1;
        true
    }

    /// Releases one level. Panics if this thread does not hold the lock (a bug).
    pub(crate) fn unlock(&self) {
        let me = thread::current().id();
        let mut owner = self.state();
        assert_eq!(
            owner.thread,
            Some(me),
            "context lock released by a non-owner"
        );
        owner.depth -= 1;
        if owner.depth == 0 {
            owner.thread = None;
            let wake = owner.waiters > 0;
            drop(owner);
            if wake {
                self.released.notify_one();
            }
        }
    }

    /// Whether the calling thread holds the lock.
    pub(crate) fn held_by_me(&self) -> bool {
        self.state().thread == Some(thread::current().id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn same_thread_may_take_it_again() {
        let l = RecursiveLock::new();
        l.lock();
        l.lock();
        assert!(l.held_by_me());
        l.unlock();
        assert!(l.held_by_me());
        l.unlock();
        assert!(!l.held_by_me());
    }

    #[test]
    fn a_blocked_thread_is_woken_by_the_last_release() {
        let l = Arc::new(RecursiveLock::new());
        l.lock();
        let l2 = l.clone();
        let h = std::thread::spawn(move || {
            l2.lock();
            l2.unlock();
        });
        // Let it block (not required for correctness, just for coverage).
        while l.state().waiters == 0 {
            std::thread::yield_now();
        }
        l.unlock();
        h.join().unwrap();
        assert!(!l.held_by_me());
    }

    #[test]
    fn other_thread_is_excluded_until_fully_released() {
        let l = Arc::new(RecursiveLock::new());
        l.lock();
        l.lock();
        let l2 = l.clone();
        let h = std::thread::spawn(move || l2.try_lock());
        assert!(!h.join().unwrap());
        l.unlock();
        l.unlock();
        let l2 = l.clone();
        let h = std::thread::spawn(move || {
            let ok = l2.try_lock();
            l2.unlock();
            ok
        });
        assert!(h.join().unwrap());
    }
}
