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
    // Nothing Linux did made hangar log an error (warnings are shown in the
    // log: the firmware's write to its read-only bank is one every boot).
    assert_eq!(value("hangar_errors").as_deref(), Some("0"), "{explain}");
    // One request queue per vCPU (num_queues), each a blk-mq hardware queue.
    assert_eq!(
        value("guest_data_queues").as_deref(),
        Some("2"),
        "{explain}"
    );
    assert_eq!(value("data_in_file").as_deref(), Some("yes"), "{explain}");
}

/// The shape of QEMU's aarch64 hang, driven by a real guest: EFI variable
/// writes (runtime services programming the CFI flash: synchronous block
/// writes through nested polls of the iothread's context, from a vCPU) while
/// the guest keeps virtio-scsi requests in flight on that same context.
#[test]
fn linux_writes_efi_variables_while_its_disk_is_busy_without_a_hang() {
    let verdict = bench::expect_pass("linux-efivars-under-io", Duration::from_secs(900));
    let value = |key: &str| verdict.value(key).map(str::to_string);
    let explain = verdict.explain();
    assert_eq!(value("exit_status").as_deref(), Some("0"), "{explain}");
    assert_eq!(value("efivars_written").as_deref(), Some("40"), "{explain}");
    assert_eq!(value("hangar_errors").as_deref(), Some("0"), "{explain}");
    assert_eq!(
        value("efivars_last").as_deref(),
        Some("hangar-0040"),
        "{explain}"
    );
    // Every I/O process got through loops of its own while the variables
    // were written: the disk was busy throughout, not only before or after.
    let min_loops: u32 = value("io_loops_min")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no io_loops_min\n{explain}"));
    assert!(min_loops >= 2, "{explain}");
    assert_eq!(
        value("variable_in_vars_file").as_deref(),
        Some("yes"),
        "{explain}"
    );
}
