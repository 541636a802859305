"""Scenario names: a sweep runs one test at several N, and the report groups them back."""

from __future__ import annotations

import re

_PARAMS = re.compile(r"^(?P<head>.*)\[(?P<ids>[^\[\]]*)\]$")
_N_ID = re.compile(r"n=\d+")


def base_scenario(scenario: str) -> str:
    """The scenario without its ``n=..`` parameter id: ``test_rt[n=16]`` → ``test_rt``.

    Other parameter ids stay: ``test_rt[cpu-n=16]`` → ``test_rt[cpu]``.
    """
    m = _PARAMS.match(scenario)
    if m is None:
        return scenario
    ids = [part for part in m["ids"].split("-") if not _N_ID.fullmatch(part)]
    return f"{m['head']}[{'-'.join(ids)}]" if ids else m["head"]


def series_title(base: str, op: str, ops_in_scenario: int) -> str:
    """How a (scenario, operation) series is titled: the op only when the scenario has several."""
    return base if ops_in_scenario <= 1 else f"{base} · {op}"
