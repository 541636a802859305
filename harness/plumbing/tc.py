"""Traffic control on one device (tc), optionally inside a network namespace."""

from __future__ import annotations

import contextlib

from harness.errors import LabError
from harness.plumbing import host


def _tc(netns: str | None, *args: str) -> list[str]:
    return ["ip", "netns", "exec", netns, "tc", *args] if netns else ["tc", *args]


def limit_rate(dev: str, rate: str, netns: str | None = None) -> None:
    """A token bucket (tbf) on ``dev``'s egress: at most ``rate`` (tc's syntax: 1mbit)."""
    tbf = ["tbf", "rate", rate, "burst", "32kbit", "latency", "400ms"]
    host.check(_tc(netns, "qdisc", "replace", "dev", dev, "root", *tbf),
               what=f"tc tbf {rate} on {dev}")


def clear(dev: str, netns: str | None = None) -> None:
    """Back to the default qdisc (idempotent: a device without a qdisc of ours is fine)."""
    with contextlib.suppress(LabError):
        host.check(_tc(netns, "qdisc", "del", "dev", dev, "root"))
