//! Architecture-specific code. Only aarch64 exists today. The memory map and
//! device tree are plain data and compile (and are unit-tested) on any host; the
//! parts that call KVM's arm64 ioctls compile only on aarch64.

pub mod aarch64;
