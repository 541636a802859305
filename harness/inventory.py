"""The Ansible inventory a run exports next to its ``ssh_config`` and ``known_hosts``.

``ansible -i <run>/inventory.yml all -m ping`` works as it is: every host is reached through
the same exported ``ssh_config`` a person uses (``-F``), so its pinned host key, its port and
its jump host (``ProxyJump`` for xen and cluster labs) come from one place and stay strictly
checked.  That is why ``ansible_host`` is the guest's name, the ``Host`` alias of that file,
rather than its address: the address alone would not select the guest's block, and with it its
``HostKeyAlias`` and ``ProxyJump``.  The address is kept as ``scalelab_address`` for playbooks
that need it (e.g. a client told where its server is).

The YAML is written by hand: a plain install has no YAML library (PyYAML only comes with
the ``dev`` and ``distributed`` extras), and this file is small and regular.  Every string is
a JSON string, which YAML reads as a double-quoted scalar, so no name or path can break it.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.backends.base import Guest
from harness.roles import Roles

#: The guest image's interpreter; named so Ansible does not probe for one (and warn) first.
PYTHON = "/usr/bin/python3"


@dataclass(frozen=True)
class InventoryLab:
    """One lab as the inventory sees it: its name, its guests, the key that logs in to them."""

    name: str
    guests: Sequence[Guest]
    key_path: Path
    #: The roles dealt out over its guests during the run (``role_<name>`` groups).
    roles: Roles = field(default_factory=Roles)


def group_name(prefix: str, name: str) -> str:
    """``name`` made a valid Ansible group name (letters, digits, ``_``) under ``prefix``.

    Ansible warns about, and may later refuse, group names with ``-`` or ``.``; the prefix
    also keeps a lab named like a host (``g000``) from clashing with it."""
    return f"{prefix}_{re.sub(r'[^A-Za-z0-9_]', '_', name)}"


def write_inventory(run_dir: Path, labs: Sequence[InventoryLab]) -> Path:
    """``run_dir/inventory.yml`` for the guests of ``labs``, reached via ``run_dir/ssh_config``.

    Groups: ``all``; ``lab_<lab>`` per lab; ``labhost_<host>`` per lab host of a cluster lab
    (a guest of a plain lab has no lab host and is in no such group); ``role_<role>`` per
    role dealt out (``--roles`` or a scenario's marker), over every lab of the run."""
    config = (run_dir / "ssh_config").resolve()
    common_args = f"-F {shlex.quote(str(config))}"
    out = ["# scalelab run: ansible -i this-file all -m ping", "all:", "  hosts:"]
    lab_groups: dict[str, list[str]] = {}
    host_groups: dict[str, list[str]] = {}
    role_groups: dict[str, list[str]] = {}
    for lab in labs:
        up = {g.name for g in lab.guests}
        for role, dealt in lab.roles.members_of.items():
            role_groups.setdefault(group_name("role", role), []).extend(
                n for n in dealt if n in up)
        members = lab_groups.setdefault(group_name("lab", lab.name), [])
        for g in lab.guests:
            members.append(g.name)
            if g.lab_host:
                host_groups.setdefault(group_name("labhost", g.lab_host), []).append(g.name)
            out.append(f"    {_s(g.name)}:")
            for key, value in (
                ("ansible_host", g.name),
                ("ansible_port", g.port),
                ("ansible_user", "root"),
                ("ansible_ssh_private_key_file", str(lab.key_path.resolve())),
                ("ansible_ssh_common_args", common_args),
                ("ansible_python_interpreter", PYTHON),
                ("scalelab_address", g.spec.address),
                ("scalelab_lab", lab.name),
                ("scalelab_lab_host", g.lab_host),
            ):
                out.append(f"      {key}: {_s(value)}")
    # A lab with no guests (all failed to start) gets no group: an empty ``hosts:`` is null.
    groups = [(k, v) for k, v in [*lab_groups.items(), *sorted(host_groups.items()),
                                  *role_groups.items()] if v]
    if groups:
        out.append("  children:")
    for group, names in groups:
        out += [f"    {group}:", "      hosts:"]
        out += [f"        {_s(n)}: {{}}" for n in names]
    path = run_dir / "inventory.yml"
    path.write_text("\n".join(out) + "\n")
    return path


def _s(value: str | int) -> str:
    """A YAML scalar: an int as it is, anything else as a JSON (= YAML double-quoted) string."""
    return str(value) if isinstance(value, int) else json.dumps(value)
