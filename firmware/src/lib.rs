//! Firmware images: finding them through QEMU's firmware descriptors, checking
//! them, creating each VM's variable store from a template, and boot-loop payloads.
//!
//! Owns: files and metadata about firmware, never guest state.
//! Must not depend on: any other Hangar crate.
