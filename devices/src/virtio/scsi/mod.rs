//! virtio-scsi: the controller (`device.rs`), its request and control-queue
//! parsing (`request.rs`), and the SCSI disk emulation split by concern — CDB
//! decoding (`cdb.rs`), the command set (`commands.rs`), sense data (`sense.rs`),
//! per-LUN state (`disk.rs`) and the I/O interface (`backend.rs`); the
//! controller's table of commands at the disk is `in_flight.rs`.

pub mod backend;
pub mod block_backend;
pub mod cdb;
pub mod commands;
pub mod constants;
pub mod device;
pub mod disk;
mod in_flight;
#[cfg(any(test, feature = "test-utils"))]
pub mod mem_backend;
pub mod request;
pub mod sense;

pub use device::{
    ScsiEventSender, ScsiSetupError, ScsiStats, ScsiStatsReader, VirtioScsi, VirtioScsiConfig,
};
pub use disk::ScsiDiskConfig;
