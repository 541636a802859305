"""What dom0 has, learnt in two round trips (``xl info`` and one probe script), and what is
missing there for a lab of N domUs, said in one line with the command that fixes it."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.backends.xen.dom0 import SHORT_TIMEOUT, Dom0
from harness.backends.xen.options import XenOptions
from harness.errors import UserError


@dataclass
class Dom0Facts:
    """What ``check`` learnt about dom0."""

    xen_version: str = ""
    free_memory_mib: int = 0
    nr_cpus: int = 0
    bridge_addresses: list[str] = field(default_factory=list)


#: One round trip that tells what dom0 has: bridge, loop devices, tools.
PROBE_SCRIPT = r"""
br=$1
if [ -d "/sys/class/net/$br/bridge" ]; then echo bridge=yes
elif [ -e "/sys/class/net/$br" ]; then echo bridge=notbridge
else echo bridge=no; fi
if [ -e "/sys/class/net/$br" ] && ip link show "$br" | grep -q ',UP'; then echo bridge_up=up; fi
echo bridge_addrs=$(ip -o -4 addr show dev "$br" 2>/dev/null | sed -n 's/.* inet \([^ ]*\).*/\1/p')
if [ -d /sys/module/loop ] || [ -e /dev/loop-control ]; then echo loop_driver=yes; fi
[ -e /dev/loop-control ] && echo loop_control=yes
total=$(ls /dev | grep -c '^loop[0-9][0-9]*$')
used=$(losetup -n -O NAME 2>/dev/null | wc -l)
echo loop_free=$((total - used))
for t in mkdir rm losetup ip dnsmasq; do command -v $t >/dev/null 2>&1 && echo has_$t=yes; done
"""


def parse_xl_info(text: str) -> dict[str, str]:
    """``xl info``'s ``key : value`` lines."""
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            out[k.strip()] = v.strip()
    return out


def _xen_facts(d: Dom0, where: str) -> Dom0Facts:
    """Xen's version, free memory and CPUs; a UserError when there is no working ``xl``."""
    info = d.run(["xl", "info"], timeout=SHORT_TIMEOUT)
    if info.exit_status == 127 or ("not found" in info.stderr and not info.ok):
        raise UserError(f"{where} has no `xl`: install xen-utils there (and boot it "
                        "under Xen), or point --backend at a Xen dom0")
    if not info.ok:
        raise UserError(f"`xl info` on {where} does not answer: {info.message()} "
                        "(is Xen running, and xenstored started?)")
    fields = parse_xl_info(info.stdout)
    return Dom0Facts(
        xen_version=f"{fields.get('xen_major', '?')}.{fields.get('xen_minor', '?')}",
        free_memory_mib=int(fields.get("free_memory", "0") or 0),
        nr_cpus=int(fields.get("nr_cpus", "0") or 0),
    )


def _bridge_problems(kv: dict[str, str], br: str) -> list[str]:
    if kv.get("bridge") != "yes":
        what = "is not a bridge" if kv.get("bridge") == "notbridge" else "does not exist"
        return [f"the bridge {br} for the domUs' vifs {what} (ip link add {br} type bridge && "
                f"ip link set {br} up; or give bridge=NAME)"]
    if kv.get("bridge_up") != "up":
        return [f"the bridge {br} is down (ip link set {br} up)"]
    return []


def _loop_problems(kv: dict[str, str], n_guests: int) -> list[str]:
    need_loops = 2 * n_guests  # each domU's two disks are files on loop devices
    if kv.get("loop_driver") != "yes":
        return ["there is no loop driver (modprobe loop): each domU's disks are "
                "files on loop devices"]
    # With loop-control, losetup makes devices as needed; without, only the free ones count.
    if kv.get("loop_control") != "yes":
        free = int(kv.get("loop_free", "0") or 0)
        if free < need_loops:
            return [f"{free} free loop devices for {n_guests} domUs that need {need_loops} "
                    f"(modprobe -r loop; modprobe loop max_loop={need_loops + 16})"]
    return []


def _memory_problems(facts: Dom0Facts, opts: XenOptions, n_guests: int) -> list[str]:
    need_mem = n_guests * opts.memory_mib
    if facts.free_memory_mib and facts.free_memory_mib < need_mem:
        return [f"Xen has {facts.free_memory_mib} MiB free; {n_guests} domUs of "
                f"{opts.memory_mib} MiB need {need_mem} (lower memory= or --guests, or "
                "give dom0 less with dom0_mem=)"]
    return []


def probe_dom0(d: Dom0, opts: XenOptions, n_guests: int) -> Dom0Facts:
    """Check on dom0 what the seed set up by hand; say clearly what is missing."""
    where = f"dom0 {d.label}"
    facts = _xen_facts(d, where)
    probe = d.sh(PROBE_SCRIPT, opts.bridge).stdout
    kv = dict(ln.split("=", 1) for ln in probe.splitlines() if "=" in ln)
    problems = _bridge_problems(kv, opts.bridge) + _loop_problems(kv, n_guests)
    problems += [f"`{tool}` is missing" for tool in ("mkdir", "rm", "losetup", "ip")
                 if kv.get(f"has_{tool}") != "yes"]
    if opts.addressing == "dhcp" and kv.get("has_dnsmasq") != "yes":
        problems.append("`dnsmasq` is missing, which addressing=dhcp runs on the bridge "
                        "(apt-get install dnsmasq-base)")
    problems += _memory_problems(facts, opts, n_guests)
    if problems:
        raise UserError(f"{where} is not ready for {n_guests} domUs: " + "; ".join(problems))
    facts.bridge_addresses = kv.get("bridge_addrs", "").split()
    return facts
