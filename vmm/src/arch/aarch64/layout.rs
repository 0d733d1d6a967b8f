//! The guest physical memory map: QEMU's `virt` machine, which EDK2's
//! ArmVirtQemu and Linux both expect (hw/arm/virt.c, `base_memmap`).
//!
//! ```text
//!  0x0000_0000 +----------------------+
//!              | flash bank 0 (code)  |  64 MiB, read-only slot, writes ignored
//!  0x0400_0000 +----------------------+
//!              | flash bank 1 (vars)  |  64 MiB, read-only slot in read-array mode
//!  0x0800_0000 +----------------------+
//!              | GIC distributor      |  64 KiB
//!  0x0801_0000 | GICv2 CPU interface  |  (v2 only)
//!  0x080a_0000 | GICv3 redistributors |  128 KiB per vCPU, up to 0x0900_0000
//!  0x0900_0000 | PL011 UART           |  SPI 1
//!  0x0901_0000 | PL031 RTC            |  SPI 2
//!  0x0a00_0000 | virtio-mmio x 32     |  0x200 each, SPI 16 + n
//!  0x4000_0000 +----------------------+
//!              | RAM                  |  DTB at its base for a firmware boot
//!              +----------------------+
//! ```

/// Which GIC the machine has: v3 when the host can emulate it, else v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GicVersion {
    V2,
    V3,
}

/// Each CFI flash bank.
pub const FLASH_BANK_SIZE: u64 = 64 << 20;
pub const FLASH0_BASE: u64 = 0x0000_0000;
pub const FLASH1_BASE: u64 = FLASH0_BASE + FLASH_BANK_SIZE;

pub const GIC_DIST_BASE: u64 = 0x0800_0000;
pub const GIC_DIST_SIZE: u64 = 0x1_0000;
pub const GIC_CPU_BASE: u64 = 0x0801_0000;
pub const GIC_CPU_SIZE: u64 = 0x1_0000;
pub const GIC_REDIST_BASE: u64 = 0x080a_0000;
/// Two 64 KiB frames (RD and SGI) per vCPU.
pub const GIC_REDIST_SIZE_PER_CPU: u64 = 0x2_0000;
pub const GIC_REDIST_MAX_SIZE: u64 = 0x00f6_0000;
/// Redistributor space limits the vCPU count (123 vCPUs in QEMU's first region).
pub const MAX_VCPUS: u64 = GIC_REDIST_MAX_SIZE / GIC_REDIST_SIZE_PER_CPU;

pub const UART_BASE: u64 = 0x0900_0000;
pub const UART_SIZE: u64 = 0x1000;
pub const UART_SPI: u32 = 1;

pub const RTC_BASE: u64 = 0x0901_0000;
pub const RTC_SIZE: u64 = 0x1000;
pub const RTC_SPI: u32 = 2;

pub const VIRTIO_MMIO_BASE: u64 = 0x0a00_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x200;
pub const VIRTIO_MMIO_COUNT: u32 = 32;
pub const VIRTIO_MMIO_SPI_BASE: u32 = 16;

pub const RAM_BASE: u64 = 0x4000_0000;
/// EDK2 needs room for itself: at least 128 MiB.
pub const MIN_RAM_SIZE: u64 = 128 << 20;

/// The device tree sits at the base of RAM for a firmware boot. The firmware
/// reads it before it copies it away and claims that memory, so the blob must
/// stay small; 64 KiB is far more than Hangar's tree needs.
pub const FDT_MAX_SIZE: usize = 0x1_0000;

/// Shared peripheral interrupts the GIC is created with (multiple of 32).
pub const GIC_NR_IRQS: u32 = 128;

/// Base address of virtio-mmio transport `n`.
pub const fn virtio_mmio_base(n: u32) -> u64 {
    VIRTIO_MMIO_BASE + n as u64 * VIRTIO_MMIO_SIZE
}

// The map's regions never overlap: checked when the crate compiles.
const _: () = {
    assert!(FLASH1_BASE + FLASH_BANK_SIZE <= GIC_DIST_BASE);
    assert!(GIC_REDIST_BASE + GIC_REDIST_MAX_SIZE <= UART_BASE);
    assert!(UART_BASE + UART_SIZE <= RTC_BASE);
    assert!(RTC_BASE + RTC_SIZE <= VIRTIO_MMIO_BASE);
    assert!(virtio_mmio_base(VIRTIO_MMIO_COUNT) <= RAM_BASE);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_match_qemu_virt() {
        assert_eq!(FLASH1_BASE, 0x0400_0000);
        assert_eq!(virtio_mmio_base(1), 0x0a00_0200);
        assert_eq!(MAX_VCPUS, 123);
    }
}
