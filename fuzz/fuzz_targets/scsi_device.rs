//! Fuzzes the whole virtio-scsi device as a hostile guest would drive it:
//! fuzzer bytes become descriptor tables, available rings and request buffers
//! in guest memory, then the queues are kicked and the iothread's context is
//! dispatched on this thread. Nothing may panic or hang.
#![no_main]

use std::sync::Arc;

use devices::virtio::scsi::mem_backend::{CompletionMode, MemBackend};
use devices::virtio::scsi::{ScsiDiskConfig, VirtioScsi, VirtioScsiConfig};
use devices::virtio::testing::{MockDriver, RING_BASE, RING_STRIDE};
use devices::virtio::MmioTransport;
use event_loop::AioContext;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const QUEUE_SIZE: u16 = 16;
const MEM_SIZE: usize = 32 << 20;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let ctx = AioContext::new().expect("context");
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("mem");
    let backend = Arc::new(MemBackend::new(1 << 20, data[0] & 1 != 0, data[0] & 2 != 0, CompletionMode::Inline));
    let irqfd = EventFd::new(EFD_NONBLOCK).expect("irqfd");
    let irq = irqfd.try_clone().expect("irqfd");
    let device = VirtioScsi::new(
        VirtioScsiConfig { queue_size: QUEUE_SIZE, ..Default::default() },
        vec![ScsiDiskConfig { target: 0, lun: 0, serial: "fuzz".into(), backend }],
        Arc::clone(&ctx),
        mem.clone(),
        irqfd,
    )
    .expect("device");
    let mut driver = MockDriver::new(mem.clone(), MmioTransport::new(Box::new(device)), irq);
    driver.init(3, QUEUE_SIZE, data[0] & 4 != 0);
    let queue = usize::from(data[1] % 3);
    let base = RING_BASE + queue as u64 * RING_STRIDE;
    // Descriptor table (16 x 16 bytes), then the available ring, from the input;
    // descriptor addresses are steered into a small window so they often hit
    // the buffer area, which holds the rest of the input.
    let body = &data[2..];
    let table_len = (usize::from(QUEUE_SIZE) * 16).min(body.len());
    let mut table = body[..table_len].to_vec();
    for desc in table.chunks_mut(16) {
        if desc.len() == 16 && desc[7] & 0x80 == 0 {
            let addr = 0x8_0000 + u64::from(u16::from_le_bytes([desc[0], desc[1]]));
            desc[0..8].copy_from_slice(&addr.to_le_bytes());
        }
    }
    let _ = mem.write_slice(&table, GuestAddress(base));
    let rest = &body[table_len..];
    let avail_len = (4 + usize::from(QUEUE_SIZE) * 2).min(rest.len());
    let _ = mem.write_slice(&rest[..avail_len], GuestAddress(base + 0x1000));
    let _ = mem.write_slice(&rest[avail_len..], GuestAddress(0x8_0000));
    driver.kick(queue);
    let _guard = ctx.acquire();
    for _ in 0..8 {
        if !ctx.poll(false) {
            break;
        }
    }
    // Whatever happened, registers still answer.
    let _ = driver.read_reg(0x70);
    let _ = driver.take_used(queue);
});
