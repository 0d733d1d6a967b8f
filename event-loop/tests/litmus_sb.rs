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

/// Spin, but yield now and then so an oversubscribed machine still progresses.
fn backoff(spins: &mut u32) {
    *spins += 1;
    if (*spins).is_multiple_of(256) {
        thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
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
            let mut spins = 0u32;
            let r = loop {
                let r = s2.round.load(Acquire);
                if r != seen || s2.stop.load(Relaxed) {
                    break r;
                }
                backoff(&mut spins);
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
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    while rounds < max_rounds && start.elapsed() < budget {
        rounds += 1;
        let r = rounds;
        s.round.store(r, Release);
        // A varying delay so that our store lands while the poller's store is
        // still in flight in some rounds (the window store buffering needs).
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        for _ in 0..(rng % 12) {
            std::hint::spin_loop();
        }
        s.epoch.store(r, Relaxed); // S1: publish
        if fenced {
            fence(SeqCst); // S2
        }
        let seen_sleepers = s.sleepers.load(Relaxed); // S3
        let mut spins = 0u32;
        while s.done.load(Acquire) != r {
            backoff(&mut spins);
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

// One test, run in sequence: two litmus runs in parallel would need four CPUs.
#[test]
fn fences_forbid_store_buffering_which_this_machine_shows_without_them() {
    let (rounds, lost) = run(true, Duration::from_secs(2), 300_000, false);
    eprintln!("fenced: {lost} lost wake-ups in {rounds} rounds");
    assert_eq!(lost, 0, "store buffering observed despite SeqCst fences");
    assert!(rounds > 100, "too few rounds ({rounds}) to mean anything");

    // Positive control for (c): the hardware reorders store->load when unfenced.
    let (rounds, lost) = run(false, Duration::from_secs(12), u64::MAX, true);
    eprintln!("unfenced: first lost wake-up after {rounds} rounds (lost={lost})");
    assert!(
        lost > 0,
        "no store buffering seen in {rounds} rounds: did the two threads ever run in parallel?"
    );
}
