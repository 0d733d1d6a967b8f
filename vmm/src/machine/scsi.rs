//! The virtio-scsi controller on virtio-mmio transport 0: one disk per `--disk`
//! (target n, LUN 0; max_target n-1, max_lun 0 so firmware that scans every
//! address finds them all), served on the iothread. Kicks arrive as ioeventfds
//! (KVM_IOEVENTFD on QueueNotify, datamatch = queue index) handled on the
//! iothread's context, never on a vCPU thread; interrupts leave through an irqfd
//! on the transport's SPI.

use std::sync::{Arc, Mutex};

use block::{BlockBackend, DiskSpec};
use devices::mmio::MmioDevice;
use devices::virtio::mmio::MMIO_WINDOW_SIZE;
use devices::virtio::scsi::disk::ScsiDiskConfig;
use devices::virtio::scsi::{VirtioScsi, VirtioScsiConfig};
use devices::virtio::MmioTransport;
use event_loop::AioContext;
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::aarch64::layout;

/// Offset of QueueNotify in the virtio-mmio register window.
const QUEUE_NOTIFY: u64 = 0x50;
/// Offset of Status; writing 0 resets the device.
const STATUS: u64 = 0x70;

#[derive(Debug, thiserror::Error)]
pub enum ScsiError {
    #[error("opening disk {path}")]
    OpenDisk {
        path: std::path::PathBuf,
        #[source]
        source: block::BlockError,
    },
    #[error("creating the interrupt eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("setting up virtio-scsi")]
    Setup(#[source] devices::virtio::scsi::ScsiSetupError),
    #[error("registering virtio-scsi queue {0}'s ioeventfd")]
    IoEvent(u32, #[source] kvm_ioctls::Error),
    #[error("registering virtio-scsi's irqfd")]
    IrqFd(#[source] kvm_ioctls::Error),
}

pub struct ScsiController {
    pub transport: Arc<Mutex<MmioTransport>>,
    /// Which virtio-mmio slot (address and SPI) it uses.
    pub slot: u32,
}

impl ScsiController {
    /// Opens every disk on `ctx` and builds the controller; `None` without disks.
    pub fn create(
        disks: &[DiskSpec],
        ctx: &Arc<AioContext>,
        mem: &GuestMemoryMmap,
        vcpus: u32,
    ) -> Result<Option<ScsiController>, ScsiError> {
        if disks.is_empty() {
            return Ok(None);
        }
        let mut configs = Vec::new();
        for (n, spec) in disks.iter().enumerate() {
            let backend = BlockBackend::open(&spec.path, &spec.options, Arc::clone(ctx)).map_err(
                |source| ScsiError::OpenDisk {
                    path: spec.path.clone(),
                    source,
                },
            )?;
            configs.push(ScsiDiskConfig {
                target: n as u8,
                lun: 0,
                serial: format!("hangar-disk{n}"),
                backend: Arc::new(backend),
            });
        }
        let irqfd = EventFd::new(EFD_NONBLOCK).map_err(ScsiError::EventFd)?;
        // max_target / max_lun fitted to the disks (targets 0..n, LUN 0):
        // AAVMF up to edk2-stable202211 abandons its bus scan at the first
        // (target, LUN) with no disk, probing LUNs first; with the default
        // limits it stopped at 0:1 and never saw target 1.
        let config = VirtioScsiConfig {
            num_request_queues: vcpus.clamp(1, 64) as u16,
            ..VirtioScsiConfig::fitted_to(&configs)
        };
        let scsi = VirtioScsi::new(config, configs, Arc::clone(ctx), mem.clone(), irqfd)
            .map_err(ScsiError::Setup)?;
        Ok(Some(ScsiController {
            transport: Arc::new(Mutex::new(MmioTransport::new(Box::new(scsi)))),
            slot: 0,
        }))
    }

    pub fn base(&self) -> u64 {
        layout::virtio_mmio_base(self.slot)
    }

    pub fn size(&self) -> u64 {
        MMIO_WINDOW_SIZE
    }

    /// Wires kicks and the interrupt to a freshly created VM.
    pub fn attach(&self, vm: &VmFd) -> Result<(), ScsiError> {
        let transport = self.transport.lock().unwrap_or_else(|p| p.into_inner());
        for (index, fd) in transport.queue_kick_fds() {
            vm.register_ioevent(fd, &IoEventAddress::Mmio(self.base() + QUEUE_NOTIFY), index)
                .map_err(|e| ScsiError::IoEvent(index, e))?;
        }
        vm.register_irqfd(transport.irqfd(), layout::VIRTIO_MMIO_SPI_BASE + self.slot)
            .map_err(ScsiError::IrqFd)
    }

    /// Puts the device back in its reset state between boots, as the guest's
    /// own status-0 write would (in-flight requests drain first).
    pub fn reset(&self) {
        let mut transport = self.transport.lock().unwrap_or_else(|p| p.into_inner());
        transport.write(STATUS, &0u32.to_le_bytes());
    }
}
