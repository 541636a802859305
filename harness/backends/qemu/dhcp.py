"""``addressing=dhcp``: a dnsmasq on the lab bridge that gives each guest the address its
identity already holds, by MAC, and nothing to any other MAC (the seed's "IP addresses
distributed by a dhcp server in a coherent way by generating the MAC address").

One ``dhcp-host`` line per guest (MAC → its address and name, an infinite lease), a
``static`` range (no pool to hand out from), ``dhcp-ignore=tag:!known`` (a MAC not listed
gets no answer at all), no DNS (``port=0``), no router and no DNS server offered (the lab
has no way out), and the guests' MTU when the lab gives one.  dnsmasq binds the lab
bridge only (``bind-interfaces``), so several labs' servers live side by side, and runs in
the foreground as a process of the run's journal.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harness.errors import LabError, UserError
from harness.identity import GuestSpec
from harness.state import proc_start_time

#: Seconds dnsmasq may take to say it is listening (its log line) before we give up.
START_TIMEOUT = 10.0


def check() -> None:
    if shutil.which("dnsmasq") is None:
        raise UserError("qemu option addressing=dhcp needs dnsmasq: apt-get install "
                        "dnsmasq-base (scripts/setup.sh does)")


def config_text(bridge: str, specs: Sequence[GuestSpec], lease_file: Path,
                mtu: int | None = None) -> str:
    """dnsmasq's configuration for the guests ``specs`` on ``bridge``."""
    net = specs[0].ip.network
    lines = [
        "port=0", "no-resolv", "no-hosts", "bind-interfaces", f"interface={bridge}",
        "except-interface=lo", "dhcp-authoritative", "log-dhcp",
        f"dhcp-leasefile={lease_file}",
        f"dhcp-range={net.network_address},static,{net.netmask},infinite",
        "dhcp-ignore=tag:!known",
        # Empty options: no router, no DNS server (no way out of the lab).
        "dhcp-option=option:router", "dhcp-option=option:dns-server",
    ]
    if mtu:
        lines.append(f"dhcp-option=option:mtu,{mtu}")
    lines += [f"dhcp-host={s.mac},{s.address},{s.name},infinite" for s in specs]
    return "\n".join(lines) + "\n"


def start(bridge: str, specs: Sequence[GuestSpec], where: Path,
          record: Callable[..., Any], mtu: int | None = None) -> subprocess.Popen[bytes]:
    """dnsmasq for ``specs`` on ``bridge`` (its files in ``where``), journalled through
    ``record``; returns once it serves, or raises with what it said."""
    check()
    if not bridge:
        raise UserError("qemu option addressing=dhcp needs taps on the lab bridge, and this "
                        "run fell back to user networking (net=user)")
    where.mkdir(parents=True, exist_ok=True)
    conf, log = where / "dnsmasq.conf", where / "dnsmasq.log"
    conf.write_text(config_text(bridge, specs, where / "dnsmasq.leases", mtu))
    (where / "dnsmasq.leases").touch()
    out = open(log, "wb")  # noqa: SIM115 - owned by the child
    try:
        proc = subprocess.Popen(
            ["dnsmasq", "--keep-in-foreground", f"--conf-file={conf}", f"--log-facility={log}",
             "--user=root", "--pid-file="],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    finally:
        out.close()
    record("process", pid=proc.pid, start=proc_start_time(proc.pid))
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if proc.poll() is not None:
            raise LabError(f"dnsmasq on {bridge} exited: {text.strip()[-300:]}")
        if "DHCP, static leases only" in text or "DHCP, IP range" in text:
            return proc
        time.sleep(0.05)
    raise LabError(f"dnsmasq on {bridge} did not start serving within {START_TIMEOUT:g} s")


def leases(where: Path) -> dict[str, str]:
    """MAC → address of every lease dnsmasq acknowledged (from its log)."""
    out: dict[str, str] = {}
    log = where / "dnsmasq.log"
    if not log.exists():
        return out
    for line in log.read_text(errors="replace").splitlines():
        parts = line.split()
        if "DHCPACK(" in line and len(parts) >= 2:
            i = next(i for i, p in enumerate(parts) if p.startswith("DHCPACK("))
            if len(parts) > i + 2:
                ipaddress.IPv4Address(parts[i + 1])
                out[parts[i + 2].lower()] = parts[i + 1]
    return out
