#!/bin/sh
# A non-volatile variable set in the UEFI shell survives a reboot in place
# (PSCI SYSTEM_RESET handled inside the same hangar process) and a full restart
# of hangar with the same --vars file; SIGTERM then shuts hangar down cleanly.
. /scenarios/lib.sh
GUID=4e8a1c2b-1d3f-4a5b-9c6d-7e8f90a1b2c3
VALUE_HEX=48414e4741523432   # "HANGAR42"
need_kvm
out=/tmp/console.out

step first-boot
start_hangar "$out" -v run --memory 512M --vars /tmp/VARS.fd
wait_for "Shell>" "$out" 300 || fail "no shell prompt; console: $(console_tail $out)"

step setvar
type_line "setvar HangarTest -guid $GUID -nv -bs =$VALUE_HEX"
sleep 2
off=$(size_of "$out")
type_line "dmpstore HangarTest -guid $GUID"
wait_after "$off" "HANGAR42" "$out" 60 || fail "variable not readable after setvar; console: $(console_tail $out)"

step reset-in-place
off=$(size_of "$out")
type_line "reset"
wait_after "$off" "boot 2 starting" "$out" 60 || fail "no in-place reboot; console: $(console_tail $out)"
wait_after "$off" "Shell>" "$out" 300 || fail "no shell after reset; console: $(console_tail $out)"
kill -0 "$HANGAR_PID" || fail "hangar exited on reset instead of rebooting in place"

step read-after-reset
off=$(size_of "$out")
type_line "dmpstore HangarTest -guid $GUID"
wait_after "$off" "HANGAR42" "$out" 60 || fail "variable lost across reset; console: $(console_tail $out)"
type_line "reset -s"
expect_clean_exit 60 "after reset -s"

step restart
out2=/tmp/console2.out
start_hangar "$out2" -v run --memory 512M --vars /tmp/VARS.fd
wait_for "Shell>" "$out2" 300 || fail "no shell prompt after restart; console: $(console_tail $out2)"
off=$(size_of "$out2")
type_line "dmpstore HangarTest -guid $GUID"
wait_after "$off" "HANGAR42" "$out2" 60 || fail "variable lost across a process restart; console: $(console_tail $out2)"

step sigterm
kill -TERM "$HANGAR_PID"
expect_clean_exit 60 "after SIGTERM"
grep -q "machine ended: Signal(15)" "$out2" || fail "no clean shutdown on SIGTERM; console: $(console_tail $out2)"
value restart_status "$HANGAR_STATUS"
pass
