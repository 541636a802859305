"""Labs spread over many lab hosts, with Dask distributed as the engine.

``--cluster`` names where the lab hosts are:

* ``local:K`` — K worker processes on this host (a ``distributed.LocalCluster`` with
  ``resources={"lab": 1}``), started when the first cluster lab of the process comes up and
  closed when the last one goes down.  Good for tests and for spreading SSH work over cores.
* ``tcp://scheduler:8786`` (or ``tls://``) — an existing Dask scheduler whose workers run on
  the lab hosts.  On each lab host, as root, with scalelab installed and the image built
  (``scalelab image build``, same recipe as the client)::

      dask worker tcp://scheduler:8786 --resources "lab=1,guests=256" --nthreads 4 --nworkers 1

  ``lab=1`` marks a worker as a lab host (others are ignored); ``guests=N`` (optional) is
  the most guests it may hold and its weight in the split.

**Shards.**  Each lab host runs one shard: a Dask actor (:class:`harness.cluster.shard.Shard`,
created with ``client.submit(Shard, spec, actor=True, workers=[addr])``) that owns a real
harness lab on that host.  The shard brings its guests up, keeps their SSH connections and
runs fan-out commands, uploads and shipped functions (cloudpickle) against its own guests:
SSH never leaves the lab host.  The client gets back ``GroupResult`` values and timing rows,
and writes every row into the run's store with ``lab_host`` set.

**Placement.**  N guests are split over the lab hosts in proportion to their declared
``guests`` capacity when every worker declares one, evenly otherwise (the largest remainder
goes to the first hosts, in address order); no host gets more than its capacity
(``config.MAX_GUESTS`` when undeclared), and asking for more than all can hold is an error.
With fewer guests than hosts, only the first N hosts get a shard.

**Identity.**  Shard k of run R has run id ``R-sk``, its own subnet (all shards' subnets
disjoint, none overlapping a route of any lab host involved) and guest names ``sk`` +
``g000``…  MACs and machine-ids come from the cluster run id and one global guest index
(shard k's guests are numbered from the sum of the earlier shards' sizes), so they are
unique by construction; host keys are made on each lab host.  Before anything boots the
client gathers every shard's names, MACs, IPs, machine-ids and host-key fingerprints and
checks them together (``harness.identity.preflight``'s rules, across all shards).

**Clock.**  At bring-up the client asks each shard for its wall clock 9 times; for each
round trip ``offset = t_shard - (t_sent + t_received) / 2`` (NTP's estimate with one server
stamp), and the median is the shard's ``clock_offsets[lab_host]`` in run.json.  Rows keep
the shard's own time stamps; subtract the offset to put them on the client's clock.

**Network.**  With more than one lab host, the lab hosts' bridges are joined into one L2
lab network by VXLAN (``harness.cluster.overlay``): one VNI per run, unicast to each peer's
underlay address (``SCALELAB_UNDERLAY`` of its worker, else its Dask worker's address) on
UDP port ``--vxlan-port`` (4789), static forwarding entries for every peer and every
remote guest MAC, no multicast.  The run has one subnet; shard k's guests are in its own
block of it (its bridge holds the block's first address), all on one link, with an MTU
50 bytes below the underlay's.  Before anything boots every pair of lab hosts exchanges
probe frames through the tunnels, and a pair that cannot is named.  ``local:K`` emulates K
lab hosts: each shard's VXLAN socket lives in a "host" namespace of its own, on an
underlay bridge in one more.  A person reaches any guest with ``ssh -F <run>/ssh_config
NAME``: directly when its lab host is this host, through the lab host (``ProxyJump
root@labhost``) otherwise.

**Files.**  Each shard keeps its own run directory (its guests' console logs, its
``ssh_config``, ``guests.json`` and a copy of its rows): ``<run>/shards/sK/`` when its lab
host is this host, ``/var/lib/scalelab/shards/<run>-sK/`` on a lab host elsewhere.  The run's
client key is made by the client and sent to the shards with their spec (use a ``tls://``
scheduler when the network between client and lab hosts is not trusted).

**Keeping a lab.**  ``scalelab up --cluster=...`` (and ``--keep-guests``) leaves every
shard's guests up after the workers and the client are gone; ``scalelab down RUN`` on the
client takes the shards of this host down with the run (its journal names them), and
``scalelab down RUN-sK`` on another lab host takes that host's shard down.

**Scripts.**  ``local:K`` starts its workers with multiprocessing's spawn method, which
imports the main module again: a script that brings up a cluster lab needs the usual
``if __name__ == "__main__":`` guard (pytest and ``scalelab`` have theirs).

**Teardown and loss.**  Every shard journals its resources in its own
``/run/scalelab/R-sk/`` on its host, so ``scalelab clean`` there works as for any run.  The
lab takes every shard down on normal exit, failure, SIGINT and SIGTERM; a shard also takes
itself down when its worker exits or the client goes away (its actor is released).  A shard
whose worker dies is reported lost: its guests get ``phase="lost"`` rows and are lost for the
rest of the run (the quorum rule decides what passes); when the lab stops, a live worker on
the same host removes what the dead shard left.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.cluster.lab import ClusterLab

__all__ = ["ClusterLab"]


def __getattr__(name: str) -> Any:
    # Dask is imported only when a cluster lab is asked for (the journal's cleanup
    # callbacks import harness.cluster.cleanup, which must work without it).
    if name == "ClusterLab":
        from harness.cluster.lab import ClusterLab

        return ClusterLab
    raise AttributeError(name)
