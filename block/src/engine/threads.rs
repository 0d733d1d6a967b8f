//! `aio=threads`: each request is a blocking syscall on the context's worker pool;
//! the pool runs the completion on the context. Also the executor io_uring falls
//! back to for discard and write-zeroes.

use std::collections::VecDeque;
use std::os::unix::io::RawFd;
use std::sync::{Arc, Mutex, Weak};

use event_loop::{AioContext, BottomHalf, CompletionSender, ContextGuard, Task, ThreadPool};

use super::{advance, Completion, Engine, Request};
use crate::bounce::BounceBuffer;
use crate::iovec::MAX_SEGMENTS;
use crate::raw::RawFile;
use crate::{BlockError, Op};

/// Largest read or write on a memory-backed file that the submitter copies itself
/// (about 10 µs of copying); bigger ones are worth a worker.
const INLINE_MAX_BYTES: u64 = 128 << 10;

/// Plugged requests from one dispatch below this many all run inline; from this
/// many on, a worker's copier job takes part of them (`Plug::share`), so a deep
/// queue keeps a second CPU busy.
const SHARE_FROM: usize = 4;

/// While a copier is at work, the share BH leaves it this many requests (about
/// 25-30 µs of copying) and goes back to the context's other work, whose new
/// requests refill the queue before the copier runs dry; it copies only what
/// is beyond. Without this the context thread emptied the queue, the copier
/// stopped, and the next dispatch had to wake a worker again (in this VM 5-10
/// µs late, idling it a quarter of the time at queue depth 32). The more the
/// context thread does per request besides copying, the more the copier
/// should take: 16 keeps a virtio-scsi iothread (about 1.3 µs of its own per
/// request) mostly out of the copying, and splits the block bench's 31-deep
/// batches about evenly (docs/block.md, seventh session: 4, 8, 16 and half
/// the batch measured on both benches).
const COPIER_KEEPS: usize = 16;

/// A copier that has copied this many requests and still finds work goes to
/// the back of the pool's queue (a new job) instead of going on: under a
/// steady load it would otherwise hold its worker for good, and a pool capped
/// at one worker would never run anyone else's job.
const COPIER_TURN: usize = 256;

/// The copier hands its finished requests back in groups of this many: often
/// enough that the context's callbacks refill the queue while it copies on, few
/// enough lock rounds on the completion queue.
const COPIER_DELIVERS_EVERY: usize = 4;

thread_local! {
    /// Its address tells the threads apart in `Plug::dispatch_run`.
    static THREAD_MARK: u8 = const { 0 };
}

/// The thread-pool engine.
pub(crate) struct ThreadsEngine {
    ctx: Arc<AioContext>,
    plug: Arc<Plug>,
    share_bh: BottomHalf,
}

/// Memory-backed requests queued by a dispatch for its end (`Plug::share`).
struct Plug {
    file: Arc<RawFile>,
    pending: Mutex<Pending>,
    /// (submitting thread, dispatch generation, small memory copies this backend
    /// got from that thread in that dispatch): per backend, so with two disks
    /// on one iothread each one's first request of a dispatch runs inline.
    dispatch_run: Mutex<(usize, u64, u32)>,
    ctx: Weak<AioContext>,
}

/// The plugged requests and who drains them.
#[derive(Default)]
struct Pending {
    /// Oldest first. Keeps its capacity from one dispatch to the next.
    queue: VecDeque<(Request, Completion)>,
    /// A copier job is queued or running: it takes requests from the front
    /// until it finds the queue empty, and clears this under the same lock.
    copier: bool,
    /// Requests were plugged since the share BH last started: it is scheduled.
    share_due: bool,
}

impl ThreadsEngine {
    pub(crate) fn new(ctx: Arc<AioContext>, file: Arc<RawFile>) -> ThreadsEngine {
        let plug = Arc::new(Plug {
            file,
            pending: Mutex::new(Pending::default()),
            dispatch_run: Mutex::new((0, u64::MAX, 0)),
            ctx: Arc::downgrade(&ctx),
        });
        let bh_plug = Arc::clone(&plug);
        let share_bh = ctx.new_bh("block-threads-share", move || Plug::share(&bh_plug));
        ThreadsEngine {
            ctx,
            plug,
            share_bh,
        }
    }

    /// Whether `req` is a copy on a memory-backed file that a context-lock holder
    /// should not hand to a worker one by one: the hand-off and back costs two
    /// cross-thread wake-ups, several times the few microseconds of the copy.
    fn is_small_memory_copy(&self, req: &Request) -> bool {
        self.plug.file.is_memory_backed()
            && matches!(
                req,
                Request::Read { .. } | Request::Write { .. } | Request::Flush
            )
            && req.len() <= INLINE_MAX_BYTES
    }

    /// How many small memory copies this thread has submitted to this backend in
    /// the context's current dispatch, this one included.
    fn nth_in_this_dispatch(&self) -> u32 {
        let me = THREAD_MARK.with(|m| m as *const u8 as usize);
        let gen = self.ctx.dispatch_generation();
        let mut run = self.plug.dispatch_run.lock().unwrap();
        let count = if (run.0, run.1) == (me, gen) {
            run.2 + 1
        } else {
            1
        };
        *run = (me, gen, count);
        count
    }
}

impl Plug {
    /// Queues a request for `share`; true if it is the first since the share
    /// BH last started (the caller schedules the BH). Not "the queue was
    /// empty": the share BH may have left requests to the copier.
    fn push(&self, req: Request, done: Completion) -> bool {
        let mut pending = self.pending.lock().unwrap();
        pending.queue.push_back((req, done));
        !std::mem::replace(&mut pending.share_due, true)
    }

    /// The share BH (lock held): copies plugged requests, newest first; when
    /// there are enough and no copier is at work, starts one on a worker,
    /// which takes the oldest at the same time. While a copier works, this
    /// stops [`COPIER_KEEPS`] short of the end and leaves those to it;
    /// otherwise it empties the queue.
    ///
    /// Whoever is free takes the next request, so the split follows the
    /// threads' speeds. The rule before, half of each batch to a new job, left
    /// the worker idle about 30% of the time at queue depth 32 (each batch
    /// woke a worker, several different ones in turn) and reached 0.7-0.8x of
    /// fio's 32 psync threads on tmpfs reads; this keeps one copier busy
    /// through the whole run (docs/block.md).
    fn share(self: &Arc<Self>) {
        // A BH runs only on a live context.
        let ctx = self
            .ctx
            .upgrade()
            .expect("the share BH runs on its own context");
        let pool = ctx.thread_pool();
        let start_copier = {
            let mut pending = self.pending.lock().unwrap();
            pending.share_due = false;
            let start = !pending.copier && pending.queue.len() >= SHARE_FROM;
            pending.copier |= start;
            start
        };
        if start_copier {
            self.queue_copier(pool);
        }
        let mut finished: Vec<Box<dyn Task>> = Vec::new();
        loop {
            // Only a lock holder plugs requests (this thread, now in this BH),
            // so the queue only shrinks meanwhile. What is left here the
            // copier takes: it stops only once it finds the queue empty.
            let next = {
                let mut pending = self.pending.lock().unwrap();
                if pending.copier && pending.queue.len() <= COPIER_KEEPS {
                    None
                } else {
                    pending.queue.pop_back()
                }
            };
            let Some((req, done)) = next else { break };
            finished.push(done.with_result(execute(&self.file, &req)));
        }
        let held = ctx.acquire();
        pool.queue_completions(&held, finished);
    }

    /// Queues a copier job (`copier` already set).
    fn queue_copier(self: &Arc<Self>, pool: &ThreadPool) {
        let plug = Arc::clone(self);
        let sender = pool.completion_sender();
        let _job = pool.submit_task(move || {
            Plug::copy(plug, &sender);
            // Everything went back through the completion queue; this
            // zero-sized task (no allocation) is the job's own completion.
            Box::new(|| {})
        });
    }

    /// The copier job (a pool worker, no context lock): copies plugged
    /// requests from the front of the queue until it finds the queue empty,
    /// handing the results back on the pool's completion queue every few
    /// requests. Each callback runs there on its own, on the context, never in
    /// a loop of ours: one of them may wait in a nested poll for a later one
    /// (`drain`, dropping the backend), and a loop up the stack would own it.
    /// After [`COPIER_TURN`] requests with work still queued it hands over to
    /// a new copier job, still counted by `copier`, so nothing left to it
    /// waits for a share BH that may never come.
    ///
    /// The plug (and with it the file and its image lock) goes before the
    /// last results are handed back: the backend's drop waits only for the
    /// callbacks, and an image reopened right after must not find itself
    /// still locked by us. Earlier groups are handed back only once the next
    /// request is taken, so one of ours is still in flight while we hold the
    /// plug. Nor does the copier own the context: it hands back through a
    /// [`CompletionSender`], so the context is never dropped by a copier.
    fn copy(plug: Arc<Plug>, sender: &CompletionSender) {
        let mut finished: Vec<Box<dyn Task>> = Vec::with_capacity(COPIER_DELIVERS_EVERY);
        let mut copied = 0;
        loop {
            let next = {
                let mut pending = plug.pending.lock().unwrap();
                if copied == COPIER_TURN && !pending.queue.is_empty() {
                    // `copier` stays set for the next job. What is queued is
                    // in flight, so its backend, and the context the backend
                    // holds, are alive, and this reference is not the last.
                    drop(pending);
                    let ctx = plug
                        .ctx
                        .upgrade()
                        .expect("requests left to a copier keep their context alive");
                    plug.queue_copier(ctx.thread_pool());
                    break;
                }
                let next = pending.queue.pop_front();
                if next.is_none() {
                    pending.copier = false;
                }
                next
            };
            let Some((req, done)) = next else { break };
            if finished.len() == COPIER_DELIVERS_EVERY {
                sender.queue_completions_later(std::mem::replace(
                    &mut finished,
                    Vec::with_capacity(COPIER_DELIVERS_EVERY),
                ));
            }
            copied += 1;
            finished.push(done.with_result(execute(&plug.file, &req)));
        }
        drop(plug);
        sender.queue_completions_later(finished);
    }
}

impl Engine for ThreadsEngine {
    fn submit(&self, req: Request, done: Completion) {
        if self.ctx.is_held_by_current_thread() {
            let held = self.ctx.acquire();
            let pool = self.ctx.thread_pool();
            if super::submitting_at_once() {
                // A synchronous helper would only sleep in its nested poll while
                // a worker ran this: it runs it itself. The completion still
                // reaches it through the pool's BH and that poll.
                return run_here(pool, &held, &self.plug.file, &req, done);
            }
            if self.is_small_memory_copy(&req) {
                // The first such request of a dispatch runs now (the whole of a
                // queue-depth-1 load); later ones wait for the dispatch's end,
                // where `Plug::share` shares them with a copier. Either way the
                // completion runs later, on the context, never inside this call.
                if self.nth_in_this_dispatch() == 1 {
                    return run_here(pool, &held, &self.plug.file, &req, done);
                }
                if self.plug.push(req, done) {
                    self.share_bh.schedule_quiet(&held);
                }
                return;
            }
        }
        let file = Arc::clone(&self.plug.file);
        let _job = self
            .ctx
            .thread_pool()
            .submit_task(move || done.with_result(execute(&file, &req)));
    }
}

/// Runs `req` on this thread, a context-lock holder, and queues `done` as a
/// worker's would be (`ThreadPool::run_inline`'s contract: the holder polls
/// before it lets the lock go).
fn run_here(
    pool: &ThreadPool,
    held: &ContextGuard<'_>,
    file: &RawFile,
    req: &Request,
    done: Completion,
) {
    let result = execute(file, req);
    pool.queue_completion(held, done.with_result(result));
}

/// Performs `req` with blocking syscalls on this thread.
pub(crate) fn execute(file: &RawFile, req: &Request) -> Result<usize, BlockError> {
    let fd = file.fd();
    match req {
        Request::Read { offset, iov } => {
            with_libc_iovecs(iov, |vecs| transfer(fd, *offset, vecs, Op::Read, 0))
        }
        Request::Write { offset, iov, fua } => {
            let flags = if *fua { libc::RWF_DSYNC } else { 0 };
            with_libc_iovecs(iov, |vecs| transfer(fd, *offset, vecs, Op::Write, flags))
        }
        Request::Flush => {
            // SAFETY: fdatasync on an fd the RawFile keeps open.
            let ret = unsafe { libc::fdatasync(fd) };
            if ret < 0 {
                return Err(BlockError::from_io(
                    Op::Flush,
                    0,
                    std::io::Error::last_os_error(),
                ));
            }
            Ok(0)
        }
        Request::Discard { offset, len } => {
            match fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                *offset,
                *len,
            ) {
                // Discard is advisory: a file system without holes just keeps the data.
                Ok(()) | Err(libc::EOPNOTSUPP) => Ok(*len as usize),
                Err(errno) => Err(BlockError::from_errno(Op::Discard, *offset, errno)),
            }
        }
        Request::WriteZeroes { offset, len, unmap } => {
            let mode = if *unmap {
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
            } else {
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
            };
            match fallocate(fd, mode, *offset, *len) {
                Ok(()) => Ok(*len as usize),
                Err(libc::EOPNOTSUPP) | Err(libc::EINVAL) => {
                    write_zero_buffers(file, *offset, *len)
                }
                Err(errno) => Err(BlockError::from_errno(Op::WriteZeroes, *offset, errno)),
            }
        }
    }
}

/// Segment lists up to this long are converted on the stack (no allocation on
/// the common path: one to a few segments per request).
const STACK_SEGMENTS: usize = 8;

/// Runs `f` on `iov` as a mutable `libc::iovec` array (the cursor `transfer` moves).
fn with_libc_iovecs<R>(iov: &[crate::IoVec], f: impl FnOnce(&mut [libc::iovec]) -> R) -> R {
    if iov.len() <= STACK_SEGMENTS {
        let mut stack = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; STACK_SEGMENTS];
        for (slot, v) in stack.iter_mut().zip(iov) {
            *slot = v.to_libc();
        }
        f(&mut stack[..iov.len()])
    } else {
        let mut heap: Vec<libc::iovec> = iov.iter().map(|v| v.to_libc()).collect();
        f(&mut heap)
    }
}

fn fallocate(fd: RawFd, mode: i32, offset: u64, len: u64) -> Result<(), i32> {
    if len == 0 {
        return Ok(());
    }
    loop {
        // SAFETY: fallocate on an open fd; no memory is passed.
        let ret = unsafe { libc::fallocate(fd, mode, offset as libc::off_t, len as libc::off_t) };
        if ret == 0 {
            return Ok(());
        }
        let errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        if errno != libc::EINTR {
            return Err(errno);
        }
    }
}

/// Write-zeroes where the file system cannot zero a range: write zero buffers
/// (aligned, so O_DIRECT accepts them).
fn write_zero_buffers(file: &RawFile, offset: u64, len: u64) -> Result<usize, BlockError> {
    const CHUNK: usize = 1 << 20;
    let zeroes = BounceBuffer::new(CHUNK, 4096);
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        let mut vecs = [zeroes.iovec(n).to_libc()];
        transfer(file.fd(), offset + done, &mut vecs, Op::WriteZeroes, 0)?;
        done += n as u64;
    }
    Ok(len as usize)
}

/// preadv2/pwritev2 until every byte moved, resuming after short transfers.
fn transfer(
    fd: RawFd,
    offset: u64,
    vecs: &mut [libc::iovec],
    op: Op,
    flags: i32,
) -> Result<usize, BlockError> {
    let total: usize = vecs.iter().map(|v| v.iov_len).sum();
    let mut first = 0;
    let mut done = 0usize;
    while done < total {
        let count = (vecs.len() - first).min(MAX_SEGMENTS) as libc::c_int;
        let at = (offset + done as u64) as libc::off_t;
        let ret = if count == 1 && flags == 0 {
            // One segment: plain pread/pwrite, a little cheaper in the kernel than
            // the vectored calls (no iovec array to import).
            let v = vecs[first];
            if op == Op::Read {
                // SAFETY: the segment is valid for writes until completion (IoVec's
                // contract).
                unsafe { libc::pread(fd, v.iov_base, v.iov_len, at) }
            } else {
                // SAFETY: the segment is valid for reads until completion (IoVec's
                // contract).
                unsafe { libc::pwrite(fd, v.iov_base, v.iov_len, at) }
            }
        } else if op == Op::Read {
            // SAFETY: the segments are valid for writes until completion (IoVec's
            // contract); `first..first+count` lies inside `vecs`.
            unsafe { libc::preadv2(fd, vecs[first..].as_ptr(), count, at, flags) }
        } else {
            // SAFETY: the segments are valid for reads until completion (IoVec's
            // contract); `first..first+count` lies inside `vecs`.
            unsafe { libc::pwritev2(fd, vecs[first..].as_ptr(), count, at, flags) }
        };
        if ret < 0 {
            let errno = std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            if errno == libc::EINTR || errno == libc::EAGAIN {
                continue;
            }
            return Err(BlockError::from_errno(op, offset + done as u64, errno));
        }
        if ret == 0 {
            return Err(match op {
                Op::Read => BlockError::UnexpectedEof {
                    offset: offset + done as u64,
                },
                _ => BlockError::from_errno(op, offset + done as u64, libc::EIO),
            });
        }
        done += ret as usize;
        advance(vecs, &mut first, ret as usize);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::engine::Segments;
    use crate::{BlockOptions, IoVec};

    /// A plug on a tmpfs file, with `n` 4 KiB reads queued as if the share BH
    /// had started a copier for them; returns the engine, the completion
    /// count and the buffers (which must outlive the requests).
    fn queued_reads(
        ctx: &Arc<AioContext>,
        n: usize,
    ) -> (
        ThreadsEngine,
        Arc<AtomicUsize>,
        Vec<u8>,
        tempfile::NamedTempFile,
    ) {
        let img = tempfile::NamedTempFile::new_in("/dev/shm").unwrap();
        img.as_file().set_len(1 << 20).unwrap();
        let file = Arc::new(RawFile::open(img.path(), &BlockOptions::default()).unwrap());
        let engine = ThreadsEngine::new(Arc::clone(ctx), file);
        let completed = Arc::new(AtomicUsize::new(0));
        let mut bufs = vec![0u8; n * 4096];
        {
            let mut pending = engine.plug.pending.lock().unwrap();
            for chunk in bufs.chunks_exact_mut(4096) {
                // SAFETY: `bufs` outlives every request: the test waits for
                // all completions before it drops them.
                let iov = unsafe { IoVec::new(chunk.as_mut_ptr(), 4096) };
                let count = Arc::clone(&completed);
                pending.queue.push_back((
                    Request::Read {
                        offset: 0,
                        iov: Segments::One(iov),
                    },
                    Completion::new(move |r| {
                        assert_eq!(r.unwrap(), 4096);
                        count.fetch_add(1, Ordering::SeqCst);
                    }),
                ));
            }
            pending.copier = true;
        }
        (engine, completed, bufs, img)
    }

    fn poll_until(ctx: &AioContext, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let _g = ctx.acquire();
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting: {what}");
            ctx.poll(false);
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// A copier with more than its turn of work copies its turn, hands over
    /// to a new job queued behind the pool's others (here behind a job that
    /// holds the pool's only worker), and leaves `copier` set so the share BH
    /// keeps leaving requests to it; the new job copies the rest.
    #[test]
    fn a_copier_hands_over_after_its_turn() {
        let ctx = AioContext::new().unwrap();
        let pool = ctx.thread_pool();
        pool.set_max_workers(1);
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let blocker = pool.submit(move || blocked.recv().ok(), |_| {});
        let deadline = Instant::now() + Duration::from_secs(10);
        while !blocker.has_started() {
            assert!(Instant::now() < deadline, "the blocking job never started");
            std::thread::sleep(Duration::from_millis(1));
        }
        let n = COPIER_TURN + 10;
        let (engine, completed, _bufs, _img) = queued_reads(&ctx, n);
        Plug::copy(
            Arc::clone(&engine.plug),
            &ctx.thread_pool().completion_sender(),
        );
        {
            let pending = engine.plug.pending.lock().unwrap();
            assert_eq!(pending.queue.len(), 10, "the copier went past its turn");
            assert!(pending.copier, "handed over, so still counted as at work");
        }
        release.send(()).unwrap();
        poll_until(&ctx, "the next copier's completions", || {
            completed.load(Ordering::SeqCst) == n
        });
        let pending = engine.plug.pending.lock().unwrap();
        assert!(pending.queue.is_empty());
        assert!(!pending.copier, "the last copier found the queue empty");
    }

    /// A copier whose work fits its turn empties the queue and stops.
    #[test]
    fn a_copier_within_its_turn_empties_the_queue_and_stops() {
        let ctx = AioContext::new().unwrap();
        let (engine, completed, _bufs, _img) = queued_reads(&ctx, 20);
        Plug::copy(
            Arc::clone(&engine.plug),
            &ctx.thread_pool().completion_sender(),
        );
        {
            let pending = engine.plug.pending.lock().unwrap();
            assert!(pending.queue.is_empty());
            assert!(!pending.copier);
        }
        poll_until(&ctx, "the copier's completions", || {
            completed.load(Ordering::SeqCst) == 20
        });
        assert_eq!(ctx.thread_pool().workers(), 0, "no successor job");
    }
}
