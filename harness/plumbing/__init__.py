"""Host plumbing below the backends: one command runner and result type, size units, links
(bridges, veths, taps, ``ip -batch``), nftables rulesets, tc and the guest kernel command line.

Backends, state cleanup, the cluster and the benchmarks use these; none re-implements them.
Nothing here knows about labs or guests beyond the plain values it is given.
"""
