#!/bin/sh
# The main job until firmware boots: the KVM smoke guest (see kvm-mmio.sh).
# and one vCPU, runs a few instructions that store to MMIO, and reports the exit.
. /scenarios/lib.sh
need_kvm
step selftest
out=$(hangar selftest 2>&1) || fail "hangar selftest exited $?: $out"
echo "$out"
addr=$(echo "$out" | sed -n 's/.*addr=\(0x[0-9a-f]*\).*/\1/p')
val=$(echo "$out" | sed -n 's/.*value=\(0x[0-9a-f]*\).*/\1/p')
len=$(echo "$out" | sed -n 's/.* len=\([0-9]*\).*/\1/p')
value mmio_addr "$addr"
value mmio_value "$val"
value mmio_len "$len"
pass
