#!/bin/sh
# The original hang's shape, from a real guest: Linux (booted as in
# linux-disk) writes 40 EFI variables through efivarfs (deleting older ones
# as it goes), each one the firmware's runtime service programming the CFI
# flash from a vCPU, which hangar turns into synchronous block writes through
# nested polls of the iothread's context, while four guest processes keep the
# virtio-scsi data disk busy on that same context. No hang (the bench's
# timeout), no failed request, the last variable in the vars file afterwards.
. /scenarios/lib.sh
need_kvm
step make-plan
# The guest's /init reads its plan from the data disk's first sector.
dd if=/dev/zero of=/tmp/data.raw bs=1M count=16 2>/dev/null || fail "cannot make /tmp/data.raw"
printf 'hangar-plan: efivars-under-io\n' | dd of=/tmp/data.raw conv=notrunc 2>/dev/null \
    || fail "cannot write the plan"
out=/tmp/console.out
start_linux_guest "$out"
step kernel-up
wait_for "LINUX-GUEST: up" "$out" 600 || fail "no sign of the Linux guest; console: $(console_tail $out)"
step variables-under-io
t1=$(now_ms)
wait_for "LINUX-GUEST: efivars under io done" "$out" 600 \
    || fail "the variable writes under disk load did not finish; console: $(console_tail $out)"
value variables_under_io_ms $(( $(now_ms) - t1 ))
step power-off
wait_for "LINUX-GUEST: powering off" "$out" 120 || fail "guest did not finish; console: $(console_tail $out)"
expect_clean_exit 120 "after the guest powered off" "$out"
value exit_status "$HANGAR_STATUS"
step check-guest
linux_guest_report "$out"
value efivars_written "$(guest 'efivars written=')"
value efivars_last "$(guest 'efivars last=')"
loops=$(guest 'io loops=')
value io_loops "$loops"
min=$(echo $loops | tr ' ' '\n' | sort -n | head -n 1)
value io_loops_min "${min:-0}"
step check-vars-file
grep -q "hangar-0040" /tmp/VARS.fd || fail "the last variable is not in /tmp/VARS.fd"
value variable_in_vars_file yes
pass
