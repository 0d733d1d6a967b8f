#!/bin/sh
# Interactive: a shell on the nested machine's console with hangar on PATH.
. /scenarios/lib.sh
echo
echo "Nested aarch64 machine with KVM: $( [ -c /dev/kvm ] && echo yes || echo NO )."
echo "Try:  hangar --help    hangar selftest    (exit the shell to power off)"
echo
setsid cttyhack sh -l
