from __future__ import annotations

import dataclasses
import ipaddress
import re

import pytest

from harness.errors import LabError, UserError
from harness.identity import (
    XEN_OUI,
    KeyPair,
    choose_subnet,
    guest_name,
    mac_for,
    make_specs,
    prefix_for,
    preflight,
)

NET = ipaddress.IPv4Network("10.213.0.0/22")


def test_specs_are_unique_and_well_formed() -> None:
    specs = make_specs("run-a", 300, NET)
    assert len({s.name for s in specs}) == 300
    assert len({s.mac for s in specs}) == 300
    assert len({s.address for s in specs}) == 300
    assert len({s.machine_id for s in specs}) == 300
    assert len({s.host_key.public_blob for s in specs}) == 300
    for s in specs:
        assert re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", s.mac)
        assert int(s.mac[:2], 16) & 0b10  # locally administered
        assert not int(s.mac[:2], 16) & 0b1  # unicast
        assert s.ip.ip in NET and s.ip.ip != s.gateway
        assert s.ip.network == NET
        assert s.host_key.public_openssh.startswith("ssh-ed25519 ")
        assert "OPENSSH PRIVATE KEY" in s.host_key.private_openssh
    preflight(specs)


def test_identity_depends_on_run_and_index() -> None:
    assert mac_for("run-a", 1) != mac_for("run-b", 1)
    assert mac_for("run-a", 1) == mac_for("run-a", 1)
    assert mac_for("run-a", 5, XEN_OUI).startswith("00:16:3e:")
    assert guest_name(7, 64) == "g007"
    assert guest_name(7, 5000) == "g0007"


def test_preflight_names_duplicates() -> None:
    specs = make_specs("run-a", 4, NET)
    twin = dataclasses.replace(specs[3], mac=specs[1].mac, host_key=specs[0].host_key)
    with pytest.raises(LabError) as err:
        preflight([*specs[:3], twin])
    text = str(err.value)
    assert "MAC" in text and "g001, g003" in text
    assert "host key" in text and "g000, g003" in text


def test_subnet_choice() -> None:
    routes = [ipaddress.IPv4Network("10.213.0.0/24"), ipaddress.IPv4Network("192.0.2.0/24")]
    assert choose_subnet(None, 10, routes) == ipaddress.IPv4Network("10.213.1.0/24")
    big = choose_subnet(None, 1000, routes)
    assert big.num_addresses >= 1003 and not big.overlaps(routes[0])
    with pytest.raises(UserError, match=r"overlaps the host route 192\.0\.2\.0/24"):
        choose_subnet("192.0.2.128/25", 4, routes)
    with pytest.raises(UserError, match="holds 5 guests, 64 asked"):
        choose_subnet("10.50.0.0/29", 64, routes)
    with pytest.raises(UserError, match="not an IPv4 network"):
        choose_subnet("10.50.0.300/24", 4, routes)
    assert prefix_for(253) == 24 and prefix_for(254) == 23


def test_keypair_roundtrip_with_paramiko() -> None:
    import io

    import paramiko

    kp = KeyPair.generate("c")
    key = paramiko.Ed25519Key.from_private_key(io.StringIO(kp.private_openssh))
    assert key.get_base64() == kp.public_blob
