"""The xl side of a domU: config values, disk and vif specs, the kernel command line, and
the config rendered from ``templates/xl.cfg.j2``."""

from __future__ import annotations

from dataclasses import dataclass

import jinja2

from harness.errors import UserError
from harness.identity import GuestSpec
from harness.image.vm import GUEST_INIT
from harness.plumbing import cmdline


def xl_string(value: object) -> str:
    """``value`` as an xl config string literal; refuses what xl's parser cannot carry."""
    text = str(value)
    bad = [c for c in text if c in "\"\\" or not c.isprintable()]
    if bad:
        raise UserError(f"cannot put {text!r} in an xl config: {bad[0]!r} is not allowed")
    return f'"{text}"'


def disk_spec(vdev: str, access: str, target: str) -> str:
    """An xl disk spec (xl-disk-configuration(5)); ``target=`` comes last as it must."""
    if access not in ("ro", "rw"):
        raise ValueError(access)
    return f"format=raw,vdev={vdev},access={access},target={target}"


def vif_spec(mac: str, bridge: str) -> str:
    """An xl vif spec (xl-network-configuration(5))."""
    return f"mac={mac},bridge={bridge}"


#: A PV domU's console and disks, as the xl config's ``disk=`` lines name them.
XEN_DEVICES = cmdline.BootDevices(console="hvc0", root="/dev/xvda", upper="/dev/xvdb")


def guest_cmdline(spec: GuestSpec, *, systemd: bool = False, dhcp: bool = False,
                  extra: str = "") -> str:
    """The domU kernel command line (the one every VM backend writes, with Xen's devices):
    the shared root read-only, the domU's own disk as the overlay's upper layer, its name
    and address (or, with ``dhcp``, ``ip=dhcp``: its init asks dom0's dnsmasq)."""
    return cmdline.guest_cmdline(
        hostname=spec.name, ip=spec.ip, devices=XEN_DEVICES,
        init=cmdline.SYSTEMD_INIT if systemd else GUEST_INIT, dhcp=dhcp, extra=extra,
    )


@dataclass(frozen=True)
class DomainConfig:
    """Everything one domU's xl config says."""

    name: str
    guest: str
    run_id: str
    kernel: str
    ramdisk: str
    extra: str
    memory_mib: int
    vcpus: int
    disks: tuple[str, ...]
    vifs: tuple[str, ...]


_ENV: jinja2.Environment | None = None


def _env() -> jinja2.Environment:
    global _ENV
    if _ENV is None:
        env = jinja2.Environment(
            loader=jinja2.PackageLoader("harness", "templates"),
            autoescape=False,  # not HTML: every value goes through |xlstr instead
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
        )
        env.filters["xlstr"] = xl_string
        _ENV = env
    return _ENV


def render_config(cfg: DomainConfig) -> str:
    return _env().get_template("xl.cfg.j2").render(**cfg.__dict__)


def domain_name(run_id: str, guest: str) -> str:
    return f"sl-{run_id}-{guest}"
