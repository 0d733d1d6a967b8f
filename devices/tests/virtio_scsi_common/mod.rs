//! Shared set-up for the virtio-scsi harness tests: an iothread, guest memory,
//! a controller with in-memory disks, and a mock driver that has initialised it.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use devices::virtio::scsi::mem_backend::{CompletionMode, MemBackend};
use devices::virtio::scsi::{ScsiDiskConfig, ScsiStatsReader, VirtioScsi, VirtioScsiConfig};
use devices::virtio::testing::{lun_bytes, MockDriver, ScsiRequestBuilder, ScsiResponse};
use devices::virtio::MmioTransport;
use event_loop::{AioContext, IoThread};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub const TIMEOUT: Duration = Duration::from_secs(10);
pub const REQUEST_QUEUE: usize = 2;
pub const QUEUE_SIZE: u16 = 128;
pub const MEM_SIZE: usize = 64 << 20;

pub struct Rig {
    pub ctx: Arc<AioContext>,
    pub iothread: Option<IoThread>,
    pub driver: MockDriver,
    pub disks: Vec<Arc<MemBackend>>,
    pub stats: ScsiStatsReader,
    next_tag: u64,
}

/// A disk description for [`Rig::new`].
pub struct Disk {
    pub target: u8,
    pub lun: u16,
    pub size: usize,
    pub read_only: bool,
    pub discard: bool,
    pub mode: CompletionMode,
}

impl Disk {
    pub fn simple(mode: CompletionMode) -> Disk {
        Disk {
            target: 0,
            lun: 0,
            size: 8 << 20,
            read_only: false,
            discard: true,
            mode,
        }
    }
}

impl Rig {
    pub fn new(disks: Vec<Disk>) -> Rig {
        Self::with_config(
            disks,
            VirtioScsiConfig {
                queue_size: QUEUE_SIZE,
                ..Default::default()
            },
        )
    }

    pub fn with_config(disks: Vec<Disk>, config: VirtioScsiConfig) -> Rig {
        let ctx = AioContext::new().expect("context");
        let iothread = IoThread::spawn("test-iothread", Arc::clone(&ctx)).expect("iothread");
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("memory");
        let backends: Vec<Arc<MemBackend>> = disks
            .iter()
            .map(|d| Arc::new(MemBackend::new(d.size, d.read_only, d.discard, d.mode)))
            .collect();
        let configs = disks
            .iter()
            .zip(&backends)
            .map(|(d, b)| ScsiDiskConfig {
                target: d.target,
                lun: d.lun,
                serial: format!("disk{}-{}", d.target, d.lun),
                backend: Arc::clone(b) as _,
            })
            .collect();
        let irqfd = EventFd::new(EFD_NONBLOCK).expect("irqfd");
        let irq = irqfd.try_clone().expect("irqfd clone");
        let scsi =
            VirtioScsi::new(config, configs, Arc::clone(&ctx), mem.clone(), irqfd).expect("scsi");
        let stats = scsi.stats_reader();
        let transport = MmioTransport::new(Box::new(scsi));
        let mut driver = MockDriver::new(mem, transport, irq);
        let queues = 2 + usize::from(config.num_request_queues);
        let status = driver.init(queues, config.queue_size, true);
        assert_eq!(status, 0xf, "driver init status");
        Rig {
            ctx,
            iothread: Some(iothread),
            driver,
            disks: backends,
            stats,
            next_tag: 1,
        }
    }

    /// Sends one command to `target:lun` and waits for its response.
    pub fn command(
        &mut self,
        target: u8,
        lun: u16,
        cdb: &[u8],
        data_out: &[u8],
        data_in: u32,
    ) -> ScsiResponse {
        self.command_on(
            REQUEST_QUEUE,
            lun_bytes(target, lun),
            cdb,
            data_out,
            data_in,
        )
    }

    /// Sends one command with a raw LUN field on `queue` and waits for it.
    pub fn command_on(
        &mut self,
        queue: usize,
        lun: [u8; 8],
        cdb: &[u8],
        data_out: &[u8],
        data_in: u32,
    ) -> ScsiResponse {
        let tag = self.next_tag;
        self.next_tag += 1;
        let slot =
            ScsiRequestBuilder::submit(&mut self.driver, queue, lun, tag, cdb, data_out, data_in)
                .expect("queue full");
        self.driver.kick(queue);
        let used = self.driver.wait_used(queue, 1, TIMEOUT);
        assert_eq!(used[0].0, slot.head, "used head");
        let response = ScsiRequestBuilder::response(&self.driver, &slot, used[0].1);
        self.driver.reset_alloc();
        response
    }

    /// Clears the power-on unit attention of `target:lun`.
    pub fn clear_unit_attention(&mut self, target: u8, lun: u16) {
        let r = self.command(target, lun, &[0x00, 0, 0, 0, 0, 0], &[], 0);
        assert_eq!(
            r.status, 2,
            "first command after power-on sees unit attention"
        );
        assert_eq!((r.sense[2], r.sense[12]), (0x06, 0x29));
    }

    /// Completes deferred backend requests as the iothread would (context lock held).
    pub fn complete_deferred(&self, disk: usize) -> usize {
        let _guard = self.ctx.acquire();
        self.disks[disk].complete_pending()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(t) = self.iothread.take() {
            t.stop();
        }
    }
}

pub fn read10(lba: u32, blocks: u16) -> Vec<u8> {
    let l = lba.to_be_bytes();
    let n = blocks.to_be_bytes();
    vec![0x28, 0, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0]
}

pub fn write10(lba: u32, blocks: u16, fua: bool) -> Vec<u8> {
    let l = lba.to_be_bytes();
    let n = blocks.to_be_bytes();
    vec![
        0x2a,
        if fua { 0x08 } else { 0 },
        l[0],
        l[1],
        l[2],
        l[3],
        0,
        n[0],
        n[1],
        0,
    ]
}
