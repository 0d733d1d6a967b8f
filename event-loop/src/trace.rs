//! The per-context trace ring.
