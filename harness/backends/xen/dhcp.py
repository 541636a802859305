"""``xen://...?addressing=dhcp``: a dnsmasq on dom0's bridge that leases each domU's MAC the
address its identity holds, and nothing to any other MAC (its configuration is
``backends/dhcpserver``'s).

It runs on dom0, started over the connection the backend holds, as a daemon whose files
(configuration, hosts file, leases, log, pid file) are in the run's directory there.  It is
journalled (``stop_dhcp``) before it starts, so ``down`` and ``scalelab clean`` stop it; the
pid file is trusted only while that process's command line still names this run's
configuration (a pid may be reused).  The guests' lines are in a hosts file that dnsmasq
reads again on SIGHUP, so a second ``up`` of the same run adds its domUs to the running
server rather than starting another on the same bridge.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from typing import Any

from harness.backends.dhcpserver import SERVING, acked, config_text, host_lines
from harness.backends.xen.cleanup import ALREADY_REMOVED
from harness.backends.xen.dom0 import Dom0, dom0_for
from harness.backends.xen.labrun import XenRun
from harness.backends.xen.options import Target, XenOptions
from harness.backends.xen.staging import Record
from harness.errors import LabError
from harness.identity import GuestSpec

#: Tenths of a second dnsmasq may take to say it serves (or to read its hosts file again).
START_TENTHS = 100

#: ``ours PID CONF``: whether process PID is the dnsmasq of CONF.
_OURS = r"""
ours() {
    case " $(tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null)" in
    *" --conf-file=$2 "*) return 0 ;;
    esac
    return 1
}
"""

#: ``serve DIR TENTHS MARKER...``: this call's hosts lines (stdin) appended to DIR's hosts file;
#: a running dnsmasq of DIR told to read it again, else one started; returns once its log
#: says it serves (or has read the file again).
_SERVE = _OURS + r"""
dir=$1 tenths=$2; shift 2
conf=$dir/dnsmasq.conf log=$dir/dnsmasq.log pidf=$dir/dnsmasq.pid hosts=$dir/dnsmasq.hosts
cat >> "$hosts"
touch "$dir/dnsmasq.leases" "$log"
pid=$(cat "$pidf" 2>/dev/null)
if [ -n "$pid" ] && ours "$pid" "$conf"; then
    n=$(grep -cF "read $hosts" "$log")
    kill -HUP "$pid"
    i=0
    while [ "$(grep -cF "read $hosts" "$log")" -le "$n" ]; do
        i=$((i + 1))
        [ $i -le "$tenths" ] || { echo "dnsmasq did not read $hosts again" >&2; exit 1; }
        sleep 0.1
    done
    exit 0
fi
dnsmasq --conf-file="$conf" --log-facility="$log" --pid-file="$pidf" --user=root \
    </dev/null >"$dir/dnsmasq.start" 2>&1 || { cat "$dir/dnsmasq.start" >&2; exit 1; }
i=0
while :; do
    for m in "$@"; do grep -qF -e "$m" "$log" && exit 0; done
    i=$((i + 1)); [ $i -le "$tenths" ] || { tail -n 3 "$log" >&2; exit 1; }
    sleep 0.1
done
"""

#: ``stop CONF``: the dnsmasq of CONF (by its pid file) stopped, TERM then KILL.
_STOP = _OURS + r"""
conf=$1 pidf=${1%/*}/dnsmasq.pid
pid=$(cat "$pidf" 2>/dev/null) || exit 0
if [ -n "$pid" ] && ours "$pid" "$conf"; then
    kill "$pid"
    i=0
    while ours "$pid" "$conf" && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    ours "$pid" "$conf" && kill -9 "$pid"
fi
rm -f "$pidf"
"""


def dhcp_dir(run: XenRun) -> str:
    """Where the run's dnsmasq keeps its files on dom0."""
    return posixpath.join(run.run_dir, "dhcp")


def serve_leases(run: XenRun, opts: XenOptions, specs: Sequence[GuestSpec],
                 record: Record) -> None:
    """With ``addressing=dhcp``, dnsmasq on dom0's bridge serving ``specs`` (besides those
    of earlier calls) before any of them boots; nothing with static addressing."""
    if opts.addressing != "dhcp" or not specs:
        return
    d, where = run.dom0, dhcp_dir(run)
    conf = posixpath.join(where, "dnsmasq.conf")
    if not d.run(["test", "-e", conf]).ok:
        record("stop_dhcp", conf=conf)
        d.check(["mkdir", "-p", where], "making the DHCP server's directory")
        d.write_text(conf, config_text(
            opts.bridge, specs, posixpath.join(where, "dnsmasq.leases"),
            hosts_file=posixpath.join(where, "dnsmasq.hosts")))
    hosts = "".join(f"{line}\n" for line in host_lines(specs)).encode()
    res = d.run(["sh", "-c", _SERVE, "sh", where, str(START_TENTHS), *SERVING], stdin=hosts)
    if not res.ok:
        raise LabError(f"dnsmasq on bridge {opts.bridge} of dom0 {d.label} does not serve "
                       f"(addressing=dhcp): {res.message()}")


def dom0_leases(run: XenRun) -> dict[str, str]:
    """MAC → address of every lease the run's dnsmasq acknowledged (from its log on dom0)."""
    res = run.dom0.run(["cat", posixpath.join(dhcp_dir(run), "dnsmasq.log")])
    return acked(res.stdout) if res.ok else {}


def stop_on(d: Dom0, conf: str) -> None:
    res = d.sh(_STOP, conf)
    if not res.ok:
        raise LabError(f"stopping dnsmasq ({conf}) on dom0 {d.label}: {res.message()}")


def stop_dhcp(target: dict[str, Any], conf: str) -> None:
    """Stop the run's dnsmasq on dom0 if it still runs (journal callback)."""
    t = Target(**target)
    if (t.pool_key, "dhcp", conf) not in ALREADY_REMOVED:
        stop_on(dom0_for(t), conf)
