//! The machine: KVM VM and vCPUs, guest memory, the QEMU-`virt`-compatible memory
//! map and device tree, GIC and timer, PSCI power events, the `hangar` command
//! line and the boot-loop reproducer.
//!
//! Owns: everything that touches KVM and wires devices to the guest.
//! Must not be depended on by any other Hangar crate. All aarch64 specifics live
//! in `arch::aarch64`; everything else compiles on any host so the workspace
//! builds and lints on x86_64 too.

pub mod arch;
pub mod cli;
pub mod selftest;
