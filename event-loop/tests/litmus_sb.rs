//! Store-buffering litmus test for failure (c) on real hardware.
//!
//! The protocol's two sides, with its variables: the poller stores `sleepers` then
//! loads `epoch`; the publisher stores `epoch` then loads `sleepers`. If both
//! loads return the old value, the poller blocks and the publisher skips the
//! wake-up. x86 (TSO) and aarch64 both allow that outcome unless a full fence sits
//! between each store and load. With the fences (as `WakeCore` has them) the outcome
//! must never appear; without them, this machine must show it at least once, which
//! proves the test can see (c) at all.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering::*};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

struct Shared {
    round: AtomicU64,
    done: AtomicU64,
    sleepers: AtomicU64,
    epoch: AtomicU64,
    poller_saw: AtomicU64,
    stop: AtomicBool,
}

/// Runs rounds for up to `budget` (or `max_rounds`); returns (rounds, lost wake-ups).
fn run(fenced: bool, budget: Duration, max_rounds: u64, stop_at_first: bool) -> (u64, u64) {
    let s = Arc::new(Shared {
        round: AtomicU64::new(0),
        done: AtomicU64::new(0),
        sleepers: AtomicU64::new(0),
        epoch: AtomicU64::new(0),
        poller_saw: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let s2 = s.clone();
    // The poller side.
    let poller = thread::spawn(move || {
        let mut seen = 0;
        loop {
            let r = loop {
                let r = s2.round.load(Acquire);
                if r != seen || s2.stop.load(Relaxed) {
                    break r;
                }
                std::hint::spin_loop();
            };
            if s2.stop.load(Relaxed) {
                return;
            }
            seen = r;
            s2.sleepers.store(r, Relaxed); // P1: announce
            if fenced {
                fence(SeqCst); // P2
            }
            let e = s2.epoch.load(Relaxed); // P3: re-check
            s2.poller_saw.store(e, Relaxed);
            s2.done.store(r, Release);
        }
    });
    let start = Instant::now();
    let (mut rounds, mut lost) = (0u64, 0u64);
    while rounds < max_rounds && start.elapsed() < budget {
        rounds += 1;
        let r = rounds;
        s.round.store(r, Release);
        s.epoch.store(r, Relaxed); // S1: publish
        if fenced {
            fence(SeqCst); // S2
        }
        let seen_sleepers = s.sleepers.load(Relaxed); // S3
        while s.done.load(Acquire) != r {
            std::hint::spin_loop();
        }
        // Both saw the previous round's values: the poller would block, the
        // publisher would not wake it.
        if seen_sleepers != r && s.poller_saw.load(Relaxed) != r {
            lost += 1;
            if stop_at_first {
                break;
            }
        }
    }
    s.stop.store(true, Relaxed);
    s.round.fetch_add(1, Release);
    poller.join().unwrap();
    (rounds, lost)
}

#[test]
fn full_fences_forbid_the_store_buffering_outcome() {
    let (rounds, lost) = run(true, Duration::from_secs(2), 300_000, false);
    eprintln!("fenced: {lost} lost wake-ups in {rounds} rounds");
    assert_eq!(lost, 0, "store buffering observed despite SeqCst fences");
    assert!(rounds > 1000, "too few rounds ({rounds}) to mean anything");
}

#[test]
fn without_fences_this_machine_shows_store_buffering() {
    // Positive control for (c): the hardware reorders store->load when unfenced.
    let (rounds, lost) = run(false, Duration::from_secs(4), u64::MAX, true);
    eprintln!("unfenced: first lost wake-up after {rounds} rounds (lost={lost})");
    assert!(
        lost > 0,
        "no store buffering seen in {rounds} rounds: both threads never ran in parallel?"
    );
}
