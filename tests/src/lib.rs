//! End-to-end tests and the aarch64 bench that runs Hangar under real KVM.
//!
//! Every machine we build on is x86_64; aarch64 KVM is reached nested: QEMU
//! emulates an aarch64 machine with EL2, Debian's arm64 kernel boots in it with
//! KVM, and a cross-built static `hangar` runs inside (docs/bench.md).
//!
//! Owns: installing the bench's prerequisites, fetching guest software into a
//! cache, cross-building, packing the initramfs, booting it and judging the result.
//! Must not depend on: any Hangar crate but `firmware` (for boot-loop payloads);
//! it drives the `hangar` binary from outside.

pub mod bench;
