//! A hostile guest against virtio-scsi: malformed chains, bad addresses and
//! lengths, bad LUNs, reserved CDB bits and broken rings. Each gets an error
//! response (or DEVICE_NEEDS_RESET for a broken ring), and the device keeps
//! serving valid requests afterwards.

mod virtio_scsi_common;

use devices::virtio::scsi::mem_backend::CompletionMode;
use devices::virtio::testing::{
    lun_bytes, Buf, ScsiRequestBuilder, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, REQUEST_SIZE,
    RESPONSE_SIZE,
};
use virtio_scsi_common::*;
use vm_memory::{Bytes, GuestAddress};

const Q: usize = REQUEST_QUEUE;

fn rig() -> Rig {
    let mut rig = Rig::new(vec![Disk::simple(CompletionMode::Inline)]);
    rig.clear_unit_attention(0, 0);
    rig
}

/// The device still answers a valid READ correctly.
fn still_serving(rig: &mut Rig) {
    rig.disks[0].fill(0, &[0x42; 512]);
    let r = rig.command(0, 0, &read10(0, 1), &[], 512);
    assert_eq!((r.response, r.status), (0, 0), "device stopped serving");
    assert_eq!(r.data_in, vec![0x42; 512]);
    assert_eq!(rig.driver.read_reg(0x70) & 0x40, 0, "no NEEDS_RESET");
}

fn request_header(cdb: &[u8]) -> Vec<u8> {
    let mut header = vec![0u8; REQUEST_SIZE as usize];
    header[0..8].copy_from_slice(&lun_bytes(0, 0));
    header[19..19 + cdb.len()].copy_from_slice(cdb);
    header
}

/// Queues `bufs` as one chain, kicks, and returns the used length.
fn submit_raw(rig: &mut Rig, bufs: &[Buf]) -> u32 {
    let head = rig.driver.add_chain(Q, bufs).expect("descriptors");
    rig.driver.kick(Q);
    let used = rig.driver.wait_used(Q, 1, TIMEOUT);
    assert_eq!(used[0].0, head);
    used[0].1
}

fn response_byte(rig: &Rig, addr: GuestAddress) -> u8 {
    rig.driver.mem.read_obj(GuestAddress(addr.0 + 11)).unwrap()
}

#[test]
fn chain_without_writable_part_is_returned_empty() {
    let mut rig = rig();
    let req = rig.driver.alloc(u64::from(REQUEST_SIZE));
    rig.driver
        .mem
        .write_slice(&request_header(&[0x12, 0, 0, 0, 36, 0]), req)
        .unwrap();
    let len = submit_raw(
        &mut rig,
        &[Buf {
            addr: req,
            len: REQUEST_SIZE,
            writable: false,
        }],
    );
    assert_eq!(len, 0);
    still_serving(&mut rig);
}

#[test]
fn response_buffer_too_short_is_returned_empty() {
    let mut rig = rig();
    let req = rig.driver.alloc(u64::from(REQUEST_SIZE));
    rig.driver
        .mem
        .write_slice(&request_header(&[0x12, 0, 0, 0, 36, 0]), req)
        .unwrap();
    let resp = rig.driver.alloc(16);
    let len = submit_raw(
        &mut rig,
        &[
            Buf {
                addr: req,
                len: REQUEST_SIZE,
                writable: false,
            },
            Buf {
                addr: resp,
                len: 10,
                writable: true,
            },
        ],
    );
    assert_eq!(len, 0);
    still_serving(&mut rig);
}

#[test]
fn request_header_too_short_gets_failure() {
    let mut rig = rig();
    let req = rig.driver.alloc(64);
    let resp = rig.driver.alloc(u64::from(RESPONSE_SIZE));
    let len = submit_raw(
        &mut rig,
        &[
            Buf {
                addr: req,
                len: 10,
                writable: false,
            },
            Buf {
                addr: resp,
                len: RESPONSE_SIZE,
                writable: true,
            },
        ],
    );
    assert_eq!(len, RESPONSE_SIZE);
    assert_eq!(response_byte(&rig, resp), 9, "VIRTIO_SCSI_S_FAILURE");
    still_serving(&mut rig);
}

#[test]
fn readable_after_writable_is_rejected() {
    let mut rig = rig();
    let req = rig.driver.alloc(u64::from(REQUEST_SIZE));
    rig.driver
        .mem
        .write_slice(&request_header(&[0x12, 0, 0, 0, 36, 0]), req)
        .unwrap();
    let resp = rig.driver.alloc(u64::from(RESPONSE_SIZE));
    let len = submit_raw(
        &mut rig,
        &[
            Buf {
                addr: resp,
                len: RESPONSE_SIZE,
                writable: true,
            },
            Buf {
                addr: req,
                len: REQUEST_SIZE,
                writable: false,
            },
        ],
    );
    assert_eq!(len, 0);
    still_serving(&mut rig);
}

#[test]
fn descriptor_loop_ends_and_the_chain_is_returned() {
    let mut rig = rig();
    let req = rig.driver.alloc(u64::from(REQUEST_SIZE));
    rig.driver
        .mem
        .write_slice(&request_header(&[0x12, 0, 0, 0, 36, 0]), req)
        .unwrap();
    // Descriptor 100 points to itself, readable, forever.
    rig.driver
        .write_descriptor(Q, 100, req.0, REQUEST_SIZE, DESC_F_NEXT, 100);
    rig.driver.publish(Q, 100);
    rig.driver.kick(Q);
    let used = rig.driver.wait_used(Q, 1, TIMEOUT);
    assert_eq!(used[0], (100, 0));
    still_serving(&mut rig);
}

#[test]
fn buffers_outside_guest_memory_get_failure() {
    let mut rig = rig();
    // READ into a data-in buffer beyond the end of guest memory.
    let req = rig.driver.alloc(u64::from(REQUEST_SIZE));
    rig.driver
        .mem
        .write_slice(&request_header(&read10(0, 1)), req)
        .unwrap();
    let resp = rig.driver.alloc(u64::from(RESPONSE_SIZE));
    let len = submit_raw(
        &mut rig,
        &[
            Buf {
                addr: req,
                len: REQUEST_SIZE,
                writable: false,
            },
            Buf {
                addr: resp,
                len: RESPONSE_SIZE,
                writable: true,
            },
            Buf {
                addr: GuestAddress(1 << 40),
                len: 512,
                writable: true,
            },
        ],
    );
    assert_eq!(len, RESPONSE_SIZE);
    assert_eq!(response_byte(&rig, resp), 9);
    // A data-in buffer straddling the end of memory.
    let straddle = GuestAddress(MEM_SIZE as u64 - 256);
    let len = submit_raw(
        &mut rig,
        &[
            Buf {
                addr: req,
                len: REQUEST_SIZE,
                writable: false,
            },
            Buf {
                addr: resp,
                len: RESPONSE_SIZE,
                writable: true,
            },
            Buf {
                addr: straddle,
                len: 512,
                writable: true,
            },
        ],
    );
    assert_eq!(len, RESPONSE_SIZE);
    assert_eq!(response_byte(&rig, resp), 9);
    // The request header itself outside memory.
    let len = submit_raw(
        &mut rig,
        &[
            Buf {
                addr: GuestAddress(1 << 40),
                len: REQUEST_SIZE,
                writable: false,
            },
            Buf {
                addr: resp,
                len: RESPONSE_SIZE,
                writable: true,
            },
        ],
    );
    assert_eq!((len, response_byte(&rig, resp)), (RESPONSE_SIZE, 9));
    // The response outside memory: nothing can be written, chain returned.
    let len = submit_raw(
        &mut rig,
        &[
            Buf {
                addr: req,
                len: REQUEST_SIZE,
                writable: false,
            },
            Buf {
                addr: GuestAddress(1 << 40),
                len: RESPONSE_SIZE,
                writable: true,
            },
        ],
    );
    assert_eq!(len, 0);
    still_serving(&mut rig);
}

#[test]
fn giant_lengths_are_refused_without_touching_memory() {
    let mut rig = rig();
    let req = rig.driver.alloc(u64::from(REQUEST_SIZE));
    rig.driver
        .mem
        .write_slice(&request_header(&read10(0, 8)), req)
        .unwrap();
    let resp = rig.driver.alloc(u64::from(RESPONSE_SIZE));
    let data = rig.driver.alloc(4096);
    let len = submit_raw(
        &mut rig,
        &[
            Buf {
                addr: req,
                len: REQUEST_SIZE,
                writable: false,
            },
            Buf {
                addr: resp,
                len: RESPONSE_SIZE,
                writable: true,
            },
            Buf {
                addr: data,
                len: u32::MAX,
                writable: true,
            },
        ],
    );
    // The chain is longer than 2^32 bytes in total: the walk stops before the
    // giant descriptor, so the READ has no data-in buffer at all: OVERRUN.
    assert_eq!((len, response_byte(&rig, resp)), (RESPONSE_SIZE, 1));
    assert_eq!(rig.disks[0].submitted(), 0, "no I/O for the giant chain");
    // A WRITE whose data-out is shorter than the transfer: OVERRUN, no I/O.
    let before = rig.disks[0].submitted();
    let r = rig.command(0, 0, &write10(0, 8, false), &[1; 512], 0);
    assert_eq!(r.response, 1, "VIRTIO_SCSI_S_OVERRUN");
    let r = rig.command(0, 0, &read10(0, 8), &[], 512);
    assert_eq!(r.response, 1, "data-in smaller than the READ");
    assert_eq!(rig.disks[0].submitted(), before);
    still_serving(&mut rig);
}

#[test]
fn bad_lun_addresses_get_bad_target() {
    let mut rig = rig();
    for lun in [
        [0u8; 8],
        [2, 0, 0, 0, 0, 0, 0, 0],
        [1, 0, 0x80, 0, 0, 0, 0, 0],
        [1, 0, 0, 0, 1, 0, 0, 0],
        [1, 200, 0, 0, 0, 0, 0, 0],
    ] {
        let r = rig.command_on(Q, lun, &[0x12, 0, 0, 0, 36, 0], &[], 36);
        assert_eq!(r.response, 3, "LUN {lun:?}");
        assert!(r.data_in.is_empty());
    }
    still_serving(&mut rig);
}

#[test]
fn bidirectional_requests_are_refused() {
    let mut rig = rig();
    let slot = ScsiRequestBuilder::submit(
        &mut rig.driver,
        Q,
        lun_bytes(0, 0),
        1,
        &[0x12, 0, 0, 0, 36, 0],
        &[1, 2, 3],
        36,
    )
    .unwrap();
    rig.driver.kick(Q);
    let used = rig.driver.wait_used(Q, 1, TIMEOUT);
    let r = ScsiRequestBuilder::response(&rig.driver, &slot, used[0].1);
    assert_eq!(r.response, 9);
    rig.driver.reset_alloc();
    still_serving(&mut rig);
}

#[test]
fn reserved_bits_and_unknown_opcodes_get_check_condition() {
    let mut rig = rig();
    let cases: [(&[u8], u8, u8); 5] = [
        (&[0x28, 0x01, 0, 0, 0, 0, 0, 0, 1, 0], 0x24, 1),
        (&[0x00, 0, 0, 0, 0, 0x04], 0x24, 5),
        (&[0x12, 0x02, 0, 0, 36, 0], 0x24, 1),
        (&[0xff], 0x20, 0),
        (&[0x1a, 0x80, 0x08, 0, 255, 0], 0x24, 1),
    ];
    for (cdb, asc, byte) in cases {
        let r = rig.command(0, 0, cdb, &[], 512);
        assert_eq!((r.response, r.status), (0, 2), "cdb {cdb:02x?}");
        assert_eq!((r.sense[2], r.sense[12]), (0x05, asc), "cdb {cdb:02x?}");
        if asc == 0x24 {
            assert_eq!(r.sense[15], 0xc0, "SKSV + C/D");
            assert_eq!(r.sense[17], byte);
        }
    }
    let r = rig.command(0, 0, &read10(0xffff_fff0, 1), &[], 512);
    assert_eq!((r.sense[2], r.sense[12]), (0x05, 0x21), "LBA out of range");
    still_serving(&mut rig);
}

#[test]
fn hostile_cdb_and_sense_sizes_are_handled() {
    let mut rig = rig();
    // Too large values are ignored.
    rig.driver.write_reg(0x100 + 24, 100_000);
    assert_eq!(rig.driver.read_reg(0x100 + 24), 32);
    // A driver asking for tiny CDBs cannot send 16-byte commands.
    rig.driver.write_reg(0x100 + 24, 6);
    let req = rig.driver.alloc(64);
    let mut header = vec![0u8; 25];
    header[0..8].copy_from_slice(&lun_bytes(0, 0));
    header[19] = 0x88;
    rig.driver.mem.write_slice(&header, req).unwrap();
    let resp = rig.driver.alloc(u64::from(RESPONSE_SIZE));
    let data = rig_alloc(&mut rig, 512);
    let len = submit_raw(
        &mut rig,
        &[
            Buf {
                addr: req,
                len: 25,
                writable: false,
            },
            Buf {
                addr: resp,
                len: RESPONSE_SIZE,
                writable: true,
            },
            Buf {
                addr: data,
                len: 512,
                writable: true,
            },
        ],
    );
    assert_eq!(len, RESPONSE_SIZE);
    let mut raw = [0u8; 30];
    rig.driver.mem.read_slice(&mut raw, resp).unwrap();
    assert_eq!((raw[10], raw[11]), (2, 0), "CHECK CONDITION");
    assert_eq!(raw[12 + 12], 0x24);
    rig.driver.write_reg(0x100 + 24, 32);
    // Zero sense size: CHECK CONDITION without sense bytes.
    rig.driver.write_reg(0x100 + 20, 0);
    let req = rig.driver.alloc(u64::from(REQUEST_SIZE));
    rig.driver
        .mem
        .write_slice(&request_header(&[0xff]), req)
        .unwrap();
    let resp = rig.driver.alloc(12);
    let len = submit_raw(
        &mut rig,
        &[
            Buf {
                addr: req,
                len: REQUEST_SIZE,
                writable: false,
            },
            Buf {
                addr: resp,
                len: 12,
                writable: true,
            },
        ],
    );
    assert_eq!(len, 12);
    rig.driver.write_reg(0x100 + 20, 96);
    rig.driver.reset_alloc();
    still_serving(&mut rig);
}

fn rig_alloc(rig: &mut Rig, len: u64) -> GuestAddress {
    rig.driver.alloc(len)
}

#[test]
fn indirect_table_outside_memory_returns_the_chain() {
    let mut rig = rig();
    rig.driver
        .write_descriptor(Q, 50, 1 << 40, 64, DESC_F_INDIRECT, 0);
    rig.driver.publish(Q, 50);
    rig.driver.kick(Q);
    let used = rig.driver.wait_used(Q, 1, TIMEOUT);
    assert_eq!(used[0], (50, 0));
    still_serving(&mut rig);
}

#[test]
fn indirect_descriptors_work() {
    let mut rig = rig();
    rig.disks[0].fill(0, &[0x33; 512]);
    let req = rig.driver.alloc(u64::from(REQUEST_SIZE));
    rig.driver
        .mem
        .write_slice(&request_header(&read10(0, 1)), req)
        .unwrap();
    let resp = rig.driver.alloc(u64::from(RESPONSE_SIZE));
    let data = rig.driver.alloc(512);
    let table = rig.driver.alloc(48);
    let mut raw = Vec::new();
    for (i, (addr, len, flags)) in [
        (req.0, REQUEST_SIZE, DESC_F_NEXT),
        (resp.0, RESPONSE_SIZE, DESC_F_NEXT | DESC_F_WRITE),
        (data.0, 512, DESC_F_WRITE),
    ]
    .iter()
    .enumerate()
    {
        raw.extend_from_slice(&addr.to_le_bytes());
        raw.extend_from_slice(&len.to_le_bytes());
        raw.extend_from_slice(&flags.to_le_bytes());
        raw.extend_from_slice(&((i + 1) as u16).to_le_bytes());
    }
    rig.driver.mem.write_slice(&raw, table).unwrap();
    rig.driver
        .write_descriptor(Q, 60, table.0, 48, DESC_F_INDIRECT, 0);
    rig.driver.publish(Q, 60);
    rig.driver.kick(Q);
    let used = rig.driver.wait_used(Q, 1, TIMEOUT);
    assert_eq!(used[0], (60, RESPONSE_SIZE + 512));
    let mut back = vec![0u8; 512];
    rig.driver.mem.read_slice(&mut back, data).unwrap();
    assert_eq!(back, vec![0x33; 512]);
}

#[test]
fn avail_index_jump_sets_needs_reset_then_reset_recovers() {
    let mut rig = rig();
    rig.driver.interrupts();
    rig.driver.set_avail_idx(Q, 1000);
    rig.driver.kick(Q);
    let deadline = std::time::Instant::now() + TIMEOUT;
    while rig.driver.read_reg(0x70) & 0x40 == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "watchdog: no NEEDS_RESET"
        );
        std::thread::yield_now();
    }
    assert_eq!(rig.driver.read_reg(0x60) & 2, 2, "config-change interrupt");
    assert!(rig.driver.interrupts() >= 1);
    // Reset and initialise again: the device serves.
    assert_eq!(rig.driver.init(3, QUEUE_SIZE, true), 0xf);
    rig.clear_unit_attention(0, 0);
    still_serving(&mut rig);
}

#[test]
fn head_index_beyond_queue_size_sets_needs_reset() {
    let mut rig = rig();
    rig.driver.publish(Q, 5000);
    rig.driver.kick(Q);
    let deadline = std::time::Instant::now() + TIMEOUT;
    while rig.driver.read_reg(0x70) & 0x40 == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "watchdog: no NEEDS_RESET"
        );
        std::thread::yield_now();
    }
    assert_eq!(rig.driver.init(3, QUEUE_SIZE, true), 0xf);
    rig.clear_unit_attention(0, 0);
    still_serving(&mut rig);
}

#[test]
fn rings_outside_memory_at_driver_ok_set_needs_reset() {
    let mut rig = rig();
    rig.driver.write_reg(0x70, 0);
    rig.driver.write_reg(0x70, 1);
    rig.driver.write_reg(0x70, 3);
    rig.driver.write_reg(0x24, 1);
    rig.driver.write_reg(0x20, 1);
    rig.driver.write_reg(0x70, 0xb);
    rig.driver.write_reg(0x30, 2);
    rig.driver.write_reg(0x38, 64);
    rig.driver.write_reg(0x80, 0);
    rig.driver.write_reg(0x84, 0x100);
    rig.driver.write_reg(0x44, 1);
    rig.driver.write_reg(0x70, 0xf);
    assert_eq!(rig.driver.read_reg(0x70) & 0x40, 0x40);
    assert_eq!(rig.driver.init(3, QUEUE_SIZE, true), 0xf);
    rig.clear_unit_attention(0, 0);
    still_serving(&mut rig);
}

#[test]
fn control_queue_garbage_is_returned_and_queue_keeps_working() {
    let mut rig = rig();
    for request in [vec![], vec![9u8, 0, 0, 0], vec![0u8; 10]] {
        let req = rig.driver.alloc(64);
        rig.driver.mem.write_slice(&[0u8; 64], req).unwrap();
        if !request.is_empty() {
            rig.driver.mem.write_slice(&request, req).unwrap();
        }
        let resp = rig.driver.alloc(8);
        let mut bufs = vec![];
        if !request.is_empty() {
            bufs.push(Buf {
                addr: req,
                len: request.len() as u32,
                writable: false,
            });
        }
        bufs.push(Buf {
            addr: resp,
            len: 8,
            writable: true,
        });
        rig.driver.add_chain(0, &bufs).unwrap();
        rig.driver.kick(0);
        let used = rig.driver.wait_used(0, 1, TIMEOUT);
        assert_eq!(used[0].1, 0, "request {request:?}");
    }
    // A TMF with no room for the response.
    let mut tmf = vec![0u8; 24];
    tmf[4] = 5;
    tmf[8..16].copy_from_slice(&lun_bytes(0, 0));
    let req = rig.driver.alloc(24);
    rig.driver.mem.write_slice(&tmf, req).unwrap();
    rig.driver
        .add_chain(
            0,
            &[Buf {
                addr: req,
                len: 24,
                writable: false,
            }],
        )
        .unwrap();
    rig.driver.kick(0);
    assert_eq!(rig.driver.wait_used(0, 1, TIMEOUT)[0].1, 0);
    rig.driver.reset_alloc();
    still_serving(&mut rig);
}
