//! The block layer: image files and I/O on them.
//!
//! Owns: opening images (raw; locking, cache modes), the I/O engines (thread pool,
//! io_uring), the async request API completing on an event-loop context, the
//! synchronous helpers built on a nested poll, and fault injection.
//! Must not depend on: devices, vmm, KVM or guest memory types (it takes plain
//! scatter-gather lists of host buffers, [`IoVec`]).
//!
//! Start with [`BlockBackend::open`] (options from [`DiskSpec`] / [`BlockOptions`]),
//! then the `aio_*` methods on the iothread or the synchronous `pread` / `pwrite` /
//! `flush` anywhere. Durability per cache mode is in `docs/block.md`.

mod backend;
pub mod blkdebug;
mod bounce;
mod engine;
mod error;
mod iovec;
mod lock;
pub mod options;
mod raw;
mod sync;

pub use backend::{BlockBackend, IoResult, WriteMode, ZeroMode};
pub use blkdebug::{FaultAction, FaultInjector, FaultRule, InjectedError, RuleId};
pub use error::{BlockError, Op};
pub use iovec::{total_len, IoVec, MAX_SEGMENTS};
pub use options::{AioMode, BlockOptions, CacheMode, DiscardMode, DiskSpec, ImageFormat};
