//! A mock guest driver for virtio-mmio devices (feature `test-utils`): it
//! initialises the device through its registers as Linux or EDK2 would, builds
//! split virtqueues and descriptor chains in a `GuestMemoryMmap`, kicks, and
//! reads the used ring — plus helpers that speak virtio-scsi on top.
//!
//! Owns: the driver side of the rings for tests and benchmarks. It writes guest
//! memory with the orderings a real driver needs (descriptors, then the
//! available entry, then a release store of `avail->idx`), because the device
//! reads them from its iothread concurrently.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::mmio::MmioDevice;

use super::mmio::{
    MmioTransport, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
    VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1,
};
use super::scsi::constants::{VIRTIO_SCSI_CDB_DEFAULT_SIZE, VIRTIO_SCSI_SENSE_DEFAULT_SIZE};

/// Descriptor flags.
pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
pub const DESC_F_INDIRECT: u16 = 4;

/// Where the mock driver puts each queue's rings: queue `i` at
/// `RING_BASE + i * RING_STRIDE` (descriptors, then avail at +0x1000, used at +0x3000).
pub const RING_BASE: u64 = 0x10_0000;
pub const RING_STRIDE: u64 = 0x1_0000;
/// Data buffers are allocated from here up.
pub const DATA_BASE: u64 = 0x100_0000;

/// One buffer of a chain the driver builds.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    pub addr: GuestAddress,
    pub len: u32,
    pub writable: bool,
}

/// The driver side of one split virtqueue.
struct DriverQueue {
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    free: Vec<u16>,
    avail_idx: u16,
    /// avail_idx at the last kick (EVENT_IDX kick suppression).
    kicked_idx: u16,
    last_used: u16,
    /// Descriptors of each in-flight head, freed when it is used.
    chains: Vec<Vec<u16>>,
}

/// A mock virtio driver bound to one transport.
pub struct MockDriver {
    pub mem: GuestMemoryMmap,
    pub transport: MmioTransport,
    queues: Vec<Option<DriverQueue>>,
    next_data: u64,
    data_end: u64,
    irq: EventFd,
}

impl MockDriver {
    /// A driver for `transport` over `mem` (which must reach `DATA_BASE` and
    /// beyond); `irq` is a clone of the device's irqfd, to count interrupts.
    pub fn new(mem: GuestMemoryMmap, transport: MmioTransport, irq: EventFd) -> MockDriver {
        let data_end = vm_memory::GuestMemoryBackend::last_addr(&mem).0 + 1;
        MockDriver {
            mem,
            transport,
            queues: Vec::new(),
            next_data: DATA_BASE,
            data_end,
            irq,
        }
    }

    /// Register read.
    pub fn read_reg(&mut self, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        self.transport.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    /// Register write.
    pub fn write_reg(&mut self, offset: u64, value: u32) {
        self.transport.write(offset, &value.to_le_bytes());
    }

    /// Full initialisation: reset, ACKNOWLEDGE, DRIVER, features (VERSION_1 and,
    /// if `event_idx`, EVENT_IDX), FEATURES_OK, `queue_count` queues of
    /// `queue_size`, DRIVER_OK. Returns the final status register.
    pub fn init(&mut self, queue_count: usize, queue_size: u16, event_idx: bool) -> u32 {
        let all: Vec<usize> = (0..queue_count).collect();
        self.init_queues(&all, queue_size, event_idx)
    }

    /// Like [`MockDriver::init`], setting up only the queues in `indices`
    /// (EDK2's VirtioScsiDxe, for one, uses only the first request queue).
    pub fn init_queues(&mut self, indices: &[usize], queue_size: u16, event_idx: bool) -> u32 {
        self.write_reg(0x70, 0);
        self.write_reg(0x70, STATUS_ACKNOWLEDGE);
        self.write_reg(0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let mut features = VIRTIO_F_VERSION_1;
        if event_idx {
            features |= VIRTIO_F_RING_EVENT_IDX;
        }
        self.write_reg(0x24, 0);
        self.write_reg(0x20, features as u32);
        self.write_reg(0x24, 1);
        self.write_reg(0x20, (features >> 32) as u32);
        let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.write_reg(0x70, status);
        assert_ne!(
            self.read_reg(0x70) & STATUS_FEATURES_OK,
            0,
            "FEATURES_OK refused"
        );
        self.queues = Vec::new();
        for &index in indices {
            self.setup_queue(index, queue_size);
        }
        self.write_reg(0x70, status | STATUS_DRIVER_OK);
        self.read_reg(0x70)
    }

    /// Programs queue `index` through the registers and zeroes its rings.
    pub fn setup_queue(&mut self, index: usize, size: u16) {
        let base = RING_BASE + index as u64 * RING_STRIDE;
        let desc = GuestAddress(base);
        let avail = GuestAddress(base + 0x1000);
        let used = GuestAddress(base + 0x3000);
        self.mem
            .write_slice(&vec![0u8; RING_STRIDE as usize], desc)
            .expect("ring memory");
        self.write_reg(0x30, index as u32);
        assert!(
            self.read_reg(0x34) >= u32::from(size),
            "QueueNumMax too small"
        );
        self.write_reg(0x38, u32::from(size));
        self.write_reg(0x80, desc.0 as u32);
        self.write_reg(0x84, (desc.0 >> 32) as u32);
        self.write_reg(0x90, avail.0 as u32);
        self.write_reg(0x94, (avail.0 >> 32) as u32);
        self.write_reg(0xa0, used.0 as u32);
        self.write_reg(0xa4, (used.0 >> 32) as u32);
        self.write_reg(0x44, 1);
        if self.queues.len() <= index {
            self.queues.resize_with(index + 1, || None);
        }
        self.queues[index] = Some(DriverQueue {
            size,
            desc,
            avail,
            used,
            free: (0..size).rev().collect(),
            avail_idx: 0,
            kicked_idx: 0,
            last_used: 0,
            chains: vec![Vec::new(); usize::from(size)],
        });
    }

    fn queue(&mut self, index: usize) -> &mut DriverQueue {
        self.queues[index].as_mut().expect("queue not set up")
    }

    /// Bump-allocates `len` bytes (16-byte aligned) of guest memory for buffers.
    pub fn alloc(&mut self, len: u64) -> GuestAddress {
        let addr = (self.next_data + 15) & !15;
        assert!(
            addr + len <= self.data_end,
            "mock driver out of guest memory"
        );
        self.next_data = addr + len;
        GuestAddress(addr)
    }

    /// Frees every bump allocation (callers must not have chains in flight).
    pub fn reset_alloc(&mut self) {
        self.next_data = DATA_BASE;
    }

    /// Free descriptors left on `queue`.
    pub fn free_descriptors(&mut self, queue: usize) -> usize {
        self.queue(queue).free.len()
    }

    /// Writes a raw descriptor `index` of `queue`.
    pub fn write_descriptor(
        &mut self,
        queue: usize,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let desc = self.queue(queue).desc;
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem
            .write_slice(&raw, GuestAddress(desc.0 + u64::from(index) * 16))
            .expect("descriptor table");
    }

    /// Makes `head` available (entry, then release store of the index).
    pub fn publish(&mut self, queue: usize, head: u16) {
        let q = self.queue(queue);
        let slot = q.avail_idx % q.size;
        let entry = GuestAddress(q.avail.0 + 4 + u64::from(slot) * 2);
        let idx_addr = GuestAddress(q.avail.0 + 2);
        q.avail_idx = q.avail_idx.wrapping_add(1);
        let new_idx = q.avail_idx;
        self.mem.write_obj(head.to_le(), entry).expect("avail ring");
        self.mem
            .store(new_idx.to_le(), idx_addr, Ordering::Release)
            .expect("avail idx");
    }

    /// Sets avail->idx to any value (hostile tests).
    pub fn set_avail_idx(&mut self, queue: usize, value: u16) {
        let q = self.queue(queue);
        let idx_addr = GuestAddress(q.avail.0 + 2);
        q.avail_idx = value;
        self.mem
            .store(value.to_le(), idx_addr, Ordering::Release)
            .expect("avail idx");
    }

    /// Builds a chain from `bufs` on `queue` and makes it available. Returns
    /// the head, or `None` when the queue has too few free descriptors.
    pub fn add_chain(&mut self, queue: usize, bufs: &[Buf]) -> Option<u16> {
        let q = self.queue(queue);
        if q.free.len() < bufs.len() || bufs.is_empty() {
            return None;
        }
        // The head's descriptor list keeps its allocation between uses (as a
        // real driver's per-descriptor state does): no allocation per chain.
        let head = q.free.pop().unwrap_or(0);
        let mut ids = std::mem::take(&mut q.chains[usize::from(head)]);
        ids.clear();
        ids.push(head);
        ids.extend((1..bufs.len()).map(|_| q.free.pop().unwrap_or(0)));
        for (i, buf) in bufs.iter().enumerate() {
            let mut flags = if buf.writable { DESC_F_WRITE } else { 0 };
            let next = if i + 1 < bufs.len() {
                flags |= DESC_F_NEXT;
                ids[i + 1]
            } else {
                0
            };
            self.write_descriptor(queue, ids[i], buf.addr.0, buf.len, flags, next);
        }
        self.queue(queue).chains[usize::from(head)] = ids;
        self.publish(queue, head);
        Some(head)
    }

    /// Kicks `queue` the way KVM's ioeventfd would: a write to its EventFd.
    pub fn kick(&mut self, queue: usize) {
        let fd = self
            .transport
            .queue_kick_fds()
            .find(|(i, _)| *i as usize == queue)
            .map(|(_, fd)| fd.try_clone().expect("dup kick fd"))
            .expect("no such queue");
        fd.write(1).expect("kick");
    }

    /// Kicks `queue` only if the device asked for it through `avail_event`
    /// (EVENT_IDX), as Linux's `virtqueue_kick_prepare` does. Returns whether it
    /// kicked.
    pub fn kick_if_needed(&mut self, queue: usize) -> bool {
        let mem = &self.mem;
        let q = self.queues[queue].as_mut().expect("queue not set up");
        // Pairs with the device's fence between writing avail_event and
        // re-reading avail->idx (virtio-queue's enable_notification).
        std::sync::atomic::fence(Ordering::SeqCst);
        let avail_event: u16 = u16::from_le(
            mem.load(
                GuestAddress(q.used.0 + 4 + u64::from(q.size) * 8),
                Ordering::Acquire,
            )
            .expect("avail_event"),
        );
        let (new, old) = (q.avail_idx, q.kicked_idx);
        q.kicked_idx = new;
        let needed = new.wrapping_sub(avail_event).wrapping_sub(1) < new.wrapping_sub(old);
        if needed {
            self.kick(queue);
        }
        needed
    }

    /// Kicks through the QueueNotify register (no ioeventfd registered).
    pub fn kick_mmio(&mut self, queue: usize) {
        self.write_reg(0x50, queue as u32);
    }

    /// New used entries of `queue` as `(head, len)`; frees their descriptors
    /// and updates `used_event` (EVENT_IDX) to ask for the next interrupt.
    pub fn take_used(&mut self, queue: usize) -> Vec<(u16, u32)> {
        let mut out = Vec::new();
        self.take_used_into(queue, &mut out);
        out
    }

    /// [`MockDriver::take_used`] into `out` (cleared first), so a caller
    /// looping over completions allocates nothing.
    pub fn take_used_into(&mut self, queue: usize, out: &mut Vec<(u16, u32)>) {
        out.clear();
        let mem = &self.mem;
        let q = self.queues[queue].as_mut().expect("queue not set up");
        let used_idx: u16 = u16::from_le(
            mem.load(GuestAddress(q.used.0 + 2), Ordering::Acquire)
                .expect("used idx"),
        );
        while q.last_used != used_idx {
            let slot = q.last_used % q.size;
            let entry = GuestAddress(q.used.0 + 4 + u64::from(slot) * 8);
            let id: u32 = mem.read_obj(entry).expect("used entry");
            let len: u32 = mem.read_obj(GuestAddress(entry.0 + 4)).expect("used len");
            let head = id as u16;
            if let Some(chain) = q.chains.get_mut(usize::from(head)) {
                // Drained, not taken: the list keeps its allocation for reuse.
                q.free.append(chain);
            }
            out.push((head, len));
            q.last_used = q.last_used.wrapping_add(1);
        }
        // used_event lives after the avail ring entries.
        let used_event = GuestAddress(q.avail.0 + 4 + u64::from(q.size) * 2);
        mem.store(q.last_used.to_le(), used_event, Ordering::Release)
            .expect("used_event");
    }

    /// Whether `queue` has used entries not taken yet. Call it after an empty
    /// [`MockDriver::take_used_into`] and before sleeping on the interrupt: it
    /// re-reads the used index after a full fence, pairing with the device's
    /// fence between writing the used index and reading `used_event`, so
    /// either the device saw the new `used_event` (and will interrupt) or this
    /// sees its entries. With that, a driver may block on the interrupt with
    /// no timeout.
    pub fn used_pending(&self, queue: usize) -> bool {
        let q = self.queues[queue].as_ref().expect("queue not set up");
        std::sync::atomic::fence(Ordering::SeqCst);
        let used_idx: u16 = u16::from_le(
            self.mem
                .load(GuestAddress(q.used.0 + 2), Ordering::Acquire)
                .expect("used idx"),
        );
        used_idx != q.last_used
    }

    /// Waits until `count` used entries arrived on `queue` (or panics after
    /// `timeout`, naming what was missing: the watchdog of the harness tests).
    pub fn wait_used(&mut self, queue: usize, count: usize, timeout: Duration) -> Vec<(u16, u32)> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < count {
            got.extend(self.take_used(queue));
            if got.len() >= count {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "watchdog: only {} of {count} used entries on queue {queue} after {timeout:?} (status {:#x})",
                got.len(),
                self.transport.status()
            );
            std::thread::yield_now();
        }
        got
    }

    /// Interrupts signalled since the last call (irqfd counter).
    pub fn interrupts(&self) -> u64 {
        self.irq.read().unwrap_or(0)
    }
}

/// A decoded virtio-scsi command response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiResponse {
    pub response: u8,
    pub status: u8,
    pub resid: u32,
    pub sense: Vec<u8>,
    pub data_in: Vec<u8>,
    pub used_len: u32,
}

/// Guest memory of one virtio-scsi command built by [`ScsiRequestBuilder`].
#[derive(Clone, Debug)]
pub struct ScsiSlot {
    pub request: GuestAddress,
    pub data_out: Option<(GuestAddress, u32)>,
    pub response: GuestAddress,
    pub data_in: Option<(GuestAddress, u32)>,
    pub head: u16,
}

/// The LUN field for `target`/`lun` (flat space addressing when `lun > 255`).
pub fn lun_bytes(target: u8, lun: u16) -> [u8; 8] {
    let mut bytes = [0u8; 8];
    bytes[0] = 1;
    bytes[1] = target;
    if lun > 255 {
        bytes[2] = 0x40 | ((lun >> 8) as u8 & 0x3f);
    }
    bytes[3] = lun as u8;
    bytes
}

/// Builds command requests with the default cdb/sense sizes.
pub struct ScsiRequestBuilder;

pub const RESPONSE_SIZE: u32 = 12 + VIRTIO_SCSI_SENSE_DEFAULT_SIZE;
pub const REQUEST_SIZE: u32 = 19 + VIRTIO_SCSI_CDB_DEFAULT_SIZE;

impl ScsiRequestBuilder {
    /// Writes a request for `cdb` to `lun` with `tag` and queues it on `queue`.
    pub fn submit(
        driver: &mut MockDriver,
        queue: usize,
        lun: [u8; 8],
        tag: u64,
        cdb: &[u8],
        data_out: &[u8],
        data_in_len: u32,
    ) -> Option<ScsiSlot> {
        let request = driver.alloc(u64::from(REQUEST_SIZE));
        let mut header = vec![0u8; REQUEST_SIZE as usize];
        header[0..8].copy_from_slice(&lun);
        header[8..16].copy_from_slice(&tag.to_le_bytes());
        header[19..19 + cdb.len().min(32)].copy_from_slice(&cdb[..cdb.len().min(32)]);
        driver.mem.write_slice(&header, request).expect("request");
        let mut bufs = vec![Buf {
            addr: request,
            len: REQUEST_SIZE,
            writable: false,
        }];
        let data_out = if data_out.is_empty() {
            None
        } else {
            let addr = driver.alloc(data_out.len() as u64);
            driver.mem.write_slice(data_out, addr).expect("data out");
            bufs.push(Buf {
                addr,
                len: data_out.len() as u32,
                writable: false,
            });
            Some((addr, data_out.len() as u32))
        };
        let response = driver.alloc(u64::from(RESPONSE_SIZE));
        driver
            .mem
            .write_slice(&vec![0xeeu8; RESPONSE_SIZE as usize], response)
            .expect("response");
        bufs.push(Buf {
            addr: response,
            len: RESPONSE_SIZE,
            writable: true,
        });
        let data_in = if data_in_len == 0 {
            None
        } else {
            let addr = driver.alloc(u64::from(data_in_len));
            bufs.push(Buf {
                addr,
                len: data_in_len,
                writable: true,
            });
            Some((addr, data_in_len))
        };
        let head = driver.add_chain(queue, &bufs)?;
        Some(ScsiSlot {
            request,
            data_out,
            response,
            data_in,
            head,
        })
    }

    /// Reads the response of `slot` (after its head was used with `used_len`).
    pub fn response(driver: &MockDriver, slot: &ScsiSlot, used_len: u32) -> ScsiResponse {
        let mut raw = vec![0u8; RESPONSE_SIZE as usize];
        driver
            .mem
            .read_slice(&mut raw, slot.response)
            .expect("response");
        let sense_len = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
        let sense = raw[12..12 + sense_len.min(96)].to_vec();
        let data_in_written = used_len.saturating_sub(RESPONSE_SIZE) as usize;
        let data_in = match slot.data_in {
            Some((addr, len)) => {
                let mut d = vec![0u8; data_in_written.min(len as usize)];
                driver.mem.read_slice(&mut d, addr).expect("data in");
                d
            }
            None => Vec::new(),
        };
        ScsiResponse {
            response: raw[11],
            status: raw[10],
            resid: u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]),
            sense,
            data_in,
            used_len,
        }
    }
}
