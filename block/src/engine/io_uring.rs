//! `aio=io_uring`: reads, writes and flushes go through one io_uring ring per
//! backend; completions arrive through an eventfd registered both with the ring and
//! as a read handler on the context, so they run on the context like any other
//! event. Discard and write-zeroes go to the thread pool (fallocate through io_uring
//! would only move the same blocking call to an io-wq worker).
//!
//! Locking: `Ring` is behind a mutex that is never held while a completion callback
//! runs (callbacks submit new requests). At most `ENTRIES` requests are in the ring;
//! more wait in `backlog`, so the completion queue (twice as large) cannot overflow.

use std::collections::VecDeque;
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};

use event_loop::AioContext;
use io_uring::{opcode, types, IoUring};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::threads::ThreadsEngine;
use super::{advance, Completion, Engine, Request};
use crate::iovec::MAX_SEGMENTS;
use crate::raw::RawFile;
use crate::{BlockError, Op};

/// Ring size (submission queue entries); the most requests in flight in the kernel.
const ENTRIES: u32 = 128;

/// The io_uring engine.
pub(crate) struct UringEngine {
    shared: Arc<Shared>,
    ctx: Arc<AioContext>,
    fallback: ThreadsEngine,
}

struct Shared {
    ring: Mutex<Ring>,
    eventfd: EventFd,
    file: Arc<RawFile>,
}

struct Ring {
    ring: IoUring,
    /// Requests in the kernel, indexed by their `user_data`.
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    backlog: VecDeque<(Request, Completion)>,
    /// Requests that failed before reaching the kernel, completed at the next reap.
    failed: Vec<(Completion, BlockError)>,
}

/// One read, write or flush in the kernel, with its progress (short transfers are
/// resubmitted for the rest).
struct InFlight {
    op: Op,
    offset: u64,
    fua: bool,
    vecs: Vec<libc::iovec>,
    first: usize,
    done: usize,
    total: usize,
    completion: Completion,
}

// SAFETY: the raw iovec pointers in `InFlight` come from IoVecs whose builders
// promised validity from any thread until completion.
unsafe impl Send for InFlight {}

impl UringEngine {
    /// Creates the ring and its eventfd and registers the completion handler on `ctx`.
    pub(crate) fn new(ctx: Arc<AioContext>, file: Arc<RawFile>) -> Result<UringEngine, BlockError> {
        let setup = |source| BlockError::EngineSetup {
            engine: "io_uring",
            source,
        };
        let ring = IoUring::new(ENTRIES).map_err(setup)?;
        let eventfd = EventFd::new(EFD_NONBLOCK).map_err(setup)?;
        ring.submitter()
            .register_eventfd(eventfd.as_raw_fd())
            .map_err(setup)?;
        let shared = Arc::new(Shared {
            ring: Mutex::new(Ring {
                ring,
                slots: (0..ENTRIES).map(|_| None).collect(),
                free: (0..ENTRIES as usize).rev().collect(),
                backlog: VecDeque::new(),
                failed: Vec::new(),
            }),
            eventfd,
            file: Arc::clone(&file),
        });
        let handler_shared = Arc::clone(&shared);
        ctx.set_fd_handler(
            shared.eventfd.as_raw_fd(),
            Some(Box::new(move || {
                // Read the counter before draining: a completion posted after the
                // drain signals the eventfd again, so none is left behind.
                let _ = handler_shared.eventfd.read();
                handler_shared.reap();
            })),
            None,
        )
        .map_err(BlockError::EventLoop)?;
        let fallback = ThreadsEngine::new(Arc::clone(&ctx), file);
        Ok(UringEngine {
            shared,
            ctx,
            fallback,
        })
    }
}

impl Engine for UringEngine {
    fn submit(&self, req: Request, done: Completion) {
        match req {
            Request::Discard { .. } | Request::WriteZeroes { .. } => {
                self.fallback.submit(req, done)
            }
            _ => {
                let mut ring = self.shared.ring.lock().unwrap();
                if ring.free.is_empty() {
                    ring.backlog.push_back((req, done));
                    return;
                }
                let fd = self.shared.file.fd();
                if let Err((err, done)) = ring.start(fd, req, done) {
                    drop(ring);
                    // Submission failed before the kernel saw the request; complete
                    // through the eventfd path so the callback runs on the context.
                    self.shared.fail_later(err, done);
                }
            }
        }
    }

    fn reap(&self) {
        self.shared.reap();
    }
}

impl Drop for UringEngine {
    /// Removes the completion handler under the context lock: no poller can be inside
    /// it then, so the handler (and its reference to the file, which holds the image
    /// lock) is gone when this returns, and the image can be opened again at once.
    fn drop(&mut self) {
        let _guard = self.ctx.acquire();
        self.ctx.remove_fd_handler(self.shared.eventfd.as_raw_fd());
    }
}

impl Ring {
    /// Puts a fresh request into a free slot and submits it.
    fn start(
        &mut self,
        fd: i32,
        req: Request,
        done: Completion,
    ) -> Result<(), (BlockError, Completion)> {
        let op = req.op();
        let offset = req.offset();
        let (vecs, fua) = match req {
            Request::Read { iov, .. } => (iov.iter().map(|v| v.to_libc()).collect(), false),
            Request::Write { iov, fua, .. } => (iov.iter().map(|v| v.to_libc()).collect(), fua),
            _ => (Vec::new(), false),
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
        self.push(fd, slot).map_err(|err| {
            let inflight = self.slots[slot].take().expect("slot just filled");
            self.free.push(slot);
            (err, inflight.completion)
        })
    }

    /// Pushes the (remaining part of the) request in `slot` and enters the kernel.
    fn push(&mut self, fd: i32, slot: usize) -> Result<(), BlockError> {
        let r = self.slots[slot].as_ref().expect("slot in use");
        let fd = types::Fd(fd);
        let entry = match r.op {
            Op::Read | Op::Write => {
                let count = (r.vecs.len() - r.first).min(MAX_SEGMENTS) as u32;
                // The Vec's heap buffer does not move while the request is in flight
                // (it is never resized), so the kernel may keep this pointer.
                let ptr = r.vecs[r.first..].as_ptr();
                let at = r.offset + r.done as u64;
                if r.op == Op::Read {
                    opcode::Readv::new(fd, ptr, count).offset(at).build()
                } else {
                    let flags = if r.fua { libc::RWF_DSYNC } else { 0 };
                    opcode::Writev::new(fd, ptr, count)
                        .offset(at)
                        .rw_flags(flags)
                        .build()
                }
            }
            _ => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        }
        .user_data(slot as u64);
        let (op, offset) = (r.op, r.offset);
        // SAFETY: the entry points at iovec arrays and buffers that stay valid until
        // its completion is reaped (they live in `slots[slot]` / IoVec's contract).
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            // Cannot happen (slots <= entries and we submit each time), but be safe:
            // flush the queue to the kernel and retry once.
            self.ring
                .submit()
                .map_err(|e| BlockError::from_io(op, offset, e))?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(&entry) }
                .map_err(|_| BlockError::from_errno(op, offset, libc::EAGAIN))?;
        }
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // The kernel is short of resources; the entry stays queued and goes
                // in with the next submit or reap.
                Err(e)
                    if e.raw_os_error() == Some(libc::EAGAIN)
                        || e.raw_os_error() == Some(libc::EBUSY) =>
                {
                    return Ok(())
                }
                Err(e) => return Err(BlockError::from_io(op, offset, e)),
            }
        }
    }
}

impl Shared {
    /// Completes `done` with `err` on the context: parks it and signals the eventfd,
    /// whose handler runs it at the next reap.
    fn fail_later(&self, err: BlockError, done: Completion) {
        self.ring.lock().unwrap().failed.push((done, err));
        let _ = self.eventfd.write(1);
    }

    /// Drains the completion queue, resubmits short transfers, refills from the
    /// backlog, then runs the finished requests' callbacks without the ring lock.
    fn reap(&self) {
        let fd = self.file.fd();
        loop {
            let mut finished: Vec<(Completion, Result<usize, BlockError>)> = Vec::new();
            {
                let mut guard = self.ring.lock().unwrap();
                let ring = &mut *guard;
                finished.extend(ring.failed.drain(..).map(|(done, err)| (done, Err(err))));
                let cqes: Vec<(usize, i32)> = ring
                    .ring
                    .completion()
                    .map(|c| (c.user_data() as usize, c.result()))
                    .collect();
                for (slot, res) in cqes {
                    if let Some(result) = ring.progress(fd, slot, res) {
                        let inflight = ring.slots[slot].take().expect("completed slot in use");
                        ring.free.push(slot);
                        finished.push((inflight.completion, result));
                    }
                }
                while !ring.free.is_empty() {
                    let Some((req, done)) = ring.backlog.pop_front() else {
                        break;
                    };
                    if let Err((err, done)) = ring.start(fd, req, done) {
                        finished.push((done, Err(err)));
                    }
                }
                if finished.is_empty() {
                    return;
                }
            }
            for (done, result) in finished {
                done(result);
            }
        }
    }
}

impl Ring {
    /// Accounts one completion of `slot`: `Some(result)` when the request is finished,
    /// `None` when the rest was resubmitted.
    fn progress(&mut self, fd: i32, slot: usize, res: i32) -> Option<Result<usize, BlockError>> {
        let r = self.slots[slot]
            .as_mut()
            .expect("completion for a slot in use");
        let at = r.offset + r.done as u64;
        if res < 0 {
            let errno = -res;
            if errno == libc::EAGAIN || errno == libc::EINTR {
                return self.resubmit(fd, slot);
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
        self.resubmit(fd, slot)
    }

    fn resubmit(&mut self, fd: i32, slot: usize) -> Option<Result<usize, BlockError>> {
        match self.push(fd, slot) {
            Ok(()) => None,
            Err(err) => Some(Err(err)),
        }
    }
}
