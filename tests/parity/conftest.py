"""Fixtures the host-local parity tests share: the reference and berth's IPAM, each behind a Runner."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.parity.test_ipam_parity import REFERENCE, Runner


@pytest.fixture
def ref() -> Runner:
    return Runner(REFERENCE)


@pytest.fixture
def berth(bin_dir: Path) -> Runner:
    return Runner(str(bin_dir / "berth-host-local"))
