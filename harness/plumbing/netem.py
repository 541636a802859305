"""tc netem behind a classful qdisc: only traffic to chosen destinations is degraded.

The tree on one device (``dev``), as a shell script run where the device is (inside a VM
over its control connection, or in a guest's network namespace):

* root: a classful qdisc, ``prio`` (inside guests, whose kernel has it) or ``htb`` (the host
  kernel has no ``sch_prio``), whose default class ``1:1`` has no netem: everything not
  picked out below — the harness's SSH above all — leaves undelayed;
* per shaping k: class ``1:(k+2)`` with a netem leaf (delay, jitter, loss, duplication,
  reordering), and one ``u32`` filter per destination address sending it there;
* with ``control_from_ssh``, the address the control connection comes from (the host, or
  xen's dom0, read from ``$SSH_CONNECTION`` in the guest) gets its own filter to ``1:1``
  ahead of every other, so even a shaping naming it could not delay the harness.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from harness.degrade import Shaping
from harness.errors import UserError

#: prio takes at most 16 bands: the default one and 15 degraded ones.
MAX_SHAPINGS = 15
#: htb classes must have a rate: far above anything a lab link carries, so never a limit.
HTB_RATE = "100gbit"

_DEV_OF_ROUTE = "ip -o route get {dst} | sed -n 's/.* dev \\([^ ]*\\).*/\\1/p'"


def _dev_lines(dev: str | None, rules: Sequence[Shaping], control_from_ssh: bool) -> list[str]:
    lines = ["set -e"]
    if control_from_ssh:
        lines.append('ctl="${SSH_CONNECTION%% *}"')
        lines.append('[ -n "$ctl" ] || { echo "no SSH_CONNECTION: not over SSH" >&2; exit 2; }')
    if dev is not None:
        lines.append(f"dev={shlex.quote(dev)}")
    else:
        # The device the guest reaches the others (and the harness) through.
        first = next((a for r in rules for a in r.to), None)
        dst = shlex.quote(first) if first else '"$ctl"'
        lines.append(f'dev="$({_DEV_OF_ROUTE.format(dst=dst)})"')
        lines.append('[ -n "$dev" ] || { echo "no device routes to the lab" >&2; exit 2; }')
    return lines


def clear_script(dev: str | None = None) -> str:
    """A script removing the device's root qdisc if it is one of these trees (idempotent;
    another root qdisc, such as the bandwidth fault's tbf, is left alone)."""
    lines = _dev_lines(dev, [], control_from_ssh=dev is None)
    return "\n".join([*lines, 'case "$(tc qdisc show dev "$dev" root)" in',
                       '"qdisc prio 1: "* | "qdisc htb 1: "*) tc qdisc del dev "$dev" root ;;',
                       "esac", ""])


def tree_script(rules: Sequence[Shaping], *, classful: str = "prio", dev: str | None = None,
                control_from_ssh: bool = False) -> str:
    """A script replacing the device's root qdisc with the tree of ``rules`` (each one's
    netem arguments; a rule with none is skipped). Without a ``dev``, the device is the one
    routing to the first destination."""
    rules = [r for r in rules if r.cond.netem_args() and r.to]
    if not rules:
        return clear_script(dev)
    if len(rules) > MAX_SHAPINGS:
        raise UserError(f"at most {MAX_SHAPINGS} different degradations per guest "
                        f"({len(rules)} asked for)")
    if classful not in ("prio", "htb"):
        raise ValueError(classful)
    lines = _dev_lines(dev, rules, control_from_ssh)
    tc = 'tc {0} "$dev"'.format
    lines.append(f'{tc("qdisc del dev")} root 2>/dev/null || true')
    if classful == "prio":
        bands = max(2, len(rules) + 1)
        lines.append(f'{tc("qdisc add dev")} root handle 1: prio bands {bands} '
                     f'priomap {" ".join(["0"] * 16)}')
    else:
        lines.append(f'{tc("qdisc add dev")} root handle 1: htb default 1')
        lines.append(f'{tc("class add dev")} parent 1: classid 1:1 htb rate {HTB_RATE} '
                     "quantum 60000")
    if control_from_ssh:
        lines.append(f'{tc("filter add dev")} parent 1: protocol ip prio 1 u32 '
                     'match ip dst "$ctl"/32 flowid 1:1')
    for k, rule in enumerate(rules):
        band = k + 2
        if classful == "htb":
            lines.append(f'{tc("class add dev")} parent 1: classid 1:{band} '
                         f'htb rate {HTB_RATE} quantum 60000')
        netem = " ".join(rule.cond.netem_args())
        lines.append(f'{tc("qdisc add dev")} parent 1:{band} handle {band + 10}: netem {netem}')
        for addr in rule.to:
            lines.append(f'{tc("filter add dev")} parent 1: protocol ip prio 2 u32 '
                         f'match ip dst {shlex.quote(addr)}/32 flowid 1:{band}')
    return "\n".join([*lines, ""])
