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
