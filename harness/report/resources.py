"""What the resource samples say: rates from counters, the host's CPU and memory over the
run, each guest's CPU and traffic, and per scenario and N what the work cost and whether the
host was saturated while it ran (then its latencies measure the host, not the system)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

#: Host CPU (mean over cores) or memory pressure at or above these while a scenario ran
#: mark it saturated.
SATURATED_CPU = 90.0
SATURATED_PRESSURE = 10.0


def tidy_samples(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty:
        return df
    df = df.copy()
    df["t"] = pd.to_datetime(df["t"], utc=True)
    for col in ("lab", "guest", "resource", "item", "kind", "unit"):
        df[col] = df[col].fillna("").astype(str)
    return df.sort_values("t", kind="stable")


def rates(df: pd.DataFrame, resource: str) -> pd.DataFrame:
    """Per (guest, item): the counter's growth per second between successive samples, at
    the later sample's time (columns guest, item, t, rate)."""
    rows = df[df["resource"] == resource]
    if rows.empty:
        return pd.DataFrame(columns=["guest", "item", "t", "rate"])
    rows = rows.sort_values(["guest", "item", "t"], kind="stable")
    keys = [rows["guest"], rows["item"]]
    dv = rows.groupby(keys, sort=False)["value"].diff()
    dt = rows.groupby(keys, sort=False)["t"].diff().dt.total_seconds()
    out: pd.DataFrame = rows.assign(rate=dv / dt)[["guest", "item", "t", "rate"]]
    kept: pd.DataFrame = out[dt > 0].dropna()
    return kept


def host_rows(df: pd.DataFrame, lab_host: str = "") -> pd.DataFrame:
    """A host's own samples: this run's host by default, else one lab host of a cluster
    (each samples itself, on counters of its own that must not be mixed)."""
    rows = df[df["guest"] == ""]
    if "lab_host" in rows.columns:
        rows = rows[rows["lab_host"].fillna("").astype(str) == lab_host]
    return rows


def lab_hosts(df: pd.DataFrame) -> list[str]:
    """The hosts that sampled themselves: "" (this run's host) first, then lab hosts."""
    if "lab_host" not in df.columns:
        return [""]
    names = set(df.loc[df["guest"] == "", "lab_host"].fillna("").astype(str))
    return sorted(names | {""}, key=lambda h: (h != "", h))


def host_cpu_percent(df: pd.DataFrame, lab_host: str = "") -> pd.Series:
    """A host's CPU use over time, % of all its cores (busy time over total time)."""
    host = host_rows(df, lab_host)
    busy = rates(host, "cpu_busy_seconds").groupby("t")["rate"].sum()
    total = rates(host, "cpu_total_seconds").groupby("t")["rate"].sum()
    both = pd.concat([busy, total], axis=1, keys=["busy", "total"]).dropna()
    return (100.0 * both["busy"] / both["total"]).rename("cpu_percent")


def host_gauge(df: pd.DataFrame, resource: str, lab_host: str = "") -> pd.Series:
    rows = host_rows(df, lab_host)
    rows = rows[rows["resource"] == resource]
    return rows.set_index("t")["value"].rename(resource)


def host_memory_percent(df: pd.DataFrame, lab_host: str = "") -> pd.Series:
    used = host_gauge(df, "memory_used_bytes", lab_host)
    total = host_gauge(df, "memory_total_bytes", lab_host)
    both = pd.concat([used, total], axis=1, keys=["used", "total"]).dropna()
    return (100.0 * both["used"] / both["total"]).rename("memory_percent")


def guest_rates(df: pd.DataFrame, resources: tuple[str, ...]) -> pd.DataFrame:
    """Per guest and sample time: the summed rate of ``resources`` (columns guest, t, rate)."""
    guests = df[df["guest"] != ""]
    # A resource with no samples (a backend without it) must not turn the rates to objects.
    parts = [p for p in (rates(guests, r) for r in resources) if not p.empty]
    if not parts:
        return pd.DataFrame(columns=["guest", "t", "rate"])
    both = pd.concat(parts)
    summed: pd.DataFrame = both.groupby(["guest", "t"], as_index=False).agg(rate=("rate", "sum"))
    return summed


@dataclass(frozen=True)
class ScenarioCost:
    """What one scenario at one N cost, from the samples taken while it ran."""

    scenario: str
    n_guests: int
    seconds: float
    operations: int
    guest_cpu_seconds: float
    guest_bytes: float
    host_cpu_mean: float | None
    host_cpu_max: float | None
    saturated: str  # why, or "" when the host kept up

    @property
    def cpu_per_op(self) -> float | None:
        return self.guest_cpu_seconds / self.operations if self.operations else None

    @property
    def bytes_per_op(self) -> float | None:
        return self.guest_bytes / self.operations if self.operations else None


def _counter_growth(df: pd.DataFrame, resource: str, start: pd.Timestamp,
                    end: pd.Timestamp) -> float:
    """The summed growth of a guest counter over [start, end], from the last sample before
    ``start`` to the last one before ``end`` (of each guest)."""
    rows = df[(df["resource"] == resource) & (df["guest"] != "") & (df["t"] <= end)]
    total = 0.0
    for _, g in rows.groupby("guest"):
        before, upto = g[g["t"] < start], g
        if before.empty or len(upto) == len(before):
            continue
        total += float(upto["value"].iloc[-1] - before["value"].iloc[-1])
    return total


def scenario_costs(samples: pd.DataFrame, workload: pd.DataFrame) -> list[ScenarioCost]:
    """One ScenarioCost per (scenario, N) of the workload rows, in the order they ran."""
    if samples.empty or workload.empty:
        return []
    hosts = lab_hosts(samples)
    cpus = {h: host_cpu_percent(samples, h) for h in hosts}
    pressures = {h: host_gauge(samples, "pressure_memory_some_avg10", h) for h in hosts}
    cpu = cpus[""]
    out = []
    spans = workload.groupby(["scenario", "n_guests"], observed=True, as_index=False).agg(
        start=("start", "min"), end=("end", "max"), ops=("ok", "size"))
    for row in spans.sort_values("start").to_dict(orient="records"):
        scenario, n = str(row["scenario"]), int(row["n_guests"])
        start, end = pd.Timestamp(row["start"]), pd.Timestamp(row["end"])
        inside = cpu[(cpu.index >= start) & (cpu.index <= end + pd.Timedelta(seconds=1))]
        why = []
        for h in hosts:  # any lab host that could not keep up makes the latencies its own
            where = f" (lab host {h})" if h else ""
            c = cpus[h][(cpus[h].index >= start) & (cpus[h].index <= end + pd.Timedelta(seconds=1))]
            mem = pressures[h][(pressures[h].index >= start) & (pressures[h].index <= end)]
            if len(c) and c.mean() >= SATURATED_CPU:
                why.append(f"host CPU {c.mean():.0f}% on average{where}")
            if len(mem) and mem.max() >= SATURATED_PRESSURE:
                why.append(f"memory pressure {mem.max():.0f}%{where}")
        out.append(ScenarioCost(
            scenario, n, (end - start).total_seconds(), int(row["ops"]),
            _counter_growth(samples, "cpu_seconds", start, end),
            _counter_growth(samples, "net_tx_bytes", start, end),
            float(inside.mean()) if len(inside) else None,
            float(inside.max()) if len(inside) else None,
            "; ".join(why),
        ))
    return out
