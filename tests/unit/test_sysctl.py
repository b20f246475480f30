"""cni/sysctl.py: sysctls named by parts, so interface names with dots stay one part."""

from __future__ import annotations

from pathlib import Path

import pytest

from cni import sysctl
from cni.ops import explain
from cni.records import Attachment, BridgeRecord, PortMapping, PortmapRecord
from portmap import layout
from portmap.diff import Table


def nft_listing(commands: list[dict]) -> list[dict] | None:
    from portmap import nft

    fake = nft.Fake()
    fake.apply(commands)
    return fake.list_table()


@pytest.fixture
def proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(sysctl, "ROOT", str(tmp_path))
    return tmp_path


def test_parts_keep_dots_and_refuse_path_tricks() -> None:
    path = sysctl.path("net", "ipv4", "conf", "br.10", "route_localnet")
    assert path == "/proc/sys/net/ipv4/conf/br.10/route_localnet"
    for bad in ("..", ".", "", "a/b", "x\0"):
        with pytest.raises(ValueError):
            sysctl.path("net", "ipv4", "conf", bad, "route_localnet")


def test_read_write_ensure(proc: Path) -> None:
    key = ("net", "ipv4", "conf", "br.10", "route_localnet")
    assert sysctl.read(*key) is None and sysctl.write(*key, value="1") is False
    (proc / "net/ipv4/conf/br.10").mkdir(parents=True)
    (proc / "net/ipv4/conf/br.10/route_localnet").write_text("0\n")
    assert sysctl.read(*key) == "0"
    assert sysctl.ensure(*key, value="1") is True and sysctl.ensure(*key, value="1") is False
    assert (proc / "net/ipv4/conf/br.10/route_localnet").read_text() == "1"


def test_explain_reads_route_localnet_of_a_bridge_with_a_dot(proc: Path) -> None:
    """A bridge named br.10: its route_localnet lives in conf/br.10/, not conf/br/10/."""
    (proc / "net/ipv4/conf/br.10").mkdir(parents=True)
    (proc / "net/ipv4/conf/br.10/route_localnet").write_text("1\n")
    att = Attachment("n", "c1", "eth0", bridge=BridgeRecord.from_json({"bridge": "br.10", "ips": ["10.88.0.2/24"]}),
                     portmap=PortmapRecord.from_json({"mappings": [PortMapping(8080, 8080, 80, "tcp").to_json()]}))
    table = Table.from_objects(nft_listing(layout.base_layout()))
    ctx = explain.Context("", [att], table, None, [])  # type: ignore[arg-type]
    report = explain.Report("c1", "n", "c1", "eth0", [])
    explain._localhost_hop(report, att, att.mappings, ctx)
    assert [(h.status, h.detail) for h in report.hops] == [
        (explain.OK, "route_localnet=1 on br.10, 127/8 guard in place")]
