//! Virtio devices: the virtio-mmio transport and virtio-scsi.

pub mod scsi;
