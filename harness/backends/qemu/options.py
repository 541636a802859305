"""The ``qemu://?k=v&...`` options, parsed and checked once into a frozen ``QemuOptions``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Literal, TypeVar

from harness.backends.dhcpserver import Addressing, parse_addressing
from harness.errors import UserError
from harness.plumbing.units import parse_size

Accel = Literal["auto", "kvm", "tcg"]
Net = Literal["auto", "tap", "user"]
Init = Literal["lean", "systemd"]
Upper = Literal["disk", "tmpfs"]
# The first of each is the default.
ACCELS: tuple[Accel, ...] = ("auto", "kvm", "tcg")
NETS: tuple[Net, ...] = ("auto", "tap", "user")
INITS: tuple[Init, ...] = ("lean", "systemd")
UPPERS: tuple[Upper, ...] = ("disk", "tmpfs")

#: Host memory a VM costs beyond its guest RAM and TCG's translation cache (QEMU itself,
#: its devices), used only to refuse labs that cannot fit.
QEMU_OVERHEAD = 64 << 20
#: QEMU's own translation cache size when ``tb_size=`` is empty (MiB).
QEMU_DEFAULT_TB_MIB = 1024
#: Below this the guest's ext4 disk cannot hold its identity tree and a journal.
MIN_DISK = 4 << 20

_T = TypeVar("_T", bound=str)


def _choice(options: Mapping[str, str], key: str, allowed: tuple[_T, ...]) -> _T:
    """``options[key]`` as one of ``allowed`` (the first is the default)."""
    value = options.get(key, allowed[0])
    for a in allowed:
        if value == a:
            return a
    raise UserError(f"qemu option {key}={value!r}: use "
                    + " or ".join(f"{key}={a}" for a in allowed))


def _size(options: Mapping[str, str], key: str, default: str) -> str:
    """The size as written (kept for messages and run.json), once it is known to parse."""
    text = options.get(key, default)
    parse_size(text, f"qemu option {key}")
    return text


def _count(options: Mapping[str, str], key: str, default: int | None) -> int | None:
    """A positive whole number; empty means ``default``."""
    text = options.get(key, "")
    if text == "":
        return default
    if not (text.isdigit() and int(text) > 0):
        raise UserError(f"qemu option {key}={text!r}: use a positive number")
    return int(text)


@dataclass(frozen=True)
class QemuOptions:
    """What the ``qemu://`` URL asks for.  Every field is a ``?key=`` of the same name."""

    memory: str = "256M"  # guest RAM (the lab's --guest-memory wins)
    accel: Accel = "auto"  # auto: KVM if a test VM really runs on it, else TCG
    net: Net = "auto"  # auto: taps on the lab bridge unless impossible, else user
    init: Init = "lean"
    upper: Upper = "disk"  # where the overlay's writable layer lives
    disk: str = "64M"  # the guest's own writable disk
    smp: int = 1
    cpu: str = ""  # TCG CPU model ("" = QEMU's default); KVM always uses -cpu host
    # TCG's translation cache in MiB (None: QEMU's 1 GiB).  With transparent huge pages a
    # boot leaves ~250 MiB of a 1 GiB cache resident per VM; 64 MiB holds a guest's hot code.
    tb_size: int | None = 64
    quiet: bool = True  # no kernel messages on the console
    append: str = ""  # more kernel command line, added last
    #: static: the address on the kernel command line (ip=); dhcp: a dnsmasq on the lab
    #: bridge leases each MAC its identity's address (harness.backends.dhcpserver)
    addressing: Addressing = "static"

    @classmethod
    def known(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))

    @classmethod
    def parse(cls, options: Mapping[str, str]) -> QemuOptions:
        """Check every option; the first bad one is a one-line UserError saying what to use."""
        unknown = sorted(set(options) - cls.known())
        if unknown:
            named = ", ".join(repr(k) for k in unknown)
            raise UserError(f"qemu option {named} {'is' if len(unknown) == 1 else 'are'} "
                            f"unknown: use {', '.join(sorted(cls.known()))}")
        # In the order the old checks ran, so the same bad URL names the same option.
        accel = _choice(options, "accel", ACCELS)
        net = _choice(options, "net", NETS)
        init = _choice(options, "init", INITS)
        upper = _choice(options, "upper", UPPERS)
        quiet = _choice(options, "quiet", ("1", "0")) == "1"
        memory = _size(options, "memory", cls.memory)
        disk = _size(options, "disk", cls.disk)
        if parse_size(disk) < MIN_DISK:
            raise UserError(f"qemu option disk={disk}: the writable disk needs at least 4M")
        smp = _count(options, "smp", cls.smp) or cls.smp
        # An empty tb_size= asks for QEMU's own default; a missing one for ours.
        tb_size = _count(options, "tb_size", None) if "tb_size" in options else cls.tb_size
        cpu = options.get("cpu", "")
        if any(c.isspace() for c in cpu):
            raise UserError(f"qemu option cpu={cpu!r}: one CPU model name")
        addressing = parse_addressing(options, "qemu")
        if addressing == "dhcp" and net == "user":
            raise UserError("qemu option addressing=dhcp needs the lab bridge: use net=tap")
        return cls(memory=memory, accel=accel, net=net, init=init, upper=upper, disk=disk,
                   smp=smp, cpu=cpu, tb_size=tb_size, quiet=quiet,
                   append=options.get("append", ""), addressing=addressing)

    @property
    def disk_bytes(self) -> int:
        return parse_size(self.disk)

    def memory_bytes(self, guest_memory: str | None = None) -> int:
        """Guest RAM: the lab's per-guest memory if set, else ``memory=``."""
        return parse_size(guest_memory or self.memory)

    def overhead_bytes(self, accel: str) -> int:
        """What QEMU itself may keep resident beside the guest's RAM (``accel`` as chosen;
        before the choice, assume TCG: its translation cache is the larger cost)."""
        tb = 0 if accel == "kvm" else (self.tb_size or QEMU_DEFAULT_TB_MIB) << 20
        return QEMU_OVERHEAD + tb
