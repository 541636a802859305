"""Who each guest is: name, MAC, IP, machine-id and SSH host key, derived from run and index.

Everything here is decided on the host before any guest starts, so the harness can pin
every host key (no trust on first use) and check that no two guests collide.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import subprocess
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness.errors import LabError, UserError

#: Xen's own OUI; the xen backend gives its domUs MACs in this range, as xl does.
XEN_OUI = (0x00, 0x16, 0x3E)
#: Default pool the lab subnet is chosen from when none is given.
DEFAULT_POOL = ipaddress.IPv4Network("10.213.0.0/16")


@dataclass(frozen=True)
class KeyPair:
    """An ed25519 key pair in OpenSSH formats."""

    private_openssh: str
    public_openssh: str  # "ssh-ed25519 AAAA..."

    @classmethod
    def generate(cls, comment: str = "") -> KeyPair:
        key = Ed25519PrivateKey.generate()
        priv = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ).decode()
        pub = (
            key.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )
        return cls(priv, f"{pub} {comment}".strip())

    @property
    def public_blob(self) -> str:
        """The base64 part of the public key, what two keys are compared by."""
        return self.public_openssh.split()[1]


@dataclass(frozen=True)
class GuestSpec:
    """Everything a backend needs to start guest ``index`` of a run."""

    run_id: str
    index: int
    name: str
    mac: str
    ip: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address
    machine_id: str
    host_key: KeyPair = field(repr=False)
    memory: str | None = None
    cpus: float | None = None

    @property
    def address(self) -> str:
        return str(self.ip.ip)


def run_tag(run_id: str, length: int = 6) -> str:
    """A short hex tag of the run id, used in kernel object names (15-char limit)."""
    return hashlib.sha256(run_id.encode()).hexdigest()[:length]


def guest_name(index: int, n: int, prefix: str = "g") -> str:
    width = max(3, len(str(n - 1)))
    return f"{prefix}{index:0{width}d}"


def mac_for(run_id: str, index: int, oui: tuple[int, int, int] | None = None) -> str:
    """A MAC unique within the run: locally administered by default, or under ``oui``."""
    tag = hashlib.sha256(run_id.encode()).digest()
    if oui is None:
        if index >= 1 << 24:
            raise UserError(f"guest index {index} does not fit in a MAC address")
        octets = [0x02, tag[0], tag[1], (index >> 16) & 0xFF, (index >> 8) & 0xFF, index & 0xFF]
    else:
        if index >= 1 << 16:
            raise UserError(f"guest index {index} does not fit under OUI {oui}")
        octets = [*oui, tag[0], (index >> 8) & 0xFF, index & 0xFF]
    return ":".join(f"{o:02x}" for o in octets)


def machine_id_for(run_id: str, index: int) -> str:
    return hashlib.sha256(f"{run_id}/{index}".encode()).hexdigest()[:32]


def host_routes() -> list[ipaddress.IPv4Network]:
    """The IPv4 destinations this host already routes (except the default route)."""
    out = subprocess.run(
        ["ip", "-j", "-4", "route", "show", "table", "all"],
        capture_output=True,
        text=True,
        check=False,
    )
    nets: list[ipaddress.IPv4Network] = []
    if out.returncode != 0:
        return nets
    for route in json.loads(out.stdout or "[]"):
        dst = route.get("dst", "")
        if dst in ("", "default") or route.get("type") in ("broadcast", "local", "multicast"):
            continue
        try:
            nets.append(ipaddress.IPv4Network(dst, strict=False))
        except ValueError:
            continue
    return nets


def prefix_for(n_guests: int) -> int:
    """The longest prefix (at most /24) whose subnet holds the gateway and ``n_guests``."""
    prefix = 24
    while prefix > 8 and (1 << (32 - prefix)) - 3 < n_guests:
        prefix -= 1
    return prefix


def choose_subnet(
    requested: str | None,
    n_guests: int,
    routes: Sequence[ipaddress.IPv4Network] | None = None,
) -> ipaddress.IPv4Network:
    """The lab subnet: ``requested`` checked for size and overlap, or a free one from the pool."""
    routes = host_routes() if routes is None else routes
    if requested not in (None, "", "auto"):
        try:
            net = ipaddress.IPv4Network(requested)
        except ValueError as exc:
            raise UserError(f"--subnet {requested!r} is not an IPv4 network: {exc}") from None
        hosts = net.num_addresses - 3  # network, broadcast, the host's bridge address
        if hosts < n_guests:
            raise UserError(
                f"subnet {net} holds {max(hosts, 0)} guests, {n_guests} asked: "
                f"use a /{prefix_for(n_guests)} or larger"
            )
        for r in routes:
            if net.overlaps(r):
                raise UserError(
                    f"subnet {net} overlaps the host route {r}; choose another with --subnet"
                )
        return net
    prefix = prefix_for(n_guests)
    for net in DEFAULT_POOL.subnets(new_prefix=max(prefix, DEFAULT_POOL.prefixlen)):
        if not any(net.overlaps(r) for r in routes):
            return net
    raise UserError(
        f"no free /{prefix} left in {DEFAULT_POOL} for {n_guests} guests "
        "(other labs may be up: `scalelab ls`); give one with --subnet"
    )


def make_specs(
    run_id: str,
    n_guests: int,
    subnet: ipaddress.IPv4Network,
    *,
    first_index: int = 0,
    total: int | None = None,
    oui: tuple[int, int, int] | None = None,
    prefix: str = "g",
    memory: str | None = None,
    cpus: float | None = None,
) -> list[GuestSpec]:
    """Specs for guests ``first_index .. first_index+n_guests-1`` of a lab of ``total``.

    Host keys are generated here, on the host, before anything boots.
    """
    total = n_guests if total is None else total
    hosts = subnet.network_address
    gateway = hosts + 1
    specs = []
    for i in range(first_index, first_index + n_guests):
        name = guest_name(i, total, prefix)
        specs.append(
            GuestSpec(
                run_id=run_id,
                index=i,
                name=name,
                mac=mac_for(run_id, i, oui),
                ip=ipaddress.IPv4Interface(f"{hosts + 2 + i}/{subnet.prefixlen}"),
                gateway=gateway,
                machine_id=machine_id_for(run_id, i),
                host_key=KeyPair.generate(f"root@{name}"),
                memory=memory,
                cpus=cpus,
            )
        )
    return specs


#: What no two guests of a lab may share: field of ``identity_row`` → what a person calls it.
IDENTITY_FIELDS = {
    "name": "hostname",
    "mac": "MAC",
    "ip": "IP",
    "machine_id": "machine-id",
    "host_key": "host key",
}
#: Fields compared without regard to case (hostnames and MACs are case-insensitive).
_CASELESS = frozenset({"name", "mac"})


def identity_row(spec: GuestSpec) -> dict[str, str]:
    """The guest's ``IDENTITY_FIELDS`` as strings (what crosses to other lab hosts, too)."""
    return {"name": spec.name, "mac": spec.mac, "ip": spec.address,
            "machine_id": spec.machine_id, "host_key": spec.host_key.public_blob}


def shared_identities(rows: Iterable[tuple[str, Mapping[str, str]]]) -> list[str]:
    """One line for each identity value more than one guest holds; ``rows`` are
    (how to name the guest, its ``identity_row``)."""
    rows = list(rows)
    problems = []
    for key, what in IDENTITY_FIELDS.items():
        seen: dict[str, list[str]] = defaultdict(list)
        for label, row in rows:
            value = str(row[key])
            seen[value.lower() if key in _CASELESS else value].append(label)
        for value, labels in seen.items():
            if len(labels) > 1:
                shown = value if len(value) < 40 else value[:20] + "…"
                problems.append(f"{what} {shown} shared by {', '.join(labels)}")
    return problems


def preflight(specs: Sequence[GuestSpec]) -> None:
    """Fail, naming the guests, if any two share a name, MAC, IP, machine-id or host key."""
    problems = shared_identities((s.name, identity_row(s)) for s in specs)
    if problems:
        raise LabError("identity preflight failed: " + "; ".join(problems))
