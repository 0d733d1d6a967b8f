//! The in-kernel interrupt controller: a GICv3 (distributor + one redistributor
//! region), or a GICv2 where the host has no v3 emulation.

use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V2,
    kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3, KVM_DEV_ARM_VGIC_CTRL_INIT,
    KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
    KVM_VGIC_V2_ADDR_TYPE_CPU, KVM_VGIC_V2_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_DIST,
    KVM_VGIC_V3_ADDR_TYPE_REDIST,
};
use kvm_ioctls::{DeviceFd, VmFd};

use super::layout;

pub use super::layout::GicVersion;

/// A created and initialised vGIC.
pub struct Gic {
    pub version: GicVersion,
    pub vcpu_count: u64,
    _device: DeviceFd,
}

#[derive(Debug, thiserror::Error)]
pub enum GicError {
    #[error("creating a GICv3 ({v3}) and a GICv2 ({v2}) both failed")]
    Create {
        v3: kvm_ioctls::Error,
        v2: kvm_ioctls::Error,
    },
    #[error("setting vGIC attribute group {group} attr {attr}")]
    Attr {
        group: u32,
        attr: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
}

impl Gic {
    /// Creates the vGIC for `vcpu_count` vCPUs. Call after every vCPU exists and
    /// has been initialised (KVM_DEV_ARM_VGIC_CTRL_INIT requires it).
    pub fn create(vm: &VmFd, vcpu_count: u64) -> Result<Gic, GicError> {
        let (version, device) = match create_device(vm, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3) {
            Ok(dev) => {
                log::info!("interrupt controller: GICv3");
                (GicVersion::V3, dev)
            }
            Err(v3) => match create_device(vm, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V2) {
                Ok(dev) => {
                    log::info!("interrupt controller: GICv2 (no GICv3 emulation: {v3})");
                    (GicVersion::V2, dev)
                }
                Err(v2) => return Err(GicError::Create { v3, v2 }),
            },
        };
        match version {
            GicVersion::V3 => {
                set_addr(&device, KVM_VGIC_V3_ADDR_TYPE_DIST, layout::GIC_DIST_BASE)?;
                set_addr(
                    &device,
                    KVM_VGIC_V3_ADDR_TYPE_REDIST,
                    layout::GIC_REDIST_BASE,
                )?;
            }
            GicVersion::V2 => {
                set_addr(&device, KVM_VGIC_V2_ADDR_TYPE_DIST, layout::GIC_DIST_BASE)?;
                set_addr(&device, KVM_VGIC_V2_ADDR_TYPE_CPU, layout::GIC_CPU_BASE)?;
            }
        }
        let nr_irqs: u32 = layout::GIC_NR_IRQS;
        set_attr(
            &device,
            KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
            0,
            &nr_irqs as *const u32 as u64,
        )?;
        set_attr(
            &device,
            KVM_DEV_ARM_VGIC_GRP_CTRL,
            u64::from(KVM_DEV_ARM_VGIC_CTRL_INIT),
            0,
        )?;
        Ok(Gic {
            version,
            vcpu_count,
            _device: device,
        })
    }

    /// Size of the redistributor region this GIC uses.
    pub fn redist_size(&self) -> u64 {
        self.vcpu_count * layout::GIC_REDIST_SIZE_PER_CPU
    }
}

fn create_device(vm: &VmFd, type_: u32) -> Result<DeviceFd, kvm_ioctls::Error> {
    let mut dev = kvm_create_device {
        type_,
        fd: 0,
        flags: 0,
    };
    vm.create_device(&mut dev)
}

fn set_addr(device: &DeviceFd, kind: u32, addr: u64) -> Result<(), GicError> {
    set_attr(
        device,
        KVM_DEV_ARM_VGIC_GRP_ADDR,
        u64::from(kind),
        &addr as *const u64 as u64,
    )
}

/// `addr` points at the value for groups that take one; it must outlive the call
/// (all callers pass a reference to a local).
fn set_attr(device: &DeviceFd, group: u32, attr: u64, addr: u64) -> Result<(), GicError> {
    let attr_desc = kvm_device_attr {
        flags: 0,
        group,
        attr,
        addr,
    };
    device
        .set_device_attr(&attr_desc)
        .map_err(|source| GicError::Attr {
            group,
            attr,
            source,
        })
}

/// KVM_IRQ_LINE's `irq` field for a shared peripheral interrupt:
/// type SPI (1) in bits 24..31, interrupt ID (32 + spi) in the low bits.
pub const fn spi_irq_line(spi: u32) -> u32 {
    (1 << 24) | (32 + spi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spi_line_encoding_matches_kvm_abi() {
        assert_eq!(spi_irq_line(1), 0x0100_0021);
    }
}
