//! I/O engines: who performs a validated request on the file and how its completion
//! gets back to the context.
//!
//! Engines see only requests that already passed the backend's checks (bounds,
//! alignment, read-only), with segments already bounced if O_DIRECT needed it. Each
//! completion callback runs on the backend's context with the context lock held.

pub(crate) mod io_uring;
mod iowq_cap;
pub(crate) mod threads;

use std::cell::Cell;

use event_loop::Task;

use crate::backend::IoResult;
use crate::{IoVec, Op};

thread_local! {
    /// Set while this thread runs `submit_at_once`.
    static AT_ONCE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, in which requests go to the kernel inside `submit` instead of waiting
/// for a batch (the io_uring engine otherwise batches what a context-lock holder
/// submits). For callers that wait for their request right away (the synchronous
/// helpers): they should neither wait for a batch nor schedule one. Only `f` itself
/// is covered: scope it to the submission, not to the wait, whose nested polls run
/// other people's handlers.
pub(crate) fn submit_at_once<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            AT_ONCE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(AT_ONCE.with(|c| c.replace(true)));
    f()
}

/// Whether the calling thread is inside [`submit_at_once`].
pub(crate) fn submitting_at_once() -> bool {
    AT_ONCE.with(Cell::get)
}

/// A request's segments: one held inline (the synchronous helpers, bounce
/// buffers, virtio-scsi's one-buffer requests: no `Vec` to build, in either
/// engine) or a caller's list.
#[derive(Debug)]
pub(crate) enum Segments {
    One(IoVec),
    Many(Vec<IoVec>),
}

impl std::ops::Deref for Segments {
    type Target = [IoVec];

    fn deref(&self) -> &[IoVec] {
        match self {
            Segments::One(one) => std::slice::from_ref(one),
            Segments::Many(list) => list,
        }
    }
}

/// A request as an engine sees it.
#[derive(Debug)]
pub(crate) enum Request {
    Read {
        offset: u64,
        iov: Segments,
    },
    Write {
        offset: u64,
        iov: Segments,
        fua: bool,
    },
    Flush,
    Discard {
        offset: u64,
        len: u64,
    },
    WriteZeroes {
        offset: u64,
        len: u64,
        unmap: bool,
    },
}

impl Request {
    pub(crate) fn op(&self) -> Op {
        match self {
            Request::Read { .. } => Op::Read,
            Request::Write { .. } => Op::Write,
            Request::Flush => Op::Flush,
            Request::Discard { .. } => Op::Discard,
            Request::WriteZeroes { .. } => Op::WriteZeroes,
        }
    }

    pub(crate) fn offset(&self) -> u64 {
        match self {
            Request::Read { offset, .. }
            | Request::Write { offset, .. }
            | Request::Discard { offset, .. }
            | Request::WriteZeroes { offset, .. } => *offset,
            Request::Flush => 0,
        }
    }

    pub(crate) fn len(&self) -> u64 {
        match self {
            Request::Read { iov, .. } | Request::Write { iov, .. } => crate::iovec::total_len(iov),
            Request::Discard { len, .. } | Request::WriteZeroes { len, .. } => *len,
            Request::Flush => 0,
        }
    }
}

/// What runs when a request finishes: on the context, with its lock held.
///
/// The caller's callback boxed once, with room for the result: a finished
/// request goes on the pool's completion queue as this same allocation
/// ([`Self::with_result`]) instead of inside a second one.
pub(crate) struct Completion(Box<dyn Callback>);

/// The boxed part of a [`Completion`].
trait Callback: Task {
    fn store(&mut self, result: IoResult);
}

struct WithResult<F> {
    result: Option<IoResult>,
    callback: F,
}

impl<F: FnOnce(IoResult) + Send> Task for WithResult<F> {
    fn run(self: Box<Self>) {
        let this = *self;
        let result = this
            .result
            .expect("a completion is queued only with its result");
        (this.callback)(result)
    }
}

impl<F: FnOnce(IoResult) + Send> Callback for WithResult<F> {
    fn store(&mut self, result: IoResult) {
        self.result = Some(result);
    }
}

impl Completion {
    pub(crate) fn new(callback: impl FnOnce(IoResult) + Send + 'static) -> Completion {
        Completion(Box::new(WithResult {
            result: None,
            callback,
        }))
    }

    /// Runs the callback now (context lock held).
    pub(crate) fn complete(self, result: IoResult) {
        self.with_result(result).run();
    }

    /// The callback with its result, ready for the pool's completion queue.
    pub(crate) fn with_result(mut self, result: IoResult) -> Box<dyn Task> {
        self.0.store(result);
        self.0
    }
}

/// An I/O engine.
pub(crate) trait Engine: Send + Sync {
    /// Starts `req`; `done` later runs on the context. Any thread.
    fn submit(&self, req: Request, done: Completion);
}

/// Moves the cursor `(vecs, first)` forward by `n` transferred bytes, trimming the
/// segment that was partly done.
pub(crate) fn advance(vecs: &mut [libc::iovec], first: &mut usize, mut n: usize) {
    while n > 0 && *first < vecs.len() {
        let v = &mut vecs[*first];
        if n >= v.iov_len {
            n -= v.iov_len;
            *first += 1;
        } else {
            // SAFETY: `n < iov_len`, so the new base stays inside the same segment.
            v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
            v.iov_len -= n;
            n = 0;
        }
    }
    while *first < vecs.len() && vecs[*first].iov_len == 0 {
        *first += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_trims_partial_segments_and_skips_done_ones() {
        let mut a = [0u8; 10];
        let mut b = [0u8; 20];
        let mut vecs = vec![
            libc::iovec {
                iov_base: a.as_mut_ptr().cast(),
                iov_len: 10,
            },
            libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: 20,
            },
        ];
        let mut first = 0;
        advance(&mut vecs, &mut first, 4);
        assert_eq!((first, vecs[0].iov_len), (0, 6));
        advance(&mut vecs, &mut first, 10);
        assert_eq!(first, 1);
        assert_eq!(vecs[1].iov_len, 16);
        assert_eq!(vecs[1].iov_base as usize, b.as_ptr() as usize + 4);
        advance(&mut vecs, &mut first, 16);
        assert_eq!(first, 2);
    }
}
