//! The wake-up protocol core, generic over its atomics so that loom can check the
//! very code the context runs (`tests/loom_notify.rs` instantiates it with loom's
//! atomics; the context uses [`StdAtomics`]).
//!
//! Two counters carry the whole protocol (see `docs/event-loop.md`):
//!
//! * `sleepers` — how many pollers have announced "I may block in the kernel"
//!   and not yet retired. Written by pollers (RMW), read by work publishers.
//! * `epoch` — bumped by every publisher *after* making work pending. Read by
//!   pollers: once before they scan for work (a snapshot) and once more after
//!   announcing; a change means work may have appeared that the scan missed.
//!
//! The store-buffering pair that must not both miss:
//!
//! ```text
//!   poller                                publisher
//!   P1 sleepers += 1                      S1 make work pending; epoch += 1 (Release)
//!   P2 fence(SeqCst)   <---- pairs ---->  S2 fence(SeqCst)
//!   P3 read epoch == snapshot?            S3 read sleepers > 0 ?
//! ```
//!
//! The two SeqCst fences are totally ordered. If P2 precedes S2, S3 sees P1
//! (so the publisher wakes the poller). If S2 precedes P2, P3 sees S1's bump (so
//! the poller does not block). Either way at least one side sees the other.

use std::sync::atomic::{AtomicBool, Ordering};

/// The atomic operations the protocol needs, so that the same code runs on std
/// atomics and on loom's model checker.
pub trait ProtocolAtomics: Send + Sync + 'static {
    /// A 64-bit atomic counter.
    type Counter: Send + Sync;
    /// A new counter holding `v`.
    fn counter(v: u64) -> Self::Counter;
    /// Atomic load.
    fn load(c: &Self::Counter, order: Ordering) -> u64;
    /// Atomic fetch-and-add, returning the old value.
    fn fetch_add(c: &Self::Counter, v: u64, order: Ordering) -> u64;
    /// Atomic fetch-and-sub, returning the old value.
    fn fetch_sub(c: &Self::Counter, v: u64, order: Ordering) -> u64;
    /// A memory fence.
    fn fence(order: Ordering);
}

/// [`ProtocolAtomics`] on `std::sync::atomic`.
pub struct StdAtomics;

impl ProtocolAtomics for StdAtomics {
    type Counter = std::sync::atomic::AtomicU64;
    fn counter(v: u64) -> Self::Counter {
        std::sync::atomic::AtomicU64::new(v)
    }
    fn load(c: &Self::Counter, order: Ordering) -> u64 {
        c.load(order)
    }
    fn fetch_add(c: &Self::Counter, v: u64, order: Ordering) -> u64 {
        c.fetch_add(v, order)
    }
    fn fetch_sub(c: &Self::Counter, v: u64, order: Ordering) -> u64 {
        c.fetch_sub(v, order)
    }
    fn fence(order: Ordering) {
        std::sync::atomic::fence(order)
    }
}

/// The protocol state: would-be sleepers and the work epoch.
pub struct WakeCore<A: ProtocolAtomics> {
    /// Pollers announced as possibly blocking (P1 above). RMW by pollers only.
    sleepers: A::Counter,
    /// Bumped after work is made pending (S1 above). RMW by publishers only.
    epoch: A::Counter,
    /// Test knob for failure (c): when false, fences P2 and S2 are omitted.
    /// Plain configuration, not part of the protocol; read relaxed.
    full_fences: AtomicBool,
}

impl<A: ProtocolAtomics> Default for WakeCore<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: ProtocolAtomics> WakeCore<A> {
    /// A core with no sleepers and epoch 0.
    pub fn new() -> Self {
        WakeCore {
            sleepers: A::counter(0),
            epoch: A::counter(0),
            full_fences: AtomicBool::new(true),
        }
    }

    /// Failure (c) on demand: `false` drops both SeqCst fences (tests only).
    pub fn set_full_fences(&self, on: bool) {
        self.full_fences.store(on, Ordering::Relaxed);
    }

    fn full_fence(&self) {
        if self.full_fences.load(Ordering::Relaxed) {
            A::fence(Ordering::SeqCst);
        }
    }

    /// Poller, before scanning for pending work: the epoch it will compare against.
    /// Acquire pairs with the Release bump in [`Self::publish`], so work published
    /// before this snapshot is visible to the scan that follows.
    pub fn snapshot(&self) -> u64 {
        A::load(&self.epoch, Ordering::Acquire)
    }

    /// Poller, after its scan found nothing and before blocking: announce (P1),
    /// fence (P2, partner: S2 in [`Self::publish`]), re-check the epoch (P3).
    /// Returns whether it may block. The caller must call [`Self::retire`]
    /// after its wait whatever this returns.
    pub fn announce(&self, snapshot: u64) -> bool {
        // P1: Relaxed is enough; ordering against P3 comes from the fence P2.
        A::fetch_add(&self.sleepers, 1, Ordering::Relaxed);
        // P2: full fence; partner S2. Orders P1 before P3 (store -> load).
        self.full_fence();
        // P3: Relaxed; the fence P2 gives the guarantee described in the module doc.
        A::load(&self.epoch, Ordering::Relaxed) == snapshot
    }

    /// Poller, after its wait: no longer a would-be sleeper. Relaxed: a publisher
    /// that still sees us only sends a spurious wake-up, which is harmless.
    pub fn retire(&self) {
        A::fetch_sub(&self.sleepers, 1, Ordering::Relaxed);
    }

    /// Publisher, after making work pending (S1 is the bump here): returns the
    /// number of would-be sleepers it saw; if non-zero the caller must wake them.
    pub fn publish(&self) -> u64 {
        // S1: Release pairs with the Acquire in `snapshot` (data visibility).
        A::fetch_add(&self.epoch, 1, Ordering::Release);
        // S2: full fence; partner P2 in `announce`. Orders S1 before S3.
        self.full_fence();
        // S3: Relaxed; see the module doc for why S2/P2 make it sufficient.
        A::load(&self.sleepers, Ordering::Relaxed)
    }

    /// Publisher that holds the context lock and will scan for work itself before
    /// it sleeps or releases the lock (see `Shared::publish_quiet`): S1 only. The
    /// bump still stops a poller between its snapshot and its re-check (P3) from
    /// sleeping; nobody already asleep is told.
    pub fn publish_quiet(&self) {
        A::fetch_add(&self.epoch, 1, Ordering::Release);
    }

    /// Current would-be sleepers (diagnostics only).
    pub fn sleepers(&self) -> u64 {
        A::load(&self.sleepers, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_after_announce_sees_the_sleeper() {
        let core = WakeCore::<StdAtomics>::new();
        let snap = core.snapshot();
        assert!(core.announce(snap));
        assert_eq!(core.publish(), 1);
        core.retire();
        assert_eq!(core.publish(), 0);
    }

    #[test]
    fn announce_after_publish_refuses_to_block() {
        let core = WakeCore::<StdAtomics>::new();
        let snap = core.snapshot();
        assert_eq!(core.publish(), 0);
        assert!(!core.announce(snap));
        core.retire();
        assert_eq!(core.sleepers(), 0);
    }
}
