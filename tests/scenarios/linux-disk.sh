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
step guest-done
wait_for "LINUX-GUEST: powering off" "$out" 300 || fail "guest did not finish; console: $(console_tail $out)"
step power-off
expect_clean_exit 120 "after the guest powered off" "$out"
value exit_status "$HANGAR_STATUS"
step check-guest
linux_guest_report "$out"
value guest_cpus "$(guest 'up: ' | sed -n 's/.*, \([0-9]*\) cpus$/\1/p')"
value guest_disks "$(guest 'disks: ')"
value guest_boot_ro "$(guest 'boot ro=' | cut -d' ' -f1)"
value guest_data_ro "$(guest 'boot ro=' | sed -n 's/.*data ro=//p')"
value guest_data_sectors "$(guest 'data sectors=')"
value guest_data_queues "$(guest 'data queues=')"
grep -q "LINUX-GUEST: boot label ok" "$clean" || fail "the boot disk's first sector read wrong"
value readonly_write "$(guest 'boot write ')"
grep -q "LINUX-GUEST: data write-readback ok" "$clean" || fail "no write-readback on the data disk"
step check-data-file
yes hangar-linux-pattern | head -c 8192 > /tmp/pattern
dd if=/tmp/data.raw bs=4096 skip=256 count=2 2>/dev/null > /tmp/on-disk
cmp -s /tmp/pattern /tmp/on-disk || fail "the guest's write is not in /tmp/data.raw"
value data_in_file yes
pass
