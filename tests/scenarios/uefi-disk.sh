#!/bin/sh
# AAVMF finds a virtio-scsi disk, runs startup.nsh from its FAT file system
# (which writes a variable with setvar -nv and ends with reset -s: exit 0).
# A second, read-only disk is attached as target 1 and must show up as FS1
# (value second_disk_visible). AAVMF 2022.11 gives up its SCSI bus scan at the
# first address with no disk, so the controller's max_target/max_lun are
# fitted to the disks (vmm/src/machine/scsi.rs).
. /scenarios/lib.sh
need_kvm
cp /disks/esp.img /tmp/esp.img
cp /disks/data.img /tmp/data.img
out=/tmp/console.out
step start-hangar
t0=$(now_ms)
start_hangar "$out" -v run --memory 512M --vars /tmp/VARS.fd \
    --disk path=/tmp/esp.img --disk path=/tmp/data.img,readonly=on
step startup-nsh
wait_for "startup.nsh is running" "$out" 300 || fail "startup.nsh did not run; console: $(console_tail $out)"
value to_startup_nsh_ms $(( $(now_ms) - t0 ))
step power-off
expect_clean_exit 120 "after startup.nsh" "$out"
step check-output
clean=/tmp/console.txt
sed 's/\x1b\[[0-9;?]*[A-Za-z]//g' "$out" | tr -d '\r' > "$clean"
grep -q "FS0:" "$clean" || fail "map -r shows no FS0; console: $(console_tail $clean)"
grep -q "FS1:" "$clean" || fail "map -r shows no FS1 for the second (read-only) disk; console: $(console_tail $clean)"
value second_disk_visible yes
grep -q "DISK42" "$clean" || fail "variable written by startup.nsh not read back; console: $(console_tail $clean)"
value filesystems "$(grep -c 'FS[0-9]:' "$clean")"
value exit_status "$HANGAR_STATUS"
pass
