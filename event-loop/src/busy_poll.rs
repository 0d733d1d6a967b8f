//! Adaptive busy polling by the iothread (QEMU's `poll-max-ns`): before it goes
//! to sleep in the kernel, the iothread of a context with polled handlers spins
//! for a short, self-tuning window. Each round asks the handlers that can tell
//! readiness from shared memory (an io_uring completion queue) whether they have
//! work, watches the protocol's epoch for published BHs, and asks the kernel for
//! ready fds without waiting (`epoll_wait(0)`, so a queue kick or a timer is
//! seen as soon as without the spin). Work that arrives within the window then
//! costs no wake-up of a sleeping thread.
//!
//! To the wake-up protocol the spin is a series of non-blocking polls before the
//! iteration's prepare step (it announces nothing and takes no lock), and what it
//! finds is dispatched in an ordinary full pass: see `docs/event-loop.md` §4.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// Asks whether an fd handler has work, without a system call and without the
/// context lock (for example: a completion queue in shared memory is not empty).
/// A false "yes" only costs a handler run that finds nothing; a false "no" only
/// leaves the work to the kernel's readiness, as without polling.
pub type PollReady = Arc<dyn Fn() -> bool + Send + Sync>;

/// The default cap of the window: QEMU's default for iothreads.
pub(crate) const DEFAULT_MAX: Duration = Duration::from_micros(32);
/// The window a grow starts from.
const START_NS: u64 = 4_000;

/// The window's next length after an iteration: `spent_ns` from the start of the
/// spin until an event arrived (through the spin or the kernel), `found_by_spin`
/// when the spin found it.
///
/// Work found by the spin keeps the window. A wait that ended within `max_ns`
/// (polling longer would have caught it) doubles the window, up to `max_ns`; a
/// longer one (the thread was idle: spinning only burned CPU) halves it, down to
/// nothing below `START_NS`.
pub(crate) fn next_window(cur_ns: u64, spent_ns: u64, found_by_spin: bool, max_ns: u64) -> u64 {
    if max_ns == 0 {
        return 0;
    }
    if found_by_spin {
        return cur_ns.min(max_ns);
    }
    if spent_ns > max_ns {
        let half = cur_ns / 2;
        return if half < START_NS { 0 } else { half };
    }
    if cur_ns == 0 {
        START_NS.min(max_ns)
    } else {
        cur_ns.saturating_mul(2).min(max_ns)
    }
}

/// What ended a spin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SpinEnd {
    /// A handler's readiness check said yes: its epoll token.
    Ready(u64),
    /// The epoch moved (work was published) or BHs are pending.
    Published,
    /// The kernel reported this many ready fds.
    Events(usize),
    /// The window ran out.
    Timeout,
}

/// Spins until a check says yes, `published()` does, `kernel()` (a
/// non-blocking `epoll_wait`) reports ready fds, or `window` has passed since
/// `start`.
pub(crate) fn spin(
    start: Instant,
    window: Duration,
    polled: &[(u64, PollReady)],
    mut published: impl FnMut() -> bool,
    mut kernel: impl FnMut() -> usize,
) -> SpinEnd {
    loop {
        for (token, ready) in polled {
            if ready() {
                return SpinEnd::Ready(*token);
            }
        }
        if published() {
            return SpinEnd::Published;
        }
        let n = kernel();
        if n > 0 {
            return SpinEnd::Events(n);
        }
        if start.elapsed() >= window {
            return SpinEnd::Timeout;
        }
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 32_000;

    #[test]
    fn the_window_grows_from_nothing_while_waits_are_short() {
        let mut w = 0;
        let mut seen = Vec::new();
        for _ in 0..5 {
            w = next_window(w, 10_000, false, MAX);
            seen.push(w);
        }
        assert_eq!(seen, [4_000, 8_000, 16_000, 32_000, 32_000]);
    }

    #[test]
    fn the_window_shrinks_to_nothing_while_the_thread_is_idle() {
        let mut w = MAX;
        let mut seen = Vec::new();
        for _ in 0..5 {
            w = next_window(w, 5_000_000, false, MAX);
            seen.push(w);
        }
        assert_eq!(seen, [16_000, 8_000, 4_000, 0, 0]);
    }

    #[test]
    fn work_found_by_the_spin_keeps_the_window_and_zero_max_disables() {
        assert_eq!(next_window(8_000, 3_000, true, MAX), 8_000);
        assert_eq!(next_window(MAX, 3_000, true, 16_000), 16_000);
        assert_eq!(next_window(8_000, 3_000, false, 0), 0);
        assert_eq!(next_window(0, 3_000, false, 0), 0);
    }

    #[test]
    fn a_spin_ends_on_readiness_publication_kernel_events_or_time() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let third_time: PollReady = Arc::new(move || c.fetch_add(1, Ordering::Relaxed) == 2);
        let never: PollReady = Arc::new(|| false);
        let long = Duration::from_secs(5);
        let polled = [(7, never.clone()), (9, third_time)];
        let ready = spin(Instant::now(), long, &polled, || false, || 0);
        assert_eq!(ready, SpinEnd::Ready(9));
        assert_eq!(calls.load(Ordering::Relaxed), 3);

        let mut n = 0;
        let only_never = [(7, never)];
        let published = spin(
            Instant::now(),
            long,
            &only_never,
            || {
                n += 1;
                n == 4
            },
            || 0,
        );
        assert_eq!(published, SpinEnd::Published);

        let mut asked = 0;
        let kernel = || {
            asked += 1;
            if asked == 3 {
                2
            } else {
                0
            }
        };
        let events = spin(Instant::now(), long, &only_never, || false, kernel);
        assert_eq!(events, SpinEnd::Events(2));

        let t = Instant::now();
        let end = spin(t, Duration::from_micros(200), &only_never, || false, || 0);
        assert_eq!(end, SpinEnd::Timeout);
        assert!(t.elapsed() >= Duration::from_micros(200));
    }
}
