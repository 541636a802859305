#!/bin/sh
# PID 1 of the xenlab dom0: what `xl` needs, the guest bridge and sshd -- nothing else.
# Per-boot settings (host key, authorized key, bridge address, image bundles) come from
# the read-only seed disk /dev/vdb, written by tests/xenlab on the host.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "xenlab-init: $*" > /dev/console; }
X=/usr/lib/xen-4.17/bin

mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mountpoint -q /dev/pts || mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mountpoint -q /run || mount -t tmpfs -o mode=0755 tmpfs /run
mount -o remount,rw /
mount -t tmpfs tmpfs /tmp
mount -t xenfs xenfs /proc/xen
# virtio_net too: the initramfs carries only the disk drivers and dom0 runs no udev.
for m in virtio_net xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xen-blkback xen-netback loop; do
    modprobe "$m" || say "modprobe $m failed"
done
hostname xenlab-dom0

mkdir -p /mnt/seed
mount -o ro /dev/vdb /mnt/seed || say "no seed disk"
. /mnt/seed/lab.env

ip link set lo up
i=0
until [ -e /sys/class/net/eth0 ] || [ $i -gt 100 ]; do i=$((i + 1)); sleep 0.1; done
ip addr add 10.0.2.15/24 dev eth0
ip link set eth0 up
ip link add "$BRIDGE" type bridge
[ -n "$BRIDGE_CIDR" ] && ip addr add "$BRIDGE_CIDR" dev "$BRIDGE"
ip link set "$BRIDGE" up

mkdir -p /var/lib/scalelab/xen/cache
for b in /mnt/seed/cache/*; do
    [ -d "$b" ] && ln -sfn "$b" "/var/lib/scalelab/xen/cache/$(basename "$b")"
done

mkdir -p -m 0700 /run/xen
mkdir -p /run/xenstored /var/log/xen/console /var/lib/xen
XENSTORED_ROOTDIR=/run/xenstored $X/xenstored --pid-file=/run/xenstore.pid
i=0
until xenstore-read -s / >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -gt 300 ] && { say "xenstored did not come up"; break; }
    sleep 0.1
done
$X/xen-init-dom0 >/dev/null
$X/xenconsoled --log=guest --log-dir=/var/log/xen/console --pid-file=/run/xenconsoled.pid

install -d -m 0700 /root/.ssh
install -m 0600 /mnt/seed/authorized_keys /root/.ssh/authorized_keys
install -m 0600 /mnt/seed/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key
install -m 0644 /mnt/seed/ssh_host_ed25519_key.pub /etc/ssh/ssh_host_ed25519_key.pub
mkdir -p /run/sshd
/usr/sbin/sshd -f /etc/ssh/xenlab_sshd_config -E /var/log/sshd.log
say "ready $(cut -d' ' -f1 /proc/uptime)"

# Reap orphans for ever.
while :; do
    sleep 2147483647 &
    wait
done
