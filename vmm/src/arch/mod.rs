//! Architecture-specific code. Only aarch64 exists today; callers use the names
//! re-exported here and carry no `cfg` of their own.

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
