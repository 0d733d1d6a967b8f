# Helpers sourced by every scenario: markers the host-side bench understands
# (tests/src/bench/markers.rs).
SCENARIO_NAME=${SCENARIO_NAME:-$(basename "$0" .sh)}
CURRENT_STEP=start

step() { CURRENT_STEP="$1"; echo "HANGAR-STEP: $1"; }
value() { echo "HANGAR-VALUE: $1=$2"; }
fail() { echo "HANGAR-FAIL: $CURRENT_STEP: $*"; exit 1; }
pass() { echo "HANGAR-PASS: $SCENARIO_NAME"; exit 0; }
# now_ms: monotonic milliseconds since boot.
now_ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }

# need_kvm: the nested machine must offer /dev/kvm (EL2 emulation on).
need_kvm() {
    step kvm-device
    [ -c /dev/kvm ] || fail "/dev/kvm is missing: is the emulator run with virtualization=on?"
}

# hangar_alive: true while the hangar started by start_hangar runs (or none was started).
hangar_alive() { [ -z "$HANGAR_PID" ] || kill -0 "$HANGAR_PID" 2>/dev/null; }

# wait_for PATTERN FILE SECONDS: until FILE contains PATTERN (fixed string).
wait_for() {
    _deadline=$(( $(now_ms) + $3 * 1000 ))
    while ! grep -qF -- "$1" "$2" 2>/dev/null; do
        [ "$(now_ms)" -lt "$_deadline" ] || return 1
        hangar_alive || { grep -qF -- "$1" "$2" 2>/dev/null; return; }
        sleep 0.2
    done
}

# console_tail FILE: the last bytes of a console log, control characters removed.
console_tail() { tail -c "${2:-1500}" "$1" | sed 's/\x1b\[[0-9;?]*[A-Za-z]//g' | tr -d '\r\000'; }

# start_hangar OUT ARGS...: runs hangar with its console input fed from fd 3
# (write shell commands with `type_line`) and its output in OUT.
start_hangar() {
    _out="$1"; shift
    rm -f /tmp/console-in; mkfifo /tmp/console-in
    hangar "$@" < /tmp/console-in > "$_out" 2>&1 &
    HANGAR_PID=$!
    exec 3>/tmp/console-in
}

# type_line TEXT: types TEXT and Enter on the console, slowly enough for the
# UEFI shell, which reads its input a key at a time.
type_line() {
    printf '%s\r' "$1" >&3
}

# wait_exit SECONDS: waits for hangar to end; sets HANGAR_STATUS.
wait_exit() {
    _deadline=$(( $(now_ms) + $1 * 1000 ))
    while kill -0 "$HANGAR_PID" 2>/dev/null; do
        [ "$(now_ms)" -lt "$_deadline" ] || { HANGAR_STATUS=timeout; return 1; }
        sleep 0.2
    done
    wait "$HANGAR_PID"; HANGAR_STATUS=$?
}

# expect_clean_exit SECONDS WHEN [LOG]: waits for hangar to end with status 0;
# a failure says WHEN ("after reset -s") and shows LOG's tail if given.
expect_clean_exit() {
    _tail=""
    [ -n "$3" ] && _tail="; console: $(console_tail "$3")"
    wait_exit "$1" || fail "hangar still running $1 s $2$_tail"
    [ "$HANGAR_STATUS" = 0 ] || fail "hangar exited $HANGAR_STATUS $2$_tail"
}

# size_of FILE: its length in bytes (a console offset for wait_after).
size_of() { wc -c < "$1" | tr -d ' '; }

# wait_after OFFSET PATTERN FILE SECONDS: like wait_for, but only output past
# byte OFFSET counts (the console file keeps growing across reboots).
wait_after() {
    _deadline=$(( $(now_ms) + $4 * 1000 ))
    while ! tail -c +"$(( $1 + 1 ))" "$3" 2>/dev/null | grep -qF -- "$2"; do
        [ "$(now_ms)" -lt "$_deadline" ] || return 1
        hangar_alive || { tail -c +"$(( $1 + 1 ))" "$3" | grep -qF -- "$2"; return; }
        sleep 0.2
    done
}

# --- The linux-* scenarios' inner guest (tests/payloads/linux-init.sh) ---

# start_linux_guest OUT: a blank 16 MiB /tmp/data.raw unless the scenario made
# one, then hangar with 2 vCPUs, the Linux boot disk (read-only, target 0)
# and /tmp/data.raw (target 1); the console goes to OUT.
start_linux_guest() {
    step make-data-disk
    [ -e /tmp/data.raw ] || dd if=/dev/zero of=/tmp/data.raw bs=1M count=16 2>/dev/null \
        || fail "cannot make /tmp/data.raw"
    step start-hangar
    start_hangar "$1" -v run --cpus 2 --memory 512M --vars /tmp/VARS.fd \
        --disk path=/disks/linux.img,readonly=on --disk path=/tmp/data.raw
}

# linux_guest_report OUT: once hangar has ended, the console without escape
# codes goes to $clean; a guest's `FAILED` line fails the scenario with the
# guest's last lines; hangar's own warnings and errors (-v) are shown and
# counted (values hangar_warnings, hangar_errors).
linux_guest_report() {
    clean=/tmp/console.txt
    sed 's/\x1b\[[0-9;?]*[A-Za-z]//g' "$1" | tr -d '\r' > "$clean"
    ! grep -q "LINUX-GUEST: FAILED" "$clean" || fail "$(grep 'LINUX-GUEST: ' "$clean" | tail -n 16)"
    grep -E ' (WARN|ERROR) ' "$clean" | head -n 12
    value hangar_warnings "$(grep -c ' WARN ' "$clean")"
    value hangar_errors "$(grep -c ' ERROR ' "$clean")"
}

# guest PREFIX: the rest of the guest's first line that starts with PREFIX
# (after linux_guest_report).
guest() { sed -n "s/^.*LINUX-GUEST: $1//p" "$clean" | head -n 1; }

# linux_guest_powers_off OUT: waits for the guest's last words and hangar's
# clean exit (value exit_status), then makes the report (linux_guest_report).
linux_guest_powers_off() {
    step guest-done
    wait_for "LINUX-GUEST: powering off" "$1" 300 || fail "guest did not finish; console: $(console_tail $1)"
    step power-off
    expect_clean_exit 120 "after the guest powered off" "$1"
    value exit_status "$HANGAR_STATUS"
    step check-guest
    linux_guest_report "$1"
}

# linux_disk_checks (after linux_guest_report): what the guest's /init saw of
# its vCPUs and disks, as values, then its write through the data disk, in
# the guest's words and in /tmp/data.raw.
linux_disk_checks() {
    value guest_cpus "$(guest 'up: ' | sed -n 's/.*, \([0-9]*\) cpus$/\1/p')"
    value guest_disks "$(guest 'disks: ')"
    value guest_boot_ro "$(guest 'boot ro=' | cut -d' ' -f1)"
    value guest_data_ro "$(guest 'boot ro=' | sed -n 's/.*data ro=//p')"
    value guest_data_sectors "$(guest 'data sectors=')"
    value guest_data_queues "$(guest 'data queues=')"
    grep -q "LINUX-GUEST: boot label ok" "$clean" || fail "the boot disk's first sector read wrong"
    value readonly_write "$(guest 'boot write ')"
    grep -q "LINUX-GUEST: data write-readback ok" "$clean" || fail "no write-readback on the data disk"
    step check-data-file
    yes hangar-linux-pattern | head -c 8192 > /tmp/pattern
    dd if=/tmp/data.raw bs=4096 skip=256 count=2 2>/dev/null > /tmp/on-disk
    cmp -s /tmp/pattern /tmp/on-disk || fail "the guest's write is not in /tmp/data.raw"
    value data_in_file yes
}
