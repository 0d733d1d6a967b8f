echo HANGAR-NSH: startup.nsh is running from the virtio-scsi disk
map -r
setvar HangarDisk -guid 4e8a1c2b-1d3f-4a5b-9c6d-7e8f90a1b2c3 -nv -bs =4449534b3432
dmpstore HangarDisk -guid 4e8a1c2b-1d3f-4a5b-9c6d-7e8f90a1b2c3
echo HANGAR-NSH: powering off
reset -s
