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
step make-data-disk
dd if=/dev/zero of=/tmp/data.raw bs=1M count=16 2>/dev/null || fail "cannot make /tmp/data.raw"
out=/tmp/console.out
step start-hangar
t0=$(now_ms)
start_hangar "$out" -v run --cpus 2 --memory 512M --vars /tmp/VARS.fd \
    --disk path=/disks/linux.img,readonly=on --disk path=/tmp/data.raw
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
clean=/tmp/console.txt
sed 's/\x1b\[[0-9;?]*[A-Za-z]//g' "$out" | tr -d '\r' > "$clean"
! grep -q "LINUX-GUEST: FAILED" "$clean" || fail "$(grep 'LINUX-GUEST: ' "$clean" | tail -n 16)"
# guest PREFIX: the rest of the guest's first line that starts with PREFIX.
guest() { sed -n "s/^.*LINUX-GUEST: $1//p" "$clean" | head -n 1; }
value guest_cpus "$(guest 'up: ' | sed -n 's/.*, \([0-9]*\) cpus$/\1/p')"
value guest_disks "$(guest 'disks: ')"
value guest_boot_ro "$(guest 'boot ro=' | cut -d' ' -f1)"
value guest_data_ro "$(guest 'boot ro=' | sed -n 's/.*data ro=//p')"
value guest_data_sectors "$(guest 'data sectors=')"
value guest_data_queues "$(guest 'data queues=')"
grep -q "LINUX-GUEST: boot label ok" "$clean" || fail "the boot disk's first sector read wrong"
value readonly_write "$(guest 'boot write ')"
grep -q "LINUX-GUEST: data write-readback ok" "$clean" || fail "no write-readback on the data disk"
# What hangar said while Linux ran (-v): warnings are rate-limited guest
# misbehaviour reports (unmapped accesses, unknown registers); shown, counted.
grep -E ' (WARN|ERROR) ' "$clean" | head -n 12
value hangar_warnings "$(grep -c ' WARN ' "$clean")"
value hangar_errors "$(grep -c ' ERROR ' "$clean")"
step check-data-file
yes hangar-linux-pattern | head -c 8192 > /tmp/pattern
dd if=/tmp/data.raw bs=4096 skip=256 count=2 2>/dev/null > /tmp/on-disk
cmp -s /tmp/pattern /tmp/on-disk || fail "the guest's write is not in /tmp/data.raw"
value data_in_file yes
pass
