//! The iothread: a thread running a context's own loop.
//!
//! Each iteration is QEMU's prepare / wait / check / dispatch: prepare and wait in
//! the kernel *without* the context lock (so a nested poller on another thread can
//! take the lock meanwhile), then take the lock, check and dispatch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::context::IoThreadCarry;
use crate::{AioContext, Error};

/// A thread running the iothread loop on a context.
pub struct IoThread {
    ctx: Arc<AioContext>,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl IoThread {
    /// Starts the iothread named `name` running `ctx`'s loop.
    pub fn spawn(name: &str, ctx: Arc<AioContext>) -> Result<IoThread, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (ctx.clone(), stop.clone());
        let handle = thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let mut carry = IoThreadCarry::default();
                // Acquire pairs with the Release store in `stop`.
                while !s.load(Ordering::Acquire) {
                    c.iothread_iteration(&mut carry);
                }
            })
            .map_err(|source| Error::SpawnThread {
                name: name.to_string(),
                source,
            })?;
        Ok(IoThread { ctx, stop, handle })
    }

    /// The context this thread runs.
    pub fn context(&self) -> &Arc<AioContext> {
        &self.ctx
    }

    /// Asks the loop to stop, wakes it and joins the thread.
    ///
    /// The stop request is work only the iothread can do, so a nested poller that
    /// clears the notifier could eat a single kick; the kick is therefore repeated
    /// every millisecond until the thread has exited.
    ///
    /// # Panics
    /// If the calling thread holds the context lock: the iothread could never take
    /// it to finish its iteration, and this call would wait forever.
    pub fn stop(self) {
        assert!(
            !self.ctx.is_held_by_current_thread(),
            "IoThread::stop called while holding the context lock"
        );
        self.stop.store(true, Ordering::Release);
        while !self.handle.is_finished() {
            self.ctx.kick();
            thread::sleep(Duration::from_millis(1));
        }
        let _ = self.handle.join();
    }
}
