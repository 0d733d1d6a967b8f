//! loom checks of the wake-up protocol core (`event_loop::notify::WakeCore`), the
//! very code the context runs, instantiated with loom's atomics and fences.
//!
//! * `store_buffering_*`: one poller, one publisher. Property: never both "the
//!   poller blocks" and "the publisher skips the wake-up" (failure (c) when the
//!   fences are dropped, which loom must catch).
//! * `two_pollers_*`: the iothread announces and blocks; a nested poller runs a
//!   non-blocking poll; a scheduler publishes one BH. Property at the end: if the
//!   iothread is asleep and the BH still pending, the notifier is still readable
//!   (failure (b) when the nested poll clears it after its scan).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;

use event_loop::notify::{ProtocolAtomics, WakeCore};
use loom::sync::atomic::{AtomicBool, AtomicU64};
use loom::sync::{Arc, Mutex};
use loom::thread;

struct LoomAtomics;

impl ProtocolAtomics for LoomAtomics {
    type Counter = AtomicU64;
    fn counter(v: u64) -> AtomicU64 {
        AtomicU64::new(v)
    }
    fn load(c: &AtomicU64, order: Ordering) -> u64 {
        c.load(order)
    }
    fn fetch_add(c: &AtomicU64, v: u64, order: Ordering) -> u64 {
        c.fetch_add(v, order)
    }
    fn fetch_sub(c: &AtomicU64, v: u64, order: Ordering) -> u64 {
        c.fetch_sub(v, order)
    }
    fn fence(order: Ordering) {
        loom::sync::atomic::fence(order)
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

/// Runs a model that must fail, and checks it failed with `expected` (not some
/// other loom error).
fn expect_violation(f: impl FnOnce(), expected: &str) {
    let err = catch_unwind(AssertUnwindSafe(f)).expect_err("loom found no violation");
    let msg = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(msg.contains(expected), "unexpected failure: {msg}");
}

fn store_buffering(full_fences: bool) {
    model(move || {
        let core = Arc::new(WakeCore::<LoomAtomics>::new());
        core.set_full_fences(full_fences);
        // The "work": a BH made pending (the queue push in the real code).
        let pending = Arc::new(AtomicBool::new(false));
        let (c, p) = (core.clone(), pending.clone());
        let poller = thread::spawn(move || {
            let snap = c.snapshot(); // prepare_and_wait: snapshot
            if p.load(Ordering::Acquire) {
                return false; // pending_bhs(): work seen, timeout 0
            }
            c.announce(snap) // announce: true = blocks in epoll_wait
        });
        pending.store(true, Ordering::Release); // BottomHalf::enqueue: push
        let woke = core.publish() > 0; // publish_and_wake: write the eventfd?
        let blocked = poller.join().unwrap();
        assert!(
            !blocked || woke,
            "lost wake-up: poller blocked, publisher skipped"
        );
    });
}

#[test]
fn store_buffering_with_full_fences_never_loses_a_wakeup() {
    store_buffering(true);
}

#[test]
fn store_buffering_without_fences_is_caught_by_loom() {
    // Failure (c): without the fences both sides may read the other's old value.
    expect_violation(|| store_buffering(false), "lost wake-up");
}

fn two_pollers(nested_clears_after_scan: bool) {
    model(move || {
        let core = Arc::new(WakeCore::<LoomAtomics>::new());
        let pending = Arc::new(AtomicBool::new(false));
        let efd = Arc::new(Mutex::new(0u64)); // the notifier eventfd's counter
        let iothread_asleep = Arc::new(AtomicBool::new(false));

        // The iothread: one prepare/wait; "asleep" if it would block with efd == 0.
        let (c, p, e, asleep) = (
            core.clone(),
            pending.clone(),
            efd.clone(),
            iothread_asleep.clone(),
        );
        let io = thread::spawn(move || {
            let snap = c.snapshot();
            if p.load(Ordering::Acquire) {
                return;
            }
            if c.announce(snap) && *e.lock().unwrap() == 0 {
                // In epoll_wait; stays announced (it never retires while asleep).
                asleep.store(true, Ordering::SeqCst);
            } else {
                c.retire();
            }
        });

        // The nested poller: one non-blocking poll under the context lock.
        let (p, e) = (pending.clone(), efd.clone());
        let nested = thread::spawn(move || {
            let scan = |p: &AtomicBool| p.swap(false, Ordering::AcqRel); // dispatch BHs
            if nested_clears_after_scan {
                scan(&p);
                *e.lock().unwrap() = 0; // failure (b): clears after the scan
            } else {
                // AioContext::dispatch: NOTIFIER_TOKEN => clear_notifier() ...
                *e.lock().unwrap() = 0;
                scan(&p); // ... then bh::dispatch_queue
            }
        });

        // A scheduler: make the BH pending, publish, wake sleepers.
        pending.store(true, Ordering::Release);
        if core.publish() > 0 {
            *efd.lock().unwrap() += 1;
        }
        io.join().unwrap();
        nested.join().unwrap();
        if iothread_asleep.load(Ordering::SeqCst) && pending.load(Ordering::SeqCst) {
            assert!(
                *efd.lock().unwrap() > 0,
                "iothread asleep with a pending BH and no wake-up"
            );
        }
    });
}

#[test]
fn two_pollers_clearing_before_the_scan_never_strands_a_bh() {
    two_pollers(false);
}

#[test]
fn two_pollers_clearing_after_the_scan_is_caught_by_loom() {
    expect_violation(|| two_pollers(true), "iothread asleep with a pending BH");
}
