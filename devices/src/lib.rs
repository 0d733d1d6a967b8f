//! What the guest sees: PL011 UART, PL031 RTC, CFI01 pflash, the virtio-mmio
//! transport and virtio-scsi with its SCSI disk emulation.
//!
//! Owns: device register models and their state machines.
//! Must not depend on: vmm or KVM ioctls (the VMM hands devices eventfds and guest
//! memory), and never opens image files itself (that is `block`'s job).

pub mod console;
pub mod irq;
pub mod mmio;
pub mod pflash;
pub mod pl011;
pub mod pl031;
pub mod virtio;
