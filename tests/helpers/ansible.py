"""ansible-core from this venv, run as the README runs it, and readers of its output."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent


class Ansible:
    """ansible-core from this venv, as the README runs it, with nothing configured but strict
    host key checking.

    The inherited ``ANSIBLE_*`` variables are dropped and ``ANSIBLE_CONFIG`` is an empty file,
    so no setting of this machine can turn checking off behind the test's back.  Each instance
    has its own directory for Ansible's ControlMaster sockets: a second instance (e.g. with a
    tampered known_hosts) must make its own connections rather than reuse checked ones, and
    :meth:`close` ends the masters this instance started instead of leaving them for 60 s."""

    def __init__(self, work: Path) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.work = work
        # Short, under /tmp: a socket's path must fit in 108 bytes, pytest's tmp_path may not.
        self.control = Path(tempfile.mkdtemp(prefix="scalelab-cp-"))
        (work / "empty.cfg").write_text("")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
        self.env.update(
            ANSIBLE_HOST_KEY_CHECKING="True",
            ANSIBLE_CONFIG=str(work / "empty.cfg"),
            ANSIBLE_SSH_CONTROL_PATH_DIR=str(self.control),
            ANSIBLE_NOCOLOR="1",
            LC_ALL="C.UTF-8",  # ansible-core refuses to start under a non-UTF-8 locale
        )

    def __call__(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / tool), *args], capture_output=True, text=True,
                              env=self.env, cwd=self.work, timeout=300, check=False)

    def __enter__(self) -> Ansible:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self.control.is_dir():  # closed already
            return
        for sock in self.control.iterdir():
            subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "unused"],
                           capture_output=True, timeout=30, check=False)
        shutil.rmtree(self.control, ignore_errors=True)


def one_line_results(out: str) -> dict[str, str]:
    """host → status from ``ansible`` ad-hoc output (``g000 | SUCCESS => {``, or
    ``UNREACHABLE!``); ``-o`` is not used, ansible-core 2.19 deprecates it."""
    return dict(re.findall(r"^(\S+) \| ([A-Z]+)", out, re.M))


def recap(out: str) -> dict[str, dict[str, int]]:
    """host → counters from a playbook's PLAY RECAP (``g000 : ok=1 changed=0 ...``)."""
    rows = re.findall(r"^(\S+)\s+:\s+(.*)$", out.split("PLAY RECAP", 1)[1], re.M)
    return {h: {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)} for h, counts in rows}
