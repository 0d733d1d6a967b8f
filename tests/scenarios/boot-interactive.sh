#!/bin/sh
# The main job on a terminal: hangar boots AAVMF with its console on this one.
# In the UEFI shell, `reset -s` powers off; Ctrl-A x quits hangar.
. /scenarios/lib.sh
need_kvm
echo "Starting: hangar run --memory 512M --vars /tmp/VARS.fd  (Ctrl-A x quits)"
setsid cttyhack hangar run --memory 512M --vars /tmp/VARS.fd
echo "hangar exited with status $?"
pass
