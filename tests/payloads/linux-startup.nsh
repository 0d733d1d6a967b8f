echo HANGAR-NSH: starting Linux from the virtio-scsi disk
fs0:
\Image initrd=\initrd console=ttyAMA0 quiet panic=0 rdinit=/init
echo HANGAR-NSH: the kernel returned to the shell
reset -s
