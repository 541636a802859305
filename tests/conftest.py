"""Shared fixtures for the project's own tests: the image, and a leak detector."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from leaks import PROJECT, Snapshot, snapshot

from harness.config import build_config
from harness.image.cache import Image
from harness.image.ensure import ensure_image

__all__ = ["PROJECT", "Snapshot", "snapshot"]


@pytest.fixture(scope="session")
def root() -> None:
    """These tests drive real namespaces, mounts and sshd: they need root (CI runs as root)."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root: run the test suite as root", pytrace=False)


@pytest.fixture(scope="session")
def image(root: None) -> Image:
    """The default base image (built once if it is not cached)."""
    return ensure_image(build_config({}, PROJECT))


@pytest.fixture(scope="session")
def vm_image(root: None) -> Image:
    """The default recipe's VM image (kernel + initramfs), built once if not cached."""
    return ensure_image(build_config({}, PROJECT), vm=True)


@pytest.fixture
def no_leaks(root: None) -> Iterator[Snapshot]:
    """Fails the test if it leaves a namespace, link, mount, loop device, guest process,
    cgroup or state journal behind."""
    before = snapshot()
    yield before
    left = before.diff(snapshot())
    assert not left, f"left behind: {left}"


#: Fixtures that need root (namespaces, mounts, sshd, VMs): a test using one must say so
#: with a marker, so that ``-m "not integration and not vm"`` is the suite any user can run.
ROOT_FIXTURES = {"root", "image", "no_leaks", "vm_image"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [
        item.nodeid for item in items
        if ROOT_FIXTURES & set(getattr(item, "fixturenames", ()))
        and not (item.get_closest_marker("integration") or item.get_closest_marker("vm"))
    ]
    if unmarked:
        raise pytest.UsageError(
            "tests that need root must be marked integration or vm: " + ", ".join(unmarked[:5]))
