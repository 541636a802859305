"""Checks of a cluster lab that can fail on the user's input, before anything is created:
the ``--cluster`` text, the scheduler answering, lab hosts being there, root, the image on
every lab host, room for the guests and subnets."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

from harness.backends import backend_class, load_backend
from harness.cluster.plan import (
    ClusterSpec,
    LabWorker,
    allocate_subnets,
    parse_cluster,
    place,
)
from harness.config import LabConfig
from harness.errors import LabError, UserError
from harness.identity import host_routes
from harness.image import cache
from harness.image.ensure import ensure_image

#: Seconds the facts of all lab hosts may take to arrive.
FACTS_TIMEOUT = 30.0


def image_ref(config: LabConfig, image: cache.Image | None) -> tuple[str, str | None]:
    """(key, digest or None) of the image every lab host must have.

    The client's image when it has one; else the key of the configured recipe (with this
    host's mirror, as ``scalelab image build`` would choose on a host like this one).
    """
    if image is not None:
        return image.key, image.digest
    if config.image:
        p = Path(config.image)
        return (p if p.is_dir() else p.parent).name if p.exists() else config.image, None
    from harness.image.build import host_mirror

    recipe = config.recipe_spec
    if backend_class(config.backend_url).needs_vm_image:
        recipe = recipe.with_vm()
    if recipe.mirror is None:
        recipe = recipe.with_mirror(host_mirror())
    return recipe.key(), None


def check_facts(facts: dict[str, Any], workers: list[LabWorker], lab_hosts: list[str],
                needs_root: bool, image_key: str) -> None:
    """One clear UserError for the first lab host that cannot take its shard."""
    for w, name in zip(workers, lab_hosts, strict=True):
        f = facts.get(w.address)
        where = f"lab host {name} ({w.address})"
        if f is None or isinstance(f, BaseException):
            raise UserError(f"{where} did not answer: {f}")
        if needs_root and f["euid"] != 0:
            raise UserError(f"{where} runs its Dask worker as uid {f['euid']}, not root: "
                            "the lab's backend needs root there")
        if f["image"] is None:
            raise UserError(f"{where} has no usable image {image_key}: {f['image_error']} "
                            "(build it there with `scalelab image build`, same recipe)")
    digests = {f["image"]["digest"] for f in (facts[w.address] for w in workers)}
    if len(digests) > 1:
        raise UserError(f"the lab hosts' images {image_key} differ ({len(digests)} digests): "
                        "rebuild them from one recipe")


def routes_of(facts: dict[str, Any], workers: list[LabWorker]) -> list[ipaddress.IPv4Network]:
    """Every route of every lab host involved (subnets must avoid them all)."""
    nets = set()
    for w in workers:
        for r in facts[w.address]["routes"]:
            nets.add(ipaddress.IPv4Network(r))
    return sorted(nets)


def preflight_cluster(config: LabConfig, n_guests: int) -> cache.Image:
    """``preflight_lab`` for ``--cluster``: fails with one clear line, leaves nothing."""
    spec = parse_cluster(config.cluster or "")
    backend = load_backend(config.backend_url)
    if spec.local:
        return _preflight_local(config, spec, n_guests, backend.requires_root)
    return _preflight_remote(config, spec, n_guests, backend.requires_root)


def _preflight_local(config: LabConfig, spec: ClusterSpec, n: int, needs_root: bool
                     ) -> cache.Image:
    """K workers on this host: this host's checks, once, without starting them."""

    if needs_root and os.geteuid() != 0:
        raise UserError("the lab's backend needs root on the lab hosts (here): run as root")
    workers = [LabWorker(f"local:{i}") for i in range(spec.local_workers)]
    sizes = [c for _, c in place(n, workers)]
    allocate_subnets(sizes, host_routes(), config.subnet)
    backend = load_backend(config.backend_url)
    image = ensure_image(config, vm=backend.needs_vm_image)
    backend.check(image, max(sizes))
    return image


def _preflight_remote(config: LabConfig, spec: ClusterSpec, n: int, needs_root: bool
                      ) -> cache.Image:
    """Ask the scheduler and every lab host; the client needs neither root nor the image."""
    from harness.cluster.connect import open_connection
    from harness.cluster.hostfacts import host_facts
    from harness.cluster.plan import lab_host_names

    local = _local_image(config)
    key, digest = image_ref(config, local)
    conn = open_connection(spec)
    try:
        placement = place(n, conn.lab_workers())
        workers = [w for w, _ in placement]
        try:
            facts = conn.run(host_facts, key, digest, workers=[w.address for w in workers],
                             timeout=FACTS_TIMEOUT)
        except LabError as err:
            raise UserError(f"the lab hosts did not all answer: {err}") from None
        names = lab_host_names([_hostname(facts.get(w.address), w) for w in workers])
        check_facts(facts, workers, names, needs_root, key)
        allocate_subnets([c for _, c in placement], routes_of(facts, workers), config.subnet)
    finally:
        conn.close()
    if local is not None:
        return local
    manifest = facts[workers[0].address]["image"]["manifest"]
    return cache.Image(key, cache.images_root() / key, manifest)


def _local_image(config: LabConfig) -> cache.Image | None:
    """The client's own copy of the image, when it has one (it need not)."""
    try:
        if config.image:
            return cache.resolve(config.image)
        return cache.load(image_ref(config, None)[0])
    except UserError:
        return None


def _hostname(facts: Any, worker: LabWorker) -> str:
    if isinstance(facts, dict):
        return str(facts["hostname"])
    return worker.host
