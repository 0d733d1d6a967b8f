//! End-to-end: a Linux guest boots in hangar (through AAVMF, from a virtio-scsi
//! disk, or directly with `--kernel`) and uses its disks through Linux's own
//! virtio-mmio and virtio-scsi drivers.

use std::time::Duration;

use hangar_tests::bench;

/// Asserts each `(key, value)` of the verdict, with the whole verdict on failure.
fn assert_values(verdict: &bench::Verdict, expected: &[(&str, &str)]) {
    for &(key, want) in expected {
        assert_eq!(
            verdict.value(key),
            Some(want),
            "{key}\n{}",
            verdict.explain()
        );
    }
}

/// What the guest's /init saw of its two vCPUs and two disks, and its write
/// (the scenarios' `linux_disk_checks`), with a clean power-off.
const DISKS_SEEN: &[(&str, &str)] = &[
    ("exit_status", "0"),
    ("guest_cpus", "2"),
    ("guest_disks", "sda sdb"),
    // The boot disk is attached readonly=on: Linux sees it write-protected
    // (MODE SENSE's WP bit) and its write is refused; the data disk is not.
    ("guest_boot_ro", "1"),
    ("guest_data_ro", "0"),
    ("readonly_write", "refused"),
    // 16 MiB in 512-byte sectors, from READ CAPACITY.
    ("guest_data_sectors", "32768"),
    // Nothing Linux did made hangar log an error (warnings are shown in the
    // log: the firmware's write to its read-only bank is one every boot).
    ("hangar_errors", "0"),
    // One request queue per vCPU (num_queues), each a blk-mq hardware queue.
    ("guest_data_queues", "2"),
    ("data_in_file", "yes"),
];

#[test]
fn linux_guest_finds_both_disks_and_its_write_reaches_the_image_file() {
    let verdict = bench::expect_pass("linux-disk", Duration::from_secs(1200));
    assert_values(&verdict, DISKS_SEEN);
}

/// The shape of QEMU's aarch64 hang, driven by a real guest: EFI variable
/// writes (runtime services programming the CFI flash: synchronous block
/// writes through nested polls of the iothread's context, from a vCPU) while
/// the guest keeps virtio-scsi requests in flight on that same context.
#[test]
fn linux_writes_efi_variables_while_its_disk_is_busy_without_a_hang() {
    let verdict = bench::expect_pass("linux-efivars-under-io", Duration::from_secs(900));
    assert_values(
        &verdict,
        &[
            ("exit_status", "0"),
            ("efivars_written", "40"),
            ("hangar_errors", "0"),
            ("efivars_last", "hangar-0040"),
            ("variable_in_vars_file", "yes"),
        ],
    );
    // Every I/O process got through loops of its own while the variables
    // were written: the disk was busy throughout, not only before or after.
    let min_loops: u32 = verdict
        .value("io_loops_min")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no io_loops_min\n{}", verdict.explain()));
    assert!(min_loops >= 2, "{}", verdict.explain());
}

/// `--kernel --initrd --cmdline`: the same guest without firmware.
#[test]
fn linux_boots_directly_without_firmware_and_uses_its_disks() {
    let verdict = bench::expect_pass("linux-direct", Duration::from_secs(900));
    assert_values(&verdict, DISKS_SEEN);
    assert_values(
        &verdict,
        &[
            // The guest rebooted once: hangar loaded the kernel again, and
            // loaded the file as it was then (the scenario had replaced the
            // gzip kernel with the plain Image).
            ("guest_boots", "2"),
            ("direct_boots", "2"),
            ("boot_formats", "gzip,Image"),
            // Unpacked into memory, then booted like the plain Image.
            ("packed_zboot_format", "EFI zboot (zstd)"),
            ("bad_kernel_status", "1"),
            // One line naming the option, the file and what is wrong.
            ("bad_kernel_named", "1"),
        ],
    );
}
