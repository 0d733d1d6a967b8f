//! The virtio-mmio transport, version 2 ("modern", virtio 1.2 section 4.2), for
//! any [`VirtioDevice`].
//!
//! Owns: the register file, feature negotiation, the device status state
//! machine and the virtqueue configuration registers. Queues are *served* by the
//! device on its iothread; this file only configures them.
//!
//! # Register map (offsets from the base; 32-bit registers, little-endian)
//!
//! | Offset | Name | Dir | Behaviour here |
//! |-------:|------|-----|----------------|
//! | 0x000 | MagicValue | R | `0x74726976` ("virt") |
//! | 0x004 | Version | R | 2 |
//! | 0x008 | DeviceID | R | from the device (8: SCSI) |
//! | 0x00c | VendorID | R | `0x554d4551` ("QEMU"; drivers ignore it) |
//! | 0x010 | DeviceFeatures | R | 32-bit window chosen by DeviceFeaturesSel |
//! | 0x014 | DeviceFeaturesSel | W | 0 or 1 (others read as 0) |
//! | 0x020 | DriverFeatures | W | window chosen by DriverFeaturesSel; only between DRIVER and FEATURES_OK |
//! | 0x024 | DriverFeaturesSel | W | |
//! | 0x030 | QueueSel | W | |
//! | 0x034 | QueueNumMax | R | 0 for a queue that does not exist |
//! | 0x038 | QueueNum | W | power of two up to QueueNumMax |
//! | 0x044 | QueueReady | RW | |
//! | 0x050 | QueueNotify | W | kicks the queue's EventFd (the VMM normally catches this with a KVM_IOEVENTFD, datamatch = queue index, before it gets here) |
//! | 0x060 | InterruptStatus | R | bit 0 used ring, bit 1 config change |
//! | 0x064 | InterruptACK | W | clears bits |
//! | 0x070 | Status | RW | state machine below; 0 resets |
//! | 0x080/0x084 | QueueDescLow/High | W | |
//! | 0x090/0x094 | QueueDriverLow/High | W | available ring |
//! | 0x0a0/0x0a4 | QueueDeviceLow/High | W | used ring |
//! | 0x0ac | SHMSel | W | no shared memory regions: |
//! | 0x0b0..0x0bc | SHMLen/SHMBase | R | length reads as all ones (region absent) |
//! | 0x0fc | ConfigGeneration | R | bumped when the device changes its config |
//! | 0x100.. | Config | RW | the device's config space (any width) |
//!
//! Queue registers may only be written while the selected queue is not ready and
//! DRIVER_OK is not set. Anything else (unknown offset, bad width, write to a
//! read-only register, a write in the wrong state) is ignored with a rate-limited
//! warning.
//!
//! # Status state machine
//!
//! ACKNOWLEDGE -> DRIVER -> (features) -> FEATURES_OK -> (queues) -> DRIVER_OK.
//! Bits may only be added; a write that clears bits (other than writing 0) is
//! ignored. FEATURES_OK is refused (left clear, for the driver to notice) unless
//! VIRTIO_F_VERSION_1 was accepted and no unoffered feature was. DRIVER_OK
//! activates the device; if the rings are unusable, or later if the device finds
//! a ring broken, DEVICE_NEEDS_RESET is set and a config interrupt raised.
//! Writing 0 resets: the device drains in-flight requests, then every register
//! returns to its initial value.

use log::{debug, warn};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use crate::mmio::{le_value, put_le_value, MmioDevice, RateLimitedWarn};
use crate::warn_limited;

use super::device::VirtioDevice;

pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
pub const MMIO_VERSION: u32 = 2;
pub const MMIO_VENDOR_ID: u32 = 0x554d_4551;

// Register offsets.
const MAGIC_VALUE: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const VENDOR_ID: u64 = 0x00c;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
/// Legacy (version 1) only: ignored here, see `write_register`.
const LEGACY_QUEUE_ALIGN: u64 = 0x03c;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const SHM_SEL: u64 = 0x0ac;
const SHM_LEN_LOW: u64 = 0x0b0;
const SHM_LEN_HIGH: u64 = 0x0b4;
const SHM_BASE_LOW: u64 = 0x0b8;
const SHM_BASE_HIGH: u64 = 0x0bc;
const CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG: u64 = 0x100;
/// Size of the MMIO window the VMM should map (registers plus config space).
pub const MMIO_WINDOW_SIZE: u64 = 0x200;

// Device status bits (virtio 1.2 2.1).
pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 64;
pub const STATUS_FAILED: u32 = 128;

// Transport feature bits.
pub const VIRTIO_F_RING_INDIRECT_DESC: u64 = 1 << 28;
pub const VIRTIO_F_RING_EVENT_IDX: u64 = 1 << 29;
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Transport features this implementation always offers.
pub const TRANSPORT_FEATURES: u64 =
    VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX | VIRTIO_F_RING_INDIRECT_DESC;

static BAD_ACCESS: RateLimitedWarn = RateLimitedWarn::new();

/// A virtio device on the MMIO bus.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<Queue>,
    config_generation: u32,
    activated: bool,
}

impl MmioTransport {
    /// Wraps `device`. The VMM then registers [`MmioTransport::queue_kick_fds`]
    /// as KVM_IOEVENTFDs on `base + 0x50` (datamatch = index) and the device's
    /// irqfd with KVM_IRQFD, and maps [`MMIO_WINDOW_SIZE`] bytes at `base`.
    pub fn new(device: Box<dyn VirtioDevice>) -> MmioTransport {
        let queues = Self::fresh_queues(device.as_ref());
        MmioTransport {
            device,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            config_generation: 0,
            activated: false,
        }
    }

    fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
        device
            .queue_max_sizes()
            .iter()
            .filter_map(|&max| Queue::new(max).ok())
            .collect()
    }

    /// `(queue index, kick EventFd)` pairs for KVM_IOEVENTFD registration.
    pub fn queue_kick_fds(&self) -> impl Iterator<Item = (u32, &EventFd)> {
        self.device
            .queue_kick_fds()
            .iter()
            .enumerate()
            .map(|(i, fd)| (i as u32, fd))
    }

    /// The irqfd the device signals (for KVM_IRQFD).
    pub fn irqfd(&self) -> &EventFd {
        self.device.interrupt().irqfd()
    }

    /// The device status register as the guest sees it.
    pub fn status(&self) -> u32 {
        let needs_reset = if self.device.interrupt().needs_reset() {
            STATUS_DEVICE_NEEDS_RESET
        } else {
            0
        };
        self.status | needs_reset
    }

    /// Every feature offered: device-specific plus transport bits.
    pub fn offered_features(&self) -> u64 {
        self.device.device_features() | TRANSPORT_FEATURES
    }

    /// The device model (for the VMM and tests).
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// Tells the guest that the device changed its config space.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.device
            .interrupt()
            .raise(super::device::INTERRUPT_CONFIG_CHANGE);
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn read_register(&self, offset: u64) -> u32 {
        match offset {
            MAGIC_VALUE => MMIO_MAGIC_VALUE,
            VERSION => MMIO_VERSION,
            DEVICE_ID => self.device.device_type(),
            VENDOR_ID => MMIO_VENDOR_ID,
            DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            INTERRUPT_STATUS => self.device.interrupt().status(),
            STATUS => self.status(),
            // No shared memory regions: length all ones means "absent".
            SHM_LEN_LOW | SHM_LEN_HIGH => u32::MAX,
            SHM_BASE_LOW | SHM_BASE_HIGH => u32::MAX,
            CONFIG_GENERATION => self.config_generation,
            _ => {
                warn_limited!(
                    BAD_ACCESS,
                    "virtio-mmio: read of unknown register {offset:#x}"
                );
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = value,
            DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            DRIVER_FEATURES => self.write_driver_features(value),
            QUEUE_SEL => self.queue_sel = value,
            QUEUE_NUM | QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH
            | QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH | QUEUE_READY => {
                self.write_queue_register(offset, value)
            }
            QUEUE_NOTIFY => self.notify(value),
            INTERRUPT_ACK => self.device.interrupt().acknowledge(value),
            STATUS => self.write_status(value),
            SHM_SEL => {}
            // Stock AAVMF (EDK2's VirtioMmioDeviceLib, 2022.11) sets the legacy
            // queue alignment on version-2 transports too, every boot; it means
            // nothing here. QEMU ignores it as quietly.
            LEGACY_QUEUE_ALIGN => {
                log::debug!(
                    "virtio-mmio: legacy QueueAlign {value:#x} on a version-2 transport ignored"
                )
            }
            _ => {
                warn_limited!(
                    BAD_ACCESS,
                    "virtio-mmio: write {value:#x} to unknown or read-only register {offset:#x}"
                );
            }
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & STATUS_DRIVER == 0 || self.status & STATUS_FEATURES_OK != 0 {
            warn_limited!(
                BAD_ACCESS,
                "virtio-mmio: DriverFeatures written in status {:#x}",
                self.status
            );
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => {
                self.driver_features =
                    (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
            }
            _ => {
                if value != 0 {
                    warn_limited!(BAD_ACCESS, "virtio-mmio: features beyond bit 63 accepted");
                }
            }
        }
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        if self.status & STATUS_DRIVER_OK != 0 {
            warn_limited!(
                BAD_ACCESS,
                "virtio-mmio: queue register {offset:#x} written after DRIVER_OK"
            );
            return;
        }
        let Some(queue) = self.selected_queue() else {
            warn_limited!(
                BAD_ACCESS,
                "virtio-mmio: queue register {offset:#x} for a missing queue"
            );
            return;
        };
        if offset == QUEUE_READY {
            queue.set_ready(value == 1);
            return;
        }
        if queue.ready() {
            warn_limited!(
                BAD_ACCESS,
                "virtio-mmio: queue register {offset:#x} written while ready"
            );
            return;
        }
        let result = match offset {
            QUEUE_NUM => match u16::try_from(value) {
                Ok(size) => queue.try_set_size(size).map_err(|e| e.to_string()),
                Err(_) => Err(format!("size {value} too big")),
            },
            QUEUE_DESC_LOW => {
                queue.set_desc_table_address(Some(value), None);
                Ok(())
            }
            QUEUE_DESC_HIGH => {
                queue.set_desc_table_address(None, Some(value));
                Ok(())
            }
            QUEUE_DRIVER_LOW => {
                queue.set_avail_ring_address(Some(value), None);
                Ok(())
            }
            QUEUE_DRIVER_HIGH => {
                queue.set_avail_ring_address(None, Some(value));
                Ok(())
            }
            QUEUE_DEVICE_LOW => {
                queue.set_used_ring_address(Some(value), None);
                Ok(())
            }
            QUEUE_DEVICE_HIGH => {
                queue.set_used_ring_address(None, Some(value));
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            warn_limited!(
                BAD_ACCESS,
                "virtio-mmio: bad queue setting at {offset:#x}: {e}"
            );
        }
    }

    /// A QueueNotify that reached the vCPU (no ioeventfd registered): forward it
    /// to the queue's kick EventFd so the iothread serves it, never this thread.
    fn notify(&self, value: u32) {
        // With VIRTIO_F_NOTIFICATION_DATA (not offered) the high bits would carry
        // data; only the index counts.
        let index = (value & 0xffff) as usize;
        match self.device.queue_kick_fds().get(index) {
            Some(fd) if self.status & STATUS_DRIVER_OK != 0 => {
                if let Err(e) = fd.write(1) {
                    warn!("virtio-mmio: cannot forward kick of queue {index}: {e}");
                }
            }
            _ => warn_limited!(BAD_ACCESS, "virtio-mmio: notify of queue {index} ignored"),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let value = value & !STATUS_DEVICE_NEEDS_RESET;
        if value & self.status != self.status {
            warn_limited!(
                BAD_ACCESS,
                "virtio-mmio: status {value:#x} clears bits of {:#x}; ignored",
                self.status
            );
            return;
        }
        let added = value & !self.status;
        if added & STATUS_FEATURES_OK != 0 && !self.features_acceptable() {
            debug!(
                "virtio-mmio: refusing FEATURES_OK for features {:#x}",
                self.driver_features
            );
            self.status = value & !(STATUS_FEATURES_OK | STATUS_DRIVER_OK);
            return;
        }
        if added & STATUS_DRIVER_OK != 0 && value & STATUS_FEATURES_OK == 0 {
            warn_limited!(
                BAD_ACCESS,
                "virtio-mmio: DRIVER_OK without FEATURES_OK; ignored"
            );
            return;
        }
        self.status = value;
        if added & STATUS_DRIVER_OK != 0 {
            self.activate();
        }
    }

    fn features_acceptable(&self) -> bool {
        self.driver_features & !self.offered_features() == 0
            && self.driver_features & VIRTIO_F_VERSION_1 != 0
    }

    fn activate(&mut self) {
        let event_idx = self.driver_features & VIRTIO_F_RING_EVENT_IDX != 0;
        let queues = self
            .queues
            .iter()
            .map(|q| {
                // The device gets its own copy; the registers keep theirs so
                // that QueueReady and friends still read back.
                q.ready()
                    .then(|| Queue::try_from(q.state()).ok())
                    .flatten()
                    .map(|mut q| {
                        q.set_event_idx(event_idx);
                        q
                    })
            })
            .collect();
        match self.device.activate(self.driver_features, queues) {
            Ok(()) => self.activated = true,
            Err(e) => {
                warn_limited!(BAD_ACCESS, "virtio-mmio: cannot activate the device: {e}");
                self.device.interrupt().set_needs_reset();
            }
        }
    }

    /// Device reset: the device drains, then every register returns to its
    /// initial value.
    fn reset(&mut self) {
        self.device.reset();
        self.activated = false;
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.queues = Self::fresh_queues(self.device.as_ref());
        self.device.interrupt().reset();
    }
}

impl MmioDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG {
            self.device.read_config(offset - CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            warn_limited!(
                BAD_ACCESS,
                "virtio-mmio: {}-byte read at {offset:#x}",
                data.len()
            );
            data.fill(0);
            return;
        }
        let value = self.read_register(offset);
        put_le_value(data, u64::from(value));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG {
            self.device.write_config(offset - CONFIG, data);
            return;
        }
        match le_value(data) {
            Some(value) if data.len() == 4 && offset.is_multiple_of(4) => {
                self.write_register(offset, value as u32)
            }
            _ => warn_limited!(
                BAD_ACCESS,
                "virtio-mmio: {}-byte write at {offset:#x}",
                data.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;
    use crate::virtio::device::{ActivateError, VirtioInterrupt, INTERRUPT_USED_RING};

    #[derive(Default)]
    struct Log {
        activations: Vec<(u64, Vec<bool>)>,
        resets: usize,
        config_writes: Vec<(u64, Vec<u8>)>,
    }

    struct FakeDevice {
        sizes: Vec<u16>,
        kicks: Vec<EventFd>,
        interrupt: VirtioInterrupt,
        log: Arc<Mutex<Log>>,
        fail_activation: bool,
    }

    impl VirtioDevice for FakeDevice {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.sizes
        }
        fn device_features(&self) -> u64 {
            1 << 3
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = (offset as u8).wrapping_add(i as u8);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.log
                .lock()
                .unwrap()
                .config_writes
                .push((offset, data.to_vec()));
        }
        fn activate(
            &mut self,
            features: u64,
            queues: Vec<Option<Queue>>,
        ) -> Result<(), ActivateError> {
            let ready = queues.iter().map(Option::is_some).collect();
            self.log.lock().unwrap().activations.push((features, ready));
            if self.fail_activation {
                Err(ActivateError::InvalidQueue { index: 0 })
            } else {
                Ok(())
            }
        }
        fn reset(&mut self) {
            self.log.lock().unwrap().resets += 1;
        }
        fn queue_kick_fds(&self) -> &[EventFd] {
            &self.kicks
        }
        fn interrupt(&self) -> &VirtioInterrupt {
            &self.interrupt
        }
    }

    fn transport(fail_activation: bool) -> (MmioTransport, Arc<Mutex<Log>>) {
        let log = Arc::new(Mutex::new(Log::default()));
        let device = FakeDevice {
            sizes: vec![16, 32],
            kicks: (0..2)
                .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
                .collect(),
            interrupt: VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()),
            log: Arc::clone(&log),
            fail_activation,
        };
        (MmioTransport::new(Box::new(device)), log)
    }

    fn rd(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(offset, &mut d);
        u32::from_le_bytes(d)
    }

    fn wr(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    fn negotiate(t: &mut MmioTransport, features: u64) -> u32 {
        wr(t, STATUS, STATUS_ACKNOWLEDGE);
        wr(t, STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(t, DRIVER_FEATURES_SEL, 0);
        wr(t, DRIVER_FEATURES, features as u32);
        wr(t, DRIVER_FEATURES_SEL, 1);
        wr(t, DRIVER_FEATURES, (features >> 32) as u32);
        wr(
            t,
            STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        rd(t, STATUS)
    }

    fn setup_queue(t: &mut MmioTransport, index: u32, size: u32) {
        wr(t, QUEUE_SEL, index);
        wr(t, QUEUE_NUM, size);
        wr(t, QUEUE_DESC_LOW, 0x1000);
        wr(t, QUEUE_DRIVER_LOW, 0x2000);
        wr(t, QUEUE_DEVICE_LOW, 0x3000);
        wr(t, QUEUE_READY, 1);
    }

    #[test]
    fn identification_registers() {
        let (mut t, _) = transport(false);
        assert_eq!(rd(&mut t, MAGIC_VALUE), 0x7472_6976);
        assert_eq!(rd(&mut t, VERSION), 2);
        assert_eq!(rd(&mut t, DEVICE_ID), 42);
        assert_eq!(rd(&mut t, VENDOR_ID), MMIO_VENDOR_ID);
        assert_eq!(
            rd(&mut t, SHM_LEN_LOW),
            u32::MAX,
            "no shared memory regions"
        );
        assert_eq!(rd(&mut t, SHM_LEN_HIGH), u32::MAX);
    }

    #[test]
    fn feature_windows_offer_version_1_and_event_idx() {
        let (mut t, _) = transport(false);
        wr(&mut t, DEVICE_FEATURES_SEL, 0);
        let low = rd(&mut t, DEVICE_FEATURES);
        assert_eq!(low & (1 << 29), 1 << 29, "EVENT_IDX");
        assert_eq!(low & (1 << 28), 1 << 28, "INDIRECT_DESC");
        assert_eq!(low & (1 << 3), 1 << 3, "device feature");
        wr(&mut t, DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut t, DEVICE_FEATURES), 1, "VERSION_1");
        wr(&mut t, DEVICE_FEATURES_SEL, 7);
        assert_eq!(rd(&mut t, DEVICE_FEATURES), 0);
    }

    #[test]
    fn features_ok_requires_version_1_and_only_offered_bits() {
        let (mut t, _) = transport(false);
        assert_eq!(
            negotiate(&mut t, 0) & STATUS_FEATURES_OK,
            0,
            "legacy driver refused"
        );
        wr(&mut t, STATUS, 0);
        assert_eq!(
            negotiate(&mut t, VIRTIO_F_VERSION_1 | (1 << 40)) & STATUS_FEATURES_OK,
            0,
            "unoffered feature refused"
        );
        wr(&mut t, STATUS, 0);
        let status = negotiate(
            &mut t,
            VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX | (1 << 3),
        );
        assert_ne!(status & STATUS_FEATURES_OK, 0);
        // Features are frozen after FEATURES_OK.
        wr(&mut t, DRIVER_FEATURES_SEL, 0);
        wr(&mut t, DRIVER_FEATURES, 0);
        assert_eq!(t.driver_features & (1 << 3), 1 << 3);
    }

    #[test]
    fn driver_ok_activates_with_ready_queues_and_event_idx() {
        let (mut t, log) = transport(false);
        let features = VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX;
        negotiate(&mut t, features);
        setup_queue(&mut t, 1, 32);
        wr(&mut t, STATUS, 0xf);
        assert_eq!(rd(&mut t, STATUS), 0xf);
        let log = log.lock().unwrap();
        assert_eq!(log.activations, vec![(features, vec![false, true])]);
    }

    #[test]
    fn queue_registers_and_limits() {
        let (mut t, _) = transport(false);
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        wr(&mut t, QUEUE_SEL, 0);
        assert_eq!(rd(&mut t, QUEUE_NUM_MAX), 16);
        wr(&mut t, QUEUE_SEL, 1);
        assert_eq!(rd(&mut t, QUEUE_NUM_MAX), 32);
        wr(&mut t, QUEUE_SEL, 9);
        assert_eq!(rd(&mut t, QUEUE_NUM_MAX), 0, "missing queue");
        wr(&mut t, QUEUE_READY, 1);
        assert_eq!(rd(&mut t, QUEUE_READY), 0);
        // Bad sizes are refused.
        wr(&mut t, QUEUE_SEL, 0);
        wr(&mut t, QUEUE_NUM, 12);
        assert_eq!(t.queues[0].size(), 16, "not a power of two");
        wr(&mut t, QUEUE_NUM, 64);
        assert_eq!(t.queues[0].size(), 16, "above max");
        wr(&mut t, QUEUE_NUM, 8);
        assert_eq!(t.queues[0].size(), 8);
        // High address halves.
        wr(&mut t, QUEUE_DESC_HIGH, 1);
        assert_eq!(t.queues[0].desc_table(), 1 << 32);
        wr(&mut t, QUEUE_READY, 1);
        // Ready queue: configuration frozen.
        wr(&mut t, QUEUE_NUM, 4);
        assert_eq!(t.queues[0].size(), 8);
        assert_eq!(rd(&mut t, QUEUE_READY), 1);
        wr(&mut t, STATUS, 0xf);
        wr(&mut t, QUEUE_READY, 0);
        assert_eq!(rd(&mut t, QUEUE_READY), 1, "frozen after DRIVER_OK");
    }

    #[test]
    fn status_bits_cannot_be_cleared_and_driver_ok_needs_features_ok() {
        let (mut t, log) = transport(false);
        wr(&mut t, STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(&mut t, STATUS, STATUS_ACKNOWLEDGE);
        assert_eq!(rd(&mut t, STATUS), 3, "clearing ignored");
        wr(&mut t, STATUS, 3 | STATUS_DRIVER_OK);
        assert_eq!(
            rd(&mut t, STATUS),
            3,
            "DRIVER_OK without FEATURES_OK ignored"
        );
        assert!(log.lock().unwrap().activations.is_empty());
        wr(&mut t, STATUS, 3 | STATUS_FAILED);
        assert_eq!(rd(&mut t, STATUS), 3 | STATUS_FAILED);
    }

    #[test]
    fn failed_activation_sets_needs_reset_and_reset_clears_everything() {
        let (mut t, log) = transport(true);
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queue(&mut t, 0, 16);
        wr(&mut t, STATUS, 0xf);
        assert_eq!(rd(&mut t, STATUS), 0xf | STATUS_DEVICE_NEEDS_RESET);
        assert_eq!(rd(&mut t, INTERRUPT_STATUS), 2, "config change raised");
        wr(&mut t, STATUS, 0);
        assert_eq!(rd(&mut t, STATUS), 0);
        assert_eq!(rd(&mut t, INTERRUPT_STATUS), 0);
        assert_eq!(log.lock().unwrap().resets, 1);
        wr(&mut t, QUEUE_SEL, 0);
        assert_eq!(rd(&mut t, QUEUE_READY), 0);
        assert_eq!(t.queues[0].size(), 16);
        assert_eq!(t.queues[0].desc_table(), 0);
        assert_eq!(t.driver_features, 0);
    }

    #[test]
    fn interrupt_status_and_ack() {
        let (mut t, _) = transport(false);
        t.device().interrupt().raise(INTERRUPT_USED_RING);
        assert_eq!(rd(&mut t, INTERRUPT_STATUS), 1);
        assert_eq!(t.irqfd().read().unwrap(), 1, "irqfd signalled");
        t.config_changed();
        assert_eq!(rd(&mut t, INTERRUPT_STATUS), 3);
        assert_eq!(rd(&mut t, CONFIG_GENERATION), 1);
        wr(&mut t, INTERRUPT_ACK, 1);
        assert_eq!(rd(&mut t, INTERRUPT_STATUS), 2);
        wr(&mut t, INTERRUPT_ACK, 2);
        assert_eq!(rd(&mut t, INTERRUPT_STATUS), 0);
    }

    #[test]
    fn config_space_passes_through_at_any_width() {
        let (mut t, log) = transport(false);
        let mut one = [0u8; 1];
        t.read(CONFIG + 5, &mut one);
        assert_eq!(one[0], 5);
        let mut eight = [0u8; 8];
        t.read(CONFIG + 8, &mut eight);
        assert_eq!(eight, [8, 9, 10, 11, 12, 13, 14, 15]);
        t.write(CONFIG + 20, &[1, 2]);
        assert_eq!(log.lock().unwrap().config_writes, vec![(20, vec![1, 2])]);
    }

    #[test]
    fn bad_widths_unknown_offsets_and_read_only_writes_are_ignored() {
        let (mut t, _) = transport(false);
        let mut two = [0xffu8; 2];
        t.read(MAGIC_VALUE, &mut two);
        assert_eq!(two, [0, 0]);
        t.write(STATUS, &[1, 0]);
        assert_eq!(rd(&mut t, STATUS), 0);
        assert_eq!(rd(&mut t, 0x0e0), 0);
        wr(&mut t, MAGIC_VALUE, 5);
        assert_eq!(rd(&mut t, MAGIC_VALUE), MMIO_MAGIC_VALUE);
        wr(&mut t, STATUS + 1, 1);
        assert_eq!(rd(&mut t, STATUS), 0);
    }

    #[test]
    fn queue_notify_forwards_to_the_kick_eventfd_only_when_live() {
        let (mut t, _) = transport(false);
        wr(&mut t, QUEUE_NOTIFY, 1);
        let kick = t.queue_kick_fds().nth(1).unwrap().1.try_clone().unwrap();
        assert!(kick.read().is_err(), "not live yet: no kick");
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queue(&mut t, 1, 32);
        wr(&mut t, STATUS, 0xf);
        wr(&mut t, QUEUE_NOTIFY, 1);
        assert_eq!(kick.read().unwrap(), 1);
        wr(&mut t, QUEUE_NOTIFY, 7);
        assert_eq!(t.queue_kick_fds().count(), 2);
    }
}
