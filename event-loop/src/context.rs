//! The `AioContext`: the event loop's state, its lock, and `poll`.
//!
//! # Threads and locks (see `docs/event-loop.md`)
//!
//! * Any thread, no lock: `new_bh`, `BottomHalf::{schedule, schedule_idle, cancel}`,
//!   `set_fd_handler`, `remove_fd_handler`, `new_timer`, `Timer::*`, `notify`,
//!   `thread_pool().submit`, `JobHandle::cancel`, `trace_dump`.
//! * Context lock held: `poll`, `poll_while` (they dispatch handlers), and
//!   `ThreadPool::run_inline` (it takes the guard as proof; its completion is
//!   published quietly, for the holder's own next scan). The lock is recursive; a
//!   nested poller holds it for the whole nested poll, also while it blocks in the
//!   kernel.
//! * The iothread loop waits in the kernel *without* the lock and takes it only to
//!   dispatch; so the iothread and one nested poller may both be asleep in
//!   `epoll_wait` on this context at once.

use std::collections::VecDeque;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use log::error;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bh::{self, BhCallback, BhInner, IDLE, SCHEDULED};
use crate::busy_poll::{self, PollReady, SpinEnd};
use crate::fd::{self, FdEntry, FdTable, FIRST_USER_TOKEN, NOTIFIER_TOKEN, TIMERFD_TOKEN};
use crate::notify::{StdAtomics, WakeCore};
use crate::sys::AbsTimerFd;
use crate::timer::{self, TimerList, DISARMED};
use crate::trace::{Ev, TraceRing};
use crate::{BottomHalf, Error, ThreadPool, Timer};

/// A handler run when an fd becomes readable or writable. Runs on whichever thread
/// polls the context, with the context lock held.
pub type FdHandler = Box<dyn FnMut() + Send>;

/// How long a sleeping poller waits when only idle BHs are pending.
const IDLE_BH_TIMEOUT_MS: i32 = 10;
/// Events gathered per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 64;
/// Consecutive iothread passes that may skip asking the kernel for fd events
/// (see `iothread_iteration`).
const MAX_BH_ONLY_PASSES: u32 = 8;

/// What the iothread loop carries from one iteration to the next.
#[derive(Default)]
pub(crate) struct IoThreadCarry {
    /// The last dispatch left quiet work for a BH pass.
    quiet_left: bool,
    /// BH-only passes in a row.
    bh_only_passes: u32,
    /// The busy-poll window now (see `busy_poll::next_window`).
    window_ns: u64,
}

/// Fault knob bits (feature `fault-knobs`; always 0 otherwise).
pub(crate) const FAULT_SKIP_WHILE_DISPATCHING: u8 = 1;
pub(crate) const FAULT_NESTED_CLEARS_NOTIFIER: u8 = 2;
pub(crate) const FAULT_QUIET_RELEASE_SKIPS_WAKE: u8 = 4;

/// The part of the context that BHs, timers and the pool reference.
pub(crate) struct Shared {
    /// The wake-up protocol: would-be sleepers and the work epoch.
    pub(crate) core: WakeCore<StdAtomics>,
    /// The notifier. Written by publishers when `core.publish()` saw sleepers;
    /// read (cleared) only by a lock holder, which then scans the BH queue.
    notifier: EventFd,
    /// Pending BHs, at most one entry each (QUEUED bit). Any thread pushes; the
    /// lock holder drains. The mutex guards the data only; the protocol's
    /// ordering comes from `core`.
    bh_queue: Mutex<VecDeque<Arc<BhInner>>>,
    /// Batches taken from `bh_queue` by the dispatches now running on the lock
    /// holder's stack, outermost first, with what they have not run yet. A
    /// dispatch runs from the front slice, so one nested in a BH callback runs
    /// the rest of the outer batch too: a callback that waits in a nested poll for
    /// a BH later in its own batch would otherwise wait forever (that BH is
    /// neither in `bh_queue` nor runnable until the callback returns). Lock
    /// holder pops; pollers peek while preparing.
    pub(crate) bh_slices: Mutex<VecDeque<VecDeque<Arc<BhInner>>>>,
    /// `bh_slices.len()`, for the lock holder's dispatch to skip the mutex when
    /// no batch is open (the common case). Written with both the context lock and
    /// `bh_slices` held, read only by a context-lock holder: the lock orders it,
    /// so relaxed access sees the last holder's value.
    pub(crate) open_slices: AtomicUsize,
    /// BH names by id, for the trace dump.
    bh_names: Mutex<Vec<&'static str>>,
    /// The timer list; `timerfd` is programmed to its earliest deadline.
    timers: Mutex<TimerList>,
    timerfd: AbsTimerFd,
    /// Threads currently running BH callbacks, counted only while fault (a),
    /// its one reader, is armed.
    dispatching: AtomicUsize,
    /// Fault knob bits; 0 unless feature `fault-knobs` set them.
    faults: AtomicU8,
    /// A lock holder published work quietly (without waking sleepers) that no BH
    /// scan has taken yet. Set and cleared only by the context-lock holder (the lock
    /// orders the holders); checked when a holder drops a guard.
    unscanned_quiet: AtomicBool,
    /// Eventfd writes made by `publish_and_wake` (benchmarks count syscalls with it).
    pub(crate) eventfd_writes: AtomicU64,
    /// The trace ring.
    pub(crate) trace: TraceRing,
}

impl Shared {
    pub(crate) fn push_bh(&self, bh: Arc<BhInner>) {
        lock(&self.bh_queue).push_back(bh);
    }

    pub(crate) fn take_bh_queue(&self) -> VecDeque<Arc<BhInner>> {
        std::mem::take(&mut *lock(&self.bh_queue))
    }

    /// Swaps the pending queue with `batch` (empty): the dispatcher gets the
    /// pending BHs and the queue keeps `batch`'s allocation, so a steady
    /// schedule/dispatch cycle allocates nothing.
    pub(crate) fn swap_bh_queue(&self, batch: &mut VecDeque<Arc<BhInner>>) {
        debug_assert!(batch.is_empty());
        std::mem::swap(&mut *lock(&self.bh_queue), batch);
    }

    /// (urgent, idle): whether a non-idle / only-idle BH is pending.
    fn pending_bhs(&self) -> (bool, bool) {
        let mut idle = false;
        let mut scan = |bh: &Arc<BhInner>| {
            let f = bh.flags.load(Ordering::Acquire);
            if f & SCHEDULED != 0 {
                if f & IDLE == 0 {
                    return true;
                }
                idle = true;
            }
            false
        };
        if lock(&self.bh_queue).iter().any(&mut scan) {
            return (true, true);
        }
        // The unrun rest of batches being dispatched further up the stack of a
        // nested poller (see `bh_slices`).
        if lock(&self.bh_slices).iter().flatten().any(&mut scan) {
            return (true, true);
        }
        (false, idle)
    }

    pub(crate) fn lock_timers(&self) -> MutexGuard<'_, TimerList> {
        lock(&self.timers)
    }

    pub(crate) fn program_timerfd(&self, deadline: u64) {
        let d = (deadline != DISARMED).then_some(deadline);
        if let Err(e) = self.timerfd.set(d) {
            error!("event-loop: programming the timerfd failed: {e}");
        }
    }

    fn fault(&self, bit: u8) -> bool {
        cfg!(feature = "fault-knobs") && self.faults.load(Ordering::Relaxed) & bit != 0
    }

    /// Work was made pending: publish it, and write the eventfd if some poller may
    /// be (about to be) asleep. Any thread.
    pub(crate) fn publish_and_wake(&self) {
        let sleepers = self.core.publish();
        if sleepers == 0 {
            self.trace.record(Ev::NotifySkipped, 0);
            return;
        }
        if self.fault(FAULT_SKIP_WHILE_DISPATCHING) && self.dispatching.load(Ordering::Relaxed) > 0
        {
            // Failure (a), on purpose: "someone is dispatching, it will see it".
            self.trace.record(Ev::NotifySkipped, -1);
            return;
        }
        self.write_notifier();
        self.trace.record(Ev::NotifySent, sleepers as i64);
    }

    /// Work was made pending by the context-lock holder, which will scan the BH
    /// queue itself (its own poll) before it sleeps or drops its guard: publish
    /// without waking anybody. Sound because whoever might sleep through this work
    /// needs it done by *some* lock holder, and this one does it: its next BH scan
    /// runs it (the scan clears `unscanned_quiet`); should it drop its guard first,
    /// the drop publishes again, this time with the wake-up (`release_check`).
    /// Saves the iothread a pointless wake-up (and a fight for the lock) on every
    /// synchronous block request.
    pub(crate) fn publish_quiet(&self) {
        self.unscanned_quiet.store(true, Ordering::Relaxed);
        self.core.publish_quiet();
        self.trace.record(Ev::NotifySkipped, -2);
    }

    /// A lock holder lets the lock go: quiet work published and not yet scanned
    /// must not stay invisible to sleepers.
    fn release_check(&self) {
        // Load first: the common release has nothing to do, and a plain load is
        // cheaper than the swap.
        if self.unscanned_quiet.load(Ordering::Relaxed)
            && self.unscanned_quiet.swap(false, Ordering::Relaxed)
        {
            if self.fault(FAULT_QUIET_RELEASE_SKIPS_WAKE) {
                // Failure (q), on purpose.
                self.trace.record(Ev::NotifySkipped, -3);
                return;
            }
            self.publish_and_wake();
        }
    }

    /// Whether quiet work is pending that no scan took yet. Lock holder only.
    fn has_unscanned_quiet_work(&self) -> bool {
        self.unscanned_quiet.load(Ordering::Relaxed)
    }

    /// The BH scan is about to take the queue: quiet work is now being run.
    pub(crate) fn quiet_work_scanned(&self) {
        self.unscanned_quiet.store(false, Ordering::Relaxed);
    }

    /// Writes the eventfd unconditionally.
    pub(crate) fn write_notifier(&self) {
        self.eventfd_writes.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.notifier.write(1) {
            // EAGAIN only at a counter of 2^64-2: it is then readable anyway.
            if e.kind() != std::io::ErrorKind::WouldBlock {
                error!("event-loop: writing the notifier failed: {e}");
            }
        }
    }

    /// Reads (clears) the notifier. Lock holder only, and it must scan the BH
    /// queue afterwards: it may have consumed a wake-up meant for another poller.
    fn clear_notifier(&self) {
        if let Ok(v) = self.notifier.read() {
            self.trace.record(Ev::NotifierCleared, v as i64);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The event loop. Always shared as `Arc<AioContext>`; `Send + Sync`.
pub struct AioContext {
    pub(crate) shared: Arc<Shared>,
    /// The recursive context lock: held to dispatch.
    ctx_lock: crate::lock::RecursiveLock,
    /// Notifier, timerfd and user fds. Waited on by every poller at once.
    epoll: Epoll,
    /// Fd handlers; never locked while a handler runs.
    fds: Mutex<FdTable>,
    next_token: AtomicU64,
    next_bh_id: AtomicU64,
    /// Bumped by every `dispatch` (under the context lock, which orders it): the
    /// iothread compares it across its unlocked wait to spot stale events.
    dispatch_gen: AtomicU64,
    /// The cap of the iothread's busy-poll window (0: never spin).
    poll_max_ns: AtomicU64,
    pool: OnceLock<ThreadPool>,
}

/// Proof that this thread holds the context lock. Dropping it releases one level
/// of the (recursive) lock.
pub struct ContextGuard<'a> {
    ctx: &'a AioContext,
}

impl ContextGuard<'_> {
    /// Whether this guard is for `shared`'s context.
    pub(crate) fn guards(&self, shared: &Arc<Shared>) -> bool {
        Arc::ptr_eq(&self.ctx.shared, shared)
    }
}

impl Drop for ContextGuard<'_> {
    fn drop(&mut self) {
        if self.ctx.ctx_lock.held_once_by_me() {
            self.ctx.shared.release_check();
        }
        self.ctx.ctx_lock.unlock();
    }
}

/// Who is polling: the iothread loop or a nested poller (matters only to fault (b)).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Poller {
    IoThread,
    Nested,
}

impl AioContext {
    /// Creates a context with its epoll instance, notifier eventfd and timerfd.
    pub fn new() -> Result<Arc<AioContext>, Error> {
        let epoll = Epoll::new().map_err(Error::EpollCreate)?;
        let notifier = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFdCreate)?;
        let timerfd = AbsTimerFd::new().map_err(Error::TimerFdCreate)?;
        for (fd, token) in [
            (notifier.as_raw_fd(), NOTIFIER_TOKEN),
            (timerfd.as_raw_fd(), TIMERFD_TOKEN),
        ] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(|source| Error::EpollCtl { fd, source })?;
        }
        let shared = Arc::new(Shared {
            core: WakeCore::new(),
            notifier,
            bh_queue: Mutex::new(VecDeque::new()),
            bh_slices: Mutex::new(VecDeque::new()),
            open_slices: AtomicUsize::new(0),
            bh_names: Mutex::new(Vec::new()),
            timers: Mutex::new(TimerList {
                timers: Vec::new(),
                programmed: DISARMED,
            }),
            timerfd,
            dispatching: AtomicUsize::new(0),
            faults: AtomicU8::new(0),
            unscanned_quiet: AtomicBool::new(false),
            eventfd_writes: AtomicU64::new(0),
            trace: TraceRing::new(),
        });
        Ok(Arc::new(AioContext {
            shared,
            ctx_lock: crate::lock::RecursiveLock::new(),
            epoll,
            fds: Mutex::new(FdTable::default()),
            next_token: AtomicU64::new(FIRST_USER_TOKEN),
            next_bh_id: AtomicU64::new(0),
            dispatch_gen: AtomicU64::new(0),
            poll_max_ns: AtomicU64::new(busy_poll::DEFAULT_MAX.as_nanos() as u64),
            pool: OnceLock::new(),
        }))
    }

    /// The context lock: recursive (the same thread may take it again). A thread must
    /// hold it to dispatch handlers; nested pollers hold it for the whole nested poll.
    pub fn acquire(&self) -> ContextGuard<'_> {
        self.ctx_lock.lock();
        ContextGuard { ctx: self }
    }

    /// Takes the context lock if it is free (nobody holds it or waits for it),
    /// without blocking.
    pub(crate) fn try_acquire(&self) -> Option<ContextGuard<'_>> {
        self.ctx_lock.try_lock().then(|| ContextGuard { ctx: self })
    }

    /// Whether the calling thread holds the context lock.
    pub fn is_held_by_current_thread(&self) -> bool {
        self.ctx_lock.held_by_me()
    }

    /// One iteration: dispatch ready fd handlers, BHs and expired timers; if
    /// `blocking` and nothing was ready, wait in the kernel until something is.
    /// Returns whether progress was made (a handler, BH or timer ran).
    ///
    /// Caller holds the context lock (nested use from any thread).
    pub fn poll(&self, blocking: bool) -> bool {
        assert!(
            self.ctx_lock.held_by_me(),
            "AioContext::poll without the context lock"
        );
        if blocking {
            // A pool worker delivering completions must not wait for work that
            // only it could pick up.
            crate::pool::before_blocking_poll();
        }
        let mut events = [EpollEvent::default(); EVENTS_PER_WAIT];
        let n = self.prepare_and_wait(blocking, &mut events);
        self.dispatch(&events[..n], Poller::Nested)
    }

    /// Nested wait helper (like QEMU's `AIO_WAIT_WHILE`): while `cond()` is true,
    /// `poll(true)`. Caller holds the context lock.
    ///
    /// If the caller published work quietly (a synchronous request it ran inline,
    /// see `ThreadPool::run_inline`), the first pass only runs the pending BHs,
    /// without asking the kernel for events: that `epoll_wait` would be a syscall
    /// for nothing. Once per call, so fd events wait at most
    /// one BH pass longer; they are level-triggered and stay ready, and the
    /// notifier is simply not cleared in that pass (clearing it is what would
    /// oblige a scan, not the reverse).
    pub fn poll_while(&self, mut cond: impl FnMut() -> bool) {
        if !cond() {
            return;
        }
        assert!(
            self.ctx_lock.held_by_me(),
            "AioContext::poll_while without the context lock"
        );
        if self.shared.has_unscanned_quiet_work() {
            self.dispatch_bhs_only(Poller::Nested, 1);
        }
        while cond() {
            self.poll(true);
        }
    }

    /// Prepare and wait (the first half of an iteration; the lock is *not* needed):
    /// snapshot the epoch, look for pending BHs, announce as a would-be sleeper,
    /// re-check, `epoll_wait`, retire. Returns the number of events gathered.
    pub(crate) fn prepare_and_wait(&self, blocking: bool, events: &mut [EpollEvent]) -> usize {
        let shared = &*self.shared;
        // Snapshot before the scan: work published after it changes the epoch.
        let snapshot = shared.core.snapshot();
        let (urgent, idle) = shared.pending_bhs();
        let mut timeout = match (blocking, urgent, idle) {
            (false, _, _) | (true, true, _) => 0,
            (true, false, true) => IDLE_BH_TIMEOUT_MS,
            (true, false, false) => -1,
        };
        let announced = timeout != 0;
        if announced {
            let may_block = shared.core.announce(snapshot);
            shared
                .trace
                .record(Ev::Announce, shared.core.sleepers() as i64);
            if !may_block {
                timeout = 0;
            }
        }
        shared.trace.record(Ev::PollEnter, timeout as i64);
        let n = match self.epoll.wait(timeout, events) {
            Ok(n) => n,
            // Woken by task work rather than by an fd: io_uring completes a
            // request that this thread submitted that way, and the task work,
            // run on the way out of the kernel, has just posted the completion
            // and written the ring's eventfd. Collect it now instead of after a
            // whole empty pass (on a disk at queue depth 1, one wait in two
            // ended like this). Not waiting, so always allowed.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                let n = self.epoll.wait(0, events).unwrap_or(0);
                shared.trace.record(Ev::WaitInterrupted, n as i64);
                n
            }
            Err(_) => 0,
        };
        if announced {
            shared.core.retire();
        }
        n
    }

    /// A dispatch of BHs only, for a caller whose own quiet work is pending
    /// (`poll_while`'s first pass, the iothread after an inline request): no
    /// `epoll_wait`, so the notifier is not cleared and fd handlers and expired
    /// timers wait for the next full pass; they are level-triggered and stay
    /// ready. `streak` (passes in a row) goes to the trace. Lock held.
    pub(crate) fn dispatch_bhs_only(&self, who: Poller, streak: u32) -> bool {
        self.shared.trace.record(Ev::BhOnlyPass, i64::from(streak));
        // No `PollExit` record: this pass did not wait, so its time tells a hang
        // diagnosis nothing, and the clock read is most of a timed record's cost
        // (one such pass runs for every synchronous block request).
        self.dispatch_untraced(&[], who)
    }

    /// The second half (lock held): clear the notifier if it fired, run fd
    /// handlers, then every pending BH, then expired timers.
    pub(crate) fn dispatch(&self, events: &[EpollEvent], who: Poller) -> bool {
        let progress = self.dispatch_untraced(events, who);
        self.shared.trace.record(Ev::PollExit, progress as i64);
        progress
    }

    /// [`Self::dispatch`] without its closing trace record.
    fn dispatch_untraced(&self, events: &[EpollEvent], who: Poller) -> bool {
        let shared = &*self.shared;
        // Only the lock holder writes the generation: no locked read-modify-write.
        let gen = self.dispatch_gen.load(Ordering::Relaxed);
        self.dispatch_gen.store(gen + 1, Ordering::Relaxed);
        let nested_fault = who == Poller::Nested && shared.fault(FAULT_NESTED_CLEARS_NOTIFIER);
        let mut progress = false;
        let mut timers_due = false;
        for ev in events {
            match ev.data() {
                // Cleared *before* the BH scan below: whatever wake-up we consume,
                // the work it announced is in the queue we are about to drain.
                NOTIFIER_TOKEN if !nested_fault => shared.clear_notifier(),
                NOTIFIER_TOKEN => {}
                TIMERFD_TOKEN => {
                    shared.timerfd.clear();
                    timers_due = true;
                }
                token => progress |= self.dispatch_fd(token, ev.event_set()),
            }
        }
        // Counted only for fault (a), the one reader; armed before the run it
        // tests, so a dispatch already under way when it is armed may go uncounted.
        let counted = shared.fault(FAULT_SKIP_WHILE_DISPATCHING);
        if counted {
            shared.dispatching.fetch_add(1, Ordering::Relaxed);
        }
        progress |= bh::dispatch_queue(shared);
        if counted {
            shared.dispatching.fetch_sub(1, Ordering::Relaxed);
        }
        if nested_fault {
            // Failure (b), on purpose: clear after the scan, eating wake-ups that
            // were meant for the other poller and announce work we did not see.
            shared.clear_notifier();
        }
        if timers_due {
            progress |= timer::run_expired(shared);
        }
        progress
    }

    fn dispatch_fd(&self, token: u64, set: EventSet) -> bool {
        let Some(entry) = lock(&self.fds).by_token.get(&token).cloned() else {
            return false; // replaced or removed since the event was gathered
        };
        let mut progress = false;
        let readable = EventSet::IN | EventSet::HANG_UP | EventSet::ERROR | EventSet::READ_HANG_UP;
        if set.intersects(readable) {
            if let Some(h) = &entry.read {
                self.shared.trace.record(Ev::FdDispatch, entry.fd as i64);
                progress |= fd::run_handler(h);
            }
        }
        if set.intersects(EventSet::OUT | EventSet::ERROR) {
            if let Some(h) = &entry.write {
                self.shared.trace.record(Ev::FdDispatch, entry.fd as i64);
                progress |= fd::run_handler(h);
            }
        }
        progress
    }

    /// One iothread iteration: wait without the lock, then dispatch with it.
    pub(crate) fn iothread_iteration(&self, carry: &mut IoThreadCarry) {
        if carry.quiet_left && carry.bh_only_passes < MAX_BH_ONLY_PASSES {
            // Our last dispatch left quiet work (a request it ran inline, whose
            // completion BH it scheduled): only a BH pass is needed. Asking the
            // kernel for fd events first would be one syscall per request; fd
            // events and expired timers are level-triggered and wait at most
            // MAX_BH_ONLY_PASSES passes. To the protocol this is a poll whose `epoll_wait(0)` found
            // nothing, which can always happen.
            carry.bh_only_passes += 1;
            self.ctx_lock.lock();
            let _guard = ContextGuard { ctx: self };
            self.dispatch_bhs_only(Poller::IoThread, carry.bh_only_passes);
            carry.quiet_left = self.shared.has_unscanned_quiet_work();
            return;
        }
        carry.bh_only_passes = 0;
        let polled = Arc::clone(&lock(&self.fds).polled);
        // Only a context with polled handlers spins, and times its iterations.
        let spin_start = (!polled.is_empty()).then(Instant::now);
        let max_ns = self.poll_max_ns.load(Ordering::Relaxed);
        let mut events = [EpollEvent::default(); EVENTS_PER_WAIT];
        let gen = self.dispatch_gen.load(Ordering::Relaxed);
        let spun = match spin_start.filter(|_| carry.window_ns > 0) {
            Some(start) => self.spin_for_work(start, carry.window_ns, &polled, &mut events),
            None => SpinEnd::Timeout,
        };
        let mut n = match spun {
            SpinEnd::Events(n) => n,
            SpinEnd::Ready(_) => 0,
            // Published work makes the wait below return at once.
            SpinEnd::Published | SpinEnd::Timeout => {
                self.shared.trace.record(Ev::LoopWait, 0);
                self.prepare_and_wait(true, &mut events)
            }
        };
        self.ctx_lock.lock();
        // Relaxed is enough: the lock acquisition orders us after the last dispatch.
        let stale = self.dispatch_gen.load(Ordering::Relaxed) != gen;
        if stale || matches!(spun, SpinEnd::Ready(_)) {
            // Stale: a nested poller dispatched while we waited without the lock,
            // and what we gathered may be stale (it ran those fds). Ready: a
            // readiness check found work before the kernel said so; ask the
            // kernel now anyway, so that this is a full pass and a check that
            // keeps saying yes never starves other fds or timers.
            n = self.epoll.wait(0, &mut events).unwrap_or(0);
        }
        if let Some(start) = spin_start {
            let spent = start.elapsed().as_nanos() as u64;
            let found = spun != SpinEnd::Timeout;
            carry.window_ns = busy_poll::next_window(carry.window_ns, spent, found, max_ns);
        }
        let _guard = ContextGuard { ctx: self };
        if let SpinEnd::Ready(token) = spun {
            if !events[..n].iter().any(|e| e.data() == token) {
                self.dispatch_fd(token, EventSet::IN);
            }
        }
        self.dispatch(&events[..n], Poller::IoThread);
        // Read before the guard's drop, whose release check clears the flag.
        carry.quiet_left = self.shared.has_unscanned_quiet_work();
    }

    /// The iothread's busy poll (lock not held): spins for up to `window_ns` from
    /// `start` over the readiness checks, the epoch and non-blocking
    /// `epoll_wait`s (whose events land in `events`). Work pending when it
    /// starts ends it at once.
    fn spin_for_work(
        &self,
        start: Instant,
        window_ns: u64,
        polled: &[(u64, PollReady)],
        events: &mut [EpollEvent],
    ) -> SpinEnd {
        // Snapshot before the scan, as in `prepare_and_wait`.
        let epoch = self.shared.core.snapshot();
        if self.shared.pending_bhs().0 {
            return SpinEnd::Published;
        }
        let end = busy_poll::spin(
            start,
            Duration::from_nanos(window_ns),
            polled,
            || self.shared.core.snapshot() != epoch,
            || self.epoll.wait(0, events).unwrap_or(0),
        );
        let arg = match end {
            SpinEnd::Ready(token) => token as i64,
            SpinEnd::Events(n) => -(n as i64),
            SpinEnd::Published | SpinEnd::Timeout => return end,
        };
        self.shared.trace.record(Ev::BusyPollHit, arg);
        end
    }

    /// Caps the iothread's busy polling before it sleeps (QEMU's `poll-max-ns`;
    /// default 32 µs; zero turns it off). The iothread spins only while fd handlers
    /// with a readiness check ([`Self::set_fd_handler_polled`]) are registered,
    /// and its window adapts: it grows while events arrive soon after the loop
    /// goes idle and shrinks to nothing while they do not. Any thread.
    pub fn set_poll_max(&self, max: Duration) {
        let ns = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        self.poll_max_ns.store(ns, Ordering::Relaxed);
    }

    /// Creates a bottom half that runs `cb` on this context. Any thread.
    pub fn new_bh(
        self: &Arc<Self>,
        name: &'static str,
        cb: impl FnMut() + Send + 'static,
    ) -> BottomHalf {
        self.make_bh(name, BhCallback::Mut(Mutex::new(Box::new(cb))))
    }

    /// Creates a bottom half whose callback may run again while an earlier run
    /// is still on the stack (a nested poll inside it): unlike [`Self::new_bh`],
    /// scheduling it from inside its own callback lets a nested poll run it. For
    /// callbacks that deliver queued work and may themselves wait for more of it.
    /// Any thread.
    pub fn new_reentrant_bh(
        self: &Arc<Self>,
        name: &'static str,
        cb: impl Fn() + Send + Sync + 'static,
    ) -> BottomHalf {
        self.make_bh(name, BhCallback::Reentrant(Box::new(cb)))
    }

    pub(crate) fn make_bh(&self, name: &'static str, cb: BhCallback) -> BottomHalf {
        let id = self.next_bh_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.shared.bh_names).push(name);
        BottomHalf::new(Arc::new(BhInner {
            shared: self.shared.clone(),
            id,
            flags: AtomicU8::new(0),
            cb,
        }))
    }

    /// Sets (or with both `None`, removes) the read/write handlers of `fd`. Any
    /// thread, also from inside a handler. A poller asleep in the kernel sees the new
    /// interest at once (the epoll set is shared by every poller).
    pub fn set_fd_handler(
        &self,
        fd: RawFd,
        read: Option<FdHandler>,
        write: Option<FdHandler>,
    ) -> Result<(), Error> {
        if read.is_none() && write.is_none() {
            self.remove_fd_handler(fd);
            return Ok(());
        }
        self.register_fd(fd, read, write, None)
    }

    /// Sets the read handler of `fd` together with `ready`, a check the iothread's
    /// busy poll calls (without the lock, from the iothread only) to learn that
    /// `read` has work before the kernel says so. When it says yes, the iothread
    /// runs `read` under the lock in a full pass, whether or not the kernel
    /// reports the fd: `read` must cope with finding nothing to do. Any thread,
    /// like [`Self::set_fd_handler`].
    pub fn set_fd_handler_polled(
        &self,
        fd: RawFd,
        read: FdHandler,
        ready: PollReady,
    ) -> Result<(), Error> {
        self.register_fd(fd, Some(read), None, Some(ready))
    }

    fn register_fd(
        &self,
        fd: RawFd,
        read: Option<FdHandler>,
        write: Option<FdHandler>,
        ready: Option<PollReady>,
    ) -> Result<(), Error> {
        let mut set = EventSet::empty();
        if read.is_some() {
            set |= EventSet::IN;
        }
        if write.is_some() {
            set |= EventSet::OUT;
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let polled = ready.is_some();
        let entry = Arc::new(FdEntry {
            fd,
            read: read.map(Mutex::new),
            write: write.map(Mutex::new),
            ready,
        });
        let mut table = lock(&self.fds);
        let op = if table.by_fd.contains_key(&fd) {
            ControlOperation::Modify
        } else {
            ControlOperation::Add
        };
        self.epoll
            .ctl(op, fd, EpollEvent::new(set, token))
            .map_err(|source| Error::EpollCtl { fd, source })?;
        let mut was_polled = false;
        if let Some(old) = table.by_fd.insert(fd, token) {
            was_polled = table
                .by_token
                .remove(&old)
                .is_some_and(|e| e.ready.is_some());
        }
        table.by_token.insert(token, entry);
        if polled || was_polled {
            table.rebuild_polled();
        }
        Ok(())
    }

    /// Removes both handlers of `fd` (no-op if it has none). Any thread, also from
    /// inside that fd's own handler.
    pub fn remove_fd_handler(&self, fd: RawFd) {
        let mut table = lock(&self.fds);
        if let Some(token) = table.by_fd.remove(&fd) {
            // The fd may already be closed (epoll then dropped it): ignore errors.
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            // Dropped here unless a dispatcher is running it right now.
            let old = table.by_token.remove(&token);
            if old.is_some_and(|e| e.ready.is_some()) {
                table.rebuild_polled();
            }
        }
    }

    /// Creates an unarmed timer that runs `cb` on this context after its deadline
    /// (CLOCK_MONOTONIC, see [`crate::now_ns`]). Any thread.
    pub fn new_timer(self: &Arc<Self>, cb: impl FnMut() + Send + 'static) -> Timer {
        Timer::new(self.shared.clone(), Box::new(cb))
    }

    /// Wakes every poller of this context that is (or is about to be) asleep in the
    /// kernel, as a publisher of work (QEMU's `aio_notify`). Any thread; writes the
    /// eventfd only if someone could be sleeping.
    pub fn notify(&self) {
        self.shared.publish_and_wake();
    }

    /// The context's worker thread pool (created on first use; workers start lazily).
    pub fn thread_pool(self: &Arc<Self>) -> &ThreadPool {
        self.pool.get_or_init(|| ThreadPool::new(self))
    }

    /// The per-context trace ring as text, oldest first, newest last.
    pub fn trace_dump(&self) -> String {
        let names = lock(&self.shared.bh_names).clone();
        self.shared.trace.dump(|id| {
            names
                .get(id as usize)
                .map(|n| format!("{n}#{id}"))
                .unwrap_or_else(|| format!("bh#{id}"))
        })
    }

    /// A number that changes with every dispatch (every poll pass that ran
    /// handlers and BHs), so a handler can tell whether two calls came from the
    /// same dispatch.
    pub fn dispatch_generation(&self) -> u64 {
        self.dispatch_gen.load(Ordering::Relaxed)
    }

    /// How many times the notifier eventfd was written (a syscall each).
    pub fn eventfd_writes(&self) -> u64 {
        self.shared.eventfd_writes.load(Ordering::Relaxed)
    }

    /// Pollers currently announced as would-be sleepers (diagnostics).
    pub fn sleepers(&self) -> u64 {
        self.shared.core.sleepers()
    }

    /// Writes the notifier unconditionally (used to stop an iothread).
    pub(crate) fn kick(&self) {
        self.shared.write_notifier();
    }

    /// Turns a test-only fault on or off (feature `fault-knobs`; positive controls).
    #[cfg(feature = "fault-knobs")]
    pub fn set_fault(&self, fault: crate::Fault, on: bool) {
        use crate::Fault;
        let bit = match fault {
            Fault::SkipNotifyWhileDispatching => FAULT_SKIP_WHILE_DISPATCHING,
            Fault::NestedPollClearsNotifier => FAULT_NESTED_CLEARS_NOTIFIER,
            Fault::QuietReleaseSkipsWake => FAULT_QUIET_RELEASE_SKIPS_WAKE,
            Fault::NoFullFence => {
                self.shared.core.set_full_fences(!on);
                return;
            }
        };
        if on {
            self.shared.faults.fetch_or(bit, Ordering::Relaxed);
        } else {
            self.shared.faults.fetch_and(!bit, Ordering::Relaxed);
        }
    }
}

impl Drop for AioContext {
    fn drop(&mut self) {
        // Stop and join the workers first: they schedule the completion BH.
        if let Some(pool) = self.pool.take() {
            pool.shutdown();
        }
        // Queued BHs hold `shared`; break that cycle.
        drop(self.shared.take_bh_queue());
        drop(std::mem::take(&mut *lock(&self.shared.bh_slices)));
        self.shared.open_slices.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "without the context lock")]
    fn poll_without_the_lock_is_refused() {
        let ctx = AioContext::new().unwrap();
        ctx.poll(false);
    }

    #[test]
    fn notify_writes_the_eventfd_only_for_announced_sleepers() {
        let ctx = AioContext::new().unwrap();
        ctx.notify();
        assert_eq!(ctx.eventfd_writes(), 0);
        let snap = ctx.shared.core.snapshot();
        assert!(ctx.shared.core.announce(snap));
        ctx.notify();
        assert_eq!(ctx.eventfd_writes(), 1);
        ctx.shared.core.retire();
        // The write is consumed by the next lock holder's poll, before its BH scan.
        let _g = ctx.acquire();
        assert!(!ctx.poll(false));
        assert!(ctx.trace_dump().contains("NotifierCleared(1)"));
    }

    /// The eventfd the signal handler below writes (-1: none).
    static INTERRUPT_WRITES: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

    extern "C" fn write_on_interrupt(_: libc::c_int) {
        let fd = INTERRUPT_WRITES.load(Ordering::SeqCst);
        if fd < 0 {
            return;
        }
        let one = 1u64.to_ne_bytes();
        // SAFETY: write(2) is async-signal-safe; `one` is 8 readable bytes. It
        // cannot fail on this eventfd (counter far from its limit), so errno,
        // which the interrupted code may read, is left alone.
        unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
    }

    /// Like io_uring task work, the signal's handler makes an fd ready on the way
    /// out of the interrupted wait: the same poll collects it, instead of
    /// returning with nothing for another whole pass.
    #[test]
    fn a_wait_interrupted_by_work_that_made_an_fd_ready_collects_it() {
        let ctx = AioContext::new().unwrap();
        let fd = EventFd::new(EFD_NONBLOCK).unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let (r, reader) = (ran.clone(), fd.try_clone().unwrap());
        ctx.set_fd_handler(
            fd.as_raw_fd(),
            Some(Box::new(move || {
                let _ = reader.read();
                r.fetch_add(1, Ordering::SeqCst);
            })),
            None,
        )
        .unwrap();
        INTERRUPT_WRITES.store(fd.as_raw_fd(), Ordering::SeqCst);
        // SAFETY: an all-zero sigaction is a valid "default, no flags" value.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = write_on_interrupt as *const () as usize;
        // SAFETY: `sa_mask` is a valid sigset_t to clear.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: as above; filled by sigaction with the previous action.
        let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: installs a handler that only calls write(2); no SA_RESTART
        // (epoll_wait is never restarted anyway).
        let installed = unsafe { libc::sigaction(libc::SIGUSR1, &action, &mut previous) };
        assert_eq!(installed, 0);
        // SAFETY: pthread_self has no preconditions.
        let poller = unsafe { libc::pthread_self() };
        // The signal must land while the poll sleeps in the kernel; on a loaded
        // machine it may come first (the fd is then simply ready, and the retry
        // is not exercised), so try a few times until the trace shows the retry.
        let mut retried = false;
        for attempt in 1..=5 {
            let kicker = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50 * attempt));
                // SAFETY: `poller` is the test thread, alive until this thread is joined.
                unsafe { libc::pthread_kill(poller, libc::SIGUSR1) };
            });
            let progress = {
                let _g = ctx.acquire();
                ctx.poll(true)
            };
            kicker.join().unwrap();
            assert!(
                progress,
                "the interrupted poll returned without dispatching"
            );
            assert_eq!(ran.load(Ordering::SeqCst), attempt as usize);
            if ctx.trace_dump().contains("WaitInterrupted(1)") {
                retried = true;
                break;
            }
        }
        INTERRUPT_WRITES.store(-1, Ordering::SeqCst);
        // SAFETY: puts back the action saved above.
        unsafe { libc::sigaction(libc::SIGUSR1, &previous, std::ptr::null_mut()) };
        assert!(retried, "no attempt's wait was interrupted");
    }

    #[test]
    fn stale_tokens_find_no_handler() {
        let ctx = AioContext::new().unwrap();
        let _g = ctx.acquire();
        assert!(!ctx.dispatch_fd(FIRST_USER_TOKEN + 1000, EventSet::IN));
    }

    #[test]
    fn recursive_acquire_and_nested_poll_from_a_bh() {
        let ctx = AioContext::new().unwrap();
        let inner_ran = Arc::new(AtomicUsize::new(0));
        let i2 = inner_ran.clone();
        let inner = ctx.new_bh("inner", move || {
            i2.fetch_add(1, Ordering::SeqCst);
        });
        let (c2, inner2, i3) = (ctx.clone(), inner.clone(), inner_ran.clone());
        let outer = ctx.new_bh("outer", move || {
            // A handler running a nested poll on its own context (lock is recursive).
            let _g = c2.acquire();
            inner2.schedule();
            c2.poll_while(|| i3.load(Ordering::SeqCst) == 0);
        });
        outer.schedule();
        let _g = ctx.acquire();
        assert!(ctx.poll(false));
        assert_eq!(inner_ran.load(Ordering::SeqCst), 1);
        drop(outer); // the closure holds a context clone
    }
}
