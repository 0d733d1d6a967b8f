//! Fd handlers on epoll: the table from epoll tokens to handlers.
//!
//! Every registration gets a fresh token (the epoll `data`), so an event gathered
//! before a handler was replaced or removed (even with the fd number reused) finds
//! no entry, or the new one, never a freed handler. The table lock is never held
//! while a handler runs, so handlers may add and remove handlers, their own included.

use std::collections::HashMap;
use std::os::unix::io::RawFd;
use std::sync::{Arc, Mutex};

use crate::FdHandler;

/// Tokens below this are the context's own fds.
pub(crate) const FIRST_USER_TOKEN: u64 = 16;
/// The notifier eventfd's token.
pub(crate) const NOTIFIER_TOKEN: u64 = 1;
/// The timerfd's token.
pub(crate) const TIMERFD_TOKEN: u64 = 2;

/// One registration of an fd.
pub(crate) struct FdEntry {
    pub(crate) fd: RawFd,
    pub(crate) read: Option<Mutex<FdHandler>>,
    pub(crate) write: Option<Mutex<FdHandler>>,
}

/// Token -> entry, fd -> token.
#[derive(Default)]
pub(crate) struct FdTable {
    pub(crate) by_token: HashMap<u64, Arc<FdEntry>>,
    pub(crate) by_fd: HashMap<RawFd, u64>,
}

/// Runs `h` unless it is already running further up this stack (a nested poll
/// from inside its own handler); level-triggered readiness brings it back.
pub(crate) fn run_handler(h: &Mutex<FdHandler>) -> bool {
    match h.try_lock() {
        Ok(mut f) => {
            (*f)();
            true
        }
        Err(_) => false,
    }
}
