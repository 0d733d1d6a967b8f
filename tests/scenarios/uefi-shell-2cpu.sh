#!/bin/sh
# The UEFI shell scenario with two vCPUs (the secondary comes up by PSCI CPU_ON).
CPUS=2
. /scenarios/uefi-shell.sh
