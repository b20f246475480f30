"""Shared fixtures and the session-wide leak check.

Unit tests need nothing. Tests marked `netns` need root and build their own
namespaces through the `topo` fixture; the session fails if anything named
like ours (bt-*: namespaces, the client tests' cgroups) or any berth nft table
is left in the host namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import harness


def _host_snapshot() -> dict[str, list[str]]:
    if not harness.is_root():
        return {}
    netns = sorted(n.split()[0] for n in subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout.splitlines() if n.strip())
    links = sorted(link["ifname"] for link in json.loads(subprocess.run(
        ["ip", "-j", "link", "show"], capture_output=True, text=True, check=False).stdout or "[]"))
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False).stdout
    return {
        "netns": [n for n in netns if n.startswith(harness.NS_PREFIX)],
        "links": links,
        "berth_tables": sorted(t for t in tables.splitlines() if "berth" in t),
    }


_BEFORE: dict[str, list[str]] = {}


def pytest_sessionstart(session: pytest.Session) -> None:
    global _BEFORE
    if harness.is_root() and not hasattr(session.config, "workerinput"):
        harness.session_tag()
        # namespaces of an interrupted earlier run (its pytest is gone) are ours by name
        for name in _host_snapshot().get("netns", []):
            if not harness.owner_alive(name):
                harness.Netns(name).remove()
    _BEFORE = _host_snapshot()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not harness.is_root() or hasattr(session.config, "workerinput"):
        return
    after = _host_snapshot()
    problems = []
    mine = f"{harness.NS_PREFIX}{harness.session_tag()}-"
    leaked_ns = [n for n in after.get("netns", []) if n.startswith(mine)]
    if leaked_ns:
        problems.append(f"namespaces left behind: {leaked_ns}")
    new_links = sorted(set(after.get("links", [])) - set(_BEFORE.get("links", [])))
    if new_links:
        problems.append(f"links added to the HOST namespace: {new_links}")
    leaked_cgroups = harness.cgroups_named(mine)
    if leaked_cgroups:
        problems.append(f"cgroups left behind: {leaked_cgroups}")
    if after.get("berth_tables"):
        problems.append(f"berth nft tables in the HOST namespace: {after['berth_tables']}")
    if problems:
        print("\nLEAK CHECK FAILED:\n  " + "\n  ".join(problems))
        session.exitstatus = 1


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = harness.is_root()
    skip_root = pytest.mark.skip(reason="needs root (namespace test)")
    for item in items:
        path = str(item.fspath)
        for tier in ("unit", "netns", "parity", "clients"):
            if f"{os.sep}tests{os.sep}{tier}{os.sep}" in path:
                item.add_marker(getattr(pytest.mark, tier))
                if tier == "parity" or tier == "clients":
                    item.add_marker(pytest.mark.netns)
        if not root and item.get_closest_marker("netns"):
            item.add_marker(skip_root)


@pytest.fixture(scope="session")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return harness.plugin_dir(tmp_path_factory.mktemp("berth-bin"))


@pytest.fixture
def topo(tmp_path: Path, bin_dir: Path) -> Iterator[harness.Topology]:
    """A fresh node + outside namespace pair, removed afterwards even on failure."""
    topology = harness.Topology(tmp_path / "topo", bin_dir)
    try:
        topology.build()
        yield topology
    finally:
        topology.destroy()


@pytest.fixture
def node(topo: harness.Topology) -> harness.Node:
    return topo.node
