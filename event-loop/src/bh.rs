//! Bottom halves: callbacks scheduled from any thread, run once on the context.
//!
//! A BH's state is one atomic flag word; the context keeps a queue with at most one
//! entry per BH (the `QUEUED` bit). Scheduling sets `SCHEDULED` (and `QUEUED`,
//! pushing the BH if it was not queued), then publishes through the wake-up
//! protocol ([`crate::notify`]). Dispatch clears the flags *before* running the
//! callback, so a BH that reschedules itself from its own callback runs again.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use crate::context::Shared;
use crate::trace::Ev;

/// The BH is pending.
pub(crate) const SCHEDULED: u8 = 1;
/// The pending run is idle (does not wake a sleeping poller).
pub(crate) const IDLE: u8 = 2;
/// The BH has an entry in the context's queue.
pub(crate) const QUEUED: u8 = 4;
/// The last user handle is gone; never run again.
pub(crate) const DELETED: u8 = 8;

/// The callback: user BHs are `FnMut` (not re-entrant: a nested poll inside the
/// callback leaves its next run pending); internal BHs may be re-entrant `Fn`.
pub(crate) enum BhCallback {
    Mut(Mutex<Box<dyn FnMut() + Send>>),
    Reentrant(Box<dyn Fn() + Send + Sync>),
}

/// The shared part of a BH, referenced by handles and by the context's queue.
pub(crate) struct BhInner {
    pub(crate) shared: Arc<Shared>,
    pub(crate) id: u64,
    /// SCHEDULED | IDLE | QUEUED | DELETED. Any thread, RMW only (AcqRel).
    pub(crate) flags: AtomicU8,
    pub(crate) cb: BhCallback,
}

/// Owns a BH for the user handles; when the last one drops, the BH is deleted.
struct BhHandle {
    inner: Arc<BhInner>,
}

impl Drop for BhHandle {
    fn drop(&mut self) {
        self.inner.flags.fetch_or(DELETED, Ordering::AcqRel);
        self.inner
            .flags
            .fetch_and(!(SCHEDULED | IDLE), Ordering::AcqRel);
    }
}

/// A shared handle to a bottom half. `Send + Sync + Clone`; dropping the last
/// handle deletes the BH (a pending run is dropped too).
#[derive(Clone)]
pub struct BottomHalf {
    handle: Arc<BhHandle>,
}

impl BottomHalf {
    pub(crate) fn new(inner: Arc<BhInner>) -> Self {
        BottomHalf {
            handle: Arc::new(BhHandle { inner }),
        }
    }

    /// Makes the BH pending and wakes pollers. Scheduling twice before it runs runs
    /// it once. Any thread; also from inside the BH itself (it then runs again).
    pub fn schedule(&self) {
        self.enqueue(false);
    }

    /// Makes the BH pending without forcing an immediate wake-up (no eventfd write):
    /// it runs when a poller next iterates for another reason; a poller that starts
    /// to wait while it is pending waits at most 10 ms. A poller already asleep with
    /// no timeout is not woken (as QEMU's idle BHs). Any thread.
    pub fn schedule_idle(&self) {
        self.enqueue(true);
    }

    /// Makes a pending BH not pending (it does not run for this scheduling). Any thread.
    pub fn cancel(&self) {
        self.handle
            .inner
            .flags
            .fetch_and(!(SCHEDULED | IDLE), Ordering::AcqRel);
    }

    /// Whether the BH is pending (diagnostics and tests).
    pub fn is_scheduled(&self) -> bool {
        self.handle.inner.flags.load(Ordering::Acquire) & SCHEDULED != 0
    }

    /// `schedule` by the context-lock holder that will poll the context before it
    /// drops `held` (the pool's inline jobs, work a dispatch queues for its own
    /// next pass): published without a wake-up (see `Shared::publish_quiet`); if
    /// the holder lets the lock go without polling, the release wakes the
    /// sleepers after all. Panics if `held` guards another context.
    pub fn schedule_quiet(&self, held: &crate::ContextGuard<'_>) {
        assert!(
            held.guards(&self.handle.inner.shared),
            "schedule_quiet with another context's guard"
        );
        self.enqueue_as(false, true);
    }

    fn enqueue(&self, idle: bool) {
        self.enqueue_as(idle, false);
    }

    fn enqueue_as(&self, idle: bool, quiet: bool) {
        let inner = &self.handle.inner;
        let mut old = inner.flags.load(Ordering::Acquire);
        loop {
            let mut new = old | SCHEDULED | QUEUED;
            if idle {
                // Idle only if it was not already pending urgently.
                if old & SCHEDULED == 0 {
                    new |= IDLE;
                }
            } else {
                new &= !IDLE;
            }
            match inner
                .flags
                .compare_exchange_weak(old, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(cur) => old = cur,
            }
        }
        let shared = &inner.shared;
        if old & QUEUED == 0 {
            shared.push_bh(inner.clone());
        }
        shared.trace.record(Ev::BhSchedule, inner.id as i64);
        // Already pending urgently: the scheduler that made it so published, and the
        // dispatcher clears SCHEDULED before running the callback, so this request
        // is covered by that run. Otherwise publish (and wake) now.
        let already_urgent = old & SCHEDULED != 0 && old & IDLE == 0;
        if !idle && !already_urgent {
            if quiet {
                shared.publish_quiet();
            } else {
                shared.publish_and_wake();
            }
        }
    }
}

thread_local! {
    /// This thread's empty batch buffer, swapped into the context's queue.
    static SPARE: RefCell<VecDeque<Arc<BhInner>>> = const { RefCell::new(VecDeque::new()) };
}

/// Runs every queued BH once (context lock held), and the unrun rest of the
/// batches of dispatches further up this thread's stack (`Shared::bh_slices`).
/// Returns whether any ran.
pub(crate) fn dispatch_queue(shared: &Shared) -> bool {
    shared.quiet_work_scanned();
    // A nested dispatch further down this stack finds the spare taken and starts
    // from an empty one: correct, only not allocation-free.
    let mut batch = SPARE.with(|s| s.take());
    shared.swap_bh_queue(&mut batch);
    let only = if batch.is_empty() {
        // Nothing new; the loop below still runs what outer batches left.
        None
    } else if batch.len() == 1 && shared.open_slices.load(Ordering::Relaxed) == 0 {
        batch.pop_front()
    } else {
        let mut slices = lock_slices(shared);
        slices.push_back(std::mem::take(&mut batch));
        shared.open_slices.store(slices.len(), Ordering::Relaxed);
        None
    };
    recycle(batch);
    let mut progress = false;
    if let Some(bh) = only {
        // A lone BH with no outer batch unfinished (the common case: one
        // completion BH per pass): no later BH of this batch can be stranded
        // behind a nested poll in its callback, so it needs no slice, which
        // saves a lock round or two. The loop below still runs whatever a
        // nested dispatch in its callback left unfinished (it drains its own
        // slices unless it unwound, its panic caught inside the callback).
        progress = run_one(shared, &bh);
    }
    // The count saves the common lone BH two rounds of the slices' mutex.
    while shared.open_slices.load(Ordering::Relaxed) > 0 {
        let Some(bh) = next_from_slices(shared) else {
            break;
        };
        progress |= run_one(shared, &bh);
    }
    progress
}

fn lock_slices(shared: &Shared) -> std::sync::MutexGuard<'_, VecDeque<VecDeque<Arc<BhInner>>>> {
    shared.bh_slices.lock().unwrap_or_else(|p| p.into_inner())
}

/// The next BH of the oldest unfinished batch; emptied batches are dropped.
fn next_from_slices(shared: &Shared) -> Option<Arc<BhInner>> {
    let mut slices = lock_slices(shared);
    while let Some(front) = slices.front_mut() {
        if let Some(bh) = front.pop_front() {
            return Some(bh);
        }
        if let Some(empty) = slices.pop_front() {
            shared.open_slices.store(slices.len(), Ordering::Relaxed);
            recycle(empty);
        }
    }
    None
}

/// Keeps the larger of an emptied batch buffer and this thread's spare.
fn recycle(empty: VecDeque<Arc<BhInner>>) {
    SPARE.with(|s| {
        if s.borrow().capacity() < empty.capacity() {
            *s.borrow_mut() = empty;
        }
    });
}

/// Runs one BH taken from a batch, if it is still pending. Returns whether it ran.
fn run_one(shared: &Shared, bh: &Arc<BhInner>) -> bool {
    // Clear QUEUED with the rest so a reschedule from the callback re-queues it.
    let old = bh
        .flags
        .fetch_and(!(SCHEDULED | IDLE | QUEUED), Ordering::AcqRel);
    if old & DELETED != 0 || old & SCHEDULED == 0 {
        return false;
    }
    match &bh.cb {
        BhCallback::Reentrant(f) => {
            shared.trace.record(Ev::BhDispatch, bh.id as i64);
            f();
            true
        }
        BhCallback::Mut(m) => match m.try_lock() {
            Ok(mut f) => {
                shared.trace.record(Ev::BhDispatch, bh.id as i64);
                (*f)();
                true
            }
            Err(_) => {
                // Running further up this stack (a nested poll inside its own
                // callback): leave the request pending for after it returns.
                let prev = bh
                    .flags
                    .fetch_or(SCHEDULED | QUEUED | (old & IDLE), Ordering::AcqRel);
                if prev & QUEUED == 0 {
                    shared.push_bh(bh.clone());
                }
                false
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AioContext;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn schedule_after_idle_upgrades_and_publishes_once() {
        let ctx = AioContext::new().unwrap();
        let bh = ctx.new_bh("x", || {});
        let e0 = ctx.shared.core.snapshot();
        bh.schedule_idle();
        assert_eq!(
            ctx.shared.core.snapshot(),
            e0,
            "idle schedule does not publish"
        );
        bh.schedule();
        assert_eq!(ctx.shared.core.snapshot(), e0 + 1);
        bh.schedule();
        assert_eq!(
            ctx.shared.core.snapshot(),
            e0 + 1,
            "already pending: no publish"
        );
        assert_eq!(ctx.shared.take_bh_queue().len(), 1, "queued once");
    }

    #[test]
    fn dispatch_runs_a_rescheduled_bh_on_the_next_pass_only() {
        let ctx = AioContext::new().unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let slot: Arc<Mutex<Option<BottomHalf>>> = Arc::default();
        let (r, s) = (runs.clone(), slot.clone());
        let bh = ctx.new_bh("again", move || {
            r.fetch_add(1, Ordering::SeqCst);
            if let Some(b) = s.lock().unwrap().as_ref() {
                b.schedule();
            }
        });
        *slot.lock().unwrap() = Some(bh.clone());
        bh.schedule();
        let _g = ctx.acquire();
        assert!(dispatch_queue(&ctx.shared));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(bh.is_scheduled());
        slot.lock().unwrap().take();
        assert!(dispatch_queue(&ctx.shared));
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert!(!dispatch_queue(&ctx.shared));
    }
}
