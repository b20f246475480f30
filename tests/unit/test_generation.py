"""portmap/generation.py: when the static nft layout may be left alone (no kernel: a stub generation)."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from portmap import generation, nft, ports


class Counter(nft.Fake):
    """A Fake whose ruleset generation the test moves by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.gen: int | None = 41

    def generation(self) -> int | None:
        return self.gen


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter]:
    fake = Counter()
    nft.set_backend(fake)
    monkeypatch.setattr(ports, "boot_id", lambda: "boot-a")
    yield fake
    nft.set_backend(None)


def commit(root: str, kernel: Counter, intact: bool, variant: str | None = None, others: int = 0) -> None:
    before = kernel.gen
    assert before is not None
    kernel.gen = before + 1 + others  # our commit, and `others` by someone else
    generation.note_commit(root, before, intact, variant)


def test_only_berth_commits_keep_the_layout_known(tmp_path: Path, kernel: Counter) -> None:
    root = str(tmp_path)
    assert generation.layout_known(root, "13:") == (False, 41)  # nothing recorded yet
    commit(root, kernel, True, "13:")  # an ADD that re-asserted the layout
    assert generation.layout_known(root, "13:") == (True, 42)
    assert stat.S_IMODE((tmp_path / generation.RECORD).stat().st_mode) == 0o600
    commit(root, kernel, True)  # a DEL: carries the recorded variant forward
    assert generation.layout_known(root, "13:") == (True, 43)
    assert generation.layout_known(root) == (True, 43)
    assert generation.layout_known(root, "14:") == (False, 43)  # another markMasqBit: re-assert


def test_any_other_commit_or_boot_forgets_it(tmp_path: Path, kernel: Counter, monkeypatch: pytest.MonkeyPatch) -> None:
    root = str(tmp_path)
    commit(root, kernel, True, "13:")
    kernel.gen = 50  # `nft flush chain ...`, a firewall reload
    assert generation.layout_known(root, "13:")[0] is False
    commit(root, kernel, True, "13:", others=1)  # someone committed between our read and our commit
    assert generation.layout_known(root, "13:")[0] is False
    commit(root, kernel, False, "13:")  # not intact before, and this one did not re-assert
    assert generation.layout_known(root, "13:")[0] is False
    commit(root, kernel, True, "13:")
    assert generation.layout_known(root, "13:")[0] is True
    monkeypatch.setattr(ports, "boot_id", lambda: "boot-b")  # a reboot: generations start over
    assert generation.layout_known(root, "13:")[0] is False
    kernel.gen = None  # the kernel cannot tell
    assert generation.layout_known(root, "13:") == (False, None)


def test_a_no_op_commit_keeps_the_generation(tmp_path: Path, kernel: Counter) -> None:
    """A transaction that changed nothing does not move the generation: still known."""
    root = str(tmp_path)
    commit(root, kernel, True, "13:")
    before = kernel.gen
    generation.note_commit(root, before, True)
    assert generation.layout_known(root, "13:") == (True, before)
