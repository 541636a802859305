"""Shared fixtures for the project's own tests: the images, a nested Xen lab, and a leak
detector."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from leaks import PROJECT, Snapshot, snapshot
from xenlab import XenLab, pinned_image, running_lab

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


@pytest.fixture(scope="module")
def xen_image(vm_image: Image) -> Iterator[Image]:
    """The project's VM image, pinned for the test module using it (every test and the
    harness it runs use these very files)."""
    with pinned_image(vm_image) as image:
        yield image


@pytest.fixture(scope="module")
def xen_lab(xen_image: Image) -> Iterator[XenLab]:
    """Xen nested under QEMU TCG with a Debian dom0, booted once per test module."""
    t0 = time.monotonic()
    with running_lab([xen_image], boot_timeout=600) as lab:
        print(f"\nxenlab: dom0 image {lab.timings['dom0_image_s']:.1f}s, seed disk "
              f"{lab.timings['seed_disk_s']:.1f}s, dom0 boot {lab.timings['dom0_boot_s']:.1f}s"
              f" (lab up in {time.monotonic() - t0:.1f}s)")
        yield lab


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
