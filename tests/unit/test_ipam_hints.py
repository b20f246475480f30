"""Hints: which addresses (containerID, ifname) holds, without reading every lease (ipam/store.py).

The hints live in <dataDir>/.berth-ipam-hints/<network>/<key>/<ip>; the seal over them is the lock file's content.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ipam import allocator, hostlocal, store
from ipam.store import HINTS_DIR, DiskStore, owner_key

NET = "hintnet"
ROOT = Path(__file__).resolve().parents[2]


def conf(data_dir: Path, **extra: Any) -> dict[str, Any]:
    return {"cniVersion": "1.1.0", "name": NET, "type": "berth-host-local",
            "ipam": {"type": "berth-host-local", "dataDir": str(data_dir),
                     "ranges": [[{"subnet": "10.33.0.0/24"}], [{"subnet": "fd00:33::/120"}]]}, **extra}


def leases(data_dir: Path) -> dict[str, bytes]:
    net = data_dir / NET
    return {p.name: p.read_bytes() for p in net.iterdir() if p.name[0].isdigit() or ":" in p.name}


def hints(data_dir: Path) -> dict[str, set[str]]:
    root = data_dir / HINTS_DIR / NET
    if not root.exists():
        return {}
    return {d.name: {f.name for f in d.iterdir()} for d in root.iterdir()}


def expected_hints(data_dir: Path) -> dict[str, set[str]]:
    want: dict[str, set[str]] = {}
    for ip, content in leases(data_dir).items():
        want.setdefault(owner_key(*store.parse_owner(content)), set()).add(ip)
    return want


def write_like_reference(data_dir: Path, ip: str, cid: str, ifname: str = "eth0") -> None:
    """What upstream's disk.Store.Reserve does: O_EXCL create of <ip>, content "<id>\\r\\n<ifname>"."""
    fd = os.open(data_dir / NET / ip, os.O_RDWR | os.O_EXCL | os.O_CREAT, 0o644)
    os.write(fd, f"{cid}\r\n{ifname}".encode())
    os.close(fd)


class Counting:
    """Counts full scans and lease reads of every DiskStore."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.scans = 0
        self.reads = 0
        real_scan, real_owner = DiskStore._scan_named, DiskStore._read_owner

        def scan(s: DiskStore) -> Any:
            self.scans += 1
            return real_scan(s)

        def owner(s: DiskStore, name: str) -> Any:
            self.reads += 1
            return real_owner(s, name)

        monkeypatch.setattr(DiskStore, "_scan_named", scan)
        monkeypatch.setattr(DiskStore, "_read_owner", owner)

    def reset(self) -> None:
        self.scans = self.reads = 0


def test_retried_add_gets_its_address_from_the_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(40):
        hostlocal.add(conf(tmp_path), f"other{i}", "eth0")
    first = hostlocal.add(conf(tmp_path), "c1", "eth0")
    assert hints(tmp_path) == expected_hints(tmp_path)
    count = Counting(monkeypatch)
    assert hostlocal.add(conf(tmp_path), "c1", "eth0") == first
    assert count.scans == 0 and count.reads == 2  # its two leases, none of the 80 others
    count.reset()
    hostlocal.delete(conf(tmp_path), "c1", "eth0")
    assert count.scans == 0 and count.reads <= 4
    assert not any(v.startswith(b"c1\r") for v in leases(tmp_path).values())
    assert hints(tmp_path) == expected_hints(tmp_path)
    count.reset()
    hostlocal.delete(conf(tmp_path), "c1", "eth0")  # the runtime's second DEL: nothing to read at all
    assert count.scans == 0 and count.reads == 0


def test_lock_holds_the_seal_and_the_lease_dir_only_upstream_files(tmp_path: Path) -> None:
    hostlocal.add(conf(tmp_path), "c1", "eth0")
    names = sorted(os.listdir(tmp_path / NET))
    assert names == ["10.33.0.2", "fd00:33::2", "last_reserved_ip.0", "last_reserved_ip.1", "lock"]
    seal = (tmp_path / NET / "lock").read_bytes()
    assert seal.startswith(b"berth-ipam-index 1 ") and b"\r" not in seal and seal.endswith(b"\n")
    for path in (tmp_path / HINTS_DIR).rglob("*"):  # nothing a reader could take for a lease or a bare ID
        assert path.is_dir() or path.read_bytes() == b""
        assert (path.stat().st_mode & 0o077) == 0


def test_first_operation_on_an_unhinted_dir_scans_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / NET).mkdir()
    for i in range(1, 30):  # as the reference or an old berth left them
        write_like_reference(tmp_path, f"10.33.0.{i + 1}", f"old{i}")
    (tmp_path / NET / "10.33.0.200").write_bytes(b"legacy")  # an ID-only lease
    count = Counting(monkeypatch)
    hostlocal.add(conf(tmp_path), "new", "eth0")
    assert count.scans == 1
    assert hints(tmp_path) == expected_hints(tmp_path)
    count.reset()
    hostlocal.delete(conf(tmp_path), "old7", "eth0")
    hostlocal.delete(conf(tmp_path), "legacy", "eth3")
    assert count.scans == 0
    assert "10.33.0.8" not in leases(tmp_path) and "10.33.0.200" not in leases(tmp_path)


def test_del_finds_a_lease_the_reference_wrote_into_a_sealed_dir(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    hostlocal.add(conf(tmp_path), "c1", "eth0")
    write_like_reference(tmp_path, "10.33.0.77", "ref1")
    count = Counting(monkeypatch)
    hostlocal.delete(conf(tmp_path), "ref1", "eth0")
    assert count.scans == 1  # the seal no longer matches: one full scan, which also adds the missing hint
    assert "10.33.0.77" not in leases(tmp_path)
    assert hints(tmp_path) == expected_hints(tmp_path)
    # the reference releases a berth lease and hands the same address (same name) to another container
    os.unlink(tmp_path / NET / "10.33.0.2")
    write_like_reference(tmp_path, "10.33.0.2", "ref2")
    hostlocal.delete(conf(tmp_path), "c1", "eth0")
    assert leases(tmp_path)["10.33.0.2"] == b"ref2\r\neth0"  # not c1's any more: kept
    hostlocal.delete(conf(tmp_path), "ref2", "eth0")
    assert "10.33.0.2" not in leases(tmp_path)
    assert hints(tmp_path) == expected_hints(tmp_path)


def test_stale_and_foreign_hints_are_harmless(tmp_path: Path) -> None:
    hostlocal.add(conf(tmp_path), "c1", "eth0")
    hostlocal.add(conf(tmp_path), "c2", "eth0")
    # c1's hint also points at c2's address (as a crash between hint and link may leave it)
    (tmp_path / HINTS_DIR / NET / owner_key("c1", "eth0") / "10.33.0.3").touch()
    assert hostlocal.add(conf(tmp_path), "c1", "eth0")["ips"][0]["address"] == "10.33.0.2/24"
    hostlocal.delete(conf(tmp_path), "c1", "eth0")
    assert leases(tmp_path)["10.33.0.3"] == b"c2\r\neth0"
    assert hints(tmp_path) == expected_hints(tmp_path)


def test_seal_backdates_so_a_change_in_the_same_tick_still_shows(tmp_path: Path) -> None:
    hostlocal.add(conf(tmp_path), "c1", "eth0")
    sealed = os.stat(tmp_path / NET).st_mtime_ns
    assert sealed < time.time_ns() - (store.BACKDATE_SECONDS - 1) * 1_000_000_000
    (tmp_path / NET / "10.33.0.77").write_bytes(b"ref\r\neth0")  # at once, as the reference would
    assert os.stat(tmp_path / NET).st_mtime_ns > sealed


def test_seal_is_withheld_when_the_mtimes_cannot_be_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hostlocal.add(conf(tmp_path), "c1", "eth0")

    def refuse(*_args: object, **_kw: object) -> None:
        raise PermissionError(1, "read-only")

    monkeypatch.setattr(store.os, "utime", refuse)
    s = DiskStore(str(tmp_path), NET)
    with s.lock(create=False):
        pass
    assert (tmp_path / NET / "lock").read_bytes() == b""  # no seal: the next operation scans
    monkeypatch.undo()
    count = Counting(monkeypatch)
    hostlocal.delete(conf(tmp_path), "c1", "eth0")
    assert count.scans == 1 and leases(tmp_path) == {}


def test_gc_cleans_hints(tmp_path: Path) -> None:
    for cid in ("a", "b", "c"):
        hostlocal.add(conf(tmp_path), cid, "eth0")
    root = tmp_path / HINTS_DIR / NET
    (root / owner_key("gone", "eth0")).mkdir()
    (root / owner_key("gone", "eth0") / "10.33.0.99").touch()
    (root / owner_key("b", "eth0") / "10.33.0.98").touch()
    (root / "junk").write_bytes(b"x")
    hostlocal.gc(conf(tmp_path, **{"cni.dev/valid-attachments": [{"containerID": "b", "ifname": "eth0"}]}))
    assert {v for v in leases(tmp_path).values()} == {b"b\r\neth0"}
    assert hints(tmp_path) == expected_hints(tmp_path) == {owner_key("b", "eth0"): {"10.33.0.3", "fd00:33::3"}}
    hostlocal.gc(conf(tmp_path, **{"cni.dev/valid-attachments": []}))
    assert leases(tmp_path) == {} and hints(tmp_path) == {}


def test_check_uses_the_hints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res = hostlocal.add(conf(tmp_path), "c1", "eth0")
    count = Counting(monkeypatch)
    hostlocal.check(conf(tmp_path, prevResult=res), "c1", "eth0")
    assert count.scans == 0


def test_memory_and_disk_stores_agree(tmp_path: Path) -> None:
    mem, disk = store.MemoryStore(), DiskStore(str(tmp_path), NET)
    a = ipaddress.ip_address
    for s in (mem, disk):
        with s.lock(True):
            assert s.reserve("x", "eth0", a("10.33.0.5"), 0) and s.reserve("x", "eth1", a("10.33.0.6"), 0)
            assert not s.reserve("y", "eth0", a("10.33.0.5"), 0)
        with s.lock(False):
            assert allocator.held_by(s, "x", "eth0") == [a("10.33.0.5")]
            assert allocator.held_by(s, " x ", "eth1") == [a("10.33.0.6")]
            assert allocator.held_by(s, "y", "eth0") == []


# --- SIGKILL after every step of ADD and DEL -------------------------------------------

CHILD = """
import json, os, signal, sys
sys.path.insert(0, {root!r})
from ipam import hostlocal
fn, nth, verb, cid, config = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
real, calls = getattr(os, fn), [0]
def wrapper(*a, **kw):
    calls[0] += 1
    if calls[0] == nth:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*a, **kw)
setattr(os, fn, wrapper)
(hostlocal.add if verb == "ADD" else hostlocal.delete)(config, cid, "eth0")
"""

KILLABLE = ("open", "link", "unlink", "mkdir", "rmdir", "replace", "fsync", "pwrite", "ftruncate")


def _run_killed(fn: str, nth: int, verb: str, cid: str, config: dict[str, Any]) -> bool:
    """True when the child was killed at that step; False when it ran to the end without reaching it."""
    proc = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT)), fn, str(nth), verb, cid,
                           json.dumps(config)], capture_output=True, timeout=60, check=False)
    if proc.returncode == -signal.SIGKILL:
        return True
    assert proc.returncode == 0, proc.stderr.decode()
    return False


def _check_findable(data_dir: Path) -> None:
    """Invariant H on disk (every lease named by its owner's hint: hint before link, unlink before drop),
    and every lease found by its owner's lookup."""
    on_disk = hints(data_dir)
    for key, ips in expected_hints(data_dir).items():
        assert ips <= on_disk.get(key, set()), (key, ips, on_disk)
    for ip, content in leases(data_dir).items():
        cid, ifname = store.parse_owner(content)
        s = DiskStore(str(data_dir), NET)
        with s.lock(create=False):
            assert ipaddress.ip_address(ip) in s.held_by(cid, ifname or "eth0"), (ip, content)


@pytest.mark.parametrize("verb", ["ADD", "DEL"])
def test_sigkill_at_every_step_keeps_every_lease_findable(tmp_path: Path, verb: str) -> None:
    runs = 0
    for fn in KILLABLE:
        nth = 1
        while True:
            data = tmp_path / f"{verb}-{fn}-{nth}"
            config = conf(data)
            hostlocal.add(config, "keep", "eth0")
            if verb == "DEL":
                hostlocal.add(config, "victim", "eth0")
            killed = _run_killed(fn, nth, verb, "victim", config)
            runs += killed
            _check_findable(data)
            # the runtime retries: ADD gets one address per range set, DEL leaves only "keep"
            res = hostlocal.add(config, "victim", "eth0")
            assert len(res["ips"]) == 2
            assert sorted(v for v in leases(data).values()) == [b"keep\r\neth0"] * 2 + [b"victim\r\neth0"] * 2
            hostlocal.delete(config, "victim", "eth0")
            assert sorted(leases(data).values()) == [b"keep\r\neth0"] * 2
            assert hints(data) == expected_hints(data) or _gc_and_compare(data)
            if not killed:
                break
            nth += 1
    assert runs >= 15, runs


def _gc_and_compare(data: Path) -> bool:
    """A stale hint left by a kill (never a missing one) is cleaned by GC."""
    hostlocal.gc(conf(data, **{"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}))
    return hints(data) == expected_hints(data)
