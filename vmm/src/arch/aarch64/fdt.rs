//! The device tree Hangar hands the firmware (or a kernel): QEMU `virt`'s
//! layout, with only the devices Hangar has. Differences from QEMU's tree are
//! deliberate and listed in docs/architecture.md ("Device tree").

use vm_fdt::{FdtWriter, FdtWriterNode};

use super::layout::*;

const PHANDLE_GIC: u32 = 1;
const PHANDLE_CLK: u32 = 2;

/// Interrupt specifier cells: type (0 SPI, 1 PPI), number, flags.
const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;
const IRQ_EDGE_RISING: u32 = 1;
const IRQ_LEVEL_HIGH: u32 = 4;

/// What the tree describes.
#[derive(Debug, Clone)]
pub struct FdtConfig {
    pub vcpus: u32,
    pub ram_size: u64,
    pub gic: GicVersion,
    /// Number of virtio-mmio transports in use (numbered from 0).
    pub virtio_mmio: u32,
    /// Whether the two CFI flash banks exist (a firmware boot; a direct
    /// kernel boot has none).
    pub flash: bool,
    /// The kernel command line (a direct kernel boot's).
    pub bootargs: Option<String>,
    /// Start and length of the initramfs in guest memory (a direct kernel boot's).
    pub initrd: Option<(u64, u64)>,
    /// Randomness for a kernel booted without firmware (a direct boot's).
    pub seeds: Option<BootSeeds>,
}

/// The bytes of `/chosen/rng-seed`: what Linux mixes into its entropy pool
/// before any driver runs (and then erases from the tree).
pub const RNG_SEED_LEN: usize = 64;

/// What a kernel booted without firmware cannot get from `EFI_RNG_PROTOCOL`:
/// `/chosen/kaslr-seed`, which arm64 Linux uses to randomise where its image
/// runs (on CPUs without the RNDR instruction the only source it has), and
/// `/chosen/rng-seed`, early entropy. Fresh at every boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSeeds {
    pub kaslr: u64,
    pub rng: [u8; RNG_SEED_LEN],
}

#[derive(Debug, thiserror::Error)]
#[error("building the device tree")]
pub struct FdtError(#[from] vm_fdt::Error);

/// Builds the flattened device tree blob.
pub fn build(cfg: &FdtConfig) -> Result<Vec<u8>, FdtError> {
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", "linux,dummy-virt")?;
    fdt.property_string("model", "hangar,virt")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("interrupt-parent", PHANDLE_GIC)?;

    chosen(&mut fdt, cfg)?;
    memory(&mut fdt, cfg)?;
    cpus(&mut fdt, cfg)?;
    psci(&mut fdt)?;
    timer(&mut fdt, cfg)?;
    gic(&mut fdt, cfg)?;
    apb_clock(&mut fdt)?;
    if cfg.flash {
        flash(&mut fdt)?;
    }
    uart(&mut fdt)?;
    rtc(&mut fdt)?;
    for n in (0..cfg.virtio_mmio).rev() {
        virtio_mmio(&mut fdt, n)?;
    }

    fdt.end_node(root)?;
    Ok(fdt.finish()?)
}

fn node(fdt: &mut FdtWriter, name: &str) -> Result<FdtWriterNode, FdtError> {
    Ok(fdt.begin_node(name)?)
}

fn reg(fdt: &mut FdtWriter, pairs: &[(u64, u64)]) -> Result<(), FdtError> {
    let cells: Vec<u64> = pairs.iter().flat_map(|&(a, s)| [a, s]).collect();
    Ok(fdt.property_array_u64("reg", &cells)?)
}

fn chosen(fdt: &mut FdtWriter, cfg: &FdtConfig) -> Result<(), FdtError> {
    let n = node(fdt, "chosen")?;
    fdt.property_string("stdout-path", &format!("/pl011@{UART_BASE:x}"))?;
    if let Some(args) = &cfg.bootargs {
        fdt.property_string("bootargs", args)?;
    }
    if let Some((start, len)) = cfg.initrd {
        fdt.property_u64("linux,initrd-start", start)?;
        fdt.property_u64("linux,initrd-end", start + len)?;
    }
    if let Some(seeds) = &cfg.seeds {
        fdt.property_u64("kaslr-seed", seeds.kaslr)?;
        fdt.property("rng-seed", &seeds.rng)?;
    }
    Ok(fdt.end_node(n)?)
}

fn memory(fdt: &mut FdtWriter, cfg: &FdtConfig) -> Result<(), FdtError> {
    let n = node(fdt, &format!("memory@{RAM_BASE:x}"))?;
    fdt.property_string("device_type", "memory")?;
    reg(fdt, &[(RAM_BASE, cfg.ram_size)])?;
    Ok(fdt.end_node(n)?)
}

fn cpus(fdt: &mut FdtWriter, cfg: &FdtConfig) -> Result<(), FdtError> {
    let n = node(fdt, "cpus")?;
    fdt.property_u32("#address-cells", 1)?;
    fdt.property_u32("#size-cells", 0)?;
    for cpu in 0..cfg.vcpus {
        let c = node(fdt, &format!("cpu@{cpu}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,arm-v8")?;
        if cfg.vcpus > 1 {
            fdt.property_string("enable-method", "psci")?;
        }
        // MPIDR affinity: KVM gives vCPU n Aff0 = n % 16, Aff1 = n / 16.
        fdt.property_u32("reg", ((cpu / 16) << 8) | (cpu % 16))?;
        fdt.end_node(c)?;
    }
    Ok(fdt.end_node(n)?)
}

fn psci(fdt: &mut FdtWriter) -> Result<(), FdtError> {
    let n = node(fdt, "psci")?;
    fdt.property_string_list("compatible", vec!["arm,psci-0.2".into(), "arm,psci".into()])?;
    fdt.property_string("method", "hvc")?;
    Ok(fdt.end_node(n)?)
}

fn timer(fdt: &mut FdtWriter, cfg: &FdtConfig) -> Result<(), FdtError> {
    let n = node(fdt, "timer")?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,armv8-timer".into(), "arm,armv7-timer".into()],
    )?;
    fdt.property_null("always-on")?;
    // GICv2 PPI flags also carry a CPU mask (bits 8..15), one bit per vCPU.
    let flags = match cfg.gic {
        GicVersion::V3 => IRQ_LEVEL_HIGH,
        GicVersion::V2 => IRQ_LEVEL_HIGH | ((((1u32 << cfg.vcpus.min(8)) - 1) & 0xff) << 8),
    };
    // Secure physical, non-secure physical, virtual, hypervisor timers.
    let cells: Vec<u32> = [13, 14, 11, 10]
        .iter()
        .flat_map(|&ppi| [GIC_PPI, ppi, flags])
        .collect();
    fdt.property_array_u32("interrupts", &cells)?;
    Ok(fdt.end_node(n)?)
}

fn gic(fdt: &mut FdtWriter, cfg: &FdtConfig) -> Result<(), FdtError> {
    let n = node(fdt, &format!("intc@{GIC_DIST_BASE:x}"))?;
    match cfg.gic {
        GicVersion::V3 => {
            fdt.property_string("compatible", "arm,gic-v3")?;
            fdt.property_u32("#redistributor-regions", 1)?;
            let redist = u64::from(cfg.vcpus) * GIC_REDIST_SIZE_PER_CPU;
            reg(
                fdt,
                &[(GIC_DIST_BASE, GIC_DIST_SIZE), (GIC_REDIST_BASE, redist)],
            )?;
        }
        GicVersion::V2 => {
            fdt.property_string("compatible", "arm,cortex-a15-gic")?;
            reg(
                fdt,
                &[(GIC_DIST_BASE, GIC_DIST_SIZE), (GIC_CPU_BASE, GIC_CPU_SIZE)],
            )?;
        }
    }
    fdt.property_u32("#interrupt-cells", 3)?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    // Maintenance interrupt: PPI 9.
    fdt.property_array_u32("interrupts", &[GIC_PPI, 9, IRQ_LEVEL_HIGH])?;
    fdt.property_phandle(PHANDLE_GIC)?;
    Ok(fdt.end_node(n)?)
}

fn apb_clock(fdt: &mut FdtWriter) -> Result<(), FdtError> {
    let n = node(fdt, "apb-pclk")?;
    fdt.property_string("compatible", "fixed-clock")?;
    fdt.property_u32("#clock-cells", 0)?;
    fdt.property_u32("clock-frequency", 24_000_000)?;
    fdt.property_string("clock-output-names", "clk24mhz")?;
    fdt.property_phandle(PHANDLE_CLK)?;
    Ok(fdt.end_node(n)?)
}

fn flash(fdt: &mut FdtWriter) -> Result<(), FdtError> {
    let n = node(fdt, &format!("flash@{FLASH0_BASE:x}"))?;
    fdt.property_string("compatible", "cfi-flash")?;
    reg(
        fdt,
        &[
            (FLASH0_BASE, FLASH_BANK_SIZE),
            (FLASH1_BASE, FLASH_BANK_SIZE),
        ],
    )?;
    fdt.property_u32("bank-width", 4)?;
    Ok(fdt.end_node(n)?)
}

fn primecell(
    fdt: &mut FdtWriter,
    name: &str,
    compatible: &str,
    base: u64,
    size: u64,
    spi: u32,
    clock_names: &[&str],
) -> Result<(), FdtError> {
    let n = node(fdt, &format!("{name}@{base:x}"))?;
    fdt.property_string_list(
        "compatible",
        vec![compatible.to_string(), "arm,primecell".into()],
    )?;
    reg(fdt, &[(base, size)])?;
    fdt.property_array_u32("interrupts", &[GIC_SPI, spi, IRQ_LEVEL_HIGH])?;
    let clocks: Vec<u32> = clock_names.iter().map(|_| PHANDLE_CLK).collect();
    fdt.property_array_u32("clocks", &clocks)?;
    fdt.property_string_list(
        "clock-names",
        clock_names.iter().map(|s| s.to_string()).collect(),
    )?;
    Ok(fdt.end_node(n)?)
}

fn uart(fdt: &mut FdtWriter) -> Result<(), FdtError> {
    primecell(
        fdt,
        "pl011",
        "arm,pl011",
        UART_BASE,
        UART_SIZE,
        UART_SPI,
        &["uartclk", "apb_pclk"],
    )
}

fn rtc(fdt: &mut FdtWriter) -> Result<(), FdtError> {
    primecell(
        fdt,
        "pl031",
        "arm,pl031",
        RTC_BASE,
        RTC_SIZE,
        RTC_SPI,
        &["apb_pclk"],
    )
}

fn virtio_mmio(fdt: &mut FdtWriter, n: u32) -> Result<(), FdtError> {
    let base = virtio_mmio_base(n);
    let node = node(fdt, &format!("virtio_mmio@{base:x}"))?;
    fdt.property_string("compatible", "virtio,mmio")?;
    reg(fdt, &[(base, VIRTIO_MMIO_SIZE)])?;
    fdt.property_array_u32(
        "interrupts",
        &[GIC_SPI, VIRTIO_MMIO_SPI_BASE + n, IRQ_EDGE_RISING],
    )?;
    fdt.property_null("dma-coherent")?;
    Ok(fdt.end_node(node)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> FdtConfig {
        FdtConfig {
            vcpus: 2,
            ram_size: 512 << 20,
            gic: GicVersion::V3,
            virtio_mmio: 1,
            flash: true,
            bootargs: None,
            initrd: None,
            seeds: None,
        }
    }

    #[test]
    fn tree_is_valid_and_small_enough_for_ram_base() {
        let blob = build(&config()).unwrap();
        assert_eq!(&blob[..4], &[0xd0, 0x0d, 0xfe, 0xed]);
        assert!(blob.len() < FDT_MAX_SIZE, "{} bytes", blob.len());
    }

    #[test]
    fn tree_names_what_the_firmware_looks_for() {
        let blob = build(&config()).unwrap();
        let text = String::from_utf8_lossy(&blob);
        for needle in [
            "cfi-flash",
            "arm,pl011",
            "arm,pl031",
            "arm,gic-v3",
            "arm,armv8-timer",
            "arm,psci-0.2",
            "virtio,mmio",
            "stdout-path",
            "/pl011@9000000",
        ] {
            assert!(text.contains(needle), "missing {needle}");
        }
    }

    #[test]
    fn a_direct_boot_tree_carries_cmdline_and_initrd_and_no_flash() {
        let cfg = FdtConfig {
            flash: false,
            bootargs: Some("console=ttyAMA0 rdinit=/init".into()),
            initrd: Some((0x5e00_0000, 0x28_0000)),
            seeds: Some(BootSeeds {
                kaslr: 0x0123_4567_89ab_cdef,
                rng: [0xa5; RNG_SEED_LEN],
            }),
            ..config()
        };
        let blob = build(&cfg).unwrap();
        let text = String::from_utf8_lossy(&blob);
        assert!(!text.contains("cfi-flash"), "a direct boot has no flash");
        for needle in [
            "bootargs",
            "console=ttyAMA0 rdinit=/init",
            "linux,initrd-start",
            "linux,initrd-end",
            "kaslr-seed",
            "rng-seed",
        ] {
            assert!(text.contains(needle), "missing {needle}");
        }
        // Big-endian cells, as the kernel reads them.
        let find = |v: u64| blob.windows(8).any(|w| w == v.to_be_bytes());
        assert!(find(0x5e00_0000), "initrd start");
        assert!(find(0x5e28_0000), "initrd end");
        assert!(find(0x0123_4567_89ab_cdef), "kaslr-seed");
        assert!(
            blob.windows(RNG_SEED_LEN)
                .any(|w| w == [0xa5; RNG_SEED_LEN]),
            "rng-seed"
        );
    }

    #[test]
    fn a_firmware_boot_tree_has_no_seeds() {
        // The firmware has EFI_RNG_PROTOCOL; seeds in its tree would go unused.
        let text = String::from_utf8_lossy(&build(&config()).unwrap()).into_owned();
        assert!(!text.contains("kaslr-seed") && !text.contains("rng-seed"));
    }
}
