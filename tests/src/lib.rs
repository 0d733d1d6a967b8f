//! End-to-end tests and the aarch64 bench.
