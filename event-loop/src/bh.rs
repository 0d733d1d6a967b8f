//! Bottom halves: callbacks scheduled from any thread, run once on the context.

/// A shared handle to a bottom half. `Send + Sync + Clone`; dropping the last
/// handle deletes the BH (a pending run is dropped too).
#[derive(Clone)]
pub struct BottomHalf {
    _todo: (),
}

impl BottomHalf {
    /// Makes the BH pending and wakes pollers. Scheduling twice before it runs runs
    /// it once. Any thread; also from inside the BH itself (it then runs again).
    pub fn schedule(&self) {
        todo!()
    }

    /// Makes the BH pending without forcing an immediate wake-up: it runs on the next
    /// poll for another reason, or within 10 ms if a poller sleeps.
    pub fn schedule_idle(&self) {
        todo!()
    }

    /// Makes a pending BH not pending (it does not run for this scheduling). Any thread.
    pub fn cancel(&self) {
        todo!()
    }
}
