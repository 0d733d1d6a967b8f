//! The crate's error type.

use std::io;

/// Everything that can fail in the event loop; each variant names the operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating the epoll instance failed.
    #[error("creating the epoll instance")]
    EpollCreate(#[source] io::Error),
    /// Creating the notifier eventfd failed.
    #[error("creating the notifier eventfd")]
    EventFdCreate(#[source] io::Error),
    /// Creating the timerfd failed.
    #[error("creating the timerfd")]
    TimerFdCreate(#[source] io::Error),
    /// Registering, changing or removing an fd in epoll failed.
    #[error("registering fd {fd} with epoll")]
    EpollCtl {
        /// The fd being registered.
        fd: i32,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// Spawning a thread (iothread or pool worker) failed.
    #[error("spawning thread {name}")]
    SpawnThread {
        /// The thread's name.
        name: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}
