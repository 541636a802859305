"""The ``xen://`` URL's options, checked, and where dom0 is (``Target``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.backends.dhcpserver import Addressing, parse_addressing
from harness.errors import UserError

DEFAULT_WORKDIR = "/var/lib/scalelab/xen"


def _int_option(options: dict[str, str], key: str, default: int, low: int = 1) -> int:
    raw = options.get(key)
    if raw in (None, ""):
        return default
    text = str(raw).strip().upper().removesuffix("IB").removesuffix("B")
    factor = 1
    if key in ("memory", "disk") and text.endswith(("M", "G")):
        factor = 1024 if text.endswith("G") else 1
        text = text[:-1]
    try:
        value = int(text) * factor
    except ValueError:
        raise UserError(f"xen option {key}={raw!r} is not a whole number") from None
    if value < low:
        raise UserError(f"xen option {key}={raw!r} must be at least {low}")
    return value


def _choice(options: dict[str, str], key: str, allowed: tuple[str, ...]) -> str:
    value = options.get(key) or allowed[0]
    if value not in allowed:
        raise UserError(f"xen option {key}={value!r}: use one of {', '.join(allowed)}")
    return value


@dataclass(frozen=True)
class Target:
    """Where dom0 is and how to log in; JSON-serialisable for the journal's callbacks."""

    local: bool
    host: str = ""
    port: int = 22
    user: str = "root"
    known_hosts: str | None = None
    key: str | None = None
    connect_timeout: float = 15.0

    @property
    def label(self) -> str:
        return "this host" if self.local else f"{self.user}@{self.host}:{self.port}"

    def as_kwargs(self) -> dict[str, Any]:
        return {
            "local": self.local, "host": self.host, "port": self.port, "user": self.user,
            "known_hosts": self.known_hosts, "key": self.key,
            "connect_timeout": self.connect_timeout,
        }

    @property
    def pool_key(self) -> tuple[Any, ...]:
        return (self.local, self.host, self.port, self.user, self.key, self.known_hosts)


@dataclass(frozen=True)
class XenOptions:
    """The ``xen://`` URL and its ``?k=v`` options, checked."""

    target: Target
    bridge: str = "xenbr0"
    memory_mib: int = 256
    vcpus: int = 1
    disk_mib: int = 64
    workdir: str = DEFAULT_WORKDIR
    parallel: int = 2
    cmdline: str = ""
    init: str = "lean"
    #: static: the address on the domU's kernel command line (ip=); dhcp: a dnsmasq on dom0's
    #: bridge leases each MAC its identity's address (harness.backends.xen.dhcp)
    addressing: Addressing = "static"

    KNOWN = frozenset({
        "host", "user", "port", "known_hosts", "key", "bridge", "memory", "vcpus", "disk",
        "workdir", "parallel", "connect_timeout", "cmdline", "init", "addressing",
    })

    @classmethod
    def parse(cls, options: dict[str, str]) -> XenOptions:
        unknown = sorted(set(options) - cls.KNOWN)
        if unknown:
            raise UserError(
                f"unknown xen option(s) {', '.join(unknown)}: known are "
                f"{', '.join(sorted(cls.KNOWN - {'host', 'user', 'port'}))}"
            )
        host = options.get("host") or ""
        if not host:
            raise UserError("the xen backend needs a dom0: xen://local or xen://root@HOST[:PORT]")
        local = host == "local"
        try:
            timeout = float(options.get("connect_timeout") or 15.0)
        except ValueError:
            raise UserError(f"xen option connect_timeout={options['connect_timeout']!r} "
                            "is not a number of seconds") from None
        for name in ("known_hosts", "key"):
            path = options.get(name)
            if path and not Path(path).expanduser().is_file():
                raise UserError(f"xen option {name}={path}: no such file")
        target = Target(
            local=local,
            host="" if local else host,
            port=_int_option(options, "port", 22),
            user=options.get("user") or "root",
            known_hosts=str(Path(options["known_hosts"]).expanduser().resolve())
            if options.get("known_hosts") else None,
            key=str(Path(options["key"]).expanduser().resolve()) if options.get("key") else None,
            connect_timeout=timeout,
        )
        bridge = options.get("bridge") or "xenbr0"
        if not bridge.replace("-", "").replace("_", "").replace(".", "").isalnum() \
                or len(bridge) > 15:
            raise UserError(f"xen option bridge={bridge!r} is not a network interface name")
        workdir = options.get("workdir") or DEFAULT_WORKDIR
        if not workdir.startswith("/") or any(c in workdir for c in "\"'\\,\n "):
            raise UserError(f"xen option workdir={workdir!r} must be a plain absolute path")
        return cls(
            target=target,
            bridge=bridge,
            memory_mib=_int_option(options, "memory", 256, low=32),
            vcpus=_int_option(options, "vcpus", 1),
            disk_mib=_int_option(options, "disk", 64, low=8),
            workdir=workdir.rstrip("/") or "/",
            parallel=_int_option(options, "parallel", 2),
            cmdline=options.get("cmdline", ""),
            init=_choice(options, "init", ("lean", "systemd")),
            addressing=parse_addressing(options, "xen"),
        )
