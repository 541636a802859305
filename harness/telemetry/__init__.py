"""Resource telemetry: what every guest and every lab host spends, sampled from the host
side through the whole run (no agent in the guests), stored like every other row.

- ``sample``: one sampled value (``Sample``), a counter or a gauge
- ``hostside``: this lab host's CPU per core, load, memory, pressure and the harness's own CPU
- ``sampler``: the thread that samples every lab of a run every ``--sample-interval`` seconds

Where a guest's numbers come from is its backend's business (the ``HasTelemetry``
capability): netns reads its cgroups and its veth's counters.
"""
