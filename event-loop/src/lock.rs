//! The recursive context lock.
