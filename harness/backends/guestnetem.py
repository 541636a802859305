"""Network conditions inside a VM guest (qemu, xen): tc netem in the guest's own kernel
(Debian's cloud kernel has ``sch_netem``, ``sch_prio`` and ``cls_u32`` as modules, loaded
on first use), set up over the control connection.

The tree (``harness.plumbing.netem``) is a ``prio`` whose default band has no netem; the
control connection's peer (the host, or xen's dom0, from ``$SSH_CONNECTION``) is filtered
into that band first, and only traffic to the chosen guests goes through netem.  The command
that sets it up is itself sent over SSH: the new tree applies to its own reply too, which
takes the undelayed band.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from harness.backends.base import Guest, GuestShell
from harness.degrade import Shaping
from harness.plumbing import netem


def shape_in_guest(guest: Guest, rules: Sequence[Shaping], shell: GuestShell) -> None:
    """Make ``rules`` the guest's network conditions (none: its root qdisc back to the
    kernel's default)."""
    try:
        shell(guest, netem.tree_script(rules, classful="prio", control_from_ssh=True))
    except Exception:
        # Half a tree (say netem would not load) must not stay: back to the default qdisc.
        with contextlib.suppress(Exception):
            shell(guest, netem.clear_script())
        raise
