#!/usr/bin/env bash
# The floor for netns bring-up: the least a shell script can do to get N guests with sshd
# listening on port 22 (namespaces, overlayfs root on the shared image, veth on a bridge),
# with no identity per guest, no journal and no SSH handshake.  Prints the seconds until
# every guest's port 22 accepts, then takes everything down.
#   usage: floor.sh N IMAGE
set -euo pipefail
N=$1
IMAGE=$2
tag=fl$$
W=$(mktemp -d /run/scalelab-floor.XXXXXX)
BR=slb-$tag
# A Linux bridge takes at most 1023 ports: past that, segment bridges joined to the first.
PORTS=1000
cleanup() {
  exec 2>/dev/null  # no job-control chatter about the guests being killed
  for p in $(cat "$W"/pids 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  sleep 0.2
  { for i in $(seq 0 $((N-1))); do echo "netns delete $tag-$i"; done
    for s in $(seq 1 $(( (N-1) / PORTS ))); do echo "link del j$tag-$s"; echo "link del $BR-$s"; done
    echo "link del $BR"; } | ip -force -batch - 2>/dev/null || true
  umount "$W"/rw 2>/dev/null || true
  umount "$W"/base 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$W"/base "$W"/rw
mount -o loop,ro,noload "$IMAGE" "$W"/base
mount -t tmpfs floor "$W"/rw
key="$W"/hostkey
ssh-keygen -q -t ed25519 -N '' -f "$key"
t0=$(date +%s.%N)
{
  echo "link add $BR type bridge"; echo "addr add 10.214.0.1/20 dev $BR"; echo "link set $BR up"
  for s in $(seq 1 $(( (N-1) / PORTS ))); do
    echo "link add $BR-$s type bridge"; echo "link set $BR-$s up"
    echo "link add j$tag-$s type veth peer name k$tag-$s"
    echo "link set j$tag-$s master $BR up"; echo "link set k$tag-$s master $BR-$s up"
  done
  for i in $(seq 0 $((N-1))); do
    s=$(( i / PORTS )); br=$BR; [ "$s" -eq 0 ] || br=$BR-$s
    echo "netns add $tag-$i"
    echo "link add v$tag-$i type veth peer name eth0 netns $tag-$i"
    echo "link set v$tag-$i master $br up"
  done
} | ip -batch -
for i in $(seq 0 $((N-1))); do
  g="$W"/rw/$i; mkdir -p "$g"/u/etc/ssh "$g"/u/run/sshd "$g"/w "$g"/r
  cp "$key" "$g"/u/etc/ssh/ssh_host_ed25519_key
  ip4="10.214.$(( (i+2) / 256 )).$(( (i+2) % 256 ))"
  nsenter --net=/run/netns/$tag-$i unshare --mount --pid --fork --kill-child sh -c "
    ip addr add $ip4/20 dev eth0; ip link set eth0 up
    mount -t overlay o -o lowerdir=$W/base,upperdir=$g/u,workdir=$g/w $g/r
    mount -t proc p $g/r/proc
    exec chroot $g/r /usr/sbin/sshd -D -f /etc/scalelab/sshd_config" >/dev/null 2>&1 &
  echo $! >> "$W"/pids
done
for i in $(seq 0 $((N-1))); do
  ip4="10.214.$(( (i+2) / 256 )).$(( (i+2) % 256 ))"
  until (exec 3<>/dev/tcp/$ip4/22) 2>/dev/null; do sleep 0.01; done
done
t1=$(date +%s.%N)
echo "$t1 - $t0" | bc -l
