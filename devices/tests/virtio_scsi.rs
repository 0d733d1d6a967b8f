//! virtio-scsi through the mock guest driver: commands, data paths, many
//! requests in flight, several disks, task management, events, interrupts and
//! reset — all served by a real iothread on a real `AioContext`.

mod virtio_scsi_common;

use std::sync::Arc;

use devices::virtio::scsi::mem_backend::{CompletionMode, Recorded};
use devices::virtio::scsi::{ScsiDiskConfig, VirtioScsi, VirtioScsiConfig};
use devices::virtio::testing::{lun_bytes, Buf, MockDriver, ScsiRequestBuilder};
use devices::virtio::MmioTransport;
use event_loop::{AioContext, IoThread};
use virtio_scsi_common::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const CONTROL_QUEUE: usize = 0;
const EVENT_QUEUE: usize = 1;

fn config_u32(rig: &mut Rig, offset: u64) -> u32 {
    rig.driver.read_reg(0x100 + offset)
}

#[test]
fn config_space_reports_queues_sizes_and_limits() {
    let mut rig = Rig::with_config(
        vec![Disk::simple(CompletionMode::Inline)],
        VirtioScsiConfig {
            num_request_queues: 3,
            queue_size: QUEUE_SIZE,
            ..Default::default()
        },
    );
    assert_eq!(rig.driver.read_reg(0x008), 8, "device id SCSI");
    assert_eq!(config_u32(&mut rig, 0), 3, "num_queues");
    assert_eq!(
        config_u32(&mut rig, 4),
        u32::from(QUEUE_SIZE) - 2,
        "seg_max"
    );
    assert_eq!(config_u32(&mut rig, 8), 0xffff, "max_sectors");
    assert_eq!(config_u32(&mut rig, 16), 16, "event_info_size");
    assert_eq!(config_u32(&mut rig, 20), 96, "sense_size");
    assert_eq!(config_u32(&mut rig, 24), 32, "cdb_size");
    assert_eq!(config_u32(&mut rig, 28) & 0xffff, 0, "max_channel");
    assert_eq!(config_u32(&mut rig, 28) >> 16, 255, "max_target");
    assert_eq!(config_u32(&mut rig, 32), 16383, "max_lun");
    // Every request queue serves commands.
    for queue in 2..5 {
        let r = rig.command_on(queue, lun_bytes(0, 0), &[0x12, 0, 0, 0, 36, 0], &[], 36);
        assert_eq!((r.response, r.status), (0, 0), "queue {queue}");
        assert_eq!(&r.data_in[8..16], b"HANGAR  ");
    }
}

#[test]
fn inquiry_then_unit_attention_then_ready() {
    let mut rig = Rig::new(vec![Disk::simple(CompletionMode::Inline)]);
    let r = rig.command(0, 0, &[0x12, 0, 0, 0, 96, 0], &[], 96);
    assert_eq!((r.response, r.status), (0, 0));
    assert_eq!(r.data_in.len(), 36);
    assert_eq!(r.resid, 96 - 36);
    rig.clear_unit_attention(0, 0);
    let r = rig.command(0, 0, &[0x00, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!((r.response, r.status), (0, 0));
    assert!(r.sense.is_empty());
}

#[test]
fn write_then_read_back_through_guest_memory() {
    let mut rig = Rig::new(vec![Disk::simple(CompletionMode::Inline)]);
    rig.clear_unit_attention(0, 0);
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    let r = rig.command(0, 0, &write10(16, 8, true), &pattern, 0);
    assert_eq!((r.response, r.status), (0, 0));
    assert_eq!(
        &rig.disks[0].contents()[16 * 512..16 * 512 + 4096],
        &pattern[..]
    );
    assert!(rig.disks[0].recorded().contains(&Recorded::Write {
        offset: 8192,
        len: 4096,
        fua: true
    }));
    let r = rig.command(0, 0, &read10(16, 8), &[], 4096 + 512);
    assert_eq!((r.response, r.status), (0, 0));
    assert_eq!(r.data_in, pattern);
    assert_eq!(r.resid, 512, "residual is the unused data-in");
}

#[test]
fn read_capacity_mode_sense_and_sync_cache() {
    let mut rig = Rig::new(vec![Disk::simple(CompletionMode::Inline)]);
    rig.clear_unit_attention(0, 0);
    let r = rig.command(0, 0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
    assert_eq!(
        u32::from_be_bytes(r.data_in[0..4].try_into().unwrap()),
        (8 << 20) / 512 - 1
    );
    let r = rig.command(0, 0, &[0x1a, 0, 0x3f, 0, 255, 0], &[], 255);
    assert_eq!(r.status, 0);
    assert_eq!(r.data_in[2] & 0x80, 0, "not write protected");
    let r = rig.command(0, 0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(r.status, 0);
    assert!(rig.disks[0].recorded().contains(&Recorded::Flush));
}

#[test]
fn unmap_and_write_same_reach_the_disk_as_discards() {
    let mut rig = Rig::new(vec![Disk::simple(CompletionMode::Inline)]);
    rig.clear_unit_attention(0, 0);
    rig.disks[0].fill(0, &[0xaa; 8192]);
    let mut params = vec![0u8; 8];
    params[0..2].copy_from_slice(&38u16.to_be_bytes());
    params[2..4].copy_from_slice(&32u16.to_be_bytes());
    for (lba, blocks) in [(0u64, 2u32), (4, 2)] {
        params.extend_from_slice(&lba.to_be_bytes());
        params.extend_from_slice(&blocks.to_be_bytes());
        params.extend_from_slice(&[0; 4]);
    }
    let r = rig.command(0, 0, &[0x42, 0, 0, 0, 0, 0, 0, 0, 40, 0], &params, 0);
    assert_eq!((r.response, r.status), (0, 0));
    let contents = rig.disks[0].contents();
    assert!(contents[..1024].iter().all(|&b| b == 0));
    assert!(contents[1024..2048].iter().all(|&b| b == 0xaa));
    assert!(contents[2048..3072].iter().all(|&b| b == 0));
    let mut ws = vec![0x93, 0x09];
    ws.extend_from_slice(&8u64.to_be_bytes());
    ws.extend_from_slice(&4u32.to_be_bytes());
    ws.extend_from_slice(&[0, 0]);
    let r = rig.command(0, 0, &ws, &[], 0);
    assert_eq!((r.response, r.status), (0, 0));
    assert!(rig.disks[0].recorded().contains(&Recorded::WriteZeroes {
        offset: 4096,
        len: 2048,
        unmap: true
    }));
    // WRITE SAME with a pattern writes it to every block.
    let mut ws = vec![0x93, 0x00];
    ws.extend_from_slice(&20u64.to_be_bytes());
    ws.extend_from_slice(&3u32.to_be_bytes());
    ws.extend_from_slice(&[0, 0]);
    let r = rig.command(0, 0, &ws, &[0x5a; 512], 0);
    assert_eq!((r.response, r.status), (0, 0));
    assert!(rig.disks[0].contents()[20 * 512..23 * 512]
        .iter()
        .all(|&b| b == 0x5a));
}

#[test]
fn io_error_reaches_the_guest_as_medium_error() {
    let mut rig = Rig::new(vec![Disk::simple(CompletionMode::Inline)]);
    rig.clear_unit_attention(0, 0);
    rig.disks[0].set_failing(true);
    let r = rig.command(0, 0, &read10(0, 1), &[], 512);
    assert_eq!((r.response, r.status), (0, 2));
    assert_eq!(
        (r.sense[2], r.sense[12]),
        (0x03, 0x11),
        "MEDIUM ERROR / UNRECOVERED READ"
    );
    assert_eq!(r.used_len, 108, "no data-in counted on failure");
    let r = rig.command(0, 0, &write10(0, 1, false), &[1; 512], 0);
    assert_eq!(
        (r.sense[2], r.sense[12]),
        (0x03, 0x0c),
        "MEDIUM ERROR / WRITE ERROR"
    );
    let r = rig.command(0, 0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(
        (r.status, r.sense[2]),
        (2, 0x03),
        "failed flush is reported"
    );
    rig.disks[0].set_failing(false);
    let r = rig.command(0, 0, &read10(0, 1), &[], 512);
    assert_eq!(r.status, 0, "device recovers");
}

#[test]
fn read_only_disk_refuses_writes_and_shows_wp() {
    let mut rig = Rig::new(vec![Disk {
        read_only: true,
        ..Disk::simple(CompletionMode::Inline)
    }]);
    rig.clear_unit_attention(0, 0);
    let r = rig.command(0, 0, &write10(0, 1, false), &[1; 512], 0);
    assert_eq!((r.status, r.sense[2], r.sense[12]), (2, 0x07, 0x27));
    assert!(
        rig.disks[0].recorded().is_empty(),
        "nothing reached the disk"
    );
    let r = rig.command(0, 0, &[0x5a, 0, 0x08, 0, 0, 0, 0, 0, 255, 0], &[], 255);
    assert_eq!(r.data_in[3] & 0x80, 0x80, "WP in MODE SENSE(10)");
}

#[test]
fn several_disks_as_targets_and_luns() {
    let mut rig = Rig::new(vec![
        Disk::simple(CompletionMode::Inline),
        Disk {
            lun: 1,
            size: 1 << 20,
            ..Disk::simple(CompletionMode::Inline)
        },
        Disk {
            target: 2,
            lun: 300,
            size: 2 << 20,
            read_only: true,
            ..Disk::simple(CompletionMode::Inline)
        },
    ]);
    let r = rig.command(0, 0, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[], 256);
    assert_eq!(r.status, 0, "REPORT LUNS is exempt from unit attention");
    assert_eq!(u32::from_be_bytes(r.data_in[0..4].try_into().unwrap()), 16);
    assert_eq!(&r.data_in[8..10], &[0, 0]);
    assert_eq!(&r.data_in[16..18], &[0, 1]);
    for (target, lun, blocks) in [(0u8, 0u16, 16384u32), (0, 1, 2048), (2, 300, 4096)] {
        rig.clear_unit_attention(target, lun);
        let r = rig.command(target, lun, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
        assert_eq!(
            u32::from_be_bytes(r.data_in[0..4].try_into().unwrap()),
            blocks - 1,
            "{target}:{lun}"
        );
    }
    // A missing LUN on an existing target: qualifier 3, LUN NOT SUPPORTED.
    let r = rig.command(0, 5, &[0x12, 0, 0, 0, 36, 0], &[], 36);
    assert_eq!((r.response, r.data_in[0]), (0, 0x7f));
    let r = rig.command(0, 5, &read10(0, 1), &[], 512);
    assert_eq!((r.status, r.sense[12]), (2, 0x25));
    // A missing target: BAD_TARGET.
    let r = rig.command(1, 0, &[0x12, 0, 0, 0, 36, 0], &[], 36);
    assert_eq!(r.response, 3);
    // Writes land on the right image only.
    rig.command(0, 1, &write10(0, 1, false), &[0x11; 512], 0);
    assert!(rig.disks[1].contents()[..512].iter().all(|&b| b == 0x11));
    assert!(rig.disks[0].contents()[..512].iter().all(|&b| b == 0));
}

#[test]
fn many_requests_in_flight_complete_out_of_submission_order() {
    let mut rig = Rig::new(vec![Disk::simple(CompletionMode::Deferred)]);
    // Clearing the UA needs no I/O.
    rig.clear_unit_attention(0, 0);
    for block in 0..40u32 {
        rig.disks[0].fill(block as usize * 512, &[block as u8; 512]);
    }
    let mut slots = Vec::new();
    for (i, block) in (0..40u32).rev().enumerate() {
        let slot = ScsiRequestBuilder::submit(
            &mut rig.driver,
            REQUEST_QUEUE,
            lun_bytes(0, 0),
            i as u64,
            &read10(block, 1),
            &[],
            512,
        )
        .expect("free descriptors");
        slots.push((block, slot));
        if i % 10 == 9 {
            rig.driver.kick(REQUEST_QUEUE);
        }
    }
    let deadline = std::time::Instant::now() + TIMEOUT;
    while rig.disks[0].pending() < 40 {
        assert!(
            std::time::Instant::now() < deadline,
            "watchdog: requests not submitted"
        );
        std::thread::yield_now();
    }
    assert!(
        rig.driver.take_used(REQUEST_QUEUE).is_empty(),
        "nothing completes before the disk"
    );
    assert_eq!(rig.complete_deferred(0), 40);
    let used = rig.driver.wait_used(REQUEST_QUEUE, 40, TIMEOUT);
    for (head, len) in used {
        let (block, slot) = slots
            .iter()
            .find(|(_, s)| s.head == head)
            .expect("known head");
        let r = ScsiRequestBuilder::response(&rig.driver, slot, len);
        assert_eq!((r.response, r.status), (0, 0));
        assert_eq!(r.data_in, vec![*block as u8; 512], "block {block}");
    }
    assert_eq!(
        rig.driver.free_descriptors(REQUEST_QUEUE),
        usize::from(QUEUE_SIZE)
    );
}

#[test]
fn mean_in_flight_depth_is_time_weighted() {
    // The depth statistic runs on the coarse clock (1-4 ms ticks): requests
    // held at the disk for much longer than a tick must show up as their
    // count times the hold.
    const HELD: u64 = 8;
    const HOLD: std::time::Duration = std::time::Duration::from_millis(60);
    let mut rig = Rig::new(vec![Disk::simple(CompletionMode::Deferred)]);
    rig.clear_unit_attention(0, 0);
    let before = rig.stats.read().expect("controller alive");
    for i in 0..HELD {
        ScsiRequestBuilder::submit(
            &mut rig.driver,
            REQUEST_QUEUE,
            lun_bytes(0, 0),
            i,
            &read10(i as u32, 1),
            &[],
            512,
        )
        .expect("free descriptors");
    }
    rig.driver.kick(REQUEST_QUEUE);
    let deadline = std::time::Instant::now() + TIMEOUT;
    while rig.disks[0].pending() < HELD as usize {
        assert!(
            std::time::Instant::now() < deadline,
            "watchdog: requests not submitted"
        );
        std::thread::yield_now();
    }
    let held_since = std::time::Instant::now();
    std::thread::sleep(HOLD);
    assert_eq!(rig.complete_deferred(0), HELD as usize);
    rig.driver.wait_used(REQUEST_QUEUE, HELD as usize, TIMEOUT);
    // Only these requests were in flight since `before`: the area is their
    // count times the time they were held, give or take a tick at each end.
    // It is taken when the completion BH runs, which may be just after the
    // used entries appear.
    let tick_ms = 5;
    let area_ms = |stats: devices::virtio::scsi::ScsiStats| {
        (stats.depth_area - before.depth_area) / HELD / 1_000_000
    };
    let mut after = rig.stats.read().expect("controller alive");
    while area_ms(after) + tick_ms < HOLD.as_millis() as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "depth area {} ms per request, held {HOLD:?}",
            area_ms(after)
        );
        std::thread::yield_now();
        after = rig.stats.read().expect("controller alive");
    }
    let held = held_since.elapsed();
    assert!(
        area_ms(after) <= held.as_millis() as u64 + tick_ms,
        "depth area {} ms per request, held {held:?}",
        area_ms(after)
    );
    assert_eq!(after.submitted - before.submitted, HELD);
}

#[test]
fn event_idx_suppresses_interrupts_until_the_driver_asks() {
    let mut rig = Rig::new(vec![Disk::simple(CompletionMode::Inline)]);
    rig.clear_unit_attention(0, 0);
    settled_interrupts(&mut rig);
    // used_event is now the current used index: the next completion interrupts.
    ScsiRequestBuilder::submit(&mut rig.driver, 2, lun_bytes(0, 0), 1, &[0; 6], &[], 0).unwrap();
    rig.driver.kick(2);
    wait_used_idx(&mut rig, 2);
    assert_eq!(settled_interrupts(&mut rig), 1);
    // The driver has not consumed it (used_event unchanged): no interrupt.
    ScsiRequestBuilder::submit(&mut rig.driver, 2, lun_bytes(0, 0), 2, &[0; 6], &[], 0).unwrap();
    rig.driver.kick(2);
    wait_used_idx(&mut rig, 3);
    assert_eq!(settled_interrupts(&mut rig), 0, "suppressed by EVENT_IDX");
    assert_eq!(rig.driver.take_used(2).len(), 2);
    ScsiRequestBuilder::submit(&mut rig.driver, 2, lun_bytes(0, 0), 3, &[0; 6], &[], 0).unwrap();
    rig.driver.kick(2);
    // Watch the used index without taking the entry: taking it moves
    // used_event past it, and if that happens before the device's interrupt
    // decision (the completion BH), EVENT_IDX rightly asks for no interrupt.
    wait_used_idx(&mut rig, 4);
    assert_eq!(settled_interrupts(&mut rig), 1);
    assert_eq!(rig.driver.take_used(2).len(), 1);
    assert_eq!(
        rig.driver.read_reg(0x60) & 1,
        1,
        "InterruptStatus used-ring bit"
    );
    rig.driver.write_reg(0x64, 1);
    assert_eq!(rig.driver.read_reg(0x60), 0, "acknowledged");
}

/// Interrupts signalled so far, read once the device has finished its interrupt
/// decision. It makes that decision in the completion BH that also updates the
/// used ring: taking the context lock waits for the iothread's dispatch to end,
/// and polling runs whatever is still pending. (A fixed sleep here failed once
/// under load.)
fn settled_interrupts(rig: &mut Rig) -> u64 {
    {
        let _held = rig.ctx.acquire();
        let mut passes = 0;
        while rig.ctx.poll(false) {
            passes += 1;
            assert!(passes < 1000, "the context never went quiet");
        }
    }
    rig.driver.interrupts()
}

fn wait_used_idx(rig: &mut Rig, want: u16) {
    let used_idx_addr =
        GuestAddress(devices::virtio::testing::RING_BASE + 2 * 0x1_0000 + 0x3000 + 2);
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let idx: u16 = rig.driver.mem.read_obj(used_idx_addr).unwrap();
        if idx == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "watchdog: used idx {idx}, want {want}"
        );
        std::thread::yield_now();
    }
}

fn control(rig: &mut Rig, request: &[u8], response_len: u32) -> (u32, Vec<u8>) {
    let req = rig.driver.alloc(request.len() as u64);
    rig.driver.mem.write_slice(request, req).unwrap();
    let resp = rig.driver.alloc(u64::from(response_len));
    let head = rig
        .driver
        .add_chain(
            CONTROL_QUEUE,
            &[
                Buf {
                    addr: req,
                    len: request.len() as u32,
                    writable: false,
                },
                Buf {
                    addr: resp,
                    len: response_len,
                    writable: true,
                },
            ],
        )
        .unwrap();
    rig.driver.kick(CONTROL_QUEUE);
    let used = rig.driver.wait_used(CONTROL_QUEUE, 1, TIMEOUT);
    assert_eq!(used[0].0, head);
    let mut bytes = vec![0u8; response_len as usize];
    rig.driver.mem.read_slice(&mut bytes, resp).unwrap();
    (used[0].1, bytes)
}

fn tmf(subtype: u32, lun: [u8; 8], id: u64) -> Vec<u8> {
    let mut r = vec![0u8; 24];
    r[4..8].copy_from_slice(&subtype.to_le_bytes());
    r[8..16].copy_from_slice(&lun);
    r[16..24].copy_from_slice(&id.to_le_bytes());
    r
}

#[test]
fn logical_unit_reset_raises_unit_attention() {
    let mut rig = Rig::new(vec![Disk::simple(CompletionMode::Inline)]);
    rig.clear_unit_attention(0, 0);
    let (len, resp) = control(&mut rig, &tmf(5, lun_bytes(0, 0), 0), 1);
    assert_eq!((len, resp[0]), (1, 0), "FUNCTION COMPLETE");
    rig.clear_unit_attention(0, 0);
    let (_, resp) = control(&mut rig, &tmf(4, lun_bytes(0, 0), 0), 1);
    assert_eq!(resp[0], 0, "I_T NEXUS RESET");
    rig.clear_unit_attention(0, 0);
    let (_, resp) = control(&mut rig, &tmf(5, lun_bytes(9, 0), 0), 1);
    assert_eq!(resp[0], 3, "BAD_TARGET");
    let (_, resp) = control(&mut rig, &tmf(5, lun_bytes(0, 7), 0), 1);
    assert_eq!(resp[0], 12, "INCORRECT_LUN");
    let (_, resp) = control(&mut rig, &tmf(2, lun_bytes(0, 0), 0), 1);
    assert_eq!(resp[0], 11, "CLEAR ACA rejected");
}

#[test]
fn abort_task_waits_for_the_in_flight_request() {
    let mut rig = Rig::new(vec![Disk::simple(CompletionMode::Deferred)]);
    rig.clear_unit_attention(0, 0);
    let slot = ScsiRequestBuilder::submit(
        &mut rig.driver,
        2,
        lun_bytes(0, 0),
        77,
        &read10(0, 1),
        &[],
        512,
    )
    .unwrap();
    rig.driver.kick(2);
    let deadline = std::time::Instant::now() + TIMEOUT;
    while rig.disks[0].pending() < 1 {
        assert!(std::time::Instant::now() < deadline, "watchdog");
        std::thread::yield_now();
    }
    // QUERY TASK sees it.
    let (_, resp) = control(&mut rig, &tmf(6, lun_bytes(0, 0), 77), 1);
    assert_eq!(resp[0], 10, "FUNCTION SUCCEEDED: task exists");
    // ABORT TASK is answered only after the task finished.
    let req = rig.driver.alloc(24);
    rig.driver
        .mem
        .write_slice(&tmf(0, lun_bytes(0, 0), 77), req)
        .unwrap();
    let resp = rig.driver.alloc(1);
    rig.driver
        .add_chain(
            CONTROL_QUEUE,
            &[
                Buf {
                    addr: req,
                    len: 24,
                    writable: false,
                },
                Buf {
                    addr: resp,
                    len: 1,
                    writable: true,
                },
            ],
        )
        .unwrap();
    rig.driver.kick(CONTROL_QUEUE);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(
        rig.driver.take_used(CONTROL_QUEUE).is_empty(),
        "abort answered early"
    );
    rig.complete_deferred(0);
    let used = rig.driver.wait_used(2, 1, TIMEOUT);
    assert_eq!(used[0].0, slot.head);
    let ctl = rig.driver.wait_used(CONTROL_QUEUE, 1, TIMEOUT);
    assert_eq!(ctl[0].1, 1);
    let (_, resp) = control(&mut rig, &tmf(6, lun_bytes(0, 0), 77), 1);
    assert_eq!(resp[0], 0, "task gone");
}

#[test]
fn async_notification_query_and_subscribe_are_answered_empty() {
    let mut rig = Rig::new(vec![Disk::simple(CompletionMode::Inline)]);
    for kind in [1u32, 2] {
        let mut req = vec![0u8; 16];
        req[0..4].copy_from_slice(&kind.to_le_bytes());
        req[4..12].copy_from_slice(&lun_bytes(0, 0));
        req[12..16].copy_from_slice(&0x10u32.to_le_bytes());
        let (len, resp) = control(&mut rig, &req, 5);
        assert_eq!(len, 5);
        assert_eq!(
            u32::from_le_bytes(resp[0..4].try_into().unwrap()),
            0,
            "no events"
        );
        assert_eq!(resp[4], 0, "OK");
    }
}

#[test]
fn events_are_delivered_and_drops_are_reported() {
    let ctx = AioContext::new().unwrap();
    let iothread = IoThread::spawn("events", Arc::clone(&ctx)).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let backend = Arc::new(devices::virtio::scsi::mem_backend::MemBackend::new(
        1 << 20,
        false,
        false,
        CompletionMode::Inline,
    ));
    let irqfd = EventFd::new(EFD_NONBLOCK).unwrap();
    let irq = irqfd.try_clone().unwrap();
    let device = VirtioScsi::new(
        VirtioScsiConfig::default(),
        vec![ScsiDiskConfig {
            target: 0,
            lun: 0,
            serial: "ev".into(),
            backend,
        }],
        Arc::clone(&ctx),
        mem.clone(),
        irqfd,
    )
    .unwrap();
    let events = device.event_sender().unwrap();
    let mut driver = MockDriver::new(mem, MmioTransport::new(Box::new(device)), irq);
    driver.init(3, 64, true);
    // Post more events than are kept while the driver has no buffer posted.
    for i in 0..20u32 {
        events.post(1, 0, 0, i);
    }
    let mut bufs = Vec::new();
    for _ in 0..20 {
        let addr = driver.alloc(16);
        bufs.push(addr);
        driver
            .add_chain(
                EVENT_QUEUE,
                &[Buf {
                    addr,
                    len: 16,
                    writable: true,
                }],
            )
            .unwrap();
    }
    driver.kick(EVENT_QUEUE);
    let used = driver.wait_used(EVENT_QUEUE, 16, TIMEOUT);
    assert_eq!(used.len(), 16, "only the kept events are delivered");
    let mut first = [0u8; 16];
    driver
        .mem
        .read_slice(&mut first, bufs[usize::from(used[0].0)])
        .unwrap();
    let kind = u32::from_le_bytes(first[0..4].try_into().unwrap());
    assert_eq!(kind, 0x8000_0001, "TRANSPORT_RESET with EVENTS_MISSED");
    assert_eq!(
        u32::from_le_bytes(first[12..16].try_into().unwrap()),
        4,
        "oldest kept reason"
    );
    let mut second = [0u8; 16];
    driver
        .mem
        .read_slice(&mut second, bufs[usize::from(used[1].0)])
        .unwrap();
    assert_eq!(
        u32::from_le_bytes(second[0..4].try_into().unwrap()),
        1,
        "flag reported once"
    );
    iothread.stop();
}

/// Sends `cdb` with the driver's `cdb_size` / `sense_size` in force and a
/// 512-byte data-in buffer; returns the used length, the whole response
/// buffer and the data-in buffer.
fn command_with_sizes(
    rig: &mut Rig,
    cdb_size: usize,
    sense_size: usize,
    cdb: &[u8],
) -> (u32, Vec<u8>, Vec<u8>) {
    let driver = &mut rig.driver;
    let mut request = vec![0u8; 19 + cdb_size];
    request[..8].copy_from_slice(&lun_bytes(0, 0));
    request[19..19 + cdb.len()].copy_from_slice(cdb);
    let request_addr = driver.alloc(request.len() as u64);
    driver.mem.write_slice(&request, request_addr).unwrap();
    let response_len = 12 + sense_size;
    let response_addr = driver.alloc(response_len as u64);
    driver
        .mem
        .write_slice(&vec![0xee; response_len], response_addr)
        .unwrap();
    let data_addr = driver.alloc(512);
    let bufs = [
        Buf {
            addr: request_addr,
            len: request.len() as u32,
            writable: false,
        },
        Buf {
            addr: response_addr,
            len: response_len as u32,
            writable: true,
        },
        Buf {
            addr: data_addr,
            len: 512,
            writable: true,
        },
    ];
    driver
        .add_chain(REQUEST_QUEUE, &bufs)
        .expect("free descriptors");
    driver.kick(REQUEST_QUEUE);
    let used = driver.wait_used(REQUEST_QUEUE, 1, TIMEOUT);
    let mut response = vec![0u8; response_len];
    driver.mem.read_slice(&mut response, response_addr).unwrap();
    let mut data = vec![0u8; 512];
    driver.mem.read_slice(&mut data, data_addr).unwrap();
    driver.reset_alloc();
    (used[0].1, response, data)
}

#[test]
fn driver_chosen_cdb_and_sense_sizes_above_and_below_the_defaults() {
    let mut rig = Rig::new(vec![Disk::simple(CompletionMode::Inline)]);
    rig.clear_unit_attention(0, 0);
    rig.disks[0].fill(512, &[0x5a; 512]);
    for (cdb_size, sense_size) in [(64usize, 200usize), (16, 8), (32, 96), (256, 256)] {
        rig.driver.write_reg(0x100 + 20, sense_size as u32);
        rig.driver.write_reg(0x100 + 24, cdb_size as u32);
        // A read: no sense, the whole sense area zeroed, data after it.
        let (used, response, data) =
            command_with_sizes(&mut rig, cdb_size, sense_size, &read10(1, 1));
        assert_eq!(
            used as usize,
            12 + sense_size + 512,
            "{cdb_size}/{sense_size}"
        );
        assert_eq!((response[10], response[11]), (0, 0), "GOOD, OK");
        assert_eq!(&response[0..4], &[0; 4], "sense_len");
        assert!(response[12..].iter().all(|&b| b == 0), "sense area zeroed");
        assert_eq!(data, vec![0x5a; 512]);
        // An unknown opcode: fixed sense (18 bytes) cut to sense_size, the
        // rest of the sense area zeroed.
        let (used, response, _) = command_with_sizes(&mut rig, cdb_size, sense_size, &[0xff]);
        let sense_len = 18.min(sense_size);
        assert_eq!(used as usize, 12 + sense_size, "{cdb_size}/{sense_size}");
        assert_eq!(response[10], 2, "CHECK CONDITION");
        assert_eq!(
            u32::from_le_bytes(response[0..4].try_into().unwrap()) as usize,
            sense_len
        );
        assert_eq!(response[12], 0x70, "fixed sense");
        if sense_size > 2 {
            assert_eq!(response[12 + 2] & 0x0f, 0x05, "ILLEGAL REQUEST");
        }
        assert!(
            response[12 + sense_len..].iter().all(|&b| b == 0),
            "sense tail zeroed"
        );
    }
}

#[test]
fn device_reset_returns_to_initial_state_and_reinitialises() {
    let mut rig = Rig::new(vec![Disk::simple(CompletionMode::Inline)]);
    rig.clear_unit_attention(0, 0);
    rig.driver.write_reg(0x100 + 20, 32);
    assert_eq!(
        rig.driver.read_reg(0x100 + 20),
        32,
        "driver-written sense_size"
    );
    rig.driver.write_reg(0x70, 0);
    assert_eq!(rig.driver.read_reg(0x70), 0);
    assert_eq!(
        rig.driver.read_reg(0x100 + 20),
        96,
        "config back to defaults"
    );
    rig.driver.write_reg(0x30, 2);
    assert_eq!(rig.driver.read_reg(0x44), 0, "queue not ready after reset");
    assert_eq!(rig.driver.init(3, QUEUE_SIZE, true), 0xf);
    rig.clear_unit_attention(0, 0);
    let r = rig.command(0, 0, &read10(0, 1), &[], 512);
    assert_eq!(r.status, 0);
}

#[test]
fn mmio_queue_notify_is_served_on_the_iothread() {
    let mut rig = Rig::new(vec![Disk::simple(CompletionMode::Inline)]);
    ScsiRequestBuilder::submit(
        &mut rig.driver,
        2,
        lun_bytes(0, 0),
        1,
        &[0x12, 0, 0, 0, 36, 0],
        &[],
        36,
    )
    .unwrap();
    rig.driver.kick_mmio(2);
    let used = rig.driver.wait_used(2, 1, TIMEOUT);
    assert_eq!(used[0].1, 108 + 36);
}

/// A driver for a controller with one disk on a real `BlockBackend`: a 4 MiB
/// temporary file whose 4 KiB chunk `i` is filled with the byte `i`. The
/// power-on unit attention is cleared.
fn file_backed_driver(ctx: &Arc<AioContext>) -> (MockDriver, tempfile::NamedTempFile) {
    use block::{BlockBackend, BlockOptions};
    use std::io::Write;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let mut image = vec![0u8; 4 << 20];
    for (i, chunk) in image.chunks_mut(4096).enumerate() {
        chunk.fill(i as u8);
    }
    file.write_all(&image).unwrap();
    file.flush().unwrap();
    let backend = Arc::new(
        BlockBackend::open(file.path(), &BlockOptions::default(), Arc::clone(ctx)).unwrap(),
    );
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let irqfd = EventFd::new(EFD_NONBLOCK).unwrap();
    let irq = irqfd.try_clone().unwrap();
    let device = VirtioScsi::new(
        VirtioScsiConfig {
            queue_size: 128,
            ..Default::default()
        },
        vec![ScsiDiskConfig {
            target: 0,
            lun: 0,
            serial: "file".into(),
            backend,
        }],
        Arc::clone(ctx),
        mem.clone(),
        irqfd,
    )
    .unwrap();
    let mut driver = MockDriver::new(mem, MmioTransport::new(Box::new(device)), irq);
    assert_eq!(driver.init(3, 128, true), 0xf);
    // Power-on unit attention.
    ScsiRequestBuilder::submit(&mut driver, 2, lun_bytes(0, 0), 0, &[0; 6], &[], 0).unwrap();
    driver.kick(2);
    driver.wait_used(2, 1, TIMEOUT);
    driver.reset_alloc();
    (driver, file)
}

#[test]
fn real_block_backend_on_a_file_with_32_in_flight() {
    let ctx = AioContext::new().unwrap();
    let iothread = IoThread::spawn("blk", Arc::clone(&ctx)).unwrap();
    let (mut driver, file) = file_backed_driver(&ctx);
    // 32 reads of 4 KiB in flight, then check every buffer.
    let mut slots = Vec::new();
    for i in 0..32u32 {
        let chunk = (i * 13) % 1024;
        let slot = ScsiRequestBuilder::submit(
            &mut driver,
            2,
            lun_bytes(0, 0),
            u64::from(i),
            &read10(chunk * 8, 8),
            &[],
            4096,
        )
        .unwrap();
        slots.push((chunk, slot));
    }
    driver.kick(2);
    let used = driver.wait_used(2, 32, TIMEOUT);
    for (head, len) in used {
        let (chunk, slot) = slots.iter().find(|(_, s)| s.head == head).unwrap();
        let r = ScsiRequestBuilder::response(&driver, slot, len);
        assert_eq!((r.response, r.status), (0, 0));
        assert_eq!(r.data_in, vec![*chunk as u8; 4096]);
    }
    driver.reset_alloc();
    // A FUA write reaches the file.
    let slot = ScsiRequestBuilder::submit(
        &mut driver,
        2,
        lun_bytes(0, 0),
        99,
        &write10(0, 8, true),
        &[0xcd; 4096],
        0,
    )
    .unwrap();
    driver.kick(2);
    let used = driver.wait_used(2, 1, TIMEOUT);
    let r = ScsiRequestBuilder::response(&driver, &slot, used[0].1);
    assert_eq!(r.status, 0);
    let on_disk = std::fs::read(file.path()).unwrap();
    assert!(on_disk[..4096].iter().all(|&b| b == 0xcd));
    drop(driver);
    iothread.stop();
}

/// Data buffers split over several descriptors reach the block layer as one
/// vectored request each (the multi-segment path; one buffer is the common
/// case and takes `aio_read`/`aio_write`).
#[test]
fn real_block_backend_reads_and_writes_split_data_buffers() {
    use devices::virtio::testing::{REQUEST_SIZE, RESPONSE_SIZE};
    let ctx = AioContext::new().unwrap();
    let iothread = IoThread::spawn("blk", Arc::clone(&ctx)).unwrap();
    let (mut driver, file) = file_backed_driver(&ctx);
    let header = |driver: &mut MockDriver, cdb: &[u8]| {
        let addr = driver.alloc(u64::from(REQUEST_SIZE));
        let mut bytes = vec![0u8; REQUEST_SIZE as usize];
        bytes[0..8].copy_from_slice(&lun_bytes(0, 0));
        bytes[19..19 + cdb.len()].copy_from_slice(cdb);
        driver.mem.write_slice(&bytes, addr).unwrap();
        Buf {
            addr,
            len: REQUEST_SIZE,
            writable: false,
        }
    };
    // WRITE(10) of chunk 5 from two buffers: 1 KiB of 0x11, 3 KiB of 0x22.
    let hdr = header(&mut driver, &write10(5 * 8, 8, false));
    let (a, b) = (driver.alloc(1024), driver.alloc(3072));
    driver.mem.write_slice(&[0x11; 1024], a).unwrap();
    driver.mem.write_slice(&[0x22; 3072], b).unwrap();
    let resp = driver.alloc(u64::from(RESPONSE_SIZE));
    let out = |addr, len| Buf {
        addr,
        len,
        writable: false,
    };
    let write_resp = Buf {
        addr: resp,
        len: RESPONSE_SIZE,
        writable: true,
    };
    let head = driver
        .add_chain(2, &[hdr, out(a, 1024), out(b, 3072), write_resp])
        .unwrap();
    driver.kick(2);
    let used = driver.wait_used(2, 1, TIMEOUT);
    assert_eq!(used[0].0, head);
    let mut status = [0u8; 12];
    driver.mem.read_slice(&mut status, resp).unwrap();
    assert_eq!((status[11], status[10]), (0, 0), "response, status");
    let on_disk = std::fs::read(file.path()).unwrap();
    assert!(on_disk[5 * 4096..5 * 4096 + 1024]
        .iter()
        .all(|&x| x == 0x11));
    assert!(on_disk[5 * 4096 + 1024..6 * 4096]
        .iter()
        .all(|&x| x == 0x22));
    driver.reset_alloc();
    // READ(10) of chunks 7 and 8 into two buffers of 4 KiB each.
    let hdr = header(&mut driver, &read10(7 * 8, 16));
    let resp = driver.alloc(u64::from(RESPONSE_SIZE));
    let (c, d) = (driver.alloc(4096), driver.alloc(4096));
    let into = |addr| Buf {
        addr,
        len: 4096,
        writable: true,
    };
    let read_resp = Buf {
        addr: resp,
        len: RESPONSE_SIZE,
        writable: true,
    };
    driver
        .add_chain(2, &[hdr, read_resp, into(c), into(d)])
        .unwrap();
    driver.kick(2);
    let used = driver.wait_used(2, 1, TIMEOUT);
    assert_eq!(used[0].1, RESPONSE_SIZE + 8192);
    let (mut first, mut second) = (vec![0u8; 4096], vec![0u8; 4096]);
    driver.mem.read_slice(&mut first, c).unwrap();
    driver.mem.read_slice(&mut second, d).unwrap();
    assert_eq!(first, vec![7u8; 4096]);
    assert_eq!(second, vec![8u8; 4096]);
    drop(driver);
    iothread.stop();
}

/// The original hang's shape: a "vCPU" thread keeps doing synchronous flash
/// writes (nested polls on the iothread's context) while the guest keeps 32
/// reads in flight. Every request must complete; the waits are watchdogged.
#[test]
fn requests_complete_while_a_vcpu_nests_polls_on_the_context() {
    use block::{AioMode, BlockBackend, BlockOptions};
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let ctx = AioContext::new().unwrap();
    let iothread = IoThread::spawn("nested", Arc::clone(&ctx)).unwrap();
    let mut disk_file = tempfile::NamedTempFile::new().unwrap();
    disk_file.write_all(&vec![0x5e; 2 << 20]).unwrap();
    let flash_file = tempfile::NamedTempFile::new().unwrap();
    flash_file.as_file().set_len(1 << 20).unwrap();
    let disk = Arc::new(
        BlockBackend::open(
            disk_file.path(),
            &BlockOptions {
                aio: AioMode::Threads,
                ..BlockOptions::default()
            },
            Arc::clone(&ctx),
        )
        .unwrap(),
    );
    let flash = Arc::new(
        BlockBackend::open(
            flash_file.path(),
            &BlockOptions::default(),
            Arc::clone(&ctx),
        )
        .unwrap(),
    );
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let irqfd = EventFd::new(EFD_NONBLOCK).unwrap();
    let irq = irqfd.try_clone().unwrap();
    let device = VirtioScsi::new(
        VirtioScsiConfig {
            queue_size: 128,
            ..Default::default()
        },
        vec![ScsiDiskConfig {
            target: 0,
            lun: 0,
            serial: "nested".into(),
            backend: disk,
        }],
        Arc::clone(&ctx),
        mem.clone(),
        irqfd,
    )
    .unwrap();
    let mut driver = MockDriver::new(mem, MmioTransport::new(Box::new(device)), irq);
    assert_eq!(driver.init(3, 128, true), 0xf);
    ScsiRequestBuilder::submit(&mut driver, 2, lun_bytes(0, 0), 0, &[0; 6], &[], 0).unwrap();
    driver.kick(2);
    driver.wait_used(2, 1, TIMEOUT);
    driver.reset_alloc();

    let stop = Arc::new(AtomicBool::new(false));
    let flash_writes = Arc::new(AtomicU64::new(0));
    let vcpu = {
        let (stop, writes, flash) = (Arc::clone(&stop), Arc::clone(&flash_writes), flash);
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                let offset = (n % 256) * 4096;
                flash.pwrite(offset, &[n as u8; 4096]).expect("flash write");
                writes.fetch_add(1, Ordering::Release);
                n += 1;
            }
        })
    };
    let mut slots = std::collections::HashMap::new();
    for i in 0..32u64 {
        let slot = ScsiRequestBuilder::submit(
            &mut driver,
            2,
            lun_bytes(0, 0),
            i,
            &read10((i * 8) as u32, 8),
            &[],
            4096,
        )
        .unwrap();
        slots.insert(slot.head, slot);
    }
    driver.kick(2);
    let mut completed = 0;
    let mut tag = 32u64;
    while completed < 2000 {
        let used = driver.wait_used(2, 1, TIMEOUT);
        for (head, len) in used {
            let slot = slots.remove(&head).expect("known head");
            let r = ScsiRequestBuilder::response(&driver, &slot, len);
            assert_eq!((r.response, r.status), (0, 0));
            assert!(r.data_in.iter().all(|&b| b == 0x5e));
            completed += 1;
            // Reuse the slot's memory for the next request.
            let next = ScsiRequestBuilder::submit(
                &mut driver,
                2,
                lun_bytes(0, 0),
                tag,
                &read10(((tag % 400) * 8) as u32, 8),
                &[],
                4096,
            )
            .unwrap();
            tag += 1;
            slots.insert(next.head, next);
        }
        driver.kick_if_needed(2);
    }
    stop.store(true, Ordering::Release);
    vcpu.join().unwrap();
    assert!(
        flash_writes.load(Ordering::Acquire) > 0,
        "the vCPU thread made progress"
    );
    let remaining = slots.len();
    driver.wait_used(2, remaining, TIMEOUT);
    drop(driver);
    iothread.stop();
}

/// EDK2's VirtioScsiDxe: no EVENT_IDX, only the first request queue set up.
#[test]
fn firmware_style_driver_with_one_queue_and_no_event_idx() {
    let ctx = AioContext::new().unwrap();
    let iothread = IoThread::spawn("fw", Arc::clone(&ctx)).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let backend = Arc::new(devices::virtio::scsi::mem_backend::MemBackend::new(
        1 << 20,
        false,
        false,
        CompletionMode::Inline,
    ));
    backend.fill(0, &[0x77; 512]);
    let irqfd = EventFd::new(EFD_NONBLOCK).unwrap();
    let irq = irqfd.try_clone().unwrap();
    let device = VirtioScsi::new(
        VirtioScsiConfig {
            num_request_queues: 4,
            ..Default::default()
        },
        vec![ScsiDiskConfig {
            target: 0,
            lun: 0,
            serial: "fw".into(),
            backend,
        }],
        Arc::clone(&ctx),
        mem.clone(),
        irqfd,
    )
    .unwrap();
    let mut driver = MockDriver::new(mem, MmioTransport::new(Box::new(device)), irq);
    assert_eq!(driver.init_queues(&[2], 64, false), 0xf);
    for expected_status in [2u8, 0] {
        let slot =
            ScsiRequestBuilder::submit(&mut driver, 2, lun_bytes(0, 0), 1, &read10(0, 1), &[], 512)
                .unwrap();
        driver.kick_mmio(2);
        let used = driver.wait_used(2, 1, TIMEOUT);
        let r = ScsiRequestBuilder::response(&driver, &slot, used[0].1);
        assert_eq!(r.status, expected_status, "unit attention first, then data");
        if expected_status == 0 {
            assert_eq!(r.data_in, vec![0x77; 512]);
        }
        // The interrupt follows the used-ring update; give it the time to land.
        let deadline = std::time::Instant::now() + TIMEOUT;
        while driver.interrupts() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "without EVENT_IDX every completion interrupts"
            );
            std::thread::yield_now();
        }
    }
    drop(driver);
    iothread.stop();
}

/// With 4+ reads at the disk the device stops asking for kicks and finds new
/// requests when one completes; a flush in flight keeps kicks on, so nothing
/// waits behind a slow request.
#[test]
fn kicks_are_suppressed_only_while_fast_requests_are_at_the_disk() {
    let mut rig = Rig::new(vec![Disk::simple(CompletionMode::Deferred)]);
    rig.clear_unit_attention(0, 0);
    let wait_pending = |rig: &Rig, n: usize| {
        let deadline = std::time::Instant::now() + TIMEOUT;
        while rig.disks[0].pending() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "watchdog: {n} requests not at the disk"
            );
            std::thread::yield_now();
        }
    };
    let inquiry = [0x12, 0, 0, 0, 36, 0];
    for i in 0..5u32 {
        ScsiRequestBuilder::submit(
            &mut rig.driver,
            2,
            lun_bytes(0, 0),
            u64::from(i),
            &read10(i, 1),
            &[],
            512,
        )
        .unwrap();
    }
    assert!(rig.driver.kick_if_needed(2), "first batch kicks");
    wait_pending(&rig, 5);
    ScsiRequestBuilder::submit(&mut rig.driver, 2, lun_bytes(0, 0), 9, &inquiry, &[], 36).unwrap();
    assert!(!rig.driver.kick_if_needed(2), "device asked for no kick");
    assert_eq!(rig.complete_deferred(0), 5);
    let used = rig.driver.wait_used(2, 6, TIMEOUT);
    assert_eq!(
        used.len(),
        6,
        "the un-kicked INQUIRY was found by a completion"
    );

    rig.driver.reset_alloc();
    for i in 0..4u32 {
        ScsiRequestBuilder::submit(
            &mut rig.driver,
            2,
            lun_bytes(0, 0),
            u64::from(i),
            &read10(i, 1),
            &[],
            512,
        )
        .unwrap();
    }
    ScsiRequestBuilder::submit(
        &mut rig.driver,
        2,
        lun_bytes(0, 0),
        8,
        &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &[],
        0,
    )
    .unwrap();
    assert!(rig.driver.kick_if_needed(2));
    wait_pending(&rig, 5);
    ScsiRequestBuilder::submit(&mut rig.driver, 2, lun_bytes(0, 0), 9, &inquiry, &[], 36).unwrap();
    assert!(
        rig.driver.kick_if_needed(2),
        "a flush in flight keeps kicks on"
    );
    let used = rig.driver.wait_used(2, 1, TIMEOUT);
    assert_eq!(
        used[0].1,
        108 + 36,
        "INQUIRY answered while the flush is pending"
    );
    assert_eq!(rig.complete_deferred(0), 5);
    rig.driver.wait_used(2, 5, TIMEOUT);
}
