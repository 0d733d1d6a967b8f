//! Everything that knows it runs on an aarch64 host: registers, the memory map,
//! the device tree, the GIC.

pub mod regs;
pub mod smoke;
