//! The per-context trace ring: a cheap, always-on record of the wake-up protocol's
//! steps, dumped when a hang is suspected.
//!
//! Each record is two relaxed stores after one `fetch_add` on the head; no lock,
//! no allocation, no syscall. Only the records of the steps around a wait carry
//! a time (the coarse clock, read through the vDSO: the kernel tick's
//! resolution, 1-4 ms), which is what a hang diagnosis needs: when a poller
//! went to sleep and when it last came back. The steps in between (BHs,
//! notifies, handlers) happen microseconds apart, several per request, and the
//! clock read was most of a record's cost. Records from racing threads may
//! interleave or be torn when the ring wraps; it is a diagnosis aid, not a log
//! of record.

use std::cell::Cell;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use crate::sys::coarse_monotonic_ns;

const RING_LEN: usize = 1024;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Ev {
    /// A poll started; arg = timeout in ms (-1 = infinite, as i64).
    PollEnter = 1,
    /// A poll ended; arg = 1 if progress was made.
    PollExit,
    /// The iothread loop is about to wait without the lock; arg = timeout ms.
    LoopWait,
    /// Announced as a would-be sleeper; arg = sleepers count after.
    Announce,
    /// A notify wrote the eventfd; arg = sleepers seen.
    NotifySent,
    /// A notify skipped the eventfd write; arg = sleepers seen (0), or -1 for
    /// fault (a), -2 for a lock holder's quiet publish (its own scan runs the work),
    /// -3 for fault (q).
    NotifySkipped,
    /// A BH was made pending; arg = BH id.
    BhSchedule,
    /// A BH ran; arg = BH id.
    BhDispatch,
    /// The notifier eventfd was read (cleared); arg = counter value read.
    NotifierCleared,
    /// An fd handler ran; arg = fd.
    FdDispatch,
    /// A timer ran.
    TimerFire,
    /// A pass that runs BHs only, without asking the kernel for events (the
    /// caller left quiet work); arg = such passes in a row.
    BhOnlyPass,
    /// The iothread's busy poll found work: arg = the token of a read handler
    /// whose readiness check said yes, or minus the number of fds the kernel
    /// reported ready.
    BusyPollHit,
    /// A blocking wait ended with EINTR (io_uring task work, a signal) and was
    /// asked again without waiting; arg = the events that found.
    WaitInterrupted,
}

impl Ev {
    /// Whether the record carries a time: the steps around a wait.
    fn timed(self) -> bool {
        matches!(
            self,
            Ev::PollEnter | Ev::PollExit | Ev::LoopWait | Ev::TimerFire | Ev::BusyPollHit
        )
    }

    fn from_u8(v: u8) -> Option<Ev> {
        use Ev::*;
        [
            PollEnter,
            PollExit,
            LoopWait,
            Announce,
            NotifySent,
            NotifySkipped,
            BhSchedule,
            BhDispatch,
            NotifierCleared,
            FdDispatch,
            TimerFire,
            BhOnlyPass,
            BusyPollHit,
            WaitInterrupted,
        ]
        .into_iter()
        .find(|e| *e as u8 == v)
    }
}

thread_local! {
    static TID: Cell<u64> = const { Cell::new(0) };
}
static NEXT_TID: AtomicU64 = AtomicU64::new(1);

/// A small per-process thread number for trace records.
pub(crate) fn trace_tid() -> u64 {
    TID.with(|t| {
        if t.get() == 0 {
            t.set(NEXT_TID.fetch_add(1, Relaxed));
        }
        t.get()
    })
}

/// The ring itself.
pub(crate) struct TraceRing {
    head: AtomicUsize,
    /// Per slot: timestamp ns, or 0 for an untimed record (`Ev::timed`).
    time: Box<[AtomicU64]>,
    /// Per slot: event (8 bits) | thread number (8 bits) | arg (48 bits).
    word: Box<[AtomicU64]>,
}

impl TraceRing {
    pub(crate) fn new() -> Self {
        TraceRing {
            head: AtomicUsize::new(0),
            time: (0..RING_LEN).map(|_| AtomicU64::new(0)).collect(),
            word: (0..RING_LEN).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Records one event. Any thread.
    pub(crate) fn record(&self, ev: Ev, arg: i64) {
        let slot = self.head.fetch_add(1, Relaxed) % RING_LEN;
        let w = (ev as u64) << 56 | (trace_tid() & 0xff) << 48 | (arg as u64 & 0xffff_ffff_ffff);
        let time = if ev.timed() { coarse_monotonic_ns() } else { 0 };
        self.time[slot].store(time, Relaxed);
        self.word[slot].store(w, Relaxed);
    }

    /// The ring as text, oldest first, newest last; `bh_name` names BH ids.
    /// Untimed records show no time; they happened after the timed one above.
    pub(crate) fn dump(&self, bh_name: impl Fn(u64) -> String) -> String {
        let head = self.head.load(Relaxed);
        let start = head.saturating_sub(RING_LEN);
        let mut out = String::new();
        let mut base = None;
        for i in start..head {
            let slot = i % RING_LEN;
            let w = self.word[slot].load(Relaxed);
            let t = self.time[slot].load(Relaxed);
            let Some(ev) = Ev::from_u8((w >> 56) as u8) else {
                continue;
            };
            let tid = (w >> 48) & 0xff;
            // Sign-extend the 48-bit argument.
            let arg = ((w << 16) as i64) >> 16;
            let when = if t == 0 {
                String::new()
            } else {
                let t0 = *base.get_or_insert(t);
                format!("+{}us", t.wrapping_sub(t0) as i64 / 1000)
            };
            let what = match ev {
                Ev::BhSchedule | Ev::BhDispatch => bh_name(arg as u64),
                _ => arg.to_string(),
            };
            let _ = writeln!(out, "#{i:<8} {when:>12}  t{tid:<3} {ev:?}({what})");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_lists_newest_last_and_wraps() {
        let ring = TraceRing::new();
        for i in 0..(RING_LEN as i64 + 5) {
            ring.record(Ev::PollEnter, i);
        }
        ring.record(Ev::NotifySent, -1);
        let text = ring.dump(|_| String::new());
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), RING_LEN);
        assert!(lines.last().unwrap().ends_with("NotifySent(-1)"));
        assert!(lines[0].contains("PollEnter(6)"), "{}", lines[0]);
    }

    #[test]
    fn only_the_steps_around_a_wait_carry_a_time() {
        let ring = TraceRing::new();
        ring.record(Ev::PollEnter, -1);
        ring.record(Ev::BhSchedule, 3);
        ring.record(Ev::PollExit, 1);
        let text = ring.dump(|id| format!("bh#{id}"));
        let lines: Vec<_> = text.lines().collect();
        assert!(lines[0].contains("+0us"), "{}", lines[0]);
        assert!(!lines[1].contains("us "), "{}", lines[1]);
        assert!(lines[1].contains("BhSchedule(bh#3)"), "{}", lines[1]);
        assert!(lines[2].contains("us "), "{}", lines[2]);
    }
}
