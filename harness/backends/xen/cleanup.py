"""Journal callbacks that take down what a run made on dom0 (run by teardown and by
``scalelab clean`` from another process)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from harness.backends.xen.dom0 import CREATE_TIMEOUT, Dom0, dom0_for
from harness.backends.xen.options import Target
from harness.errors import LabError
from harness.state import Resource

#: (pool key, what) of things this process already removed: their callbacks have no work.
ALREADY_REMOVED: set[tuple[Any, ...]] = set()


def _target(kwargs_target: dict[str, Any]) -> Target:
    return Target(**kwargs_target)


def removed_key(target: Target, res: Resource) -> tuple[Any, ...]:
    """The ``ALREADY_REMOVED`` entry of a journal callback of this module."""
    kw = res.get("kwargs", {})
    if "path" in kw:
        return (target.pool_key, "path", kw["path"])
    if "loops" in kw:
        return (target.pool_key, "loops", tuple(map(tuple, kw["loops"])))
    if "cidr" in kw:
        return (target.pool_key, "address", kw["bridge"], kw["cidr"])
    if "conf" in kw:
        return (target.pool_key, "dhcp", kw["conf"])
    return (target.pool_key, "domain", kw.get("name"))


def domain_loops(d: Dom0, name: str) -> list[list[str]]:
    """[loop device, backing file] of each file-backed disk of domain ``name``."""
    res = d.sh('id=$(xl domid "$1") && xenstore-ls -f "/local/domain/0/backend/vbd/$id"', name)
    fields: dict[str, dict[str, str]] = {}
    for line in res.stdout.splitlines():
        path, sep, value = line.partition(" = ")
        if not sep:
            continue
        devpath, _, key = path.rpartition("/")
        if key in ("node", "params"):
            fields.setdefault(devpath, {})[key] = value.strip().strip('"')
    return [[f["node"], f["params"]] for f in fields.values()
            if f.get("node", "").startswith("/dev/loop") and f.get("params")]


def destroy_on(d: Dom0, name: str) -> None:
    """``xl destroy`` domain ``name`` if it exists, then detach the loop devices it had
    (libxl's block script sometimes leaves them: it reads the device back from xenstore,
    racing the removal of the backend's entries)."""
    if not d.run(["xl", "domid", name]).ok:
        return
    loops = domain_loops(d, name)
    res = d.run(["xl", "destroy", name], timeout=CREATE_TIMEOUT)
    if not res.ok and d.run(["xl", "domid", name]).ok:
        raise LabError(f"xl destroy {name} on dom0 {d.label}: {res.message()}")
    if loops:
        release_on(d, loops)


def destroy_domain(target: dict[str, Any], name: str) -> None:
    """Destroy domU ``name`` if it exists (journal callback)."""
    t = _target(target)
    if (t.pool_key, "domain", name) not in ALREADY_REMOVED:
        destroy_on(dom0_for(t), name)


def remove_path(target: dict[str, Any], path: str) -> None:
    """Remove a file or directory this run made on dom0 (journal callback)."""
    t = _target(target)
    if (t.pool_key, "path", path) in ALREADY_REMOVED:
        return
    if not path.startswith("/") or path.rstrip("/").count("/") < 3:
        raise LabError(f"refusing to remove {path!r} on dom0: not a scalelab path")
    d = dom0_for(t)
    # Loop devices still on a file (a domU that died half-way) would keep it busy.
    d.sh('for l in $(losetup -n -O NAME -j "$1" 2>/dev/null); do losetup -d "$l"; done; '
         'rm -rf -- "$1"', path)


#: Detach loop devices that still back the file they backed when this run attached them
#: and that no live vbd backend uses, under the hotplug scripts' own lock.
_RELEASE_LOOPS = r"""
lock=/run/xen-hotplug/block
[ -d /run/xen-hotplug ] || lock=/dev/null
exec 9>>"$lock"; flock -w 60 9 2>/dev/null
used=" $(xenstore-ls -f /local/domain/0/backend/vbd 2>/dev/null |
        sed -n 's|.*/node = "\(.*\)"$|\1|p' | tr '\n' ' ') "
while [ $# -gt 1 ]; do
    dev=$1; file=$(readlink -f "$2"); shift 2
    [ "$(cat "/sys/block/${dev#/dev/}/loop/backing_file" 2>/dev/null)" = "$file" ] || continue
    case "$used" in *" $dev "*) continue ;; esac
    losetup -d "$dev" || echo "cannot detach $dev ($file)" >&2
done
"""


def loops_on(d: Dom0, files: Sequence[str]) -> list[tuple[str, str]]:
    """(loop device, backing file) of every loop device on dom0 backed by one of ``files``."""
    out = d.run(["losetup", "-n", "-l", "-O", "NAME,BACK-FILE"]).stdout
    wanted = set(files)
    pairs = []
    for line in out.splitlines():
        dev, _, back = line.strip().partition(" ")
        if back.strip() in wanted:
            pairs.append((dev, back.strip()))
    return pairs


def release_on(d: Dom0, loops: list[list[str]]) -> None:
    res = d.sh(_RELEASE_LOOPS, *[x for pair in loops for x in pair])
    if not res.ok or res.stderr.strip():
        raise LabError(f"releasing loop devices on dom0 {d.label}: {res.message()}")


def release_loops(target: dict[str, Any], loops: list[list[str]]) -> None:
    """Detach the loop devices a run's domUs had, if libxl left them (journal callback)."""
    t = _target(target)
    if (t.pool_key, "loops", tuple(map(tuple, loops))) not in ALREADY_REMOVED:
        release_on(dom0_for(t), loops)


def remove_address(target: dict[str, Any], bridge: str, cidr: str) -> None:
    """Remove the lab's address from dom0's bridge (journal callback)."""
    t = _target(target)
    if (t.pool_key, "address", bridge, cidr) in ALREADY_REMOVED:
        return
    dom0_for(t).run(["ip", "addr", "del", cidr, "dev", bridge])


# -- domU configuration ------------------------------------------------------------------------
