"""The xen backend: PV domUs on a Xen dom0, driven with ``xl``, on this host or over SSH.

The seed's system.  Every domU boots the image's kernel and initramfs with the shared base
image attached read-only (``xvda``) and a small writable disk of its own (``xvdb``), which
the initramfs makes the upper layer of an overlayfs root.  Each writable disk is built on
this host with the guest's identity inside (so its host key is pinned before it boots) and
copied to dom0.  Domain configs are rendered from ``templates/xl.cfg.j2``.

    xen://local                        this host is dom0: xl runs here, guests sit on its bridge
    xen://root@dom0:22?known_hosts=F   xl runs on dom0 over SSH; the guests are reached
                                       through dom0 as an SSH jump host

Options (``?k=v&...``): ``known_hosts`` (file pinning dom0's host key), ``key`` (private key
for dom0), ``bridge`` (default xenbr0), ``memory`` (MiB per domU, default 256), ``vcpus``,
``disk`` (writable disk MiB, default 64), ``workdir`` (on dom0, default /var/lib/scalelab/xen),
``parallel`` (concurrent ``xl create``), ``connect_timeout`` (seconds), ``init`` (``lean``,
the image's small init, or ``systemd``), ``cmdline`` (added to every domU's kernel command
line), ``addressing`` (``static``: ``ip=`` on the command line; ``dhcp``: a dnsmasq on dom0's
bridge leases each domU's MAC its address, see ``dhcp``).

dom0's host key is never learnt from the network while a lab runs: it must be in
``known_hosts`` (or ``~/.ssh/known_hosts``) already; ``python -m harness.backends.xen
record-host-key root@dom0 FILE`` records it once, on purpose, and prints its fingerprint.

Everything made on dom0 (run directory, writable disks, configs, domUs, the bridge address,
the DHCP server) is journalled as a ``callback`` resource before it is made, so ``scalelab
clean`` can take it down from another process.

Modules: ``options`` (the URL, checked), ``dom0`` (commands and files on dom0, one
connection per dom0, each command's ``CommandResult``), ``facts`` (what dom0 has, and what
it lacks for N domUs), ``staging`` (the image bundle and the bridge address on dom0),
``xlconfig`` (domU configs rendered), ``domu`` (one domU: its config, ``xl create``),
``xl`` (what ``xl list`` says, and whether a domU still exists), ``footprint`` (memory and
disk per domU), ``bundle`` (the image on dom0), ``cleanup`` (the journal's callbacks),
``dhcp`` (``addressing=dhcp``: dnsmasq on dom0) and ``backend`` (``XenBackend``).
"""

from harness.backends.xen.backend import XenBackend
from harness.backends.xen.bundle import BUNDLE_FILES, bundle_id, bundle_sources
from harness.backends.xen.cleanup import (
    ALREADY_REMOVED,
    destroy_domain,
    loops_on,
    release_loops,
    remove_address,
    remove_path,
)
from harness.backends.xen.dhcp import stop_dhcp
from harness.backends.xen.dom0 import (
    Dom0,
    LocalDom0,
    RemoteDom0,
    close_pool,
    connect,
    dom0_for,
    known_hosts_line,
    record_host_key,
)
from harness.backends.xen.facts import Dom0Facts
from harness.backends.xen.options import Target, XenOptions
from harness.backends.xen.xl import DomainWatch, parse_xl_list, parse_xl_list_long
from harness.backends.xen.xlconfig import (
    DomainConfig,
    disk_spec,
    domain_name,
    guest_cmdline,
    render_config,
    vif_spec,
    xl_string,
)

# The journal names its callbacks ``harness.backends.xen:<name>``: a name that stays put
# when a function moves between modules (a kept lab may outlive an upgrade).
__all__ = [
    "ALREADY_REMOVED", "BUNDLE_FILES", "Dom0", "Dom0Facts", "DomainConfig", "DomainWatch",
    "LocalDom0", "RemoteDom0", "Target", "XenBackend", "XenOptions", "bundle_id",
    "bundle_sources", "close_pool", "connect", "destroy_domain", "disk_spec", "dom0_for",
    "domain_name", "guest_cmdline", "known_hosts_line", "loops_on", "parse_xl_list",
    "parse_xl_list_long", "record_host_key", "release_loops", "remove_address", "remove_path",
    "render_config", "stop_dhcp", "vif_spec", "xl_string",
]
