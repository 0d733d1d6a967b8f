#!/bin/sh
# The main job, non-interactive: AAVMF to the UEFI shell in hangar, then power off.
. /scenarios/uefi-shell.sh
