"""Hypothesis profiles for the property tests: quick by default, long with BERTH_LONG=1; no real proxy process."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]}
# quick: ~50 examples per property test (a few hundred in all, seconds); long: >= 10,000 per test
settings.register_profile("berth-quick", max_examples=50, derandomize=False, **_COMMON)
settings.register_profile("berth-long", max_examples=10_000, **_COMMON)
settings.load_profile("berth-long" if os.environ.get("BERTH_LONG") == "1" else "berth-quick")


@pytest.fixture(autouse=True)
def no_proxy_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """portmap ADD in-process would fork a real [::1] proxy in the namespace the unit
    tests run in: never here (the namespace tests start real ones in their node)."""
    from cni.records import PROXY_PROCESS, ProxyRecord
    from portmap import proxyctl

    def spawn(_key: Any, _wanted: Any) -> proxyctl.Started:
        return proxyctl.Started(ProxyRecord(PROXY_PROCESS, ()), ("unit tests start no proxy process",))

    monkeypatch.setattr(proxyctl, "spawn", spawn)
    monkeypatch.setattr(proxyctl, "spawn_exec", lambda _exe, key, wanted: spawn(key, wanted))
