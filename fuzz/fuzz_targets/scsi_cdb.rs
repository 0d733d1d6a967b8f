//! Fuzzes the SCSI command set: any CDB plus parameter data against a disk with
//! fuzzer-chosen flags and state. Nothing may panic; every outcome must respect
//! the disk's bounds and read-only flag.
#![no_main]

use devices::virtio::scsi::commands::{execute, execute_without_lun, IoPlan, Outcome};
use devices::virtio::scsi::disk::{DiskGeometry, LunState};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let flags = data[0];
    let blocks = u64::from(u16::from_le_bytes([data[1], data[2]])) * 8;
    let cdb_len = usize::from(data[3] % 33);
    let rest = &data[4..];
    let (cdb, data_out) = rest.split_at(cdb_len.min(rest.len()));
    let geometry = DiskGeometry {
        blocks,
        block_size: if flags & 4 != 0 { 4096 } else { 512 },
        read_only: flags & 1 != 0,
        discard: flags & 2 != 0,
        serial: "FUZZ".into(),
        max_transfer_blocks: 1024,
        target: 0,
        lun: 0,
    };
    let mut state = if flags & 8 != 0 {
        LunState::after_reset()
    } else {
        LunState::default()
    };
    let size = blocks * u64::from(geometry.block_size);
    for _ in 0..2 {
        match execute(&geometry, &mut state, cdb, data_out, &[0, 1, 300]) {
            Outcome::Io(plan) => {
                let in_bounds = |offset: u64, len: u64| offset.checked_add(len).is_some_and(|e| e <= size);
                match plan {
                    IoPlan::Read { offset, len } => assert!(in_bounds(offset, len)),
                    IoPlan::Write { offset, len, .. } | IoPlan::WritePattern { offset, len, .. } => {
                        assert!(!geometry.read_only);
                        assert!(in_bounds(offset, len));
                    }
                    IoPlan::WriteZeroes { offset, len, .. } => {
                        assert!(!geometry.read_only);
                        assert!(in_bounds(offset, len));
                    }
                    IoPlan::Discard(ranges) => {
                        assert!(geometry.discard && !geometry.read_only);
                        assert!(ranges.iter().all(|&(o, l)| in_bounds(o, l)));
                    }
                    IoPlan::Flush => {}
                }
            }
            Outcome::DataIn(bytes) => assert!(bytes.len() <= 1 << 20),
            Outcome::Good | Outcome::Check(_) => {}
        }
    }
    let _ = execute_without_lun(cdb, &[0, 1]);
});
