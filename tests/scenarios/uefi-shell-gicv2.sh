#!/bin/sh
# The two-vCPU UEFI shell scenario on a host whose KVM has only GICv2
# emulation: hangar falls back to an in-kernel GICv2 (and its device tree to
# the v2 nodes and PPI CPU masks).
# bench-machine: gic-version=2
CPUS=2
. /scenarios/uefi-shell.sh
