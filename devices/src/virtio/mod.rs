//! Virtio devices: the virtio-mmio transport (`mmio.rs`), the device contract
//! and shared interrupt state (`device.rs`), and virtio-scsi (`scsi/`).

pub mod device;
pub mod mmio;
pub mod scsi;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;

pub use device::{ActivateError, VirtioDevice, VirtioInterrupt};
pub use mmio::MmioTransport;
