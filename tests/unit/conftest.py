"""Hypothesis profiles for the property tests: quick by default, long with BERTH_LONG=1."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]}
# quick: ~50 examples per property test (a few hundred in all, seconds); long: >= 10,000 per test
settings.register_profile("berth-quick", max_examples=50, derandomize=False, **_COMMON)
settings.register_profile("berth-long", max_examples=10_000, **_COMMON)
settings.load_profile("berth-long" if os.environ.get("BERTH_LONG") == "1" else "berth-quick")
