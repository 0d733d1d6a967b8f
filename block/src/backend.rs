//! `BlockBackend`: an open image with its engine, serving async requests on one
//! context.
//!
//! Every request goes: checks (read-only, bounds, O_DIRECT alignment, segment
//! count) -> fault injection (if attached) -> bounce buffer (O_DIRECT with unaligned
//! segments) -> engine. A request refused by a check never reaches the file; its
//! callback still runs on the context, later, never inside the submitting call.
//!
//! Callbacks run on the backend's context with the context lock held, on whichever
//! thread polls it (the iothread, or a thread in a nested poll).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use event_loop::AioContext;

use crate::blkdebug::{FaultInjector, Verdict};
use crate::bounce::BounceBuffer;
use crate::engine::io_uring::UringEngine;
use crate::engine::threads::ThreadsEngine;
use crate::engine::{Completion, Engine, Request, Segments};
use crate::iovec::{total_len, MAX_SEGMENTS};
use crate::options::{AioMode, BlockOptions, DiscardMode};
use crate::raw::RawFile;
use crate::{BlockError, IoVec, Op};

/// How a write reaches stable storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// Done when the data is in the file (host page cache with cache=writeback);
    /// durable after the next flush.
    Normal,
    /// Force unit access: done only when the data is on stable storage (RWF_DSYNC).
    Fua,
}

/// What write-zeroes may do with the range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZeroMode {
    /// Keep the range allocated (fallocate ZERO_RANGE, or written zeroes).
    Allocate,
    /// Punch a hole if `discard=unmap`; otherwise same as `Allocate`.
    MayUnmap,
}

/// The result type of every request: bytes transferred (0 for flush).
pub type IoResult = Result<usize, BlockError>;

/// An open image serving requests on one context. `Send + Sync`; share it as
/// `Arc<BlockBackend>` between the device on the iothread and synchronous users.
pub struct BlockBackend {
    // Field order is drop order: engine before file.
    engine: Arc<dyn Engine>,
    faults: Option<Arc<FaultInjector>>,
    in_flight: Arc<AtomicUsize>,
    file: Arc<RawFile>,
    options: BlockOptions,
    ctx: Arc<AioContext>,
}

impl BlockBackend {
    /// Opens `path` with `options`; completions will run on `ctx`.
    pub fn open(
        path: impl AsRef<Path>,
        options: &BlockOptions,
        ctx: Arc<AioContext>,
    ) -> Result<BlockBackend, BlockError> {
        Self::open_inner(path.as_ref(), options, ctx, None)
    }

    /// Like [`BlockBackend::open`], with requests passing through `faults` first.
    pub fn open_with_faults(
        path: impl AsRef<Path>,
        options: &BlockOptions,
        ctx: Arc<AioContext>,
        faults: Arc<FaultInjector>,
    ) -> Result<BlockBackend, BlockError> {
        Self::open_inner(path.as_ref(), options, ctx, Some(faults))
    }

    fn open_inner(
        path: &Path,
        options: &BlockOptions,
        ctx: Arc<AioContext>,
        faults: Option<Arc<FaultInjector>>,
    ) -> Result<BlockBackend, BlockError> {
        let file = Arc::new(RawFile::open(path, options)?);
        let engine: Arc<dyn Engine> = match options.aio {
            AioMode::Threads => Arc::new(ThreadsEngine::new(Arc::clone(&ctx), Arc::clone(&file))),
            AioMode::IoUring => Arc::new(UringEngine::new(Arc::clone(&ctx), Arc::clone(&file))?),
        };
        Ok(BlockBackend {
            engine,
            faults,
            in_flight: Arc::default(),
            file,
            options: *options,
            ctx,
        })
    }

    /// The context completions run on.
    pub fn context(&self) -> &Arc<AioContext> {
        &self.ctx
    }
    /// The options the image was opened with.
    pub fn options(&self) -> &BlockOptions {
        &self.options
    }
    /// The image path.
    pub fn path(&self) -> &Path {
        self.file.path()
    }
    /// Image size in bytes.
    pub fn size(&self) -> u64 {
        self.file.size()
    }
    /// Logical block size to advertise (512, or the O_DIRECT alignment if larger).
    pub fn logical_block_size(&self) -> u32 {
        self.file.logical_block_size()
    }
    /// Physical block size to advertise (at least the logical one).
    pub fn physical_block_size(&self) -> u32 {
        self.file.physical_block_size()
    }
    /// Offsets and lengths must be multiples of this (1 unless cache=none).
    pub fn request_alignment(&self) -> u64 {
        self.file.request_align()
    }
    /// Whether discards punch holes (discard=unmap and the file system can).
    pub fn supports_discard(&self) -> bool {
        self.options.discard == DiscardMode::Unmap && self.file.discard_supported()
    }
    /// Whether modifying requests are refused.
    pub fn is_readonly(&self) -> bool {
        self.options.readonly
    }
    /// Requests submitted whose callback has not run yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Reads `total_len(iov)` bytes at `offset` into `iov`; `done` runs on the context.
    pub fn aio_readv(
        &self,
        offset: u64,
        iov: Vec<IoVec>,
        done: impl FnOnce(IoResult) + Send + 'static,
    ) {
        let iov = Segments::Many(iov);
        self.submit(Request::Read { offset, iov }, self.counted(done));
    }

    /// Writes `iov` at `offset`; `done` runs on the context once the data is in the
    /// file (on stable storage with [`WriteMode::Fua`]).
    pub fn aio_writev(
        &self,
        offset: u64,
        iov: Vec<IoVec>,
        mode: WriteMode,
        done: impl FnOnce(IoResult) + Send + 'static,
    ) {
        let fua = mode == WriteMode::Fua;
        let iov = Segments::Many(iov);
        self.submit(Request::Write { offset, iov, fua }, self.counted(done));
    }

    /// [`Self::aio_readv`] of one buffer (no list to allocate).
    pub fn aio_read(&self, offset: u64, iov: IoVec, done: impl FnOnce(IoResult) + Send + 'static) {
        let iov = Segments::One(iov);
        self.submit(Request::Read { offset, iov }, self.counted(done));
    }

    /// [`Self::aio_writev`] of one buffer (no list to allocate).
    pub fn aio_write(
        &self,
        offset: u64,
        iov: IoVec,
        mode: WriteMode,
        done: impl FnOnce(IoResult) + Send + 'static,
    ) {
        let fua = mode == WriteMode::Fua;
        let iov = Segments::One(iov);
        self.submit(Request::Write { offset, iov, fua }, self.counted(done));
    }

    /// Flushes completed writes to stable storage (fdatasync).
    pub fn aio_flush(&self, done: impl FnOnce(IoResult) + Send + 'static) {
        self.submit(Request::Flush, self.counted(done));
    }

    /// Discards `len` bytes at `offset` (a hole with discard=unmap; ignored otherwise).
    pub fn aio_discard(&self, offset: u64, len: u64, done: impl FnOnce(IoResult) + Send + 'static) {
        self.submit(Request::Discard { offset, len }, self.counted(done));
    }

    /// Makes `len` bytes at `offset` read as zeroes.
    pub fn aio_write_zeroes(
        &self,
        offset: u64,
        len: u64,
        mode: ZeroMode,
        done: impl FnOnce(IoResult) + Send + 'static,
    ) {
        let unmap = mode == ZeroMode::MayUnmap && self.supports_discard();
        self.submit(
            Request::WriteZeroes { offset, len, unmap },
            self.counted(done),
        );
    }

    /// Checks a request; `Err` means it must not reach the file.
    fn check(&self, req: &Request) -> Result<(), BlockError> {
        let op = req.op();
        if self.options.readonly && op != Op::Read && op != Op::Flush {
            return Err(BlockError::ReadOnly { op });
        }
        if op == Op::Flush {
            return Ok(());
        }
        let (offset, len) = (req.offset(), req.len());
        let size = self.size();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(BlockError::OutOfRange {
                op,
                offset,
                len,
                size,
            });
        }
        let align = self.file.request_align();
        if op != Op::Discard && !(is_multiple(offset, align) && is_multiple(len, align)) {
            return Err(BlockError::Misaligned {
                op,
                offset,
                len,
                align,
            });
        }
        if let Request::Read { iov, .. } | Request::Write { iov, .. } = req {
            if iov.len() > MAX_SEGMENTS {
                return Err(BlockError::TooManySegments {
                    op,
                    count: iov.len(),
                    max: MAX_SEGMENTS,
                });
            }
        }
        Ok(())
    }

    /// `done` as a completion that counts as in flight until it has run. One box
    /// for both: every request pays for this allocation.
    pub(crate) fn counted(&self, done: impl FnOnce(IoResult) + Send + 'static) -> Completion {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let in_flight = Arc::clone(&self.in_flight);
        Completion::new(move |result| {
            in_flight.fetch_sub(1, Ordering::AcqRel);
            done(result);
        })
    }

    /// The in-flight count itself, for a completion that decrements it without
    /// [`Self::counted`]'s box (the synchronous helpers).
    pub(crate) fn in_flight_count(&self) -> &AtomicUsize {
        &self.in_flight
    }

    /// Submits `req`; `done` must be counted in flight: from [`Self::counted`],
    /// or decrementing [`Self::in_flight_count`] as it runs.
    pub(crate) fn submit(&self, req: Request, done: Completion) {
        if let Err(err) = self.check(&req) {
            log::trace!("refused {:?}: {err}", req.op());
            return self.complete_later(done, Err(err));
        }
        let trivially_done = match &req {
            Request::Read { .. } | Request::Write { .. } => req.len() == 0,
            Request::Discard { .. } => !self.supports_discard() || req.len() == 0,
            Request::WriteZeroes { len, .. } => *len == 0,
            Request::Flush => false,
        };
        if trivially_done {
            let len = req.len() as usize;
            return self.complete_later(done, Ok(len));
        }
        let delay = match self
            .faults
            .as_ref()
            .map(|f| f.check(req.op(), req.offset(), req.len()))
        {
            None | Some(Verdict::Pass) => None,
            Some(Verdict::Fail(err)) => return self.complete_later(done, Err(err)),
            Some(Verdict::Delay(d)) => Some(d),
        };
        let (req, done) = self.bounce_if_needed(req, done);
        match delay {
            None => self.engine.submit(req, done),
            Some(delay) => {
                let engine = Arc::clone(&self.engine);
                let _job = self.ctx.thread_pool().submit(
                    move || std::thread::sleep(delay),
                    move |()| engine.submit(req, done),
                );
            }
        }
    }

    /// Completes a request that never reached the engine (refused, or nothing
    /// to do): later, on the context, through the pool's completion queue, which
    /// delivers one callback at a time (a callback may wait in a nested poll for
    /// another such request, as `drain` and dropping the backend do).
    fn complete_later(&self, done: Completion, result: IoResult) {
        self.ctx
            .thread_pool()
            .queue_completion_later(done.with_result(result));
    }

    /// With O_DIRECT, swaps unaligned segments for one aligned bounce buffer (copied
    /// in before a write, copied out after a read, freed after the callback).
    fn bounce_if_needed(&self, req: Request, done: Completion) -> (Request, Completion) {
        let align = self.file.mem_align();
        if !self.file.is_direct() {
            return (req, done);
        }
        match req {
            Request::Read { offset, iov } if !iov.iter().all(|v| v.is_aligned(align)) => {
                let len = total_len(&iov) as usize;
                let bounce = BounceBuffer::new(len, align);
                let inner = Segments::One(bounce.iovec(len));
                let done = Completion::new(move |result| {
                    if let Ok(n) = result {
                        bounce.scatter(&iov, n);
                    }
                    drop(bounce);
                    done.complete(result);
                });
                (Request::Read { offset, iov: inner }, done)
            }
            Request::Write { offset, iov, fua } if !iov.iter().all(|v| v.is_aligned(align)) => {
                let len = total_len(&iov) as usize;
                let mut bounce = BounceBuffer::new(len, align);
                bounce.gather(&iov);
                let inner = Segments::One(bounce.iovec(len));
                let done = Completion::new(move |result| {
                    drop(bounce);
                    done.complete(result);
                });
                (
                    Request::Write {
                        offset,
                        iov: inner,
                        fua,
                    },
                    done,
                )
            }
            req => (req, done),
        }
    }
}

impl Drop for BlockBackend {
    /// Waits for requests in flight: their buffers and callbacks must not outlive
    /// the engine.
    fn drop(&mut self) {
        if self.in_flight() > 0 {
            let _guard = self.ctx.acquire();
            let in_flight = Arc::clone(&self.in_flight);
            self.ctx
                .poll_while(|| in_flight.load(Ordering::Acquire) > 0);
        }
    }
}

/// `value % align == 0`, without a division for the power-of-two alignments
/// devices have: a 64-bit division costs tens of cycles, and every request
/// checks two values.
fn is_multiple(value: u64, align: u64) -> bool {
    if align.is_power_of_two() {
        value & (align - 1) == 0
    } else {
        value.is_multiple_of(align)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn backend_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<BlockBackend>();
        shareable::<Arc<BlockBackend>>();
    }

    #[test]
    fn refused_requests_complete_on_the_context_not_inline() {
        let img = tempfile::NamedTempFile::new_in("/var/tmp").unwrap();
        img.as_file().set_len(4096).unwrap();
        let ctx = AioContext::new().unwrap();
        let b = BlockBackend::open(img.path(), &BlockOptions::default(), ctx.clone()).unwrap();
        let got: Arc<Mutex<Option<IoResult>>> = Arc::default();
        let slot = Arc::clone(&got);
        b.aio_readv(8192, Vec::new(), move |r| *slot.lock().unwrap() = Some(r));
        assert!(got.lock().unwrap().is_none(), "not run inside the call");
        let _g = ctx.acquire();
        ctx.poll_while(|| got.lock().unwrap().is_none());
        let result = got.lock().unwrap().take().unwrap();
        assert!(matches!(
            result,
            Err(BlockError::OutOfRange { op: Op::Read, .. })
        ));
        assert_eq!(b.in_flight(), 0);
    }
}
