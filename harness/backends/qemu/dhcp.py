"""``addressing=dhcp`` on this host: the lab's dnsmasq (its configuration is
``backends/dhcpserver``'s) on the lab bridge, in the foreground as a process of the run's
journal.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harness.backends.dhcpserver import acked, config_text, serving
from harness.errors import LabError, UserError
from harness.identity import GuestSpec
from harness.state import proc_start_time

#: Seconds dnsmasq may take to say it is listening (its log line) before we give up.
START_TIMEOUT = 10.0


def check() -> None:
    if shutil.which("dnsmasq") is None:
        raise UserError("qemu option addressing=dhcp needs dnsmasq: apt-get install "
                        "dnsmasq-base (scripts/setup.sh does)")


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
        if serving(text):
            return proc
        time.sleep(0.05)
    raise LabError(f"dnsmasq on {bridge} did not start serving within {START_TIMEOUT:g} s")


def leases(where: Path) -> dict[str, str]:
    """MAC → address of every lease dnsmasq acknowledged (from its log)."""
    log = where / "dnsmasq.log"
    return acked(log.read_text(errors="replace")) if log.exists() else {}
