//! Firmware images: finding them through QEMU's firmware descriptors, checking
//! them, creating each VM's variable store from a template, and boot-loop payloads.
//!
//! Owns: files and metadata about firmware, never guest state.
//! Must not depend on: any other Hangar crate.
//!
//! The VMM's path for `--firmware auto`: [`DescriptorSearch::system`] then
//! [`DescriptorSearch::find`] with [`Selection::default`] (aarch64 `virt`, no
//! secure boot) gives the code image and template; [`CodeImage::check`] and
//! [`CodeImage::read`] load bank 0; [`prepare_vars`] with [`VarsLocation::Path`] or
//! [`VarsLocation::state_dir`] yields bank 1's file.
//! Every check happens before the VM starts, and every error names its file.

#![forbid(unsafe_code)]

pub mod descriptor;
mod error;
pub mod image;
pub mod payload;
pub mod varstore;

pub use descriptor::{DescriptorSearch, FirmwareFiles, Selection};
pub use error::FirmwareError;
pub use image::{CodeImage, FLASH_BANK_SIZE};
pub use varstore::{prepare_vars, vm_state_dir, VarStore, VarsLocation};
