#!/bin/sh
# Linux booted directly, without firmware: `hangar run --kernel --initrd
# --cmdline` loads the same Debian kernel and busybox initramfs as
# linux-disk, places them and the device tree in RAM and starts the boot vCPU
# at the kernel with the tree's address in x0. The guest (tests/payloads/
# linux-init.sh) must come up on 2 vCPUs, find both virtio-scsi disks, see the
# boot disk read-only, write a pattern through the data disk, reboot once and
# then power off (exit 0); the pattern must then be in the data disk's file.
# No flash, no variable store, no UEFI shell on the way. The first boot's
# kernel is gzip-compressed; while the guest runs, the scenario replaces the
# file with the plain Image, and the reboot must load that one (hangar opens
# the files again at each reboot). Then the same kernel as an EFI zboot image
# (zstd payload, as Fedora's) boots once, and a file that is no kernel is
# refused with a one-line error.
. /scenarios/lib.sh
need_kvm
out=/tmp/console.out
# kernel_formats LOG: how each boot's kernel was packed, in order, from
# hangar's "direct boot: kernel (FORMAT) at" lines, comma-separated.
kernel_formats() { sed -n 's/.*direct boot: kernel (\(.*\)) at .*/\1/p' "$1" | paste -sd, -; }
dd if=/dev/zero of=/tmp/data.raw bs=1M count=16 2>/dev/null || fail "cannot make /tmp/data.raw"
# The guest reboots once when told (hangar loads kernel and initramfs again
# in place), then powers off.
printf 'hangar-plan: reboot-when-told\n' | dd of=/tmp/data.raw conv=notrunc 2>/dev/null \
    || fail "cannot write the plan"
cp /disks/linux-Image.gz /tmp/kernel || fail "cannot copy the kernel"
t0=$(now_ms)
step start-hangar
start_hangar "$out" -v run --cpus 2 --memory 512M \
    --kernel /tmp/kernel --initrd /disks/linux-initrd.cpio \
    --cmdline "console=ttyAMA0 quiet panic=0 rdinit=/init" \
    --disk path=/disks/linux.img,readonly=on --disk path=/tmp/data.raw
step kernel-up
wait_for "LINUX-GUEST: up" "$out" 400 || fail "no sign of the Linux guest; console: $(console_tail $out)"
value to_linux_ms $(( $(now_ms) - t0 ))
step swap-kernel
wait_for "LINUX-GUEST: waiting to be told to reboot" "$out" 400 \
    || fail "the guest did not wait; console: $(console_tail $out)"
cp /disks/linux-Image /tmp/kernel.new && mv /tmp/kernel.new /tmp/kernel \
    || fail "cannot replace the kernel"
printf 'hangar-go\n' | dd of=/tmp/data.raw bs=512 seek=2 conv=notrunc 2>/dev/null \
    || fail "cannot tell the guest"
step reboot
wait_for "LINUX-GUEST: second boot" "$out" 400 || fail "no second boot; console: $(console_tail $out)"
linux_guest_powers_off "$out"
value direct_boots "$(grep -c 'direct boot: kernel (' "$clean")"
# What each boot loaded, in order: the gzip file, then the Image put in its place.
value boot_formats "$(kernel_formats "$clean")"
value guest_boots "$(grep -c 'LINUX-GUEST: up' "$clean")"
linux_disk_checks
# An EFI zboot kernel boots once on a blank data disk (no plan: the guest
# checks its disks and powers off); hangar's log names how it unpacked it.
step packed-zboot
dd if=/dev/zero of=/tmp/blank.raw bs=1M count=16 2>/dev/null || fail "cannot make /tmp/blank.raw"
start_hangar /tmp/zboot.out -v run --memory 512M \
    --kernel /disks/linux-zboot.efi --initrd /disks/linux-initrd.cpio \
    --cmdline "console=ttyAMA0 quiet panic=0 rdinit=/init" \
    --disk path=/disks/linux.img,readonly=on --disk path=/tmp/blank.raw
wait_for "LINUX-GUEST: powering off" /tmp/zboot.out 300 \
    || fail "no Linux guest from the zboot kernel; console: $(console_tail /tmp/zboot.out)"
expect_clean_exit 120 "after the guest powered off" /tmp/zboot.out
! grep -a "LINUX-GUEST: FAILED" /tmp/zboot.out || fail "the guest failed with the zboot kernel"
value packed_zboot_format "$(kernel_formats /tmp/zboot.out)"
step bad-kernel
# A file that is not an Image: a one-line error naming it, status 1, no VM.
hangar run --kernel /disks/linux-initrd.cpio > /tmp/bad.out 2>&1
value bad_kernel_status $?
cat /tmp/bad.out
value bad_kernel_named "$(grep -c '^hangar: --kernel /disks/linux-initrd.cpio: not an arm64 Linux Image' /tmp/bad.out)"
pass
