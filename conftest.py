"""Scenario-wide defaults. The scalelab plugin itself is registered by its entry point."""

from __future__ import annotations

import pytest


@pytest.fixture
def rounds() -> int:
    """How many times the fan-out scenarios repeat their operation."""
    return 10
