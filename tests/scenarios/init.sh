#!/bin/busybox sh
# /init of the nested aarch64 machine: set up a minimal system, run the one
# scenario named on the kernel command line (hangar.scenario=NAME), power off.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
scenario=$(sed -n 's/.*hangar\.scenario=\([^ ]*\).*/\1/p' /proc/cmdline)
echo "HANGAR-SCENARIO: ${scenario:-none}"
if [ -x "/scenarios/$scenario.sh" ]; then
    cd /tmp
    /bin/sh "/scenarios/$scenario.sh"
else
    echo "HANGAR-FAIL: setup: no scenario named '$scenario' in /scenarios"
fi
sync
poweroff -f
