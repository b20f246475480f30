"""Real-client fixtures."""

from __future__ import annotations

import pytest

from tests import harness
from tests.clients import node


@pytest.fixture(scope="session", autouse=True)
def _stale_node_cgroups() -> None:
    """Containers an interrupted run left under its cgroup parent (named like its namespaces)."""
    if harness.is_root():
        node.remove_stale_cgroups()
