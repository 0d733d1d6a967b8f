#!/bin/busybox sh
# /init of the inner Linux guest that the linux-disk scenario boots in hangar
# (AAVMF's shell starts the kernel's EFI stub from a virtio-scsi disk). It
# loads the virtio-mmio and SCSI drivers, finds hangar's two disks, checks the
# read-only one and writes a pattern through the writable one, printing
# `LINUX-GUEST:` lines for the scenario, then powers off (PSCI SYSTEM_OFF).
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
say "powering off"
bye
