//! Fd handlers on epoll.
