//! Fd handlers on epoll: the table from epoll tokens to handlers.
//!
//! Every registration gets a fresh token (the epoll `data`), so an event gathered
//! before a handler was replaced or removed (even with the fd number reused) finds
//! no entry, or the new one, never a freed handler. The table lock is never held
//! while a handler runs, so handlers may add and remove handlers, their own included.

use std::collections::HashMap;
use std::os::unix::io::RawFd;
use std::sync::{Arc, Mutex};

use crate::busy_poll::PollReady;
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
    /// Tells, without a system call, whether `read` has work (busy polling).
    pub(crate) ready: Option<PollReady>,
}

/// Token -> entry, fd -> token.
#[derive(Default)]
pub(crate) struct FdTable {
    pub(crate) by_token: HashMap<u64, Arc<FdEntry>>,
    pub(crate) by_fd: HashMap<RawFd, u64>,
    /// The entries with a readiness check, by token: what the iothread's busy
    /// poll asks (rebuilt when one comes or goes; cloned per spin, not locked).
    pub(crate) polled: Arc<Vec<(u64, PollReady)>>,
}

impl FdTable {
    /// Rebuilds `polled` after entries with a readiness check changed.
    pub(crate) fn rebuild_polled(&mut self) {
        let mut polled: Vec<(u64, PollReady)> = self
            .by_token
            .iter()
            .filter_map(|(token, e)| e.ready.clone().map(|r| (*token, r)))
            .collect();
        polled.sort_by_key(|(token, _)| *token);
        self.polled = Arc::new(polled);
    }
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
