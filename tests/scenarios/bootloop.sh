#!/bin/sh
# The boot-loop reproducer: AAVMF boots, a startup.nsh writes 16 variables
# through CFI flash (nested polls on the iothread) and resets, three times;
# then a deliberately short boot timeout must be reported as a hang (exit 2)
# with vCPU states and the iothread's event-loop trace.
. /scenarios/lib.sh
need_kvm
cp /disks/bootloop.img /tmp/bootloop.img
step three-boots
# Progress lines appear on the console as each boot resets.
( hangar bootloop --boots 3 --boot-timeout 180 --memory 512M --vars /tmp/VARS.fd \
    --disk path=/tmp/bootloop.img --serial file:/tmp/loop-console.out; echo "bootloop-exit=$?" ) 2>&1 | tee /tmp/loop.out
status=$(sed -n 's/^bootloop-exit=//p' /tmp/loop.out)
[ "$status" = 0 ] || fail "bootloop exited $status; console: $(console_tail /tmp/loop-console.out)"
grep -q "3 boots, no hang" /tmp/loop.out || fail "no summary line"
value boots_completed "$(grep -c 'reset after' /tmp/loop.out)"
value loop_summary "$(grep 'boots, no hang' /tmp/loop.out | sed 's/.*: //')"
step hang-detection
hangar bootloop --boots 1 --boot-timeout 2 --memory 512M --vars /tmp/VARS.fd \
    --disk path=/tmp/bootloop.img --serial file:/tmp/hang-console.out > /tmp/hang.out 2>&1
status=$?
head -c 3000 /tmp/hang.out
[ "$status" = 2 ] || fail "expected exit 2 for a detected hang, got $status"
grep -q "HANG: boot 1" /tmp/hang.out || fail "no hang report"
grep -q "vcpu0:" /tmp/hang.out || fail "no vCPU state in the hang report"
grep -q "iothread context trace" /tmp/hang.out || fail "no event-loop trace in the hang report"
value hang_exit "$status"
pass
