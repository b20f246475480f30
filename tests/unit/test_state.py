"""The per-attachment journal: round trips, atomicity, modes, and the lock."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path

import pytest

from cni import errors, state
from cni.errors import CNIError
from cni.files import atomic_write, flocked
from cni.state import Journal, journals, state_root


def journal(root: Path, cid: str = "c1", ifname: str = "eth0") -> Journal:
    return Journal(str(root), "net1", cid, ifname)


def test_state_root() -> None:
    assert state_root({"BERTH_STATE_DIR": "/x"}) == "/x"
    assert state_root({}) == state.DEFAULT_ROOT
    assert state_root({"BERTH_STATE_DIR": ""}) == state.DEFAULT_ROOT


def test_round_trip_and_removal(tmp_path: Path) -> None:
    j = journal(tmp_path / "root")
    assert j.section("bridge") is None and j.load() == {}
    j.put("bridge", {"veth": "veth1", "ips": ["10.1.0.5/24"]})
    j.put("portmap", {"chain": "CNI-DN-x"})
    j.put("bridge", {"veth": "veth2"})
    assert j.section("bridge") == {"veth": "veth2"}
    assert j.section("portmap") == {"chain": "CNI-DN-x"}
    data = json.loads(Path(j.path).read_text())
    assert (data["containerID"], data["ifname"], data["network"]) == ("c1", "eth0", "net1")
    assert j.path == str(tmp_path / "root" / "net1" / "c1:eth0.json")
    j.drop("bridge")
    assert j.section("bridge") is None and j.section("portmap") == {"chain": "CNI-DN-x"}
    j.drop("portmap")
    assert not os.path.exists(j.path)
    j.drop("portmap")  # idempotent, and on a missing file
    journal(tmp_path / "never").drop("bridge")
    assert not (tmp_path / "never" / "net1" / "c1:eth0.json").exists()


def test_attachments_are_separate(tmp_path: Path) -> None:
    a, b = journal(tmp_path, "c1"), journal(tmp_path, "c1", "eth1")
    a.put("bridge", {"n": 1})
    b.put("bridge", {"n": 2})
    a.drop("bridge")
    assert b.section("bridge") == {"n": 2}
    assert [p for p, _ in journals(str(tmp_path))] == [b.path]
    assert [d["bridge"] for _, d in journals(str(tmp_path), "net1")] == [{"n": 2}]
    assert list(journals(str(tmp_path / "missing"))) == []


def test_names_cannot_collide(tmp_path: Path) -> None:
    """("a", "b-c") and ("a-b", "c") shared a-b-c.json: each has its own journal now."""
    first, second = journal(tmp_path, "a", "b-c"), journal(tmp_path, "a-b", "c")
    first.put("bridge", {"n": 1})
    assert second.section("bridge") is None
    second.put("bridge", {"n": 2})
    assert first.path != second.path and first.section("bridge") == {"n": 1}
    second.drop("bridge")
    assert first.section("bridge") == {"n": 1} and not os.path.exists(second.path)
    assert [(d["containerID"], d["ifname"]) for _, d in journals(str(tmp_path))] == [("a", "b-c")]


def _legacy(root: Path, cid: str, ifname: str, content: dict[str, object] | None = None) -> Path:
    """A journal as berth wrote it before the injective names: <id>-<ifname>.json."""
    path = root / "net1" / f"{cid}-{ifname}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"containerID": cid, "ifname": ifname, "network": "net1", "bridge": {"n": 0}}
    path.write_text(json.dumps(body if content is None else content))
    return path


def test_a_legacy_journal_is_its_owners_only(tmp_path: Path) -> None:
    old = _legacy(tmp_path, "a", "b-c")
    owner, other = journal(tmp_path, "a", "b-c"), journal(tmp_path, "a-b", "c")
    assert owner.path == str(old) and owner.section("bridge") == {"n": 0}
    assert other.path != str(old) and other.section("bridge") is None  # same old name, not its content
    other.put("bridge", {"n": 2})
    owner.put("portmap", {"chain": "x"})  # the owner keeps writing its legacy file
    assert json.loads(old.read_text())["portmap"] == {"chain": "x"}
    assert sorted(os.listdir(tmp_path / "net1")) == ["a-b-c.json", "a-b:c.json", "journal.lock"]
    owner.drop("bridge")
    owner.drop("portmap")
    assert not old.exists() and other.section("bridge") == {"n": 2}
    again = journal(tmp_path, "a", "b-c")
    again.put("bridge", {"n": 3})
    assert again.path == str(tmp_path / "net1" / "a:b-c.json")  # a new ADD writes the new name


def test_an_unreadable_legacy_journal_is_ours_only_if_its_name_is(tmp_path: Path) -> None:
    plain = _legacy(tmp_path, "c1", "eth0")
    plain.write_text("{torn")
    assert journal(tmp_path, "c1", "eth0").path == str(plain)  # c1-eth0 has one reading: DEL may remove it
    shared = _legacy(tmp_path, "a", "b-c")
    shared.write_text("{torn")
    assert journal(tmp_path, "a", "b-c").path != str(shared)  # a-b-c: ("a", "b-c") or ("a-b", "c")
    assert journal(tmp_path, "a-b", "c").path != str(shared)
    assert state.legacy_readings("a-b-c") == [("a", "b-c"), ("a-b", "c")]


def test_modes_and_no_tmp_left(tmp_path: Path) -> None:
    j = journal(tmp_path)
    for i in range(5):
        j.put("bridge", {"i": i})
    assert stat.S_IMODE(os.stat(j.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(j.directory).st_mode) == 0o700
    assert sorted(os.listdir(j.directory)) == ["c1:eth0.json", "journal.lock"]


def test_a_state_root_it_makes_is_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        root = tmp_path / "lib" / "berth"
        Journal(str(root), "net1", "c1", "eth0").put("bridge", {"n": 1})
        from portmap import ports

        with ports.locked(str(tmp_path / "other" / "berth")):
            pass
    finally:
        os.umask(old)
    for path in (root, root / "net1", tmp_path / "other" / "berth", tmp_path / "other" / "berth" / "ports"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    assert stat.S_IMODE((tmp_path / "lib").stat().st_mode) == 0o755  # above the root: the system's


def test_atomic_write_failure_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "is-a-dir"
    target.mkdir()
    with pytest.raises(OSError):
        atomic_write(str(target), b"x")
    assert os.listdir(tmp_path) == ["is-a-dir"]


def test_atomic_write_replaces_whole(tmp_path: Path) -> None:
    path = tmp_path / "f"
    atomic_write(str(path), b"a" * 100_000)
    atomic_write(str(path), b"short")
    assert path.read_bytes() == b"short" and os.listdir(tmp_path) == ["f"]


def test_corrupt_journal_is_io_error(tmp_path: Path) -> None:
    j = journal(tmp_path)
    os.makedirs(j.directory)
    Path(j.path).write_text("{torn")
    with pytest.raises(CNIError) as info:
        j.section("bridge")
    assert info.value.code == errors.IO_FAILURE
    Path(j.path).write_text("[1, 2]")  # valid JSON, wrong shape: treated as empty
    assert j.load() == {}


def test_an_empty_journal_reads_as_none(tmp_path: Path) -> None:
    """Journals are not fsync'ed: after a power loss a file renamed before its data
    reached the disk may be empty (or zeros). That is no journal, not an error, and
    DEL removes the file."""
    for content in (b"", b"\0" * 300):
        j = journal(tmp_path)
        j._ensure_dir()
        Path(j.path).write_bytes(content)
        assert j.load() == {} and j.section("bridge") is None
        j.drop("bridge")
        assert not os.path.exists(j.path)
    j.put("bridge", {"veth": "v"})  # and an ADD writes over one
    Path(j.path).write_bytes(b"")
    j.put("bridge", {"veth": "w"})
    assert j.section("bridge") == {"veth": "w"}


def test_journal_writes_skip_fsync_but_atomic_write_syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    j = journal(tmp_path)
    j.put("bridge", {"veth": "v"})
    j.put("portmap", {"chain": "c"})
    j.drop("portmap")
    j.drop("bridge")
    assert synced == []
    atomic_write(str(tmp_path / "durable"), b"x")
    assert len(synced) == 2  # the data, then the directory


def test_lock_timeout_is_try_again(tmp_path: Path) -> None:
    lock = str(tmp_path / "lock")
    with flocked(lock):
        started = time.monotonic()
        with pytest.raises(CNIError) as info, flocked(lock, timeout=0.2):
            pass
        assert info.value.code == errors.TRY_AGAIN_LATER
        assert 0.15 < time.monotonic() - started < 2
    with flocked(lock, timeout=0.2):  # released on exit
        pass
    assert stat.S_IMODE(os.stat(lock).st_mode) == 0o600


def test_lock_of_a_killed_holder_does_not_wedge(tmp_path: Path) -> None:
    lock = str(tmp_path / "lock")
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: take the lock, say so, wait to be killed
        try:
            os.close(ready_r)
            with flocked(lock, timeout=5):
                os.write(ready_w, b"1")
                time.sleep(60)
        finally:
            os._exit(0)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"1"
        with pytest.raises(CNIError), flocked(lock, timeout=0.1):
            pass  # really held
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(ready_r)
    started = time.monotonic()
    with flocked(lock, timeout=2):
        pass
    assert time.monotonic() - started < 1


def test_drop_removes_an_unreadable_journal(tmp_path) -> None:
    from cni.state import Journal

    journal = Journal(str(tmp_path), "net", "c1", "eth0")
    journal.put("bridge", {"x": 1})
    with open(journal.path, "wb") as fh:
        fh.write(b"{not json")
    journal.drop("bridge")
    assert not os.path.exists(journal.path)
