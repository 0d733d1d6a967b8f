//! The current KVM VM, shared by things that outlive one boot (interrupt lines,
//! flash slots): a reset in place re-creates the VM, and they follow it.

use std::sync::{Arc, RwLock};

use devices::irq::IrqLine;
use devices::pflash::RomdControl;
use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use vm_memory::MmapRegion;

use crate::arch::aarch64::gic::spi_irq_line;

/// `None` between boots; accesses then do nothing.
#[derive(Clone, Default)]
pub struct VmSlot(Arc<RwLock<Option<Arc<VmFd>>>>);

impl VmSlot {
    pub fn set(&self, vm: Option<Arc<VmFd>>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = vm;
    }

    pub fn get(&self) -> Option<Arc<VmFd>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A level-triggered SPI driven with KVM_IRQ_LINE.
pub struct KvmIrqLine {
    pub vm: VmSlot,
    pub spi: u32,
}

impl IrqLine for KvmIrqLine {
    fn set_level(&self, high: bool) {
        if let Some(vm) = self.vm.get() {
            if let Err(e) = vm.set_irq_line(spi_irq_line(self.spi), high) {
                log::error!("KVM_IRQ_LINE spi {}: {e}", self.spi);
            }
        }
    }
}

/// One flash bank's read-only memory slot (ROMD mode).
pub struct FlashSlot {
    pub vm: VmSlot,
    pub slot: u32,
    pub guest_addr: u64,
    pub region: Arc<MmapRegion>,
}

impl FlashSlot {
    /// Maps (`true`) or removes (`false`) the slot in the current VM.
    pub fn map(&self, mapped: bool) -> Result<(), kvm_ioctls::Error> {
        let Some(vm) = self.vm.get() else {
            return Ok(());
        };
        let desc = kvm_userspace_memory_region {
            slot: self.slot,
            flags: KVM_MEM_READONLY,
            guest_phys_addr: self.guest_addr,
            memory_size: if mapped { self.region.size() as u64 } else { 0 },
            userspace_addr: self.region.as_ptr() as u64,
        };
        // SAFETY: the region is owned by the flash device (an Arc kept alive by
        // this slot) and outlives the VM's use of it: the slot is removed or the
        // VM destroyed before the machine drops the flash. KVM maps it read-only.
        unsafe { vm.set_user_memory_region(desc) }
    }
}

impl RomdControl for FlashSlot {
    fn set_romd(&self, mapped: bool) {
        if let Err(e) = self.map(mapped) {
            log::error!(
                "flash slot {} at {:#x}: {} failed: {e}",
                self.slot,
                self.guest_addr,
                if mapped { "map" } else { "unmap" }
            );
        }
    }
}
