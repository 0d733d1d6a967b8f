//! The shared event loop (`AioContext`): fd handlers, bottom halves, timers, the
//! cross-thread notifier and its wake-up protocol, and the worker thread pool.
//!
//! Owns: everything about *when* work runs and which thread runs it.
//! Must not depend on: any other Hangar crate, KVM, guest memory or devices.
//!
//! The shape follows QEMU's `AioContext`: one context is shared as
//! `Arc<AioContext>`; an [`IoThread`] runs its loop, and any other thread may run a
//! nested blocking [`AioContext::poll`] on it while holding the context lock. The
//! wake-up protocol that keeps both pollers from sleeping through pending work is
//! described (with its proof) in `docs/event-loop.md`.
//!
//! ```
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::sync::Arc;
//! use event_loop::{AioContext, IoThread};
//!
//! let ctx = AioContext::new()?;
//! let iothread = IoThread::spawn("io0", ctx.clone())?;
//!
//! // A synchronous request from another thread: submit to the pool, then wait in a
//! // nested poll on the iothread's context, holding its lock.
//! let done = Arc::new(AtomicBool::new(false));
//! let d = done.clone();
//! {
//!     let _guard = ctx.acquire();
//!     ctx.thread_pool()
//!         .submit(|| 6 * 7, move |v| d.store(v == 42, Ordering::Release));
//!     ctx.poll_while(|| !done.load(Ordering::Acquire));
//! }
//! assert!(done.load(Ordering::Acquire));
//! iothread.stop();
//! # Ok::<(), event_loop::Error>(())
//! ```

mod bh;
mod busy_poll;
mod context;
mod error;
#[cfg(feature = "fault-knobs")]
mod fault;
mod fd;
mod iothread;
mod lock;
pub mod notify;
mod pool;
mod sys;
mod timer;
mod trace;

pub use bh::BottomHalf;
pub use busy_poll::PollReady;
pub use context::{AioContext, ContextGuard, FdHandler};
pub use error::Error;
#[cfg(feature = "fault-knobs")]
pub use fault::Fault;
pub use iothread::IoThread;
pub use pool::{CompletionSender, JobHandle, Task, ThreadPool};
pub use timer::{coarse_now_ns, now_ns, Timer};
