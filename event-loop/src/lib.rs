//! The shared event loop (`AioContext`): fd handlers, bottom halves, timers, the
//! cross-thread notifier and its wake-up protocol, and the worker thread pool.
//!
//! Owns: everything about *when* work runs and which thread runs it.
//! Must not depend on: any other Hangar crate, KVM, guest memory or devices.
