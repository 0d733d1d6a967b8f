#!/bin/sh
# Linux in hangar: AAVMF's shell runs the startup.nsh of a virtio-scsi disk,
# which starts the Debian kernel's EFI stub with a busybox initramfs from the
# same disk (tests/payloads/linux-init.sh). With 2 vCPUs (two request queues)
# Linux loads virtio_mmio, virtio_scsi and sd, and must find both disks: the
# boot disk attached readonly=on (its write refused) and a blank data disk,
# through which it writes a pattern, reads it back and powers off (PSCI
# SYSTEM_OFF: hangar exits 0). The pattern must then be in the data disk's
# file here.
. /scenarios/lib.sh
need_kvm
out=/tmp/console.out
t0=$(now_ms)
start_linux_guest "$out"
step startup-nsh
wait_for "starting Linux from the virtio-scsi disk" "$out" 300 \
    || fail "startup.nsh did not run; console: $(console_tail $out)"
step kernel-up
wait_for "LINUX-GUEST: up" "$out" 400 || fail "no sign of the Linux guest; console: $(console_tail $out)"
value to_linux_ms $(( $(now_ms) - t0 ))
linux_guest_powers_off "$out"
linux_disk_checks
pass
