"""berth-host-local and the reference host-local sharing one dataDir.

The same config goes through /usr/lib/cni/host-local and berth-host-local,
interleaved: they must never collide, each must see (and release) the other's
leases, and the same sequence of calls must give the same results.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

REFERENCE = "/usr/lib/cni/host-local"
pytestmark = pytest.mark.skipif(not os.access(REFERENCE, os.X_OK), reason="reference host-local not installed")


def make_conf(data_dir: Path, resolv: Path | None = None, **ipam: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "host-local", "dataDir": str(data_dir),
                            "ranges": [[{"subnet": "10.66.0.0/28", "gateway": "10.66.0.14"}],
                                       [{"subnet": "fd00:66::/124"}]],
                            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd00:66::1"}]}
    if resolv is not None:
        body["resolvConf"] = str(resolv)
    body.update(ipam)
    return {"cniVersion": "1.0.0", "name": "paritynet", "type": "host-local", "ipam": body}


class Runner:
    def __init__(self, executable: str) -> None:
        self.executable = executable

    def __call__(self, command: str, conf: dict[str, Any], cid: str, ifname: str = "eth0",
                 cni_args: str = "") -> tuple[int, Any]:
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname,
               "CNI_NETNS": "/proc/1/ns/net", "CNI_PATH": os.path.dirname(self.executable), "CNI_ARGS": cni_args,
               "PATH": "/usr/bin:/bin"}
        proc = subprocess.run([self.executable], input=json.dumps(conf).encode(), env=env, capture_output=True,
                              timeout=30, check=False, cwd="/")
        out = proc.stdout.decode().strip()
        return proc.returncode, (json.loads(out) if out else None)

    def ok(self, command: str, conf: dict[str, Any], cid: str, **kw: Any) -> Any:
        rc, out = self(command, conf, cid, **kw)
        assert rc == 0, f"{self.executable} {command} {cid}: {out}"
        return out


def leases(data_dir: Path) -> dict[str, bytes]:
    net = data_dir / "paritynet"
    return {p.name: p.read_bytes() for p in net.iterdir() if p.name[0].isdigit() or ":" in p.name}


def test_interleaved_adds_match_a_reference_only_run(tmp_path: Path, ref: Runner, berth: Runner) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.66.0.53\nsearch svc.local local\noptions ndots:5\ndomain local\n")
    shared, alone = make_conf(tmp_path / "shared", resolv), make_conf(tmp_path / "alone", resolv)
    mixed, expected = [], []
    for i in range(13):  # 13 usable v4 addresses (.1-.13; .14 is the gateway)
        runner = ref if i % 2 == 0 else berth
        mixed.append(runner.ok("ADD", shared, f"c{i}"))
        expected.append(ref.ok("ADD", alone, f"c{i}"))
    assert mixed == expected  # same shape, same addresses, same routes and dns, in the same order
    v4 = [r["ips"][0]["address"] for r in mixed]
    assert len(set(v4)) == 13 and "10.66.0.14/28" not in v4
    assert leases(tmp_path / "shared") == leases(tmp_path / "alone")  # byte for byte
    for name in ("last_reserved_ip.0", "last_reserved_ip.1"):
        assert (tmp_path / "shared" / "paritynet" / name).read_bytes() == \
               (tmp_path / "alone" / "paritynet" / name).read_bytes()
    # both agree the range set is full
    for runner in (ref, berth):
        rc, out = runner("ADD", shared, "late")
        assert rc != 0 and "no IP addresses available in range set: 10.66.0.1-10.66.0.14" in out["msg"]


def test_each_sees_and_releases_the_others_leases(tmp_path: Path, ref: Runner, berth: Runner) -> None:
    conf = make_conf(tmp_path)
    by_ref = ref.ok("ADD", conf, "made-by-ref")["ips"][0]["address"].split("/")[0]
    by_berth = berth.ok("ADD", conf, "made-by-berth")["ips"][0]["address"].split("/")[0]
    assert by_ref != by_berth
    # a static request for the other's address is refused by both
    rc, out = berth("ADD", conf, "thief", cni_args=f"IP={by_ref}")
    assert rc != 0 and by_ref in out["msg"]
    rc, out = ref("ADD", conf, "thief", cni_args=f"IP={by_berth}")
    assert rc != 0 and by_berth in out["msg"]
    # DEL by one releases what the other made
    berth.ok("DEL", conf, "made-by-ref")
    assert not any(v.startswith(b"made-by-ref") for v in leases(tmp_path).values())
    ref.ok("DEL", conf, "made-by-berth")
    assert leases(tmp_path) == {}
    # and the freed addresses can be taken statically by the other implementation
    assert ref.ok("ADD", conf, "again", cni_args=f"IP={by_berth}")["ips"][0]["address"].startswith(by_berth)
    assert berth.ok("ADD", conf, "again2", cni_args=f"IP={by_ref}")["ips"][0]["address"].startswith(by_ref)


def test_node_switched_back_and_forth_keeps_round_robin(tmp_path: Path, ref: Runner, berth: Runner) -> None:
    conf = make_conf(tmp_path, ranges=[[{"subnet": "10.66.1.0/29"}]], routes=[])
    assert ref.ok("ADD", conf, "a")["ips"][0]["address"] == "10.66.1.2/29"
    assert ref.ok("ADD", conf, "b")["ips"][0]["address"] == "10.66.1.3/29"
    ref.ok("DEL", conf, "a")
    # berth takes over: continues after the reference's last reservation, not at the freed .2
    assert berth.ok("ADD", conf, "c")["ips"][0]["address"] == "10.66.1.4/29"
    berth.ok("DEL", conf, "b")
    # and back to the reference, which continues after berth's
    assert ref.ok("ADD", conf, "d")["ips"][0]["address"] == "10.66.1.5/29"
    assert berth.ok("ADD", conf, "e")["ips"][0]["address"] == "10.66.1.6/29"
    assert ref.ok("ADD", conf, "f")["ips"][0]["address"] == "10.66.1.2/29"  # wrapped
    assert sorted(leases(tmp_path)) == ["10.66.1.2", "10.66.1.4", "10.66.1.5", "10.66.1.6"]


def test_legacy_single_range_and_clamped_end(tmp_path: Path, ref: Runner, berth: Runner) -> None:
    legacy = {"ranges": None, "subnet": "10.66.2.0/29", "rangeStart": "10.66.2.5", "rangeEnd": "10.66.2.6",
              "routes": []}
    a, b = make_conf(tmp_path / "a", **legacy), make_conf(tmp_path / "b", **legacy)
    del a["ipam"]["ranges"], b["ipam"]["ranges"]
    seq_ref = [ref.ok("ADD", a, f"x{i}") for i in range(2)]
    seq_berth = [berth.ok("ADD", b, f"x{i}") for i in range(2)]
    assert seq_ref == seq_berth
    assert [r["ips"][0]["address"] for r in seq_berth] == ["10.66.2.5/29", "10.66.2.6/29"]
