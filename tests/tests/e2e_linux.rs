//! End-to-end: a Linux guest boots in hangar (through AAVMF, from a virtio-scsi
//! disk) and uses its disks through Linux's own virtio-mmio and virtio-scsi
//! drivers.

use std::time::Duration;

use hangar_tests::bench;

#[test]
fn linux_guest_finds_both_disks_and_its_write_reaches_the_image_file() {
    let verdict = bench::expect_pass("linux-disk", Duration::from_secs(1200));
    let value = |key: &str| verdict.value(key).map(str::to_string);
    let explain = verdict.explain();
    assert_eq!(value("exit_status").as_deref(), Some("0"), "{explain}");
    assert_eq!(value("guest_cpus").as_deref(), Some("2"), "{explain}");
    assert_eq!(
        value("guest_disks").as_deref(),
        Some("sda sdb"),
        "{explain}"
    );
    // The boot disk is attached readonly=on: Linux sees it write-protected
    // (MODE SENSE's WP bit) and its write is refused; the data disk is not.
    assert_eq!(value("guest_boot_ro").as_deref(), Some("1"), "{explain}");
    assert_eq!(value("guest_data_ro").as_deref(), Some("0"), "{explain}");
    assert_eq!(
        value("readonly_write").as_deref(),
        Some("refused"),
        "{explain}"
    );
    // 16 MiB in 512-byte sectors, from READ CAPACITY.
    assert_eq!(
        value("guest_data_sectors").as_deref(),
        Some("32768"),
        "{explain}"
    );
    // One request queue per vCPU (num_queues), each a blk-mq hardware queue.
    assert_eq!(
        value("guest_data_queues").as_deref(),
        Some("2"),
        "{explain}"
    );
    assert_eq!(value("data_in_file").as_deref(), Some("yes"), "{explain}");
}
