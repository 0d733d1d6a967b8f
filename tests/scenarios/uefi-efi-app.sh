#!/bin/sh
# AAVMF boots a UEFI application from \EFI\BOOT\BOOTAA64.EFI on a virtio-scsi
# disk (the default removable-media boot path); the application prints a line
# and shuts down, so hangar exits with status 0.
. /scenarios/lib.sh
need_kvm
cp /disks/efiapp.img /tmp/efiapp.img
out=/tmp/console.out
step start-hangar
t0=$(now_ms)
start_hangar "$out" -v run --memory 512M --vars /tmp/VARS.fd --disk path=/tmp/efiapp.img
step efi-app
wait_for "HANGAR-EFI-APP: hello" "$out" 300 || fail "the application did not run; console: $(console_tail $out)"
value to_app_ms $(( $(now_ms) - t0 ))
step power-off
expect_clean_exit 60 "after the app's shutdown" "$out"
value exit_status "$HANGAR_STATUS"
pass
