//! `MemBackend`: an in-memory [`ScsiBackend`] for tests and fuzzing (feature
//! `test-utils`). Completes inline or on demand, can fail requests on purpose,
//! and records what it was asked to do.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use super::backend::{BackendError, BackendRequest, IoCompletion, ScsiBackend};

/// When requests complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompletionMode {
    /// Inside `submit`.
    Inline,
    /// When the test calls [`MemBackend::complete_pending`].
    Deferred,
}

/// What the backend was asked to do (for assertions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    Read { offset: u64, len: u64 },
    Write { offset: u64, len: u64, fua: bool },
    Flush,
    Discard { offset: u64, len: u64 },
    WriteZeroes { offset: u64, len: u64, unmap: bool },
}

/// An image held in a `Vec<u8>`.
pub struct MemBackend {
    data: Mutex<Vec<u8>>,
    block_size: u32,
    read_only: bool,
    discard: bool,
    mode: CompletionMode,
    pending: Mutex<VecDeque<(BackendRequest, IoCompletion)>>,
    fail: AtomicBool,
    log: Mutex<Vec<Recorded>>,
    submitted: AtomicU64,
}

impl MemBackend {
    /// A zero-filled image of `size` bytes.
    pub fn new(size: usize, read_only: bool, discard: bool, mode: CompletionMode) -> MemBackend {
        MemBackend {
            data: Mutex::new(vec![0; size]),
            block_size: 512,
            read_only,
            discard,
            mode,
            pending: Mutex::new(VecDeque::new()),
            fail: AtomicBool::new(false),
            log: Mutex::new(Vec::new()),
            submitted: AtomicU64::new(0),
        }
    }

    /// Every later request fails with EIO while `on`.
    pub fn set_failing(&self, on: bool) {
        self.fail.store(on, Ordering::SeqCst);
    }

    /// A copy of the image bytes.
    pub fn contents(&self) -> Vec<u8> {
        self.data.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Overwrites image bytes at `offset`.
    pub fn fill(&self, offset: usize, bytes: &[u8]) {
        self.data.lock().unwrap_or_else(|e| e.into_inner())[offset..offset + bytes.len()]
            .copy_from_slice(bytes);
    }

    /// Requests seen so far.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Requests waiting (deferred mode).
    pub fn pending(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Number of requests submitted.
    pub fn submitted(&self) -> u64 {
        self.submitted.load(Ordering::SeqCst)
    }

    /// Runs and completes every deferred request; returns how many. Call it
    /// holding the device's context lock (completions expect to run there).
    pub fn complete_pending(&self) -> usize {
        let mut count = 0;
        loop {
            let next = self
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front();
            let Some((request, done)) = next else {
                return count;
            };
            let result = self.perform(request);
            done.complete(result);
            count += 1;
        }
    }

    fn perform(&self, request: BackendRequest) -> Result<usize, BackendError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(BackendError {
                errno: Some(5),
                message: "injected I/O error".into(),
            });
        }
        let mut data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        let range = |offset: u64, len: u64| -> Result<std::ops::Range<usize>, BackendError> {
            let end = offset.checked_add(len).filter(|&e| e <= data.len() as u64);
            end.map(|e| offset as usize..e as usize)
                .ok_or(BackendError {
                    errno: Some(22),
                    message: "out of range".into(),
                })
        };
        match request {
            BackendRequest::Read { offset, bufs } => {
                let len: u64 = bufs.iter().map(|b| b.len as u64).sum();
                let r = range(offset, len)?;
                let mut at = r.start;
                for b in bufs.iter() {
                    // SAFETY: `submit`'s caller promised each buffer is valid and
                    // ours until completion, which has not happened yet.
                    let dst = unsafe { std::slice::from_raw_parts_mut(b.ptr, b.len) };
                    dst.copy_from_slice(&data[at..at + b.len]);
                    at += b.len;
                }
                Ok(len as usize)
            }
            BackendRequest::Write { offset, bufs, .. } => {
                if self.read_only {
                    return Err(BackendError {
                        errno: Some(30),
                        message: "read-only".into(),
                    });
                }
                let len: u64 = bufs.iter().map(|b| b.len as u64).sum();
                let r = range(offset, len)?;
                let mut at = r.start;
                for b in bufs.iter() {
                    // SAFETY: as for reads.
                    let src = unsafe { std::slice::from_raw_parts(b.ptr, b.len) };
                    data[at..at + b.len].copy_from_slice(src);
                    at += b.len;
                }
                Ok(len as usize)
            }
            BackendRequest::Flush => Ok(0),
            BackendRequest::Discard { offset, len }
            | BackendRequest::WriteZeroes { offset, len, .. } => {
                let r = range(offset, len)?;
                data[r].fill(0);
                Ok(0)
            }
        }
    }
}

impl ScsiBackend for MemBackend {
    fn size_bytes(&self) -> u64 {
        self.data.lock().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn discard(&self) -> bool {
        self.discard
    }

    unsafe fn submit(&self, request: BackendRequest, done: IoCompletion) {
        self.submitted.fetch_add(1, Ordering::SeqCst);
        let sum = |bufs: &[super::backend::HostBuf]| bufs.iter().map(|b| b.len as u64).sum();
        let record = match &request {
            BackendRequest::Read { offset, bufs } => Recorded::Read {
                offset: *offset,
                len: sum(bufs),
            },
            BackendRequest::Write { offset, bufs, fua } => Recorded::Write {
                offset: *offset,
                len: sum(bufs),
                fua: *fua,
            },
            BackendRequest::Flush => Recorded::Flush,
            BackendRequest::Discard { offset, len } => Recorded::Discard {
                offset: *offset,
                len: *len,
            },
            BackendRequest::WriteZeroes { offset, len, unmap } => Recorded::WriteZeroes {
                offset: *offset,
                len: *len,
                unmap: *unmap,
            },
        };
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record);
        match self.mode {
            CompletionMode::Inline => {
                let result = self.perform(request);
                done.complete(result);
            }
            CompletionMode::Deferred => self
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back((request, done)),
        }
    }
}
