#!/usr/bin/env bash
# Install what scalelab needs on a fresh Debian machine (run as root): Debian packages,
# a virtual environment in .venv and the package itself (editable, with dev tools).
set -euo pipefail
cd "$(dirname "$0")/.."

# procps: pgrep, which the tests' leak check (tests/leaks.py) needs; bc: bench/floor.sh;
# dnsmasq-base: the DHCP server of addressing=dhcp (qemu).
DEBS=(debootstrap e2fsprogs iproute2 util-linux procps bc openssh-client nftables
      qemu-system-x86 qemu-utils chromium python3 python3-venv git ca-certificates
      dnsmasq-base)
missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.scalelab-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing scalelab and its Python dependencies into .venv"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[dev,distributed]'
  touch "$stamp"
fi
