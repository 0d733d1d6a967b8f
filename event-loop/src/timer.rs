//! Timers on CLOCK_MONOTONIC with nanosecond deadlines.

use std::time::Duration;

/// Now on CLOCK_MONOTONIC, in nanoseconds.
pub fn now_ns() -> u64 {
    todo!()
}

/// A one-shot timer on a context. Re-arm it from its callback for periodic use.
/// Dropping it cancels it.
pub struct Timer {
    _todo: (),
}

impl Timer {
    /// Arms the timer to fire at `deadline_ns` (see [`now_ns`]); replaces any earlier
    /// deadline. Any thread; wakes pollers if this deadline is sooner.
    pub fn arm_at(&self, _deadline_ns: u64) {
        todo!()
    }

    /// Arms the timer to fire `after` from now.
    pub fn arm_after(&self, _after: Duration) {
        todo!()
    }

    /// Disarms the timer (it does not fire until armed again). Any thread.
    pub fn cancel(&self) {
        todo!()
    }
}
