"""The disk store: upstream's bytes on disk, crash safety, and the plugin verbs run through skel."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from cni import errors, skel
from cni.errors import CNIError
from ipam import hostlocal
from ipam.store import DiskStore

NET = "ipamnet"


def conf(data_dir: Path, version: str = "1.1.0", **ipam: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "berth-host-local", "dataDir": str(data_dir)}
    body.update(ipam or {"ranges": [[{"subnet": "10.22.0.0/28"}], [{"subnet": "fd00:22::/120"}]]})
    return {"cniVersion": version, "name": NET, "type": "berth-host-local", "ipam": body}


def call(command: str, config: dict[str, Any], cid: str = "c1", ifname: str = "eth0",
         cni_args: str = "") -> Any:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname, "CNI_NETNS": "/proc/1/ns/net",
           "CNI_PATH": "/nonexistent", "CNI_ARGS": cni_args}
    return skel.execute(hostlocal.FUNCS, env, json.dumps(config).encode())


def err(command: str, config: dict[str, Any], **kw: Any) -> CNIError:
    with pytest.raises(CNIError) as info:
        call(command, config, **kw)
    return info.value


def files(d: Path) -> dict[str, bytes]:
    net = d / NET
    return {p.name: p.read_bytes() for p in sorted(net.iterdir())} if net.is_dir() else {}


def test_add_writes_upstream_bytes_and_modes(tmp_path: Path) -> None:
    res = call("ADD", conf(tmp_path), cid="abc", ifname="eth0")
    assert res == {"cniVersion": "1.1.0", "dns": {}, "ips": [
        {"address": "10.22.0.2/28", "gateway": "10.22.0.1"}, {"address": "fd00:22::2/120", "gateway": "fd00:22::1"}]}
    on_disk = files(tmp_path)
    # the lock's content is berth's seal over its hints (ipam/store.py); upstream never reads or writes it
    assert on_disk.pop("lock").startswith(b"berth-ipam-index 1 ")
    assert on_disk == {"10.22.0.2": b"abc\r\neth0", "fd00:22::2": b"abc\r\neth0",
                       "last_reserved_ip.0": b"10.22.0.2", "last_reserved_ip.1": b"fd00:22::2"}
    assert stat.S_IMODE((tmp_path / NET).stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / NET / "10.22.0.2").stat().st_mode) == 0o600


def test_a_data_dir_it_makes_is_private_an_existing_one_keeps_its_mode(tmp_path: Path) -> None:
    made = tmp_path / "made" / "networks"
    old = os.umask(0o022)
    try:
        call("ADD", conf(made))
        (tmp_path / "shared").mkdir(mode=0o755)
        call("ADD", conf(tmp_path / "shared"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(made.stat().st_mode) == 0o700 and stat.S_IMODE((made / NET).stat().st_mode) == 0o700
    assert stat.S_IMODE((made / ".berth-ipam-hints").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "made").stat().st_mode) == 0o755  # above dataDir: the system's
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o755


def test_old_versions_get_converted_results(tmp_path: Path) -> None:
    res = call("ADD", conf(tmp_path, version="0.3.1"))
    assert res["cniVersion"] == "0.3.1" and res["ips"][0]["version"] == "4"


def test_reads_upstream_written_leases(tmp_path: Path) -> None:
    net = tmp_path / NET
    net.mkdir(mode=0o755)
    (net / "10.22.0.2").write_bytes(b"other\r\neth0")
    (net / "10.22.0.3").write_bytes(b"legacy")  # pre-ifname lease: ID only
    (net / "last_reserved_ip.0").write_bytes(b"10.22.0.3")
    res = call("ADD", conf(tmp_path, ranges=[[{"subnet": "10.22.0.0/28"}]]))
    assert res["ips"][0]["address"] == "10.22.0.4/28"
    call("DEL", conf(tmp_path), cid="legacy", ifname="eth7")
    assert "10.22.0.3" not in files(tmp_path)


def test_del_is_idempotent_and_tolerates_missing_things(tmp_path: Path) -> None:
    call("DEL", conf(tmp_path))  # nothing there at all
    assert not (tmp_path / NET).exists()  # and DEL created nothing
    call("ADD", conf(tmp_path))
    call("ADD", conf(tmp_path), cid="c2")
    call("DEL", conf(tmp_path))
    call("DEL", conf(tmp_path))
    assert sorted(n for n in files(tmp_path) if n[0].isdigit() or ":" in n) == ["10.22.0.3", "fd00:22::3"]
    # DEL still works when the ranges in the config changed or became invalid
    call("DEL", conf(tmp_path, ranges=[[{"subnet": "bogus"}]]), cid="c2")
    assert not [n for n in files(tmp_path) if n[0].isdigit()]


def test_retried_add_is_idempotent(tmp_path: Path) -> None:
    first = call("ADD", conf(tmp_path))
    assert call("ADD", conf(tmp_path)) == first
    assert len([n for n in files(tmp_path) if n[0].isdigit()]) == 1


def test_static_ip_sources(tmp_path: Path) -> None:
    c = conf(tmp_path)
    c["args"] = {"cni": {"ips": ["fd00:22::50"]}}
    res = call("ADD", c, cni_args="IgnoreUnknown=1;IP=10.22.0.9")
    assert [ip["address"] for ip in res["ips"]] == ["10.22.0.9/28", "fd00:22::50/120"]
    c2 = conf(tmp_path)
    c2["runtimeConfig"] = {"ips": ["10.22.0.10/28"]}
    assert call("ADD", c2, cid="c2")["ips"][0]["address"] == "10.22.0.10/28"
    taken = err("ADD", c2, cid="c3")
    assert taken.code == errors.INVALID_NETWORK_CONFIG and "c2" in taken.details
    outside = err("ADD", conf(tmp_path), cid="c4", cni_args="IP=10.99.0.1")
    assert "not in any range set" in outside.msg


def test_check(tmp_path: Path) -> None:
    res = call("ADD", conf(tmp_path))
    c = conf(tmp_path)
    c["prevResult"] = res
    call("CHECK", c)
    assert err("CHECK", c, cid="other").code == errors.CHECK_FAILED
    c["prevResult"] = {**res, "ips": [{"address": "10.22.0.9/28"}]}
    assert "10.22.0.9" in err("CHECK", c).msg


def test_gc(tmp_path: Path) -> None:
    for cid in ("a", "b", "c"):
        call("ADD", conf(tmp_path), cid=cid)
    c = conf(tmp_path)
    c["cni.dev/valid-attachments"] = [{"containerID": "b", "ifname": "eth0"}]
    call("GC", c)
    assert {v for k, v in files(tmp_path).items() if k[0].isdigit()} == {b"b\r\neth0"}
    c = conf(tmp_path)
    c["cni.dev/attachments"] = []
    call("GC", c)
    assert not [k for k in files(tmp_path) if k[0].isdigit()]
    call("GC", conf(tmp_path / "missing"))  # nothing there: fine
    bad = conf(tmp_path)
    bad["cni.dev/valid-attachments"] = [{"containerID": 1}]
    assert err("GC", bad).code == errors.INVALID_NETWORK_CONFIG


def test_status(tmp_path: Path) -> None:
    small = conf(tmp_path, ranges=[[{"subnet": "10.22.0.0/30"}]])
    assert call("STATUS", small) is None
    assert not (tmp_path / NET).exists()  # STATUS writes nothing
    call("ADD", small)
    e = err("STATUS", small)
    assert e.code == errors.PLUGIN_NOT_AVAILABLE and "no free addresses" in e.msg
    blocker = tmp_path / "file"
    blocker.write_text("")
    e = err("STATUS", conf(blocker / "sub"))
    assert e.code == errors.PLUGIN_NOT_AVAILABLE and "not a directory" in e.msg


def test_unwritable_data_dir_is_io_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert err("ADD", conf(blocker)).code == errors.IO_FAILURE


@pytest.mark.parametrize("name", ["../../etc", "..", "a/b", ".hidden", ""])
def test_hostile_network_names_write_nothing(tmp_path: Path, name: str) -> None:
    data = tmp_path / "data"
    c = conf(data)
    c["name"] = name
    assert err("ADD", c).code == errors.INVALID_NETWORK_CONFIG
    assert sorted(p.name for p in tmp_path.rglob("*")) == []


def test_hostile_values_write_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for ipam in ({"subnet": 1e400}, {"ranges": [[{"subnet": "10.0.0.0/8", "rangeStart": 2**200}]]},
                 {"ranges": [[{"subnet": "10.0.0.0/8"}]] * 1000}, {"ranges": [[{"subnet": "10.0.0.0/8"}]],
                                                                    "routes": [{"dst": "x" * 10**6}]}):
        with pytest.raises(CNIError) as info:
            skel.execute(hostlocal.FUNCS, {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0",
                                           "CNI_NETNS": "/x", "CNI_PATH": "/x"},
                         json.dumps(conf(data, **ipam)).replace("Infinity", "1e400").encode())
        assert info.value.code in (errors.INVALID_NETWORK_CONFIG, errors.DECODE_FAILURE)
    assert not data.exists()


def test_relative_data_dir_is_used_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    call("ADD", conf(Path("rel/../rel2")))
    assert (tmp_path / "rel2" / NET / "10.22.0.2").exists()


def test_crash_between_create_and_link_leaves_no_lease(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure after the temporary is written but before link() leaves no lease, empty or not."""
    def boom(src: str, dst: str) -> None:
        raise OSError(5, "simulated crash")

    monkeypatch.setattr(os, "link", boom)
    assert err("ADD", conf(tmp_path)).code == errors.IO_FAILURE
    monkeypatch.undo()
    assert [n for n in files(tmp_path) if n not in ("lock",)] == []
    call("ADD", conf(tmp_path))
    leases = {k: v for k, v in files(tmp_path).items() if k[0].isdigit() or ":" in k}
    assert leases and all(v == b"c1\r\neth0" for v in leases.values())


def test_crash_after_write_before_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Die right after write(): the final name was never created, so no torn lease; the temporary is swept."""
    real_fsync = os.fsync
    calls = {"n": 0}

    def fsync(fd: int) -> None:
        calls["n"] += 1
        raise OSError(5, "simulated crash")

    monkeypatch.setattr(os, "fsync", fsync)
    err("ADD", conf(tmp_path))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert calls["n"] == 1
    assert [n for n in files(tmp_path) if n != "lock"] == []  # temporary removed on the error path
    # and a temporary left by a real crash (process killed) is swept by the next locked operation
    (tmp_path / NET / ".berth-lease-999-dead").write_bytes(b"c9\r\neth0")
    call("ADD", conf(tmp_path))
    assert not [n for n in files(tmp_path) if n.startswith(".berth-lease-")]


def test_lock_timeout_is_try_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl

    from ipam import store

    call("ADD", conf(tmp_path))
    fd = os.open(tmp_path / NET / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        monkeypatch.setattr(store, "LOCK_TIMEOUT_SECONDS", 0.05)
        assert err("ADD", conf(tmp_path), cid="c2").code == errors.TRY_AGAIN_LATER
    finally:
        os.close(fd)


def test_disk_store_ignores_foreign_files(tmp_path: Path) -> None:
    net = tmp_path / NET
    net.mkdir()
    (net / "README").write_text("x")
    (net / "010.22.0.2").write_text("x")  # not canonical text: not a lease
    (net / "sub").mkdir()
    store = DiskStore(str(tmp_path), NET)
    assert store.leases() == {}


def test_plugin_import_is_light() -> None:
    """A plugin is exec'd per pod: host-local must not pull in pyroute2 or libnftables."""
    import subprocess
    import sys

    code = ("import sys, ipam.hostlocal; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyroute2', 'nftables', 'asyncio')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
