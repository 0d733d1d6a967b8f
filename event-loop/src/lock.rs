//! The recursive context lock, handed over in FIFO order.
//!
//! A thread must hold it to dispatch handlers of the context. It is recursive
//! because a handler may itself run a nested poll on the same context (the
//! synchronous block helpers do), exactly as QEMU's `aio_context_acquire` allows.
//!
//! **Fairness rule.** Threads blocked in `lock` form a queue, oldest first. The
//! last `unlock` of the holder does not free the lock when the queue is non-empty:
//! it hands the lock straight to the oldest waiter (owner set to that thread,
//! depth 1) and wakes it. A thread may take a free lock at once only if nobody
//! waits, and the lock is never free while somebody waits. So a saturated iothread
//! that releases the lock around its kernel wait and asks for it again right away
//! queues behind a vCPU that was already waiting, instead of beating it to the
//! lock on every iteration (a waiter used to wait seconds behind a busy iothread).
//! The waiter waits at most for the holders ahead of it in the queue, each for
//! one hold.
//!
//! Hand-off only removes interleavings (it is "release, then the waiter
//! acquires before anyone else"), so everything argued and model-checked for the
//! plain lock in `docs/event-loop.md` still holds.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Condvar, Mutex, MutexGuard};

/// A small per-process number for the calling thread, never 0 (0 means "nobody").
/// Cheaper than `thread::current().id()`, which the hot path would call several
/// times per request.
fn my_token() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static TOKEN: Cell<u64> = const { Cell::new(0) };
    }
    TOKEN.with(|t| {
        if t.get() == 0 {
            t.set(NEXT.fetch_add(1, Relaxed));
        }
        t.get()
    })
}

/// Who holds the lock and who waits for it.
struct Owner {
    thread: Option<u64>,
    /// Threads blocked in `lock`, oldest first. `unlock` hands the lock to the
    /// front one and signals the condvar only if this is non-empty (std's
    /// `notify_all` is a futex syscall even with nobody waiting).
    queue: VecDeque<u64>,
}

/// A recursive FIFO hand-off mutex built from a `Mutex` and a `Condvar` (no
/// unsafe code).
///
/// Two atomics mirror the owner so that the owner's own operations (re-entry,
/// leaving an inner level, "do I hold it?") need no mutex: `holder` is the
/// owner's token (0: none), `depth` its level count. `holder` is written under
/// the mutex only, and `depth` by the owner only (or under the mutex while the
/// lock passes to a thread still asleep in `lock`). A thread reading `holder`
/// relaxed sees its own token exactly when it is the owner: only the owner's own
/// writes and a hand-off *to* it store its token, and it clears it itself before
/// it lets go (coherence: a thread never reads a value older than its own last
/// write to that location).
pub(crate) struct RecursiveLock {
    owner: Mutex<Owner>,
    holder: AtomicU64,
    depth: AtomicUsize,
    /// Signalled when the lock is handed to a queued thread. All waiters wake and
    /// the one it was handed to proceeds; with one iothread and a few vCPUs the
    /// queue is short, so waking all costs the same single futex call.
    handed_over: Condvar,
}

impl RecursiveLock {
    pub(crate) fn new() -> Self {
        RecursiveLock {
            owner: Mutex::new(Owner {
                thread: None,
                queue: VecDeque::new(),
            }),
            holder: AtomicU64::new(0),
            depth: AtomicUsize::new(0),
            handed_over: Condvar::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, Owner> {
        // A panic while holding this short inner mutex cannot leave Owner
        // inconsistent (no user code runs under it and the updates cannot
        // panic halfway), so poisoning is ignored.
        self.owner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the lock: at once if it is ours (one more level) or free (then nobody
    /// waits); otherwise queues behind the threads already waiting and sleeps until
    /// the lock is handed to this thread.
    pub(crate) fn lock(&self) {
        let me = my_token();
        if self.holder.load(Relaxed) == me {
            // Only the owner writes `depth` while it holds the lock: a plain
            // load and store, no locked read-modify-write.
            self.depth.store(self.depth.load(Relaxed) + 1, Relaxed);
            return;
        }
        let mut owner = self.state();
        match owner.thread {
            None => {
                debug_assert!(owner.queue.is_empty(), "free lock with waiters");
                owner.thread = Some(me);
                self.holder.store(me, Relaxed);
                self.depth.store(1, Relaxed);
            }
            Some(_) => {
                owner.queue.push_back(me);
                // `unlock` removes us from the queue when it hands the lock over
                // (and sets `holder` and `depth` for us), so ownership is the only
                // thing to wait for.
                while owner.thread != Some(me) {
                    owner = self
                        .handed_over
                        .wait(owner)
                        .unwrap_or_else(|p| p.into_inner());
                }
                debug_assert_eq!(self.depth.load(Relaxed), 1);
            }
        }
    }

    /// Takes the lock if it is free or already ours; returns whether it did.
    /// Never jumps the queue: the lock is not free while somebody waits.
    pub(crate) fn try_lock(&self) -> bool {
        let me = my_token();
        let mut owner = self.state();
        if owner.thread.is_some_and(|t| t != me) {
            return false;
        }
        owner.thread = Some(me);
        self.holder.store(me, Relaxed);
        self.depth.fetch_add(1, Relaxed);
        true
    }

    /// Releases one level. The last level hands the lock to the oldest waiter, if
    /// any. Panics if this thread does not hold the lock (a bug).
    pub(crate) fn unlock(&self) {
        let me = my_token();
        assert_eq!(
            self.holder.load(Relaxed),
            me,
            "context lock released by a non-owner"
        );
        let depth = self.depth.load(Relaxed);
        if depth > 1 {
            // Owner-only write, as in `lock`.
            self.depth.store(depth - 1, Relaxed);
            return;
        }
        let mut owner = self.state();
        match owner.queue.pop_front() {
            None => {
                owner.thread = None;
                self.holder.store(0, Relaxed);
                self.depth.store(0, Relaxed);
            }
            Some(next) => {
                owner.thread = Some(next);
                self.holder.store(next, Relaxed);
                self.depth.store(1, Relaxed);
                drop(owner);
                self.handed_over.notify_all();
            }
        }
    }

    /// Whether the calling thread holds exactly one level (its next `unlock`
    /// releases the lock).
    pub(crate) fn held_once_by_me(&self) -> bool {
        self.held_by_me() && self.depth.load(Relaxed) == 1
    }

    /// Whether the calling thread holds the lock.
    pub(crate) fn held_by_me(&self) -> bool {
        self.holder.load(Relaxed) == my_token()
    }

    /// Levels held by the owner (tests).
    #[cfg(test)]
    fn depth(&self) -> usize {
        self.depth.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    /// Joins `handles` within a few seconds; on timeout panics with the lock's
    /// state (owner, depth, queue) instead of hanging the test run.
    fn join_all_within<T>(l: &RecursiveLock, handles: Vec<JoinHandle<T>>) -> Vec<T> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !handles.iter().all(|h| h.is_finished()) {
            if Instant::now() > deadline {
                let o = l.state();
                panic!(
                    "threads stuck: {} of {} unfinished; lock owner {:?}, depth {}, queue {:?}",
                    handles.iter().filter(|h| !h.is_finished()).count(),
                    handles.len(),
                    o.thread,
                    l.depth(),
                    o.queue
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    /// Waits (bounded) until `n` threads are queued on `l`.
    fn wait_for_queue(l: &RecursiveLock, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while l.state().queue.len() < n {
            assert!(Instant::now() < deadline, "{n} waiters never queued");
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_holder_that_releases_and_asks_again_queues_behind_the_waiter() {
        // The iothread pattern: release, then at once take it again. The thread
        // that was already waiting must get it first.
        let l = Arc::new(RecursiveLock::new());
        let order = Arc::new(Mutex::new(Vec::new()));
        let (holding_tx, holding_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let (l1, o1) = (l.clone(), order.clone());
        let holder = std::thread::spawn(move || {
            l1.lock();
            holding_tx.send(()).unwrap();
            let _ = release_rx.recv();
            l1.unlock();
            l1.lock();
            o1.lock().unwrap().push("holder again");
            l1.unlock();
        });
        holding_rx.recv().unwrap();
        let (l2, o2) = (l.clone(), order.clone());
        let waiter = std::thread::spawn(move || {
            l2.lock();
            // Handed over with one level; recursion still works.
            l2.lock();
            o2.lock().unwrap().push("waiter");
            l2.unlock();
            assert!(l2.held_by_me());
            l2.unlock();
            assert!(!l2.held_by_me());
        });
        wait_for_queue(&l, 1);
        release_tx.send(()).unwrap();
        join_all_within(&l, vec![holder, waiter]);
        assert_eq!(*order.lock().unwrap(), ["waiter", "holder again"]);
        assert!(l.state().thread.is_none() && l.state().queue.is_empty());
    }

    #[test]
    fn waiters_get_the_lock_in_arrival_order() {
        let l = Arc::new(RecursiveLock::new());
        let order = Arc::new(Mutex::new(Vec::new()));
        l.lock();
        let mut handles = Vec::new();
        for i in 0..4 {
            let (l2, o2) = (l.clone(), order.clone());
            handles.push(std::thread::spawn(move || {
                l2.lock();
                o2.lock().unwrap().push(i);
                l2.unlock();
            }));
            wait_for_queue(&l, i + 1);
        }
        l.unlock();
        join_all_within(&l, handles);
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3]);
    }

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
        wait_for_queue(&l, 1);
        l.unlock();
        join_all_within(&l, vec![h]);
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
