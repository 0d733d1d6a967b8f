//! The iothread: a thread running a context's own loop.

use std::sync::Arc;

use crate::{AioContext, Error};

/// A thread running the iothread loop on a context: prepare / wait in the kernel
/// (without the context lock) / check / dispatch (with the context lock).
pub struct IoThread {
    _todo: (),
}

impl IoThread {
    /// Starts the iothread named `name` running `ctx`'s loop.
    pub fn spawn(_name: &str, _ctx: Arc<AioContext>) -> Result<IoThread, Error> {
        todo!()
    }

    /// Asks the loop to stop, wakes it and joins the thread.
    pub fn stop(self) {
        todo!()
    }
}
