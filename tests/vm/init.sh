#!/usr/local/bbin/busybox sh
# PID 1 of the test VM: mount the kernel's filesystems, load the modules the
# tests need, run the command line's test selection, report, power off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
bb=/usr/local/bbin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sys /sys
$bb mount -t devtmpfs dev /dev
$bb mkdir -p /dev/pts /dev/shm
# what udev would make: nft -f - opens /dev/stdin, shells use /dev/fd
$bb ln -sf /proc/self/fd /dev/fd
$bb ln -sf /proc/self/fd/0 /dev/stdin
$bb ln -sf /proc/self/fd/1 /dev/stdout
$bb ln -sf /proc/self/fd/2 /dev/stderr
$bb mount -t devpts devpts /dev/pts
$bb mount -t tmpfs -o mode=1777 shm /dev/shm
$bb mount -t tmpfs -o mode=0755 run /run
# /tmp stays on the root filesystem (already in RAM): a checkout under /tmp is in the image there
$bb mkdir -p /tmp && $bb chmod 1777 /tmp
$bb mount --make-rshared /
echo /usr/sbin/modprobe > /proc/sys/kernel/modprobe
$bb hostname berth-vm
for m in $($bb cat /etc/modules-boot); do $bb modprobe "$m" 2>/dev/null; done
$bb ip link set lo up
# the test selection: one pytest argument per line (tests/vm/run.py writes it)
set --
while IFS= read -r arg; do set -- "$@" "$arg"; done < /etc/berth-vm-args
. /etc/berth-vm-env
echo "BERTH-VM-KERNEL $($bb uname -r)"
cd "$BERTH_VM_REPO" || { echo "BERTH-VM-RESULT rc=97"; $bb poweroff -f; }
export HOME=/root PYTHONUNBUFFERED=1 BERTH_BIN_DIR="$BERTH_VM_REPO/dist/berth"
echo "BERTH-VM-START"
if [ -f /etc/berth-vm-script ]; then
  $bb sh /etc/berth-vm-script
else
  "$BERTH_VM_REPO/.venv/bin/python" -m pytest -p no:cacheprovider "$@"
fi
rc=$?
echo "BERTH-VM-RESULT rc=$rc"
$bb sync
$bb poweroff -f
