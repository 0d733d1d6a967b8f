#!/bin/sh
# The two-vCPU UEFI shell scenario on a host whose KVM has only GICv2
# emulation: hangar falls back to an in-kernel GICv2 (and its device tree to
# the v2 nodes and PPI CPU masks). First, 9 vCPUs, one more than such a host's
# KVM runs in a VM, must be a one-line error naming the limit.
# bench-machine: gic-version=2
. /scenarios/lib.sh
step too-many-vcpus
hangar run --cpus 9 --memory 512M --vars /tmp/VARS-9.fd --serial file:/tmp/console-9.out \
    < /dev/null > /tmp/cpus-9.err 2>&1
value too_many_vcpus_status "$?"
grep -q "at most 8 vCPUs" /tmp/cpus-9.err || fail "no clear error for --cpus 9: $(cat /tmp/cpus-9.err)"
value too_many_vcpus_error "$(grep 'at most 8 vCPUs' /tmp/cpus-9.err)"
CPUS=2
. /scenarios/uefi-shell.sh
