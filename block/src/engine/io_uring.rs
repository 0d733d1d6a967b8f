//! `aio=io_uring`: reads, writes and flushes go through one io_uring ring per
//! backend; completions arrive through an eventfd registered both with the ring and
//! as a read handler on the context, so they run on the context like any other
//! event. Discard and write-zeroes go to the thread pool (fallocate through io_uring
//! would only move the same blocking call to an io-wq worker).
//!
//! Batching ("plugging"): a request submitted by a thread that holds the context
//! lock (a device's queue handler) only queues its submission entry; one
//! `io_uring_enter` then hands every queued entry to the kernel. That happens in a
//! bottom half scheduled by the first queued request (it runs later in the same
//! dispatch, after the handler that queued, also inside a nested poll), at the end
//! of every reap, and when the submission queue is full. Requests submitted by the
//! completion callbacks of a reap go in at once: each refills the place of one that
//! just finished (plugged, a disk at queue depth 32 reached 0.75x of fio's IOPS).
//! A thread without the context lock submits at once (nobody on the context would
//! flush for it soon). A synchronous helper (see [`super::submit_at_once`]) does not
//! use the ring at all: the fallback runs its request on its own thread.
//!
//! A ring whose `io_uring_enter` fails with a hard error (none is expected on a
//! healthy ring) is never entered again: the entries of that batch stay in the
//! submission queue, and the io-uring crate cannot take them back, so another enter
//! would hand the kernel requests already failed to their callers, whose buffers may
//! be gone. Those requests fail with the errno, later ones go to the fallback, and
//! requests already in the kernel still complete.
//!
//! How many io-wq workers the submitting threads may keep is set per context,
//! from all its io_uring disks (`iowq_cap`): one per CPU while every one is
//! memory-backed, the kernel's default otherwise.
//!
//! Locking: `Ring` is behind a mutex that is never held while a completion callback
//! runs (callbacks submit new requests). At most `ENTRIES` requests are in the ring;
//! more wait in `backlog`, so the completion queue (twice as large) cannot overflow.

use std::cell::Cell;
use std::collections::VecDeque;
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex, Weak};

use event_loop::{AioContext, BottomHalf, Timer};
use io_uring::{opcode, types, IoUring};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::iowq_cap::{self, Membership, WorkerLimit};
use super::threads::ThreadsEngine;
use super::{advance, Completion, Engine, Request, Segments};
use crate::iovec::MAX_SEGMENTS;
use crate::raw::RawFile;
use crate::{BlockError, Op};

/// The image's index in the ring's registered files (its only one).
const IMAGE: types::Fixed = types::Fixed(0);

/// Ring size (submission queue entries); the most requests in flight in the kernel.
const ENTRIES: u32 = 128;

/// How long queued entries wait before another `io_uring_enter`, after the kernel
/// refused them for lack of resources (EAGAIN/EBUSY) with nothing of ours in
/// flight whose completion would bring a reap (and its flush).
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(1);

thread_local! {
    /// Set while this thread runs a completion callback in `Shared::reap`: the
    /// engine (its `Shared`'s address) and the context's dispatch generation.
    /// What the callback submits to that engine in that dispatch goes to the
    /// kernel at once instead of being plugged; a nested poll in the callback
    /// starts another dispatch, whose submissions (a queue kick's) are plugged.
    static IN_REAP_CALLBACK: Cell<Option<(usize, u64)>> = const { Cell::new(None) };
}

/// Marks a reap's callbacks (see `IN_REAP_CALLBACK`) until dropped; restores
/// the outer value, for a reap nested in a callback's poll.
struct ReapCallbacks(Option<(usize, u64)>);

impl ReapCallbacks {
    fn enter() -> ReapCallbacks {
        ReapCallbacks(IN_REAP_CALLBACK.with(Cell::get))
    }

    /// Marks the next callback: it runs in `engine`'s reap, in the context's
    /// current dispatch.
    fn mark(&self, engine: &Shared) {
        let gen = engine.ctx.upgrade().map(|c| c.dispatch_generation());
        let mark = gen.map(|gen| (engine as *const Shared as usize, gen));
        IN_REAP_CALLBACK.with(|c| c.set(mark));
    }
}

impl Drop for ReapCallbacks {
    fn drop(&mut self) {
        IN_REAP_CALLBACK.with(|c| c.set(self.0));
    }
}

/// The io_uring engine.
pub(crate) struct UringEngine {
    shared: Arc<Shared>,
    ctx: Arc<AioContext>,
    fallback: ThreadsEngine,
    /// This disk's part in its context's io-wq worker limit (`iowq_cap`).
    _iowq: Membership,
}

struct Shared {
    /// Behind its own `Arc`: the busy poll's readiness check holds only the ring
    /// (weakly). The ring holds the image (its registered file) only until the
    /// engine's `Drop`, so a check running late never keeps the image locked.
    ring: Arc<Mutex<Ring>>,
    /// For the dispatch generation that marks a reap's callbacks.
    ctx: Weak<AioContext>,
    eventfd: EventFd,
    /// Enters the kernel with the entries queued since the last submit (the unplug).
    flush_bh: BottomHalf,
    /// Enters the kernel again after it refused a batch with nothing in flight
    /// (see `RETRY_AFTER`).
    retry_timer: Timer,
}

struct Ring {
    ring: IoUring,
    /// Requests in the kernel, indexed by their `user_data`.
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    backlog: VecDeque<(Request, Completion)>,
    /// Requests that failed before reaching the kernel, completed at the next reap.
    failed: Vec<(Completion, BlockError)>,
    /// Slots whose entries sit in the submission queue, not yet taken by the kernel,
    /// oldest first (the kernel takes them in this order).
    queued: Vec<usize>,
    /// `flush_bh` is pending: later queued requests need not schedule it again.
    flush_scheduled: bool,
    /// Scratch for `reap`, kept between calls so a reap allocates nothing: the
    /// completions taken from the queue, and the finished requests (lent out
    /// while their callbacks run; a nested reap meanwhile gets a fresh one).
    cqes: Vec<(usize, i32)>,
    finished: Vec<(Completion, Result<usize, BlockError>)>,
    /// Set by a hard `io_uring_enter` failure (its errno): never enter again.
    broken: Option<i32>,
    /// The kernel's TASKRUN mark outlived a reap: the completions it announces
    /// wait for another thread that entered this ring (a vCPU), not for the
    /// iothread, so the readiness check ignores the mark until it clears.
    taskrun_elsewhere: bool,
    /// `io_uring_enter` calls made to submit (tests check the batching with it).
    #[cfg(test)]
    enters: u64,
    /// Tests: the next enter fails with this errno instead of entering.
    #[cfg(test)]
    fail_next_enter: Option<i32>,
}

/// One read, write or flush in the kernel, with its progress (short transfers are
/// resubmitted for the rest).
struct InFlight {
    op: Op,
    offset: u64,
    fua: bool,
    vecs: Iovecs,
    first: usize,
    done: usize,
    total: usize,
    completion: Completion,
}

/// A request's segments as the kernel takes them: one held inline (the common
/// 4 KiB request, which goes as a plain read or write: no array to allocate,
/// and the kernel never points into it), or a list, whose heap buffer a
/// vectored entry points into (it does not move while the request is in
/// flight: it is never resized).
enum Iovecs {
    One([libc::iovec; 1]),
    Many(Vec<libc::iovec>),
}

impl Iovecs {
    fn new(segments: Segments) -> Iovecs {
        match segments {
            // Only a segment a plain read or write can carry stays inline: a
            // vectored entry must not point into `InFlight`.
            Segments::One(one) if u32::try_from(one.len()).is_ok() => Iovecs::One([one.to_libc()]),
            Segments::One(huge) => Iovecs::Many(vec![huge.to_libc()]),
            // Same layout: converted in place, no allocation.
            Segments::Many(list) => {
                Iovecs::Many(list.into_iter().map(crate::IoVec::to_libc).collect())
            }
        }
    }
}

impl std::ops::Deref for Iovecs {
    type Target = [libc::iovec];

    fn deref(&self) -> &[libc::iovec] {
        match self {
            Iovecs::One(one) => one,
            Iovecs::Many(list) => list,
        }
    }
}

impl std::ops::DerefMut for Iovecs {
    fn deref_mut(&mut self) -> &mut [libc::iovec] {
        match self {
            Iovecs::One(one) => one,
            Iovecs::Many(list) => list,
        }
    }
}

// SAFETY: the raw iovec pointers in `InFlight` come from IoVecs whose builders
// promised validity from any thread until completion.
unsafe impl Send for InFlight {}

impl UringEngine {
    /// Creates the ring and its eventfd, registers the completion handler on
    /// `ctx`, and counts the disk in the context's io-wq worker limit.
    pub(crate) fn new(ctx: Arc<AioContext>, file: Arc<RawFile>) -> Result<UringEngine, BlockError> {
        let setup = |source| BlockError::EngineSetup {
            engine: "io_uring",
            source,
        };
        // COOP_TASKRUN: a completion the kernel finishes for us (an io-wq worker's
        // read, the usual case on files without non-blocking reads) is not pushed
        // onto a running thread with an inter-processor interrupt; the thread
        // picks it up at its next system call, and a sleeping one is still woken
        // at once. Kernels before 5.19 refuse the flag: plain ring then.
        // TASKRUN_FLAG: the kernel marks the ring when such completions wait for
        // us to enter it, which the iothread's busy poll reads (see `ready`).
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(ENTRIES)
            .or_else(|_| IoUring::new(ENTRIES))
            .map_err(setup)?;
        // The image is the ring's one registered file: entries name it by
        // index, which spares the kernel looking the fd up (and counting a
        // reference on the file) for every request. The ring then holds the
        // file open, and with it the image lock, until `Drop` unregisters it.
        ring.submitter()
            .register_files(&[file.fd()])
            .map_err(setup)?;
        let eventfd = EventFd::new(EFD_NONBLOCK).map_err(setup)?;
        ring.submitter()
            .register_eventfd(eventfd.as_raw_fd())
            .map_err(setup)?;
        let shared = Arc::new_cyclic(|weak: &Weak<Shared>| Shared {
            // Weak: a deleted BH may linger in the context's queue until the next
            // dispatch, and must not keep the file (and its image lock) alive.
            flush_bh: {
                let bh_shared = Weak::clone(weak);
                ctx.new_bh("block-io_uring-submit", move || {
                    if let Some(shared) = Weak::upgrade(&bh_shared) {
                        shared.flush();
                    }
                })
            },
            retry_timer: {
                let timer_shared = Weak::clone(weak);
                ctx.new_timer(move || {
                    if let Some(shared) = Weak::upgrade(&timer_shared) {
                        shared.flush();
                    }
                })
            },
            ctx: Arc::downgrade(&ctx),
            ring: Arc::new(Mutex::new(Ring {
                ring,
                slots: (0..ENTRIES).map(|_| None).collect(),
                free: (0..ENTRIES as usize).rev().collect(),
                backlog: VecDeque::new(),
                failed: Vec::new(),
                queued: Vec::with_capacity(ENTRIES as usize),
                flush_scheduled: false,
                cqes: Vec::with_capacity(2 * ENTRIES as usize),
                finished: Vec::new(),
                broken: None,
                #[cfg(test)]
                enters: 0,
                taskrun_elsewhere: false,
                #[cfg(test)]
                fail_next_enter: None,
            })),
            eventfd,
        });
        let handler_shared = Arc::clone(&shared);
        let ready_ring = Arc::downgrade(&shared.ring);
        ctx.set_fd_handler_polled(
            shared.eventfd.as_raw_fd(),
            Box::new(move || {
                // Read the counter before draining: a completion posted after the
                // drain signals the eventfd again, so none is left behind. The
                // read is also the system call on whose return the kernel posts
                // completions it finished for us (COOP_TASKRUN), so a busy poll
                // that saw the TASKRUN flag finds them in the reap.
                let own_taskrun = handler_shared.taskrun_marked();
                let _ = handler_shared.eventfd.read();
                if own_taskrun {
                    // The read's return posted the completions the kernel held
                    // for us, and each signalled the eventfd again: clear that
                    // too, or the next pass finds it readable with nothing to do.
                    let _ = handler_shared.eventfd.read();
                }
                handler_shared.reap();
            }),
            Arc::new(move || ready_ring.upgrade().is_some_and(|r| Shared::ready(&r))),
        )
        .map_err(BlockError::EventLoop)?;
        let memory_backed = file.is_memory_backed();
        let fallback = ThreadsEngine::new(Arc::clone(&ctx), file);
        let limit: Arc<dyn WorkerLimit> = Arc::clone(&shared.ring) as Arc<dyn WorkerLimit>;
        let iowq = iowq_cap::join(&ctx, Arc::downgrade(&limit), memory_backed, ENTRIES);
        Ok(UringEngine {
            shared,
            ctx,
            fallback,
            _iowq: iowq,
        })
    }
}

impl Engine for UringEngine {
    fn submit(&self, req: Request, done: Completion) {
        // A synchronous helper holding the context lock blocks for this one request
        // anyway: the fallback runs it on that thread (see `threads`). A ring would
        // add nothing for a lone waiter, and on files without non-blocking I/O
        // (tmpfs) it would cost an io-wq hand-off each way.
        let sync_waiter = super::submitting_at_once() && self.ctx.is_held_by_current_thread();
        match req {
            Request::Discard { .. } | Request::WriteZeroes { .. } => {
                self.fallback.submit(req, done)
            }
            _ if sync_waiter => self.fallback.submit(req, done),
            _ => {
                // Our caller is inside a dispatch on the context: the flush BH runs
                // after it, with whatever else the dispatch queues.
                // Except in a completion callback of our own reap: its request
                // replaces one the disk just finished, and holding it for the rest
                // of the reap leaves the disk short of work and bunches its
                // requests into convoys (disk QD32 reads: 0.75x of fio plugged,
                // 0.9x and more at once; docs/block.md).
                let plug = self.ctx.is_held_by_current_thread()
                    && !super::submitting_at_once()
                    && IN_REAP_CALLBACK.with(Cell::get)
                        != Some((
                            Arc::as_ptr(&self.shared) as usize,
                            self.ctx.dispatch_generation(),
                        ));
                let mut ring = self.shared.ring.lock().unwrap();
                if ring.broken.is_some() {
                    drop(ring);
                    return self.fallback.submit(req, done);
                }
                if ring.free.is_empty() {
                    ring.backlog.push_back((req, done));
                    return;
                }
                if let Err((err, done)) = ring.start(req, done) {
                    ring.failed.push((done, err));
                }
                let mut schedule = false;
                if !plug {
                    ring.flush();
                    self.shared.retry_if_stalled(&ring);
                } else if !ring.flush_scheduled && !ring.queued.is_empty() {
                    ring.flush_scheduled = true;
                    schedule = true;
                }
                let any_failed = !ring.failed.is_empty();
                drop(ring);
                if schedule {
                    self.shared.flush_bh.schedule();
                }
                if any_failed {
                    // Submission failed before the kernel saw a request; complete
                    // through the eventfd path so the callback runs on the context.
                    let _ = self.shared.eventfd.write(1);
                }
            }
        }
    }
}

impl Drop for UringEngine {
    /// Removes the completion handler under the context lock: no poller can be inside
    /// it then, so the handler (and its reference to the file, which holds the image
    /// lock) is gone when this returns, and the image can be opened again at once.
    fn drop(&mut self) {
        let _guard = self.ctx.acquire();
        self.ctx.remove_fd_handler(self.shared.eventfd.as_raw_fd());
        // The ring's reference to the image goes now, not whenever the ring
        // itself goes (the busy poll's readiness check may hold it a moment
        // longer, and the kernel tears rings down in the background). Every
        // request has completed by now (the backend drains before dropping
        // its engine), so the kernel lets go of the file at once.
        let ring = self.shared.ring.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = ring.ring.submitter().unregister_files() {
            log::warn!("block: io_uring: unregistering the image from its ring failed: {e}");
        }
    }
}

impl WorkerLimit for Mutex<Ring> {
    fn set_bounded_workers(&self, workers: u32) -> std::io::Result<()> {
        let ring = self.lock().unwrap_or_else(|p| p.into_inner());
        // The second entry, unbounded work, stays as it is (0: no change).
        let mut limits = [workers, 0];
        ring.ring.submitter().register_iowq_max_workers(&mut limits)
    }
}

impl Ring {
    /// Requests the kernel has taken and not completed.
    fn in_kernel(&self) -> usize {
        ENTRIES as usize - self.free.len() - self.queued.len()
    }

    /// Puts a fresh request into a free slot and queues its entry (see `flush`).
    fn start(&mut self, req: Request, done: Completion) -> Result<(), (BlockError, Completion)> {
        let op = req.op();
        let offset = req.offset();
        let (vecs, fua) = match req {
            Request::Read { iov, .. } => (Iovecs::new(iov), false),
            Request::Write { iov, fua, .. } => (Iovecs::new(iov), fua),
            _ => (Iovecs::Many(Vec::new()), false),
        };
        let total = vecs.iter().map(|v: &libc::iovec| v.iov_len).sum();
        let slot = self.free.pop().expect("caller checked for a free slot");
        self.slots[slot] = Some(InFlight {
            op,
            offset,
            fua,
            vecs,
            first: 0,
            done: 0,
            total,
            completion: done,
        });
        self.push(slot).map_err(|err| {
            let inflight = self.slots[slot].take().expect("slot just filled");
            self.free.push(slot);
            (err, inflight.completion)
        })
    }

    /// Queues the entry for the (remaining part of the) request in `slot`; it reaches
    /// the kernel with the next `flush` (at once if the submission queue is full).
    fn push(&mut self, slot: usize) -> Result<(), BlockError> {
        let r = self.slots[slot].as_ref().expect("slot in use");
        if let Some(errno) = self.broken {
            return Err(BlockError::from_errno(
                r.op,
                r.offset + r.done as u64,
                errno,
            ));
        }
        let fd = IMAGE;
        let rest = &r.vecs[r.first..];
        let at = r.offset + r.done as u64;
        let flags = if r.fua { libc::RWF_DSYNC } else { 0 };
        // One segment (the common 4 KiB request) goes as a plain read/write, which
        // spares the kernel importing (and, when it punts to io-wq, allocating and
        // copying) an iovec array; a segment of 4 GiB or more keeps the vectored
        // form. A vectored entry points into the Vec's heap buffer, which does not
        // move while the request is in flight (it is never resized).
        let single = match rest {
            [one] => u32::try_from(one.iov_len)
                .ok()
                .map(|len| (one.iov_base.cast::<u8>(), len)),
            _ => None,
        };
        let count = rest.len().min(MAX_SEGMENTS) as u32;
        let entry = match (r.op, single) {
            (Op::Read, Some((ptr, len))) => opcode::Read::new(fd, ptr, len).offset(at).build(),
            (Op::Write, Some((ptr, len))) => opcode::Write::new(fd, ptr, len)
                .offset(at)
                .rw_flags(flags)
                .build(),
            (Op::Read, None) => opcode::Readv::new(fd, rest.as_ptr(), count)
                .offset(at)
                .build(),
            (Op::Write, None) => opcode::Writev::new(fd, rest.as_ptr(), count)
                .offset(at)
                .rw_flags(flags)
                .build(),
            _ => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        }
        .user_data(slot as u64);
        let (op, offset) = (r.op, r.offset);
        if self.ring.submission().is_full() {
            // Cannot happen (slots <= entries, and a full queue is flushed right after
            // the push that filled it), but be safe: flush, then push.
            self.flush();
        }
        // SAFETY: the entry points at iovec arrays and buffers that stay valid until
        // its completion is reaped (they live in `slots[slot]` / IoVec's contract).
        unsafe { self.ring.submission().push(&entry) }
            .map_err(|_| BlockError::from_errno(op, offset, libc::EAGAIN))?;
        self.queued.push(slot);
        if self.ring.submission().is_full() {
            self.flush();
        }
        Ok(())
    }

    /// Enters the kernel with every queued entry (one `io_uring_enter` for the
    /// batch). On EAGAIN/EBUSY the kernel is short of resources and the entries stay
    /// queued for the next flush or reap. Any other error fails every request whose
    /// entry was queued, each with the errno, into `failed`; the caller makes sure
    /// `failed` is drained. Returns whether something failed.
    fn flush(&mut self) -> bool {
        self.flush_scheduled = false;
        if self.queued.is_empty() || self.broken.is_some() {
            return false;
        }
        loop {
            #[cfg(test)]
            let submitted = match self.fail_next_enter.take() {
                Some(errno) => Err(std::io::Error::from_raw_os_error(errno)),
                None => {
                    self.enters += 1;
                    self.ring.submit()
                }
            };
            #[cfg(not(test))]
            let submitted = self.ring.submit();
            match submitted {
                Ok(taken) => {
                    let taken = taken.min(self.queued.len());
                    self.queued.drain(..taken);
                    // The kernel stops at an entry it cannot prepare (that one gets
                    // an error completion); the rest go in with another enter.
                    if taken == 0 || self.queued.is_empty() {
                        return false;
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e)
                    if e.raw_os_error() == Some(libc::EAGAIN)
                        || e.raw_os_error() == Some(libc::EBUSY) =>
                {
                    return false
                }
                Err(e) => {
                    let errno = e.raw_os_error().unwrap_or(libc::EIO);
                    log::error!(
                        "block: io_uring_enter failed ({e}); this ring is not entered \
                         again, new requests use the thread pool"
                    );
                    self.broken = Some(errno);
                    for slot in std::mem::take(&mut self.queued) {
                        let r = self.slots[slot].take().expect("queued slot in use");
                        self.free.push(slot);
                        let err = BlockError::from_errno(r.op, r.offset, errno);
                        self.failed.push((r.completion, err));
                    }
                    return true;
                }
            }
        }
    }
}

impl Shared {
    /// Whether the completion handler has work, read from the rings' shared
    /// memory (the busy poll's check): completions in the queue, or the kernel's
    /// mark that it holds some for our next system call, unless the last reap
    /// showed that mark to be another thread's. A ring someone else is using
    /// counts as not ready.
    fn ready(ring: &Mutex<Ring>) -> bool {
        let Ok(mut ring) = ring.try_lock() else {
            return false;
        };
        if !ring.ring.completion().is_empty() {
            return true;
        }
        if !ring.ring.submission().taskrun() {
            ring.taskrun_elsewhere = false;
            return false;
        }
        !ring.taskrun_elsewhere
    }

    /// Whether the kernel marked the ring as holding completions for a thread's
    /// next system call, and the last reap did not show the mark to be another
    /// thread's.
    fn taskrun_marked(&self) -> bool {
        let mut ring = self.ring.lock().unwrap();
        ring.ring.submission().taskrun() && !ring.taskrun_elsewhere
    }

    /// Enters the kernel with the queued entries (the flush BH). Requests failed by
    /// it complete at the next reap: signals the eventfd, whose handler runs them on
    /// the context.
    fn flush(&self) {
        let mut ring = self.ring.lock().unwrap();
        let failed = ring.flush();
        self.retry_if_stalled(&ring);
        if failed {
            drop(ring);
            let _ = self.eventfd.write(1);
        }
    }

    /// After a flush: entries the kernel refused for lack of resources wait for
    /// the next flush, which a completion's reap brings; with none of ours in the
    /// kernel no completion will come, so a timer retries.
    fn retry_if_stalled(&self, ring: &Ring) {
        if !ring.queued.is_empty() && ring.broken.is_none() && ring.in_kernel() == 0 {
            self.retry_timer.arm_after(RETRY_AFTER);
        }
    }

    /// Drains the completion queue, resubmits short transfers, refills from the
    /// backlog, then runs the finished requests' callbacks without the ring lock.
    ///
    /// If callbacks ran, the flush BH is scheduled at the end (caller holds the
    /// context lock): it then runs after the bottom halves those callbacks
    /// scheduled, in the same pass, so what a device submits from its
    /// end-of-batch BH enters the kernel in this dispatch. Scheduled from that
    /// BH instead, it would wait for the next pass, one more `epoll_wait` later.
    fn reap(&self) {
        // Borrowed from the ring at the first lock, returned (empty) at the last.
        let mut finished: Vec<(Completion, Result<usize, BlockError>)> = Vec::new();
        let mut ran_callbacks = false;
        loop {
            {
                let mut guard = self.ring.lock().unwrap();
                let ring = &mut *guard;
                if finished.capacity() == 0 {
                    finished = std::mem::take(&mut ring.finished);
                }
                finished.extend(ring.failed.drain(..).map(|(done, err)| (done, Err(err))));
                let mut cqes = std::mem::take(&mut ring.cqes);
                cqes.extend(
                    ring.ring
                        .completion()
                        .map(|c| (c.user_data() as usize, c.result())),
                );
                for &(slot, res) in &cqes {
                    if let Some(result) = ring.progress(slot, res) {
                        let inflight = ring.slots[slot].take().expect("completed slot in use");
                        ring.free.push(slot);
                        finished.push((inflight.completion, result));
                    }
                }
                cqes.clear();
                ring.cqes = cqes;
                while !ring.free.is_empty() {
                    let Some((req, done)) = ring.backlog.pop_front() else {
                        break;
                    };
                    if let Err((err, done)) = ring.start(req, done) {
                        finished.push((done, Err(err)));
                    }
                }
                // Resubmitted rests, refills from the backlog and whatever the last
                // round of callbacks queued go to the kernel together.
                ring.flush();
                self.retry_if_stalled(ring);
                finished.extend(ring.failed.drain(..).map(|(done, err)| (done, Err(err))));
                if finished.is_empty() {
                    // Nothing left to reap: a TASKRUN mark still set now is
                    // another thread's (the handler's eventfd read ran ours), and
                    // the readiness check ignores it until it clears; otherwise the
                    // busy poll would run this handler for nothing until that
                    // thread entered the kernel.
                    ring.taskrun_elsewhere =
                        ring.ring.submission().taskrun() && ring.ring.completion().is_empty();
                    if ring.finished.capacity() < finished.capacity() {
                        ring.finished = finished;
                    }
                    let schedule = ran_callbacks && !ring.flush_scheduled;
                    if schedule {
                        ring.flush_scheduled = true;
                    }
                    drop(guard);
                    if schedule {
                        self.flush_bh.schedule();
                    }
                    return;
                }
            }
            ran_callbacks = true;
            let marks = ReapCallbacks::enter();
            for (done, result) in finished.drain(..) {
                marks.mark(self);
                done.complete(result);
            }
            drop(marks);
        }
    }
}

impl Ring {
    /// Accounts one completion of `slot`: `Some(result)` when the request is finished,
    /// `None` when the rest was resubmitted.
    fn progress(&mut self, slot: usize, res: i32) -> Option<Result<usize, BlockError>> {
        let r = self.slots[slot]
            .as_mut()
            .expect("completion for a slot in use");
        let at = r.offset + r.done as u64;
        if res < 0 {
            let errno = -res;
            if errno == libc::EAGAIN || errno == libc::EINTR {
                return self.resubmit(slot);
            }
            return Some(Err(BlockError::from_errno(r.op, at, errno)));
        }
        if r.op == Op::Flush {
            return Some(Ok(0));
        }
        let n = res as usize;
        if n == 0 && r.done < r.total {
            return Some(Err(match r.op {
                Op::Read => BlockError::UnexpectedEof { offset: at },
                op => BlockError::from_errno(op, at, libc::EIO),
            }));
        }
        r.done += n;
        advance(&mut r.vecs, &mut r.first, n);
        if r.done >= r.total {
            return Some(Ok(r.total));
        }
        self.resubmit(slot)
    }

    fn resubmit(&mut self, slot: usize) -> Option<Result<usize, BlockError>> {
        match self.push(slot) {
            Ok(()) => None,
            Err(err) => Some(Err(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::{BlockOptions, IoVec};

    const BS: usize = 4096;
    const COUNT: usize = 16;

    /// An engine on a fresh context over a file of `COUNT` blocks, block `i` filled
    /// with byte `i`.
    fn engine() -> (tempfile::NamedTempFile, Arc<AioContext>, UringEngine) {
        let img = tempfile::NamedTempFile::new_in("/var/tmp").unwrap();
        let data: Vec<u8> = (0..COUNT * BS).map(|i| (i / BS) as u8).collect();
        std::fs::write(img.path(), &data).unwrap();
        let ctx = AioContext::new().unwrap();
        let file = Arc::new(RawFile::open(img.path(), &BlockOptions::default()).unwrap());
        let engine = UringEngine::new(Arc::clone(&ctx), file).unwrap();
        (img, ctx, engine)
    }

    /// Submits a read of every block into `bufs`; the returned counter counts the
    /// completions that read the right bytes.
    fn read_all(engine: &UringEngine, bufs: &mut [Vec<u8>]) -> Arc<AtomicUsize> {
        let good = Arc::new(AtomicUsize::new(0));
        for (i, buf) in bufs.iter_mut().enumerate() {
            // SAFETY: the buffers outlive the requests: the tests wait for every
            // completion before dropping them.
            let iov = Segments::One(unsafe { IoVec::new(buf.as_mut_ptr(), BS) });
            let good = Arc::clone(&good);
            let req = Request::Read {
                offset: (i * BS) as u64,
                iov,
            };
            engine.submit(
                req,
                Completion::new(move |result| {
                    if result.unwrap() == BS {
                        good.fetch_add(1, Ordering::AcqRel);
                    }
                }),
            );
        }
        good
    }

    fn enters(engine: &UringEngine) -> u64 {
        engine.shared.ring.lock().unwrap().enters
    }

    #[test]
    fn requests_queued_on_the_context_enter_the_kernel_once() {
        let (_img, ctx, engine) = engine();
        let mut bufs = vec![vec![0xffu8; BS]; COUNT];
        let _lock = ctx.acquire();
        let good = read_all(&engine, &mut bufs);
        assert_eq!(enters(&engine), 0, "nothing entered before the flush BH");
        assert_eq!(engine.shared.ring.lock().unwrap().queued.len(), COUNT);
        assert!(engine.shared.flush_bh.is_scheduled());
        ctx.poll_while(|| good.load(Ordering::Acquire) < COUNT);
        assert_eq!(enters(&engine), 1, "one io_uring_enter for the whole batch");
        for (i, buf) in bufs.iter().enumerate() {
            assert!(buf.iter().all(|&b| b == i as u8), "block {i} read back");
        }
    }

    /// Reads block 0; its callback (optionally after a nested dispatch) submits a
    /// read of block 1. Returns how many entries were queued, not yet entered,
    /// right after that second submission, and the engine's enter count.
    fn callback_submits_a_read(nested_dispatch_first: bool) -> (usize, u64) {
        let (_img, ctx, engine) = engine();
        let engine = Arc::new(engine);
        let (mut first, mut second) = (vec![0xffu8; BS], vec![0xffu8; BS]);
        // SAFETY: both buffers outlive their requests: we poll until the second
        // completed, and the second is submitted only after the first completed.
        let iov1 = unsafe { IoVec::new(first.as_mut_ptr(), BS) };
        // SAFETY: as above.
        let iov2 = unsafe { IoVec::new(second.as_mut_ptr(), BS) };
        let queued_after_submit = Arc::new(AtomicUsize::new(usize::MAX));
        let second_done = Arc::new(AtomicUsize::new(0));
        let (e, c, q, d) = (
            Arc::clone(&engine),
            Arc::clone(&ctx),
            Arc::clone(&queued_after_submit),
            Arc::clone(&second_done),
        );
        let _lock = ctx.acquire();
        let read = |offset, iov| Request::Read {
            offset,
            iov: Segments::One(iov),
        };
        engine.submit(
            read(0, iov1),
            Completion::new(move |result| {
                assert_eq!(result.unwrap(), BS);
                if nested_dispatch_first {
                    // What a callback waiting in a nested poll runs.
                    c.poll(false);
                }
                let done = Completion::new(move |r: Result<usize, BlockError>| {
                    d.store(r.unwrap(), Ordering::Release);
                });
                e.submit(read(BS as u64, iov2), done);
                q.store(
                    e.shared.ring.lock().unwrap().queued.len(),
                    Ordering::Release,
                );
            }),
        );
        ctx.poll_while(|| second_done.load(Ordering::Acquire) == 0);
        assert!(first.iter().all(|&b| b == 0) && second.iter().all(|&b| b == 1));
        (queued_after_submit.load(Ordering::Acquire), enters(&engine))
    }

    #[test]
    fn a_completion_callbacks_request_enters_the_kernel_at_once() {
        let (queued, enters) = callback_submits_a_read(false);
        assert_eq!(
            queued, 0,
            "the callback's request waited in the submission queue"
        );
        assert_eq!(enters, 2, "one enter for each request");
    }

    #[test]
    fn a_callbacks_nested_dispatch_plugs_its_submissions_again() {
        let (queued, _) = callback_submits_a_read(true);
        assert_eq!(queued, 1, "a nested dispatch's request was not plugged");
    }

    #[test]
    fn requests_from_a_thread_off_the_context_enter_at_once() {
        let (_img, ctx, engine) = engine();
        let mut bufs = vec![vec![0xffu8; BS]; COUNT];
        let good = read_all(&engine, &mut bufs);
        assert_eq!(enters(&engine), COUNT as u64);
        assert!(engine.shared.ring.lock().unwrap().queued.is_empty());
        assert!(!engine.shared.flush_bh.is_scheduled());
        let _lock = ctx.acquire();
        ctx.poll_while(|| good.load(Ordering::Acquire) < COUNT);
        assert!(bufs.iter().enumerate().all(|(i, b)| b[0] == i as u8));
    }

    #[test]
    fn a_synchronous_submission_runs_on_the_caller_and_bypasses_the_ring() {
        let (_img, ctx, engine) = engine();
        let mut bufs = vec![vec![0xffu8; BS]; COUNT];
        let _lock = ctx.acquire();
        let good = crate::engine::submit_at_once(|| read_all(&engine, &mut bufs));
        // Already read on this thread; the completions wait for our poll.
        assert!(bufs.iter().enumerate().all(|(i, b)| b[0] == i as u8));
        assert_eq!(enters(&engine), 0);
        assert!(engine.shared.ring.lock().unwrap().queued.is_empty());
        assert!(
            !engine.shared.flush_bh.is_scheduled(),
            "no wake-up for the iothread"
        );
        assert_eq!(ctx.thread_pool().workers(), 0, "no pool worker either");
        // Outside the scope, submissions on the context are batched again.
        let mut more = vec![vec![0xffu8; BS]; COUNT];
        let more_good = read_all(&engine, &mut more);
        assert!(engine.shared.flush_bh.is_scheduled());
        ctx.poll_while(|| {
            good.load(Ordering::Acquire) < COUNT || more_good.load(Ordering::Acquire) < COUNT
        });
        assert_eq!(enters(&engine), 1);
    }

    #[test]
    fn a_batch_the_kernel_refuses_for_lack_of_resources_is_retried() {
        // A hang here is the bug: abort (failing the run) instead of stalling CI.
        let (alive, watchdog) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let limit = std::time::Duration::from_secs(20);
            if watchdog.recv_timeout(limit) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                eprintln!("a refused batch was never retried: aborting");
                std::process::abort();
            }
        });
        let (_img, ctx, engine) = engine();
        let _lock = ctx.acquire();
        // The batch's enter fails with EAGAIN and nothing else is in flight: no
        // completion will bring a reap, so only the retry timer can send it.
        engine.shared.ring.lock().unwrap().fail_next_enter = Some(libc::EAGAIN);
        let mut bufs = vec![vec![0xffu8; BS]; COUNT];
        let good = read_all(&engine, &mut bufs);
        ctx.poll_while(|| good.load(Ordering::Acquire) < COUNT);
        assert_eq!(
            enters(&engine),
            1,
            "the refused batch was entered once more"
        );
        assert!(bufs.iter().enumerate().all(|(i, b)| b[0] == i as u8));
        drop(alive);
    }

    #[test]
    fn a_hard_enter_failure_fails_its_batch_and_never_enters_again() {
        let (img, ctx, engine) = engine();
        let _lock = ctx.acquire();
        engine.shared.ring.lock().unwrap().fail_next_enter = Some(libc::EINVAL);
        // Two plugged writes of 0xee; their enter fails.
        let zapped = vec![0xeeu8; 2 * BS];
        let failed = Arc::new(AtomicUsize::new(0));
        for i in 0..2 {
            let f = Arc::clone(&failed);
            let base = zapped[i * BS..].as_ptr().cast_mut();
            // SAFETY: `zapped` outlives the requests (waited for below), and the
            // write only reads through the pointer.
            let iov = Segments::One(unsafe { IoVec::new(base, BS) });
            let req = Request::Write {
                offset: (i * BS) as u64,
                iov,
                fua: false,
            };
            engine.submit(
                req,
                Completion::new(move |result| {
                    if matches!(result, Err(BlockError::Io { .. })) {
                        f.fetch_add(1, Ordering::AcqRel);
                    }
                }),
            );
        }
        ctx.poll_while(|| failed.load(Ordering::Acquire) < 2);
        assert_eq!(enters(&engine), 0);
        // Later requests still work (through the pool), and the ring stays shut.
        let mut bufs = vec![vec![0xffu8; BS]; COUNT];
        let good = read_all(&engine, &mut bufs);
        ctx.poll_while(|| good.load(Ordering::Acquire) < COUNT);
        assert_eq!(enters(&engine), 0, "a broken ring was entered again");
        // The failed writes never reached the file.
        let data = std::fs::read(img.path()).unwrap();
        assert!(data[..2 * BS]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i / BS) as u8));
    }

    /// The calling thread's io-wq limits (bounded, unbounded), read through
    /// `engine`'s ring (zeros change nothing).
    fn own_iowq_limits(engine: &UringEngine) -> [u32; 2] {
        let ring = engine.shared.ring.lock().unwrap();
        let mut limits = [0, 0];
        ring.ring
            .submitter()
            .register_iowq_max_workers(&mut limits)
            .unwrap();
        limits
    }

    #[test]
    fn a_memory_backed_disk_caps_the_submitters_io_wq_until_a_disk_that_blocks_joins() {
        let shm = tempfile::NamedTempFile::new_in("/dev/shm").unwrap();
        std::fs::write(shm.path(), vec![7u8; COUNT * BS]).unwrap();
        let ctx = AioContext::new().unwrap();
        let shm_file = Arc::new(RawFile::open(shm.path(), &BlockOptions::default()).unwrap());
        assert!(shm_file.is_memory_backed());
        let tmpfs = Arc::new(UringEngine::new(Arc::clone(&ctx), shm_file).unwrap());
        let cap = std::thread::available_parallelism().unwrap().get() as u32;
        // SAFETY: sysconf only reads a system value.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } as u32;
        let default = ENTRIES.min(4 * online);
        assert_ne!(cap, default);

        // A fresh thread: its io-wq is made at its first submission, with
        // the limit the ring carries; it then stays attached to the ring.
        let (ask, asked) = std::sync::mpsc::channel::<()>();
        let (tell, told) = std::sync::mpsc::channel::<[u32; 2]>();
        let submitter = {
            let (ctx, tmpfs) = (Arc::clone(&ctx), Arc::clone(&tmpfs));
            std::thread::spawn(move || {
                {
                    let mut bufs = vec![vec![0u8; BS]; 4];
                    let _lock = ctx.acquire();
                    let good = read_all(&tmpfs, &mut bufs);
                    ctx.poll_while(|| good.load(Ordering::Acquire) < 4);
                }
                while asked.recv().is_ok() {
                    tell.send(own_iowq_limits(&tmpfs)).unwrap();
                }
            })
        };
        let limits = || {
            ask.send(()).unwrap();
            told.recv().unwrap()
        };
        assert_eq!(
            limits()[0],
            cap,
            "all disks memory-backed: one worker per CPU"
        );

        // A second disk on the same context, on a file system that blocks:
        // the cap goes for the thread's whole io-wq, through the first ring.
        let img = tempfile::NamedTempFile::new_in("/var/tmp").unwrap();
        std::fs::write(img.path(), vec![1u8; COUNT * BS]).unwrap();
        let disk_file = Arc::new(RawFile::open(img.path(), &BlockOptions::default()).unwrap());
        let blocks = !disk_file.is_memory_backed();
        let disk = UringEngine::new(Arc::clone(&ctx), disk_file).unwrap();
        assert_eq!(limits()[0], if blocks { default } else { cap });

        // It goes again: the cap comes back.
        drop(disk);
        assert_eq!(limits()[0], cap);
        drop(ask);
        submitter.join().unwrap();
    }
}
