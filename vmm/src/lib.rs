//! The machine: KVM VM and vCPUs, guest memory, the QEMU-`virt`-compatible memory
//! map and device tree, GIC and timer, PSCI power events, the `hangar` command
//! line and the boot-loop reproducer.
//!
//! Owns: everything that touches KVM and wires devices to the guest.
//! Must not be depended on by any other Hangar crate. aarch64 specifics live in
//! `arch::aarch64`; the machine itself is built only on aarch64 hosts, while the
//! command line, configuration checks, bus and device tree build (and are
//! tested) everywhere.

pub mod arch;
pub mod bus;
pub mod cli;
pub mod config;
pub mod direct_kernel;
#[cfg(target_arch = "aarch64")]
pub mod machine;
pub mod run;
pub mod selftest;
pub mod vcpu;
