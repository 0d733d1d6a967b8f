//! Everything that knows the guest is aarch64: the memory map, the device tree,
//! core registers, the Linux boot protocol, and (on an aarch64 host) the GIC, vCPU set-up and the KVM
//! smoke guest.

pub mod direct_boot;
pub mod fdt;
pub mod layout;
pub mod regs;

#[cfg(target_arch = "aarch64")]
pub mod gic;
#[cfg(target_arch = "aarch64")]
pub mod smoke;
#[cfg(target_arch = "aarch64")]
pub mod vcpu;
