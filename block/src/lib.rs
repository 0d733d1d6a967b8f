//! The block layer: image files and I/O on them.
//!
//! Owns: opening images (raw; locking, cache modes), the I/O engines (thread pool,
//! io_uring), the async request API completing on an event-loop context, the
//! synchronous helpers built on a nested poll, and fault injection.
//! Must not depend on: devices, vmm, KVM or guest memory types (it takes plain
//! scatter-gather lists of host buffers).
