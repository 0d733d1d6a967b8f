//! The worker thread pool whose completions run on the context.
//!
//! Workers start lazily (up to `max_workers`) and retire after
//! [`IDLE_RETIRE`] (configurable) without work. A finished job's completion closure goes on the
//! pool's completion queue and the pool's completion BH is scheduled; that BH runs
//! completions one by one and, like QEMU's `thread_pool_completion_bh`, makes
//! sure it is scheduled again before each callback while more completions
//! remain, so a nested poll inside a callback can still deliver the rest. That self-rescheduling
//! during dispatch is exactly the situation of failure (a).
//! One run delivers at most the completions queued when it started (the rest go
//! to the next dispatch), so a dispatch, and the context lock, stays short even
//! when callbacks keep submitting.
//!
//! A worker that finds the context lock free runs that BH itself, as a nested
//! poller (`PoolInner::deliver`), and takes the first job its callbacks submit
//! next; see docs/event-loop.md §4 for why that keeps the wake-up protocol and
//! what a callback on a worker may and may not wait for.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use log::error;

use crate::bh::BhCallback;
use crate::{AioContext, BottomHalf};

/// How long an idle worker waits for work before it exits, by default.
pub const IDLE_RETIRE: Duration = Duration::from_secs(10);
/// The default maximum number of workers (QEMU's default).
pub const DEFAULT_MAX_WORKERS: usize = 64;

const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const CANCELLED: u8 = 2;

/// A completion ready to run on the context, as the pool's completion queue
/// holds it. Every `FnOnce() + Send` closure is one; a caller that boxes its
/// callback once per request with room for the result (the block layer)
/// implements it for that box, which then goes on the queue as it is instead
/// of inside a second allocation.
pub trait Task: Send {
    /// Runs the completion (context lock held).
    fn run(self: Box<Self>);
}

impl<F: FnOnce() + Send> Task for F {
    fn run(self: Box<Self>) {
        (*self)()
    }
}

type Completion = Box<dyn Task>;
type Work = Box<dyn FnOnce() -> Completion + Send>;

struct Job {
    /// QUEUED -> RUNNING (worker) or QUEUED -> CANCELLED (cancel); CAS only.
    state: AtomicU8,
    work: Mutex<Option<Work>>,
}

struct PoolState {
    queue: VecDeque<Arc<Job>>,
    /// Whether a worker may deliver its own completion when the context lock is
    /// free (`PoolInner::deliver`).
    workers_deliver: bool,
    workers: usize,
    /// Workers asleep on `work_ready`.
    idle: usize,
    max_workers: usize,
    idle_retire: Duration,
    shutdown: bool,
    handles: Vec<JoinHandle<()>>,
}

struct PoolInner {
    /// The context whose lock a worker takes to deliver its own completion.
    ctx: Weak<AioContext>,
    state: Mutex<PoolState>,
    work_ready: Condvar,
    completions: Mutex<VecDeque<Completion>>,
    completion_bh: BottomHalf,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Worker threads running blocking jobs; `done` callbacks run on the context in the
/// pool's completion BH.
pub struct ThreadPool {
    inner: Arc<PoolInner>,
}

/// Queues completions on a pool's completion BH from any thread, like
/// [`ThreadPool::queue_completion_later`], without keeping the pool's context
/// alive: a job holding one does not end up dropping the context when its
/// last completion lets everyone else go. Completions queued after the
/// context is gone are dropped without running, so a holder queues only work
/// its context still waits for (requests counted in flight by a block
/// backend, whose drop waits for them in nested polls of that context).
#[derive(Clone)]
pub struct CompletionSender {
    inner: Arc<PoolInner>,
}

impl CompletionSender {
    /// Queues `dones` in one lock round and schedules the completion BH once
    /// (waking the context's poller if it sleeps); each still runs on its own,
    /// in order. A `Vec` for the reason given at [`ThreadPool::queue_completions`].
    pub fn queue_completions_later(&self, dones: Vec<Box<dyn Task>>) {
        // A dead context: nobody would run them, and scheduling the BH would
        // queue it on the dead context's list, a reference cycle that keeps
        // the context's fds open for good. A context that dies after this
        // check clears that list only after joining its workers, so a pool
        // job (the copier) cannot race it; another thread could, which is
        // one more reason to queue only work the context still waits for.
        if dones.is_empty() || self.inner.ctx.strong_count() == 0 {
            return;
        }
        lock(&self.inner.completions).extend(dones);
        self.inner.completion_bh.schedule();
    }
}

/// A handle to one submitted job.
pub struct JobHandle {
    job: Arc<Job>,
}

impl ThreadPool {
    pub(crate) fn new(ctx: &Arc<AioContext>) -> ThreadPool {
        let inner = Arc::new_cyclic(|weak: &Weak<PoolInner>| {
            let weak = weak.clone();
            let completion_bh = ctx.make_bh(
                "thread-pool-completion",
                BhCallback::Reentrant(Box::new(move || {
                    if let Some(pool) = weak.upgrade() {
                        pool.run_completions();
                    }
                })),
            );
            PoolInner {
                ctx: Arc::downgrade(ctx),
                state: Mutex::new(PoolState {
                    queue: VecDeque::new(),
                    workers_deliver: true,
                    workers: 0,
                    idle: 0,
                    max_workers: DEFAULT_MAX_WORKERS,
                    idle_retire: IDLE_RETIRE,
                    shutdown: false,
                    handles: Vec::new(),
                }),
                work_ready: Condvar::new(),
                completions: Mutex::new(VecDeque::new()),
                completion_bh,
            }
        });
        ThreadPool { inner }
    }

    /// Runs `work` on a worker thread; `done(result)` later runs on the context (in the
    /// pool's completion BH). Any thread.
    pub fn submit<R: Send + 'static>(
        &self,
        work: impl FnOnce() -> R + Send + 'static,
        done: impl FnOnce(R) + Send + 'static,
    ) -> JobHandle {
        self.submit_task(move || {
            let r = work();
            Box::new(move || done(r)) as Completion
        })
    }

    /// [`Self::submit`] for a job whose `work` returns its completion ready to
    /// queue (a [`Task`] that holds its result), saving the box `submit` wraps
    /// around `done` and its result. Any thread.
    pub fn submit_task(&self, work: impl FnOnce() -> Box<dyn Task> + Send + 'static) -> JobHandle {
        let work: Work = Box::new(work);
        let job = Arc::new(Job {
            state: AtomicU8::new(QUEUED),
            work: Mutex::new(Some(work)),
        });
        let mut st = lock(&self.inner.state);
        if st.shutdown {
            job.state.store(CANCELLED, Ordering::Release);
            return JobHandle { job };
        }
        st.queue.push_back(job.clone());
        if reserve_for_delivering_worker(&self.inner) {
            // The worker submitting this from a callback it delivers takes it next
            // itself: no thread to wake (a queue-depth-1 load then runs like
            // fio's psync, one sleep a request: the device's).
            return JobHandle { job };
        }
        let wake = self.inner.provide_worker(&mut st);
        // Wake after unlocking, so the woken worker does not block on our mutex.
        drop(st);
        if wake {
            self.inner.work_ready.notify_one();
        }
        JobHandle { job }
    }

    /// Queues `done` on the completion BH as if a job had just finished: it runs
    /// later on the context, never inside this call, and like every pool
    /// completion one at a time, so a nested poll in one of them can still
    /// deliver the others. For results known without any work (the block
    /// layer's refused requests). Any thread.
    pub fn complete_later(&self, done: impl FnOnce() + Send + 'static) {
        self.queue_completion_later(Box::new(done));
    }

    /// [`Self::complete_later`] for a completion already boxed as a [`Task`].
    pub fn queue_completion_later(&self, done: Box<dyn Task>) {
        lock(&self.inner.completions).push_back(done);
        self.inner.completion_bh.schedule();
    }

    /// A handle for queueing completions on this pool from a job that hands
    /// back finished work as it goes (the block layer's copier); see
    /// [`CompletionSender`].
    pub fn completion_sender(&self) -> CompletionSender {
        CompletionSender {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Runs `work` on the calling thread now and queues `done(result)` on the
    /// completion BH as a worker would, for a context-lock holder for whom a
    /// worker would not help: one that would only sleep in its nested poll
    /// until the worker ran the job (the block layer's synchronous helpers), or
    /// whose job is a copy cheaper than the hand-off (the block layer's small
    /// requests on memory-backed files). The completion is delivered by the
    /// caller's next poll, like any other; no thread is woken for it (the BH is
    /// scheduled quietly: the caller's own poll, or the iothread's next pass,
    /// runs it, and dropping `held` before polling wakes the sleepers after all).
    /// Saves two cross-thread wake-ups a request.
    pub fn run_inline<R: Send + 'static>(
        &self,
        held: &crate::ContextGuard<'_>,
        work: impl FnOnce() -> R,
        done: impl FnOnce(R) + Send + 'static,
    ) {
        let r = work();
        self.queue_completion(held, Box::new(move || done(r)));
    }

    /// The second half of [`Self::run_inline`], for a caller that ran its work
    /// itself and holds the completion boxed as a [`Task`] with its result:
    /// queues it on the completion BH quietly, under `run_inline`'s contract
    /// (the holder of `held` polls the context before it lets the lock go).
    pub fn queue_completion(&self, held: &crate::ContextGuard<'_>, done: Box<dyn Task>) {
        lock(&self.inner.completions).push_back(done);
        self.inner.completion_bh.schedule_quiet(held);
    }

    /// [`Self::queue_completion`] for several completions at once: one lock
    /// round and one schedule for the lot. A `Vec`, not any iterator: the
    /// queue's mutex must not be held while caller code runs (a lazy iterator
    /// that queued a completion itself would deadlock on it, one that panicked
    /// would leave the ones it yielded queued but unscheduled).
    pub fn queue_completions(&self, held: &crate::ContextGuard<'_>, dones: Vec<Box<dyn Task>>) {
        if dones.is_empty() {
            return;
        }
        lock(&self.inner.completions).extend(dones);
        self.inner.completion_bh.schedule_quiet(held);
    }

    /// Sets how long an idle worker waits for work before it exits (takes effect
    /// from each worker's next wait).
    pub fn set_idle_retire(&self, after: Duration) {
        lock(&self.inner.state).idle_retire = after;
    }

    /// Whether a worker that finds the context lock free delivers its job's
    /// completion itself (the default) or always leaves it to the completion
    /// BH, for the iothread or a nested poll to run (QEMU's way; the seed test's
    /// positive controls need it, since a worker's delivery also runs BHs whose
    /// wake-up a broken protocol lost, and so hides the hang they look for).
    pub fn set_workers_deliver(&self, on: bool) {
        lock(&self.inner.state).workers_deliver = on;
    }

    /// Sets the maximum number of worker threads (at least 1).
    pub fn set_max_workers(&self, n: usize) {
        lock(&self.inner.state).max_workers = n.max(1);
    }

    /// Live worker threads (diagnostics and tests).
    pub fn workers(&self) -> usize {
        lock(&self.inner.state).workers
    }

    /// Cancels every job that has not started, lets running ones finish (their
    /// completions stay queued for the context's next poll), and joins the workers
    /// (except the calling thread: a worker that drops the last reference to the
    /// context after its delivery runs this). Later submissions are cancelled at
    /// once.
    ///
    /// Only the context's drop calls this: a submission needs the live context,
    /// so none can come after and lose its `done` (a caller counting requests in
    /// flight, as the block layer does, would wait for it forever).
    pub(crate) fn shutdown(&self) {
        let handles = {
            let mut st = lock(&self.inner.state);
            st.shutdown = true;
            for job in st.queue.drain(..) {
                if job
                    .state
                    .compare_exchange(QUEUED, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    drop(lock(&job.work).take());
                }
            }
            std::mem::take(&mut st.handles)
        };
        self.inner.work_ready.notify_all();
        let me = thread::current().id();
        for h in handles {
            // A worker that delivered a completion may hold the last reference to
            // the context and so run this from its drop: it cannot join itself
            // (it exits on its own once it sees `shutdown`).
            if h.thread().id() != me {
                let _ = h.join();
            }
        }
    }
}

impl PoolInner {
    fn spawn_worker(self: &Arc<Self>, st: &mut PoolState) {
        st.handles.retain(|h| !h.is_finished());
        let inner = Arc::clone(self);
        match thread::Builder::new()
            .name("pool-worker".into())
            .spawn(move || inner.worker_loop())
        {
            Ok(h) => {
                st.workers += 1;
                st.handles.push(h);
            }
            Err(e) => error!("event-loop: spawning a pool worker failed: {e}"),
        }
    }

    /// After a job was queued: spawns a worker if none is idle for it and the
    /// limit allows, and returns whether to wake an idle one.
    fn provide_worker(self: &Arc<Self>, st: &mut PoolState) -> bool {
        if st.idle >= st.queue.len() {
            true
        } else if st.workers < st.max_workers {
            self.spawn_worker(st);
            false
        } else {
            st.idle > 0
        }
    }

    fn worker_loop(self: Arc<Self>) {
        let _exit = WorkerExit { pool: &self };
        let mut st = lock(&self.state);
        loop {
            if let Some(job) = st.queue.pop_front() {
                if job
                    .state
                    .compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    continue; // cancelled
                }
                let may_deliver = st.workers_deliver;
                drop(st);
                let work = lock(&job.work).take();
                if let Some(work) = work {
                    let completion = work();
                    if may_deliver {
                        Self::deliver(&self, completion);
                    } else {
                        lock(&self.completions).push_back(completion);
                        self.completion_bh.schedule();
                    }
                }
                st = lock(&self.state);
                continue;
            }
            if st.shutdown {
                break;
            }
            st.idle += 1;
            let retire_after = st.idle_retire;
            let (guard, timeout) = self
                .work_ready
                .wait_timeout(st, retire_after)
                .unwrap_or_else(|p| p.into_inner());
            st = guard;
            st.idle -= 1;
            if timeout.timed_out() && st.queue.is_empty() {
                break; // retire
            }
        }
        st.workers -= 1;
    }

    /// Queues a finished job's completion. When the context lock is free, the
    /// worker delivers it itself, as a nested poll would (a quiet publish, then
    /// one BH-only pass, exactly what a vCPU's inline job does); otherwise it
    /// schedules the completion BH for the lock's holder or the iothread. On a
    /// slow device (O_DIRECT) that saves the iothread's wake-up, one of the three
    /// sleeps a request used to pay; with the job the callbacks submit kept for
    /// this worker (`Delivery::reserved`), a second one.
    fn deliver(self: &Arc<Self>, completion: Completion) {
        lock(&self.completions).push_back(completion);
        let Some(ctx) = self.ctx.upgrade() else {
            return self.completion_bh.schedule();
        };
        let Some(held) = ctx.try_acquire() else {
            return self.completion_bh.schedule();
        };
        DELIVERY.with(|d| {
            *d.borrow_mut() = Some(Delivery {
                pool: Arc::clone(self),
                reserved: false,
                in_done: false,
                lent: false,
            })
        });
        self.completion_bh.schedule_quiet(&held);
        ctx.dispatch_bhs_only(crate::context::Poller::Nested, 0);
        let delivery = DELIVERY.with(|d| d.borrow_mut().take());
        if delivery.is_some_and(|d| d.lent) {
            lock(&self.state).workers += 1;
        }
        drop(held);
        // Should that have been the last reference, the context's drop shuts the
        // pool down from here, which this worker survives (see `shutdown`).
        drop(ctx);
    }

    /// The completion BH's body (context lock held). Re-entrant: a nested poll in
    /// a callback may run it again to deliver later completions.
    ///
    /// Runs at most the completions that were queued when it started. A `done`
    /// that submits new work (a device keeping its queue full) refills the queue
    /// about as fast as this loop drains it; unbounded, one dispatch held the
    /// context lock for up to a second in the block seed test, and a vCPU waited
    /// that long for it however fair the lock. Stopping early strands nothing:
    /// whenever a completion remained after a pop, the BH was scheduled before
    /// the callback, and a completion pushed later schedules the BH itself.
    fn run_completions(&self) {
        let mut q = lock(&self.completions);
        let mut budget = q.len();
        while budget > 0 {
            budget -= 1;
            let Some(done) = q.pop_front() else { break };
            let more = !q.is_empty();
            drop(q);
            // Keep the BH pending while completions remain, so they are delivered
            // even if this callback blocks in a nested poll (QEMU does the same).
            // Still pending from the last round unless a nested poll ran it
            // since (only a dispatch clears the flag, and nothing cancels
            // this BH): then the load saves the schedule's read-modify-write.
            if more && !self.completion_bh.is_scheduled() {
                self.completion_bh.schedule();
            }
            let outer = set_in_done(true);
            done.run();
            set_in_done(outer);
            if budget == 0 {
                break;
            }
            q = lock(&self.completions);
        }
    }
}

/// Keeps the pool's books when a worker dies by a panic (in a job, or in a
/// callback it delivers): it stops counting as a worker, and a job queued for
/// it (such as the one its callback reserved) gets another worker.
struct WorkerExit<'a> {
    pool: &'a Arc<PoolInner>,
}

impl Drop for WorkerExit<'_> {
    fn drop(&mut self) {
        if !thread::panicking() {
            return; // the loop's own exit did the accounting
        }
        let delivery = DELIVERY.with(|d| d.try_borrow_mut().ok().and_then(|mut d| d.take()));
        let lent = delivery.is_some_and(|d| d.lent);
        let mut st = lock(&self.pool.state);
        if !lent {
            st.workers -= 1;
        }
        let wake = !st.queue.is_empty() && !st.shutdown && self.pool.provide_worker(&mut st);
        drop(st);
        if wake {
            self.pool.work_ready.notify_one();
        }
    }
}

/// A worker delivering completions under the context lock (`PoolInner::deliver`).
struct Delivery {
    pool: Arc<PoolInner>,
    /// The first job a callback submits stays queued for this worker to take
    /// next, without waking anyone.
    reserved: bool,
    /// A pool completion callback is running (`run_completions`): only its
    /// submissions are reserved. A job some other BH submits in the same pass
    /// (the block layer's share step) is meant for a second CPU.
    in_done: bool,
    /// The worker no longer counts as one: a callback is about to block in a
    /// nested poll, possibly waiting for a job that needs a worker.
    lent: bool,
}

thread_local! {
    static DELIVERY: RefCell<Option<Delivery>> = const { RefCell::new(None) };
}

/// True (once per delivery) if this thread is a worker of `pool` delivering
/// completions, which will take the job just queued itself.
fn reserve_for_delivering_worker(pool: &Arc<PoolInner>) -> bool {
    DELIVERY.with(|d| match &mut *d.borrow_mut() {
        Some(del) if Arc::ptr_eq(&del.pool, pool) && del.in_done && !del.reserved && !del.lent => {
            del.reserved = true;
            true
        }
        _ => false,
    })
}

/// Marks whether a pool completion callback runs on this (delivering) thread;
/// returns the previous mark. No-op on threads that are not delivering.
fn set_in_done(on: bool) -> bool {
    DELIVERY.with(|d| match &mut *d.borrow_mut() {
        Some(del) => std::mem::replace(&mut del.in_done, on),
        None => false,
    })
}

/// Called before a poll that may block. If this thread is a worker delivering
/// completions, it stops counting as a worker and makes sure the queued jobs
/// (its reserved one included) have workers: a callback that waits in a nested
/// poll for pool work must not wait for itself, whatever `max_workers` is.
pub(crate) fn before_blocking_poll() {
    let pool = DELIVERY.with(|d| match &mut *d.borrow_mut() {
        Some(del) if !del.lent => {
            del.lent = true;
            Some(Arc::clone(&del.pool))
        }
        _ => None,
    });
    let Some(pool) = pool else { return };
    let mut st = lock(&pool.state);
    st.workers -= 1;
    // Jobs no idle worker will take: one new worker each, up to the limit.
    let unserved = st.queue.len().saturating_sub(st.idle);
    for _ in 0..unserved {
        if st.workers >= st.max_workers || st.shutdown {
            break;
        }
        pool.spawn_worker(&mut st);
    }
    let wake = st.idle > 0 && !st.queue.is_empty();
    drop(st);
    if wake {
        pool.work_ready.notify_all();
    }
}

impl JobHandle {
    /// Whether a worker has taken the job (or it was cancelled): `cancel` would fail.
    pub fn has_started(&self) -> bool {
        self.job.state.load(Ordering::Acquire) != QUEUED
    }

    /// Cancels the job if it has not started: returns true and `done` is never called.
    /// Returns false if it already started or finished (then `done` runs as usual).
    pub fn cancel(&self) -> bool {
        let ok = self
            .job
            .state
            .compare_exchange(QUEUED, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if ok {
            drop(lock(&self.job.work).take());
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    #[test]
    fn shutdown_cancels_queued_jobs_and_joins() {
        let ctx = AioContext::new().unwrap();
        let pool = ctx.thread_pool();
        pool.set_max_workers(1);
        let (open_gate, gate) = std::sync::mpsc::channel::<()>();
        let started = pool.submit(
            move || {
                let _ = gate.recv();
            },
            |_| {},
        );
        let queued: Vec<_> = (0..5).map(|_| pool.submit(|| (), |_| {})).collect();
        let unlock = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            drop(open_gate);
        });
        // Wait until the worker has taken `started`.
        while !started.has_started() {
            thread::yield_now();
        }
        pool.shutdown();
        unlock.join().unwrap();
        assert_eq!(pool.workers(), 0);
        for q in &queued {
            assert!(!q.cancel(), "shutdown already cancelled it");
        }
        let late = pool.submit(|| (), |_| panic!("ran after shutdown"));
        assert!(!late.cancel());
    }

    /// Completions queued on `ctx`'s pool, not yet delivered.
    fn queued(ctx: &Arc<AioContext>) -> usize {
        lock(&ctx.thread_pool().inner.completions).len()
    }

    /// Submits an empty job whose `done` counts itself and, `left` more times,
    /// submits the next link and waits (bounded) until that link's completion is
    /// queued: a device that keeps its queue full, with a fast disk.
    fn chain(ctx: &Arc<AioContext>, delivered: &Arc<AtomicUsize>, left: usize) {
        let (c, d) = (ctx.clone(), delivered.clone());
        ctx.thread_pool().submit(
            || (),
            move |()| {
                d.fetch_add(1, Ordering::SeqCst);
                if left > 0 {
                    let before = queued(&c);
                    chain(&c, &d, left - 1);
                    let deadline = Instant::now() + Duration::from_secs(2);
                    while queued(&c) <= before && Instant::now() < deadline {
                        thread::yield_now();
                    }
                }
            },
        );
    }

    #[test]
    fn one_run_delivers_only_the_completions_queued_when_it_started() {
        let ctx = AioContext::new().unwrap();
        let delivered = Arc::new(AtomicUsize::new(0));
        const CHAINS: usize = 3;
        const LINKS: usize = 40;
        // Held throughout, so that no worker delivers its completion itself:
        // they all wait in the queue for this thread's polls.
        let guard = ctx.acquire();
        for _ in 0..CHAINS {
            chain(&ctx, &delivered, LINKS - 1);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while queued(&ctx) < CHAINS {
            assert!(
                Instant::now() < deadline,
                "the first completions never came"
            );
            thread::yield_now();
        }
        // Every `done` refills the queue before it returns; an unbounded drain
        // would deliver all CHAINS * LINKS completions in this one poll.
        ctx.poll(false);
        assert_eq!(delivered.load(Ordering::SeqCst), CHAINS);
        // The rest still arrive, a run at a time.
        while delivered.load(Ordering::SeqCst) < CHAINS * LINKS {
            assert!(
                Instant::now() < deadline,
                "completions stranded: {} of {} delivered, {} queued",
                delivered.load(Ordering::SeqCst),
                CHAINS * LINKS,
                queued(&ctx)
            );
            if !ctx.poll(false) {
                thread::yield_now();
            }
        }
        drop(guard);
    }

    /// With nobody polling the context, a finished job's worker takes the free
    /// lock and runs the completion itself; the job that completion submits
    /// stays with that worker (no second worker is started or woken).
    #[test]
    fn a_worker_delivers_its_own_completion_and_keeps_the_next_job() {
        let ctx = AioContext::new().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        fn link(ctx: &Arc<AioContext>, left: usize, tx: std::sync::mpsc::Sender<(String, bool)>) {
            let c = Arc::clone(ctx);
            ctx.thread_pool().submit(
                || (),
                move |()| {
                    if left > 0 {
                        link(&c, left - 1, tx);
                    } else {
                        let name = thread::current().name().unwrap_or("").to_string();
                        tx.send((name, c.is_held_by_current_thread())).unwrap();
                    }
                },
            );
        }
        link(&ctx, 49, tx);
        let (thread_name, held) = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("nobody polls: the worker must deliver the completions itself");
        assert_eq!(thread_name, "pool-worker");
        assert!(held, "a completion runs with the context lock held");
        assert_eq!(
            ctx.thread_pool().workers(),
            1,
            "each link's job stayed with the worker that delivered the previous one"
        );
    }

    /// A completion running on its worker submits a job and waits for it in a
    /// nested poll, with one worker allowed: the waiting worker stops counting,
    /// so another one runs the job (it would otherwise wait for itself).
    #[test]
    fn a_delivering_workers_callback_may_wait_for_pool_work() {
        let ctx = AioContext::new().unwrap();
        ctx.thread_pool().set_max_workers(1);
        let (tx, rx) = std::sync::mpsc::channel();
        let c = Arc::clone(&ctx);
        ctx.thread_pool().submit(
            || (),
            move |()| {
                let inner_done = Arc::new(AtomicUsize::new(0));
                let flag = Arc::clone(&inner_done);
                c.thread_pool()
                    .submit(|| 7, move |v| flag.store(v, Ordering::SeqCst));
                c.poll_while(|| inner_done.load(Ordering::SeqCst) == 0);
                tx.send(inner_done.load(Ordering::SeqCst)).unwrap();
            },
        );
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)),
            Ok(7),
            "the callback's nested wait for pool work never ended"
        );
    }

    /// A callback delivered on its worker submits a job and then panics: the
    /// worker dies, and the job it had reserved still gets a worker.
    #[test]
    fn a_job_reserved_by_a_panicking_callback_still_runs() {
        let ctx = AioContext::new().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let c = Arc::clone(&ctx);
        ctx.thread_pool().submit(
            || (),
            move |()| {
                c.thread_pool()
                    .submit(move || tx.send(()).unwrap(), |()| {});
                panic!("a callback panics on purpose (test)");
            },
        );
        assert!(
            rx.recv_timeout(Duration::from_secs(5)).is_ok(),
            "the reserved job never ran after its worker died"
        );
    }

    /// A BH that is not a pool completion (the block layer's share step) runs
    /// in a worker's delivery pass and submits a job it means for a second CPU:
    /// that job is not kept for the delivering worker, so it starts while the BH
    /// is still busy.
    #[test]
    fn only_completion_callbacks_keep_their_job_for_the_delivering_worker() {
        let ctx = AioContext::new().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let c = Arc::clone(&ctx);
        let share = ctx.new_bh("share-like", move || {
            let started = Arc::new(AtomicUsize::new(0));
            let flag = Arc::clone(&started);
            c.thread_pool()
                .submit(move || flag.store(1, Ordering::SeqCst), |()| {});
            // "Runs its own half": waits (bounded) for the job to start beside it.
            let deadline = Instant::now() + Duration::from_secs(2);
            while started.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
                thread::yield_now();
            }
            tx.send(started.load(Ordering::SeqCst) == 1).unwrap();
        });
        share.schedule();
        // Nobody polls: the worker that finishes this job takes the free lock
        // and runs the pending BH in its delivery pass.
        ctx.thread_pool().submit(|| (), |()| {});
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)),
            Ok(true),
            "the share-like BH's job waited for the delivering worker"
        );
    }
}
