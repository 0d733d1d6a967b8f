#!/bin/sh
# AAVMF boots to the UEFI shell in hangar; `reset -s` powers off with status 0.
. /scenarios/lib.sh
CPUS=${CPUS:-1}
need_kvm
step start-hangar
out=/tmp/console.out
t0=$(now_ms)
start_hangar "$out" -v run --cpus "$CPUS" --memory 512M --vars /tmp/VARS.fd
step firmware-banner
wait_for "UEFI firmware" "$out" 240 || wait_for "EDK II" "$out" 1 \
    || fail "no firmware output; console: $(console_tail $out)"
t_banner=$(now_ms)
step countdown
wait_for "startup.nsh" "$out" 240 || fail "no boot countdown; console: $(console_tail $out)"
t_countdown=$(now_ms)
step shell-prompt
wait_for "Shell>" "$out" 120 || fail "no shell prompt; console: $(console_tail $out)"
t_shell=$(now_ms)
value cpus "$CPUS"
# Which interrupt controller hangar made (it logs it at -v).
value gic "$(sed -n 's/.*interrupt controller: GICv\([23]\).*/\1/p' $out | head -n 1)"
value to_countdown_ms $(( t_countdown - t0 ))
value countdown_ms $(( t_shell - t_countdown ))
value to_shell_ms $(( t_shell - t0 ))
step reset-s
type_line "reset -s"
expect_clean_exit 60 "after reset -s" "$out"
value exit_status "$HANGAR_STATUS"
# The firmware stores to its own (read-only) code bank early on: logged, ignored.
value readonly_writes_logged "$(grep -c 'read-only bank; ignored' $out)"
pass
