#!/bin/busybox sh
# /init of the inner Linux guest that the linux-* scenarios boot in hangar
# (AAVMF's shell starts the kernel's EFI stub from a virtio-scsi disk). It
# loads the virtio-mmio and SCSI drivers, finds hangar's two disks, checks the
# read-only one and writes a pattern through the writable one; then, if the
# data disk's first sector asks for it (`hangar-plan: efivars-under-io`),
# writes EFI variables while other processes keep the data disk busy, or
# (`hangar-plan: reboot-when-told`) reboots once, when the host says so,
# before it goes on. It prints `LINUX-GUEST:` lines for the scenario, then
# powers off (PSCI SYSTEM_OFF).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "LINUX-GUEST: $*"; }
bye() { sync; poweroff -f; sleep 10; }
say "up: kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) cpus"
for m in virtio_mmio scsi_common scsi_mod virtio_scsi crct10dif_common crc-t10dif \
    crc64 crc64-rocksoft t10-pi sd_mod; do
    insmod "/lib/modules/$m.ko" || { say "FAILED: insmod $m"; bye; }
done
# Names (sda, sdb) follow the order probing finishes in, which varies: find
# each disk by its SCSI address instead. Target 0 is the boot disk, attached
# readonly=on; target 1 the blank data disk.
disk_at() { ls "/sys/bus/scsi/devices/0:0:$1:0/block" 2>/dev/null; }
i=0
while { [ -z "$(disk_at 0)" ] || [ -z "$(disk_at 1)" ]; } && [ $i -lt 300 ]; do
    sleep 0.1
    i=$((i + 1))
done
boot=$(disk_at 0)
data=$(disk_at 1)
say "disks: $(cd /sys/block && echo sd*)"
[ -n "$boot" ] && [ -n "$data" ] || { say "FAILED: no disk at target 0 or 1"; bye; }
say "boot ro=$(cat /sys/block/$boot/ro) data ro=$(cat /sys/block/$data/ro)"
say "data sectors=$(cat /sys/block/$data/size)"
# blk-mq hardware queues: virtio-scsi's request queues (num_queues = vCPUs).
say "data queues=$(ls /sys/block/$data/mq | wc -l)"
if dd if=/dev/$boot bs=512 count=1 2>/dev/null | grep -q HANGARLINUX; then
    say "boot label ok"
fi
if dd if=/dev/zero of=/dev/$boot bs=4096 count=1 seek=100 conv=fsync 2>/dev/null; then
    say "boot write accepted"
else
    say "boot write refused"
fi
# efivars_under_io: the architecture's hard case from a real guest. Each EFI
# variable write is a run of CFI flash writes on a vCPU, each a synchronous
# block write through a nested poll of the iothread's context, while four
# processes keep virtio-scsi requests in flight on that same context.
efivars_under_io() {
    insmod /lib/modules/efivarfs.ko || { say "FAILED: insmod efivarfs"; return; }
    mount -t efivarfs efivarfs /sys/firmware/efi/efivars \
        || { say "FAILED: mount efivarfs"; return; }
    guid=4e8a1c2b-1d3f-4a5b-9c6d-7e8f90a1b2c3
    rm -f /tmp/stop /tmp/io.*
    for j in 1 2 3 4; do
        (
            yes "hangar-io-$j" | head -c 65536 > /tmp/blk.$j
            n=0
            while [ ! -e /tmp/stop ]; do
                # Each loop owns 64 KiB at (2 + j) MiB; reads sweep the rest.
                dd if=/tmp/blk.$j of=/dev/$data bs=65536 seek=$((32 + 16 * j)) count=1 \
                    conv=fsync 2>/dev/null || echo "write $n" >> /tmp/io.fail
                echo 1 > /proc/sys/vm/drop_caches
                dd if=/dev/$data of=/dev/null bs=65536 skip=$((32 + (n * 7 + j) % 192)) \
                    count=4 2>/dev/null || echo "read $n" >> /tmp/io.fail
                n=$((n + 1))
            done
            echo "$n" > /tmp/io.count.$j
        ) &
    done
    sleep 1
    # 40: in the nested bench a variable write and a deletion take 1-1.8 s
    # under this load (40 of each: 41 s; 200: 353 s), and CI has a budget.
    i=1
    while [ $i -le 40 ]; do
        printf '\007\000\000\000hangar-%04d' $i > /sys/firmware/efi/efivars/HangarLoad$i-$guid \
            || { say "FAILED: set variable $i"; break; }
        # Delete an older one: deletions are flash writes too, and the
        # churn makes the firmware reclaim (erase) store blocks sooner.
        [ $i -gt 4 ] && rm -f /sys/firmware/efi/efivars/HangarLoad$((i - 4))-$guid
        i=$((i + 1))
    done
    touch /tmp/stop
    wait
    say "efivars written=$((i - 1))"
    last=$(tail -c +5 /sys/firmware/efi/efivars/HangarLoad40-$guid 2>/dev/null)
    say "efivars last=$last"
    say "io loops=$(cat /tmp/io.count.* | tr '\n' ' ')"
    [ -e /tmp/io.fail ] && say "FAILED: disk I/O under the variable writes: $(head -n 3 /tmp/io.fail)"
    for j in 1 2 3 4; do
        echo 1 > /proc/sys/vm/drop_caches
        dd if=/dev/$data bs=65536 skip=$((32 + 16 * j)) count=1 2>/dev/null | cmp -s - /tmp/blk.$j \
            || say "FAILED: loop $j's block reads back wrong"
    done
    say "efivars under io done"
}

# 8 KiB of a pattern the scenario also makes, at 1 MiB into the data disk.
yes hangar-linux-pattern | head -c 8192 > /tmp/pattern
if ! dd if=/tmp/pattern of=/dev/$data bs=4096 seek=256 conv=fsync 2>/tmp/dd.err; then
    say "FAILED: write $data: $(tail -n 1 /tmp/dd.err)"
    dmesg | tail -n 8 | sed 's/^/LINUX-GUEST: dmesg: /'
fi
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/$data bs=4096 skip=256 count=2 2>/dev/null > /tmp/readback
if cmp -s /tmp/pattern /tmp/readback; then
    say "data write-readback ok"
else
    say "FAILED: data disk read back differs"
fi
plan=$(dd if=/dev/$data bs=512 count=1 2>/dev/null | tr -d '\000' | head -n 1)
[ "$plan" = "hangar-plan: efivars-under-io" ] && efivars_under_io
# reboot-when-told: the first boot waits until the host writes `hangar-go`
# into the data disk's third sector (the scenario changes hangar's files
# meanwhile), leaves a mark in the second and reboots (PSCI SYSTEM_RESET:
# hangar boots again in place); the second finds the mark and goes on to
# power off.
sector() {
    blockdev --flushbufs "/dev/$data" 2>/dev/null || echo 1 > /proc/sys/vm/drop_caches
    dd if=/dev/$data bs=512 skip="$1" count=1 2>/dev/null | tr -d '\000' | head -n 1
}
if [ "$plan" = "hangar-plan: reboot-when-told" ]; then
    if [ "$(sector 1)" = "hangar-rebooted" ]; then
        say "second boot"
    else
        say "waiting to be told to reboot"
        i=0
        until [ "$(sector 2)" = "hangar-go" ]; do
            i=$((i + 1))
            [ $i -lt 600 ] || { say "FAILED: never told to reboot"; bye; }
            sleep 0.2
        done
        printf 'hangar-rebooted\n' | dd of=/dev/$data bs=512 seek=1 conv=fsync 2>/dev/null \
            || say "FAILED: cannot mark the data disk"
        say "rebooting"
        sync
        reboot -f
        sleep 10
    fi
fi
say "powering off"
bye
