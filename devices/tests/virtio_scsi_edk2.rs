//! virtio-scsi as EDK2's firmware (AAVMF / OVMF) drives it, modelled from the
//! EDK2 sources (facts only, no code): VirtioScsiDxe's lock-step pass-through
//! on the first request queue without EVENT_IDX and its byte-wide config
//! access, ScsiBusDxe's scan of (target, LUN) addresses, and ScsiDiskDxe's
//! start-up sequence on each device found. The scan comes in two flavours:
//! up to edk2-stable202211 (Debian 12's AAVMF, the bench's firmware) the scan
//! is abandoned at the first address with no device; later releases go on.

mod virtio_scsi_common;

use std::sync::Arc;

use devices::mmio::MmioDevice;
use devices::virtio::scsi::backend::ScsiBackend;
use devices::virtio::scsi::mem_backend::{CompletionMode, MemBackend};
use devices::virtio::scsi::{ScsiDiskConfig, VirtioScsi, VirtioScsiConfig};
use devices::virtio::testing::{lun_bytes, MockDriver, ScsiRequestBuilder};
use devices::virtio::MmioTransport;
use event_loop::{AioContext, IoThread};
use virtio_scsi_common::{MEM_SIZE, TIMEOUT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// VirtioScsiDxe's only queue: the first request queue.
const REQUEST_QUEUE: usize = 2;
/// Config space in the virtio-mmio window.
const CONFIG: u64 = 0x100;
/// OvmfPkg.dec defaults (PcdVirtioScsiMaxTargetLimit / MaxLunLimit), which
/// ArmVirtQemu keeps.
const PCD_MAX_TARGET_LIMIT: u16 = 31;
const PCD_MAX_LUN_LIMIT: u32 = 7;
/// sizeof (EFI_SCSI_INQUIRY_DATA) and of the supported-VPD-pages page.
const INQUIRY_DATA_SIZE: u32 = 96;
const SUPPORTED_VPD_PAGES_SIZE: u32 = 4 + 0x100;
/// sizeof (EFI_SCSI_SENSE_DATA).
const SENSE_DATA_SIZE: usize = 18;

/// How ScsiBusDxe treats an address with no device behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scan {
    /// Up to edk2-stable202211: DiscoverScsiDevice's FALSE becomes
    /// EFI_OUT_OF_RESOURCES in ScsiScanCreateDevice, and the start routine
    /// leaves its loop (and frees its bus state) on that status.
    AbandonAtFirstHole,
    /// edk2-stable202302 and later: the address is skipped.
    Everything,
}

/// How the bus scan ended.
#[derive(Debug, PartialEq, Eq)]
enum ScanEnd {
    /// GetNextTargetLun ran out of addresses: the normal end.
    AllAddressesProbed,
    /// Abandoned (through ScsiBusDxe's error exit) at this address.
    AbandonedAt(u8, u16),
}

/// PassThru()'s result and the packet's output fields.
#[derive(Debug)]
struct PassThru {
    /// Ok for VIRTIO_SCSI_S_OK; Err(true) for BAD_TARGET (EFI_TIMEOUT),
    /// Err(false) for any other failure (EFI_DEVICE_ERROR).
    status: Result<(), bool>,
    target_status: u8,
    sense: Vec<u8>,
    data_in: Vec<u8>,
}

/// A disk ScsiDiskDxe installed a Block I/O protocol on.
#[derive(Debug, PartialEq, Eq)]
struct BlockIo {
    target: u8,
    lun: u16,
    last_block: u64,
    block_size: u32,
}

/// The firmware side: VirtioScsiDxe over the mock driver.
struct Firmware {
    driver: MockDriver,
    max_target: u16,
    max_lun: u32,
    tag: u64,
    /// Every address probed by the bus scan, in order.
    probed: Vec<(u8, u16)>,
}

impl Firmware {
    /// VirtioScsiInit: config fields read a byte at a time, the limits
    /// clamped by the PCDs, features without EVENT_IDX, only the first
    /// request queue, cdb_size and sense_size written (byte by byte) before
    /// DRIVER_OK.
    fn init(mut driver: MockDriver) -> Firmware {
        assert_eq!(read_config_bytes(&mut driver, 28, 2), 0, "max_channel");
        assert!(read_config_bytes(&mut driver, 0, 4) >= 1, "num_queues");
        let max_target = read_config_bytes(&mut driver, 30, 2) as u16;
        let max_lun = read_config_bytes(&mut driver, 32, 4) as u32;
        assert!(read_config_bytes(&mut driver, 8, 4) >= 2, "max_sectors");
        assert_eq!(driver.init_queues(&[REQUEST_QUEUE], 256, false), 0xf);
        write_config_bytes(&mut driver, 24, 32);
        write_config_bytes(&mut driver, 20, 96);
        Firmware {
            driver,
            max_target: max_target.min(PCD_MAX_TARGET_LIMIT),
            max_lun: max_lun.min(PCD_MAX_LUN_LIMIT),
            tag: 0,
            probed: Vec::new(),
        }
    }

    /// VirtioScsiPassThru: one chain (request, response, data-in), a kick,
    /// then polling of the used ring — forever in the firmware; here the
    /// mock driver's watchdog fails the test instead.
    fn pass_thru(
        &mut self,
        target: u8,
        lun: u16,
        cdb: &[u8],
        data_in_len: u32,
        sense_len: usize,
    ) -> PassThru {
        self.tag += 1;
        let slot = ScsiRequestBuilder::submit(
            &mut self.driver,
            REQUEST_QUEUE,
            lun_bytes(target, lun),
            self.tag,
            cdb,
            &[],
            data_in_len,
        )
        .expect("the firmware has one request in flight at a time");
        self.driver.kick_mmio(REQUEST_QUEUE);
        let used = self.driver.wait_used(REQUEST_QUEUE, 1, TIMEOUT);
        let r = ScsiRequestBuilder::response(&self.driver, &slot, used[0].1);
        self.driver.reset_alloc();
        let status = match r.response {
            0 => Ok(()),
            3 => Err(true),
            _ => Err(false),
        };
        let mut sense = r.sense;
        sense.truncate(sense_len);
        PassThru {
            status,
            target_status: r.status,
            sense,
            data_in: r.data_in,
        }
    }

    /// ScsiBusDxe's start with no remaining device path (BDS connecting
    /// everything): GetNextTargetLun over every address up to the clamped
    /// limits — LUN first — and DiscoverScsiDevice on each.
    fn scan_bus(&mut self, scan: Scan) -> (Vec<(u8, u16)>, ScanEnd) {
        let mut found = Vec::new();
        for target in 0..=self.max_target {
            for lun in 0..=self.max_lun {
                let (target, lun) = (target as u8, lun as u16);
                self.probed.push((target, lun));
                if self.discover(target, lun) {
                    found.push((target, lun));
                } else if scan == Scan::AbandonAtFirstHole {
                    return (found, ScanEnd::AbandonedAt(target, lun));
                }
            }
        }
        (found, ScanEnd::AllAddressesProbed)
    }

    /// DiscoverScsiDevice: INQUIRY, tried twice on failure; CHECK CONDITION
    /// with ILLEGAL REQUEST, a qualifier other than 0 or a reserved device
    /// type mean "no device".
    fn discover(&mut self, target: u8, lun: u16) -> bool {
        for _ in 0..2 {
            let r = self.pass_thru(
                target,
                lun,
                &[0x12, 0, 0, 0, INQUIRY_DATA_SIZE as u8, 0],
                INQUIRY_DATA_SIZE,
                SENSE_DATA_SIZE,
            );
            if r.status.is_err() {
                continue;
            }
            if r.target_status == 2 && r.sense.len() >= 3 && r.sense[0] == 0x70 && r.sense[2] == 5 {
                return false;
            }
            // The buffer was zeroed: short data reads as zeroes.
            let peripheral = r.data_in.first().copied().unwrap_or(0);
            return peripheral >> 5 == 0 && !(0x14..=0x1d).contains(&(peripheral & 0x1f));
        }
        false
    }

    /// ScsiDiskDxe's start on one device: INQUIRY and its VPD pages, then
    /// DetectMedia (TEST UNIT READY again while the sense says "reset
    /// occurred", REQUEST SENSE when no sense came back, READ CAPACITY(10)),
    /// then a read of block 0 as the partition and FAT drivers do. `None`
    /// where the driver would give up on the device.
    fn start_disk(&mut self, target: u8, lun: u16) -> Option<BlockIo> {
        let inquiry = [0x12, 0, 0, 0, INQUIRY_DATA_SIZE as u8, 0];
        self.pass_thru(target, lun, &inquiry, INQUIRY_DATA_SIZE, 0)
            .status
            .ok()?;
        let vpd = [0x12, 1, 0x00, 0, 0xff, 0];
        let r = self.pass_thru(target, lun, &vpd, SUPPORTED_VPD_PAGES_SIZE, 0);
        if r.status.is_ok() && r.data_in.get(4..).is_some_and(|p| p.contains(&0xb0)) {
            self.pass_thru(target, lun, &[0x12, 1, 0xb0, 0, 64, 0], 64, 0);
        }
        // The firmware retries for up to 120 s; a device that keeps
        // reporting a reset fails here instead.
        let mut ready = false;
        for _ in 0..16 {
            let r = self.pass_thru(target, lun, &[0; 6], 0, 6 * SENSE_DATA_SIZE);
            if r.status.is_err() || !matches!(r.target_status, 0 | 2) {
                return None;
            }
            let sense = if r.sense.is_empty() {
                let request_sense = [0x03, 0, 0, 0, SENSE_DATA_SIZE as u8, 0];
                let s = self.pass_thru(target, lun, &request_sense, SENSE_DATA_SIZE as u32, 0);
                s.status.ok()?;
                s.data_in
            } else {
                r.sense
            };
            match (sense.get(2).map_or(0, |k| k & 0x0f), sense.get(12)) {
                (0, _) | (6, Some(0x28)) => {
                    ready = true;
                    break;
                }
                (6, Some(0x29)) | (2, Some(0x04)) => continue,
                _ => return None,
            }
        }
        if !ready {
            return None;
        }
        // GetMediaInfo takes the buffer whenever PassThru succeeded, CHECK
        // CONDITION or not: a zero block size is what a failure looks like.
        let r = self.pass_thru(target, lun, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8, 0);
        r.status.ok()?;
        let mut capacity = r.data_in;
        capacity.resize(8, 0);
        let last_block = u64::from(u32::from_be_bytes(capacity[0..4].try_into().ok()?));
        let block_size = u32::from_be_bytes(capacity[4..8].try_into().ok()?);
        if block_size == 0 {
            return None;
        }
        let read0 = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        let r = self.pass_thru(target, lun, &read0, block_size, SENSE_DATA_SIZE);
        if r.status.is_err() || r.target_status != 0 {
            return None;
        }
        Some(BlockIo {
            target,
            lun,
            last_block,
            block_size,
        })
    }

    /// Boot-time view: the bus scan, then ScsiDiskDxe on every device found.
    fn boot(&mut self, scan: Scan) -> (Vec<BlockIo>, ScanEnd) {
        let (found, end) = self.scan_bus(scan);
        let disks = found
            .into_iter()
            .filter_map(|(t, l)| self.start_disk(t, l))
            .collect();
        (disks, end)
    }
}

/// A config field read the way EDK2's virtio-mmio library reads it: a byte
/// at a time.
fn read_config_bytes(driver: &mut MockDriver, offset: u64, len: u64) -> u64 {
    let mut value = 0u64;
    for i in 0..len {
        let mut byte = [0u8];
        driver.transport.read(CONFIG + offset + i, &mut byte);
        value |= u64::from(byte[0]) << (8 * i);
    }
    value
}

/// A 32-bit config field written a byte at a time, as EDK2 does.
fn write_config_bytes(driver: &mut MockDriver, offset: u64, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        driver.transport.write(CONFIG + offset + i as u64, &[*byte]);
    }
}

/// The VMM's wiring: disk n at target n, LUN 0.
fn disk_configs(backends: Vec<Arc<dyn ScsiBackend>>) -> Vec<ScsiDiskConfig> {
    backends
        .into_iter()
        .enumerate()
        .map(|(n, backend)| ScsiDiskConfig {
            target: n as u8,
            lun: 0,
            serial: format!("hangar-disk{n}"),
            backend,
        })
        .collect()
}

/// A controller over `disks` with `config`, initialised by the firmware.
fn firmware_with(
    ctx: &Arc<AioContext>,
    disks: Vec<ScsiDiskConfig>,
    config: VirtioScsiConfig,
) -> Firmware {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("memory");
    let irqfd = EventFd::new(EFD_NONBLOCK).expect("irqfd");
    let irq = irqfd.try_clone().expect("irqfd clone");
    let device =
        VirtioScsi::new(config, disks, Arc::clone(ctx), mem.clone(), irqfd).expect("controller");
    Firmware::init(MockDriver::new(
        mem,
        MmioTransport::new(Box::new(device)),
        irq,
    ))
}

fn mem_disk(mib: usize, read_only: bool) -> Arc<dyn ScsiBackend> {
    Arc::new(MemBackend::new(
        mib << 20,
        read_only,
        false,
        CompletionMode::Inline,
    ))
}

/// The cause of the bench's missing second disk: with the default limits
/// (255 targets, 16383 LUNs; the firmware clamps them to 31 and 7) the old
/// firmware probes 0:0, then 0:1, finds nothing there and gives up, so
/// target 1 is never asked. Newer firmware, which skips holes, sees both.
#[test]
fn old_firmware_abandons_its_scan_at_lun_1_with_the_default_limits() {
    let ctx = AioContext::new().expect("context");
    let iothread = IoThread::spawn("edk2-default", Arc::clone(&ctx)).expect("iothread");
    for (scan, targets, end) in [
        (
            Scan::AbandonAtFirstHole,
            vec![0u8],
            ScanEnd::AbandonedAt(0, 1),
        ),
        (Scan::Everything, vec![0, 1], ScanEnd::AllAddressesProbed),
    ] {
        let disks = disk_configs(vec![mem_disk(32, false), mem_disk(16, true)]);
        let mut fw = firmware_with(&ctx, disks, VirtioScsiConfig::default());
        let (found, how) = fw.boot(scan);
        assert_eq!(how, end, "{scan:?}");
        let seen: Vec<u8> = found.iter().map(|d| d.target).collect();
        assert_eq!(seen, targets, "{scan:?}");
    }
    iothread.stop();
}

/// The fix: limits fitted to the disks. Both firmware flavours find both
/// file-backed disks (a 32 MiB ESP and a 16 MiB data disk, read-only or
/// not, opened by the block layer as `--disk` does), and the scan ends
/// because the addresses ran out, never through the firmware's error exit.
#[test]
fn firmware_finds_every_disk_with_limits_fitted_to_the_disks() {
    use block::{BlockBackend, BlockOptions};
    let ctx = AioContext::new().expect("context");
    let iothread = IoThread::spawn("edk2-fitted", Arc::clone(&ctx)).expect("iothread");
    for scan in [Scan::AbandonAtFirstHole, Scan::Everything] {
        for second_read_only in [true, false] {
            let mut files = Vec::new();
            let mut backends: Vec<Arc<dyn ScsiBackend>> = Vec::new();
            for (mib, readonly) in [(32u64, false), (16, second_read_only)] {
                let file = tempfile::NamedTempFile::new().expect("image");
                file.as_file().set_len(mib << 20).expect("image size");
                let options = BlockOptions {
                    readonly,
                    ..BlockOptions::default()
                };
                let backend =
                    BlockBackend::open(file.path(), &options, Arc::clone(&ctx)).expect("open");
                backends.push(Arc::new(backend));
                files.push(file);
            }
            let disks = disk_configs(backends);
            let config = VirtioScsiConfig {
                num_request_queues: 2,
                ..VirtioScsiConfig::fitted_to(&disks)
            };
            assert_eq!((config.max_target, config.max_lun), (1, 0));
            let mut fw = firmware_with(&ctx, disks, config);
            let (found, end) = fw.boot(scan);
            let what = format!("{scan:?}, second disk read-only: {second_read_only}");
            assert_eq!(end, ScanEnd::AllAddressesProbed, "{what}");
            assert_eq!(fw.probed, vec![(0, 0), (1, 0)], "{what}");
            assert_eq!(
                found,
                vec![
                    BlockIo {
                        target: 0,
                        lun: 0,
                        last_block: (32 << 11) - 1,
                        block_size: 512,
                    },
                    BlockIo {
                        target: 1,
                        lun: 0,
                        last_block: (16 << 11) - 1,
                        block_size: 512,
                    },
                ],
                "{what}"
            );
        }
    }
    iothread.stop();
}

/// Fitted limits for disks spread over targets and LUNs, and for none.
#[test]
fn fitted_limits_are_the_highest_target_and_lun_in_use() {
    let disks: Vec<ScsiDiskConfig> = [(0u8, 0u16), (0, 3), (2, 1)]
        .into_iter()
        .map(|(target, lun)| ScsiDiskConfig {
            target,
            lun,
            serial: String::new(),
            backend: mem_disk(1, false),
        })
        .collect();
    let config = VirtioScsiConfig::fitted_to(&disks);
    assert_eq!((config.max_target, config.max_lun), (2, 3));
    assert_eq!(
        VirtioScsiConfig {
            max_target: 255,
            max_lun: 16383,
            ..config
        },
        VirtioScsiConfig::default(),
        "everything else stays at the defaults"
    );
    let none = VirtioScsiConfig::fitted_to(&[]);
    assert_eq!((none.max_target, none.max_lun), (0, 0));
}

/// EDK2 writes cdb_size and sense_size a byte at a time; the device takes
/// them (it used to ignore anything but whole 32-bit writes), keeps the old
/// value while the field is out of bounds, and a reset restores the defaults.
#[test]
fn config_space_accepts_byte_wide_writes_of_the_driver_fields() {
    let ctx = AioContext::new().expect("context");
    let iothread = IoThread::spawn("edk2-config", Arc::clone(&ctx)).expect("iothread");
    let disks = disk_configs(vec![mem_disk(1, false)]);
    let mut fw = firmware_with(&ctx, disks, VirtioScsiConfig::default());
    let driver = &mut fw.driver;
    write_config_bytes(driver, 20, 40);
    write_config_bytes(driver, 24, 16);
    assert_eq!(read_config_bytes(driver, 20, 4), 40, "sense_size");
    assert_eq!(read_config_bytes(driver, 24, 4), 16, "cdb_size");
    // Out of bounds (at most 256): the size in force stays.
    driver
        .transport
        .write(CONFIG + 20, &0x1000u32.to_le_bytes());
    assert_eq!(read_config_bytes(driver, 20, 4), 40);
    // Back in bounds, byte by byte, from the out-of-bounds shadow.
    write_config_bytes(driver, 20, 0x100);
    assert_eq!(read_config_bytes(driver, 20, 4), 0x100);
    // Read-only fields stay as they are, whatever the width.
    write_config_bytes(driver, 30, 7);
    assert_eq!(read_config_bytes(driver, 30, 2), 255, "max_target");
    driver.write_reg(0x70, 0);
    assert_eq!(
        read_config_bytes(driver, 20, 4),
        96,
        "sense_size after reset"
    );
    assert_eq!(read_config_bytes(driver, 24, 4), 32, "cdb_size after reset");
    drop(fw);
    iothread.stop();
}
