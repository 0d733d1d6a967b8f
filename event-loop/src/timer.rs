//! Timers on CLOCK_MONOTONIC with nanosecond deadlines.
//!
//! The context programs one timerfd (in its epoll set) to the earliest armed
//! deadline. Arming a timer earlier than that reprograms the timerfd at once, so a
//! poller already asleep in the kernel wakes at the new deadline without any
//! eventfd notification, and the readiness is level-triggered: no poller can
//! consume another's wake-up (failure (b) cannot apply to timers).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::context::Shared;
use crate::sys::{coarse_monotonic_ns, monotonic_ns};
use crate::trace::Ev;

/// A disarmed timer's deadline.
pub(crate) const DISARMED: u64 = u64::MAX;

/// Now on CLOCK_MONOTONIC, in nanoseconds.
pub fn now_ns() -> u64 {
    monotonic_ns()
}

/// Now on CLOCK_MONOTONIC_COARSE, in nanoseconds: the last scheduler tick
/// (1-4 ms resolution), a few nanoseconds to read where [`now_ns`] costs tens to
/// hundreds inside a VM. For statistics sampled on every request.
pub fn coarse_now_ns() -> u64 {
    coarse_monotonic_ns()
}

pub(crate) struct TimerInner {
    pub(crate) shared: Arc<Shared>,
    /// Absolute deadline or DISARMED. Any thread stores; the dispatcher CASes it
    /// to DISARMED when it fires (so a concurrent re-arm is not lost).
    pub(crate) deadline: AtomicU64,
    cb: Mutex<Box<dyn FnMut() + Send>>,
}

/// The context's timer list and what the timerfd is programmed to.
pub(crate) struct TimerList {
    pub(crate) timers: Vec<Weak<TimerInner>>,
    /// The timerfd's current deadline (DISARMED if none).
    pub(crate) programmed: u64,
}

/// A one-shot timer on a context. Re-arm it from its callback for periodic use.
/// Dropping it cancels it.
pub struct Timer {
    inner: Arc<TimerInner>,
}

impl Timer {
    pub(crate) fn new(shared: Arc<Shared>, cb: Box<dyn FnMut() + Send>) -> Self {
        let inner = Arc::new(TimerInner {
            shared: shared.clone(),
            deadline: AtomicU64::new(DISARMED),
            cb: Mutex::new(cb),
        });
        shared.lock_timers().timers.push(Arc::downgrade(&inner));
        Timer { inner }
    }

    /// Arms the timer to fire at `deadline_ns` (see [`now_ns`]); replaces any earlier
    /// deadline. Any thread; reprograms the context's timerfd if this is sooner.
    pub fn arm_at(&self, deadline_ns: u64) {
        let deadline_ns = deadline_ns.min(DISARMED - 1);
        self.inner.deadline.store(deadline_ns, Ordering::Release);
        let shared = &self.inner.shared;
        let mut list = shared.lock_timers();
        if deadline_ns < list.programmed {
            list.programmed = deadline_ns;
            shared.program_timerfd(deadline_ns);
        }
    }

    /// Arms the timer to fire `after` from now.
    pub fn arm_after(&self, after: Duration) {
        let ns = u64::try_from(after.as_nanos()).unwrap_or(DISARMED);
        self.arm_at(now_ns().saturating_add(ns));
    }

    /// Disarms the timer (it does not fire until armed again). Any thread.
    pub fn cancel(&self) {
        self.inner.deadline.store(DISARMED, Ordering::Release);
    }

    /// Whether the timer is armed.
    pub fn is_armed(&self) -> bool {
        self.inner.deadline.load(Ordering::Acquire) != DISARMED
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// Runs expired timers (context lock held), then reprograms the timerfd to the
/// earliest remaining deadline. Returns whether any timer ran.
pub(crate) fn run_expired(shared: &Shared) -> bool {
    let now = now_ns();
    let mut due = Vec::new();
    {
        let mut list = shared.lock_timers();
        list.timers.retain(|w| w.strong_count() > 0);
        for t in list.timers.iter().filter_map(Weak::upgrade) {
            let d = t.deadline.load(Ordering::Acquire);
            if d <= now
                && t.deadline
                    .compare_exchange(d, DISARMED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                due.push(t);
            }
        }
    }
    let progress = !due.is_empty();
    for t in due {
        if let Ok(mut cb) = t.cb.try_lock() {
            shared.trace.record(Ev::TimerFire, 0);
            (*cb)();
        } else {
            // Running further up this stack: fire again on the next poll.
            t.deadline.store(now, Ordering::Release);
        }
    }
    let mut list = shared.lock_timers();
    let earliest = list
        .timers
        .iter()
        .filter_map(Weak::upgrade)
        .map(|t| t.deadline.load(Ordering::Acquire))
        .min()
        .unwrap_or(DISARMED);
    if earliest != list.programmed || earliest <= now {
        list.programmed = earliest;
        shared.program_timerfd(earliest);
    }
    progress
}

#[cfg(test)]
mod tests {
    use crate::AioContext;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn earlier_arm_reprograms_later_does_not() {
        let ctx = AioContext::new().unwrap();
        let t = ctx.new_timer(|| {});
        let far = super::now_ns() + 60_000_000_000;
        t.arm_at(far);
        assert_eq!(ctx.shared.lock_timers().programmed, far);
        t.arm_at(far + 1);
        assert_eq!(
            ctx.shared.lock_timers().programmed,
            far,
            "later: no syscall"
        );
        t.arm_at(far - 1);
        assert_eq!(ctx.shared.lock_timers().programmed, far - 1);
    }

    #[test]
    fn a_timer_armed_in_the_past_fires_on_the_next_poll() {
        let ctx = AioContext::new().unwrap();
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        let t = ctx.new_timer(move || {
            n2.fetch_add(1, Ordering::SeqCst);
        });
        t.arm_at(0);
        let _g = ctx.acquire();
        ctx.poll_while(|| n.load(Ordering::SeqCst) == 0);
        assert!(!t.is_armed());
        assert_eq!(ctx.shared.lock_timers().programmed, super::DISARMED);
    }
}
