//! One emulated SCSI disk (a logical unit): what the guest is told about it
//! (geometry, identity, limits) and its small amount of SCSI state (stopped,
//! pending unit attention).
//!
//! Owns: the per-LUN state. The image itself sits behind [`ScsiBackend`]; this
//! file never opens files.

use std::sync::Arc;

use super::backend::ScsiBackend;
use super::sense::Sense;

/// How a disk is attached: address on the controller plus its backend.
#[derive(Clone)]
pub struct ScsiDiskConfig {
    /// Target number (virtio-scsi LUN byte 1), `0..=max_target`.
    pub target: u8,
    /// Logical unit number, `0..=max_lun` (at most 16383).
    pub lun: u16,
    /// Unit serial number (VPD page 0x80); printable ASCII, at most 20 chars used.
    pub serial: String,
    /// The image, already opened by the block layer.
    pub backend: Arc<dyn ScsiBackend>,
}

/// What the guest is told about a disk. Derived once from the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskGeometry {
    /// Number of logical blocks.
    pub blocks: u64,
    /// Logical block size in bytes (512 or 4096).
    pub block_size: u32,
    pub read_only: bool,
    /// UNMAP / WRITE SAME with UNMAP reach the image as discards.
    pub discard: bool,
    /// Printable serial (VPD 0x80) and the base of the NAA identifier (VPD 0x83).
    pub serial: String,
    /// Largest READ/WRITE transfer in blocks (VPD 0xB0, also the config's `max_sectors` scale).
    pub max_transfer_blocks: u32,
    /// Target and LUN, part of the device identifier.
    pub target: u8,
    pub lun: u16,
}

/// Largest UNMAP block descriptor count accepted (VPD 0xB0).
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// Largest WRITE SAME / UNMAP length in blocks accepted per descriptor.
pub const MAX_UNMAP_BLOCKS: u32 = 0x0040_0000;
/// Largest WRITE SAME with a non-zero pattern (written through a bounce buffer), in bytes.
pub const MAX_PATTERN_WRITE_BYTES: u64 = 1 << 20;

impl DiskGeometry {
    /// Geometry for `config`, with the image size rounded down to whole blocks.
    pub fn from_config(config: &ScsiDiskConfig, max_transfer_blocks: u32) -> DiskGeometry {
        let block_size = config.backend.block_size();
        DiskGeometry {
            blocks: config.backend.size_bytes() / u64::from(block_size),
            block_size,
            read_only: config.backend.read_only(),
            discard: config.backend.discard(),
            serial: config
                .serial
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .take(20)
                .collect(),
            max_transfer_blocks,
            target: config.target,
            lun: config.lun,
        }
    }

    /// Checks that `[lba, lba + blocks)` lies on the disk.
    pub fn check_range(&self, lba: u64, blocks: u64) -> Result<(), Sense> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.blocks => Ok(()),
            _ => Err(Sense::LBA_OUT_OF_RANGE),
        }
    }

    /// A locally assigned NAA (type 3h) identifier, stable for a serial/target/LUN.
    pub fn naa_identifier(&self) -> u64 {
        // FNV-1a over the identity: deterministic across runs, no dependency.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let lun = self.lun.to_be_bytes();
        for byte in self.serial.bytes().chain([self.target, lun[0], lun[1]]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        (0x3 << 60) | (hash & 0x0fff_ffff_ffff_ffff)
    }
}

/// The SCSI state of one logical unit. Lives under the device lock.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LunState {
    /// START STOP UNIT with START=0 was received: media access fails NOT READY.
    pub stopped: bool,
    /// Pending unit attention, reported by the next command (except INQUIRY,
    /// REPORT LUNS) or returned by REQUEST SENSE.
    pub unit_attention: Option<Sense>,
}

impl LunState {
    /// State after power-on or any reset: running, with a reset unit attention.
    pub fn after_reset() -> LunState {
        LunState {
            stopped: false,
            unit_attention: Some(Sense::RESET_OCCURRED),
        }
    }
}
