//! The contract between the virtio-mmio transport and a virtio device model
//! ([`VirtioDevice`]), and the interrupt state they share ([`VirtioInterrupt`]).
//!
//! Owns: what a device must provide (type, queues, features, config space,
//! activation and reset) and how "used buffer" / "config changed" interrupts
//! reach the VMM's irqfd.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use log::warn;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// InterruptStatus bit 0: a used ring was updated.
pub const INTERRUPT_USED_RING: u32 = 1;
/// InterruptStatus bit 1: the configuration (or device status) changed.
pub const INTERRUPT_CONFIG_CHANGE: u32 = 2;

/// A virtio device model behind a transport.
///
/// The transport calls these from the vCPU thread holding the transport's lock.
/// Queues are served elsewhere (the device registers kick handlers on its
/// iothread's context in [`VirtioDevice::activate`]).
pub trait VirtioDevice: Send {
    /// Virtio device ID (8 for SCSI).
    fn device_type(&self) -> u32;
    /// Maximum size of each virtqueue, by index; the length is the queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// Device-specific feature bits (the transport adds VERSION_1, EVENT_IDX, ...).
    fn device_features(&self) -> u64;
    /// Reads `data.len()` bytes of config space at `offset` (zeros past the end).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Guest write to config space (ignored where read-only).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts serving `queues` (index = virtqueue index; `None`: not made ready by
    /// the driver) with the negotiated `features`. An error means the driver's
    /// setup is unusable; the transport then sets DEVICE_NEEDS_RESET.
    fn activate(&mut self, features: u64, queues: Vec<Option<Queue>>) -> Result<(), ActivateError>;
    /// Stops serving queues and returns once no request is in flight any more, so
    /// nothing touches guest memory after the driver sees status 0.
    fn reset(&mut self);
    /// One kick `EventFd` per virtqueue (index = virtqueue index), for the VMM to
    /// register as KVM_IOEVENTFDs on QueueNotify with the index as datamatch.
    fn queue_kick_fds(&self) -> &[EventFd];
    /// The interrupt state shared with the transport.
    fn interrupt(&self) -> &VirtioInterrupt;
}

/// Why activation failed.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// A ready queue's rings do not fit in guest memory or are misaligned.
    #[error("virtqueue {index} is not valid in guest memory")]
    InvalidQueue { index: usize },
    /// A queue the device cannot work without was not made ready.
    #[error("required virtqueue {index} was not set up")]
    MissingQueue { index: usize },
    /// Registering a kick handler on the context failed.
    #[error("cannot register the kick handler of virtqueue {index}")]
    RegisterKick {
        index: usize,
        #[source]
        source: event_loop::Error,
    },
}

/// Interrupt state shared by the transport (vCPU thread: InterruptStatus reads,
/// InterruptACK writes) and the device (iothread: raising interrupts).
/// Lock-free; the irqfd write is the only syscall.
pub struct VirtioInterrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    irqfd: EventFd,
}

impl VirtioInterrupt {
    /// Interrupts go out through `irqfd` (registered by the VMM with KVM_IRQFD).
    pub fn new(irqfd: EventFd) -> VirtioInterrupt {
        VirtioInterrupt {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            irqfd,
        }
    }

    /// Sets `bits` in InterruptStatus and signals the irqfd.
    pub fn raise(&self, bits: u32) {
        // AcqRel: the used-ring writes before this are ordered before the status
        // bit, which the guest reads after taking the interrupt.
        self.status.fetch_or(bits, Ordering::AcqRel);
        if let Err(e) = self.irqfd.write(1) {
            warn!("virtio: cannot signal the irqfd: {e}");
        }
    }

    /// InterruptStatus as the guest reads it.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// InterruptACK: clears `bits`.
    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    /// The device found the driver's rings broken: DEVICE_NEEDS_RESET is shown in
    /// the status register and a configuration-change interrupt is raised.
    pub fn set_needs_reset(&self) {
        if self.needs_reset.load(Ordering::Acquire) {
            return;
        }
        // Interrupt first, flag last: whoever sees DEVICE_NEEDS_RESET also sees
        // the config-change bit and the irqfd signalled. (Two racing callers may
        // both raise; a spurious interrupt is harmless.)
        self.raise(INTERRUPT_CONFIG_CHANGE);
        self.needs_reset.store(true, Ordering::Release);
    }

    /// Whether DEVICE_NEEDS_RESET is pending.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::Acquire)
    }

    /// Back to the initial state (device reset).
    pub fn reset(&self) {
        self.status.store(0, Ordering::Release);
        self.needs_reset.store(false, Ordering::Release);
    }

    /// The irqfd, for the VMM's KVM_IRQFD registration and for tests.
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}
