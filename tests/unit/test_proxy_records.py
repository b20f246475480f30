"""The [::1] proxy without a kernel: its journal records (older journals still
read), which mappings it serves and where to, what diff/list/reconcile make of
a proxy that does not hold its ports, the agent service's sync from the
journal (sockets faked), and a stop that never kills a reused pid."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from cni import records, state
from cni.ops import view as ops_view
from cni.records import Attachment, PortMapping, PortmapRecord, ProxyListener, ProxyRecord
from portmap import diff, proxy, proxyctl, reconcile

LI = ProxyListener("tcp", 8080, 8080, "fd00::2", 80, (11,))


def section(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"chain": "CNI-DN-x", "addresses": ["10.88.0.2", "fd00::2"], "bridge": "bt0",
                            "state": "done", "layout": 3,
                            "mappings": [PortMapping(8080, 8080, 80, "tcp").to_json()]}
    base.update(extra)
    return base


def test_listener_spec_round_trip_and_refusals() -> None:
    for li in (LI._replace(cookies=()), ProxyListener("udp", 9000, 9009, "10.88.0.2", 9100)):
        assert ProxyListener.parse(li.spec()) == li
    assert LI.spec() == "tcp:8080=fd00::2:80"
    assert ProxyListener("udp", 9000, 9009, "fd00::2", 9100).describe() == "[::1]:9000-9009->[fd00::2]:9100-9109/udp"
    for bad in ("sctp:80=1.2.3.4:80", "tcp:80=:80", "tcp:0=1.2.3.4:80", "tcp:90-80=1.2.3.4:80", "tcp:80=1.2.3.4:x",
                "tcp:65000-65535=1.2.3.4:65500"):
        with pytest.raises(ValueError):
            ProxyListener.parse(bad)


def test_portmap_record_reads_journals_with_and_without_a_proxy() -> None:
    assert PortmapRecord.from_json(section()).proxy is None  # a berth before the proxy
    rec = ProxyRecord(records.PROXY_PROCESS, (LI,), pid=42, start=4242, boot="b")
    back = PortmapRecord.from_json(section(proxy=rec.to_json()))
    assert back.proxy == rec
    assert back.to_json()["proxy"] == {"mode": "process", "pid": 42, "start": 4242, "boot": "b",
                                       "listeners": [LI.to_json()]}
    agent = ProxyRecord(records.PROXY_AGENT, (LI,), socket="/run/berth/agent.sock.proxy")
    assert PortmapRecord.from_json(section(proxy=agent.to_json())).proxy == agent
    assert "pid" not in agent.to_json()
    # hand-edited: unreadable proxies read as none, never an exception
    assert PortmapRecord.from_json(section(proxy={"listeners": [{"protocol": "tcp"}]})).proxy is None
    assert "proxy" not in PortmapRecord.from_json(section()).to_json()


def test_listeners_serve_any_address_and_loopback_to_the_v6_address_first() -> None:
    maps = [PortMapping(8080, 8080, 80, "tcp"), PortMapping(53, 53, 53, "udp", "::1"),
            PortMapping(9000, 9001, 9000, "udp"), PortMapping(22, 22, 22, "tcp", "198.51.100.1"),
            PortMapping(23, 23, 23, "tcp", "fd00:5::1"), PortMapping(3868, 3868, 3868, "sctp")]
    got = proxyctl.listeners(maps, ["10.88.0.2", "fd00::2"])
    assert [li.spec() for li in got] == ["tcp:8080=fd00::2:80", "udp:53=fd00::2:53", "udp:9000-9001=fd00::2:9000"]
    assert [li.target for li in proxyctl.listeners(maps, ["10.88.0.2"])] == ["10.88.0.2"] * 3
    assert proxyctl.listeners(maps, []) == []


def att_with(proxy_record: ProxyRecord | None, done: bool = True) -> Attachment:
    pm = PortmapRecord.from_json(section(state="done" if done else "adding"))._replace(proxy=proxy_record)
    return Attachment("net", "c1", "eth0", portmap=pm)


def test_proxy_missing_by_cookie() -> None:
    rec = ProxyRecord(records.PROXY_PROCESS, (LI, ProxyListener("udp", 53, 53, "fd00::2", 53, (12,))), pid=7)
    att = att_with(rec)
    assert diff.proxy_missing(att, frozenset({11, 12})) == []
    assert diff.proxy_missing(att, None) == []  # the kernel could not tell: no verdict
    assert diff.proxy_missing(att_with(rec, done=False), frozenset()) == []  # DEL's business
    assert diff.proxy_missing(att_with(None), frozenset()) == []
    (missing,) = diff.proxy_missing(att, frozenset({11, 99}))
    assert missing.proxy and missing.commands == []
    assert missing.what == "proxy [::1]:53->[fd00::2]:53/udp is not served (berth proxy 7 does not hold the port)"
    assert diff.proxied_ports([att, att_with(None)]) == {"tcp": [(8080, 8080)], "udp": [(53, 53)]}
    # a listener never bound (a last-wins loser's, kept for reconcile) is missing too
    assert diff.proxy_missing(att_with(rec._replace(listeners=(LI._replace(cookies=()),))), frozenset({11}))


def test_reconcile_plans_a_restart_and_list_shows_it(tmp_path: Path) -> None:
    rec = ProxyRecord(records.PROXY_AGENT, (LI,), socket="/x")
    att = att_with(rec)
    plan = reconcile.plan(str(tmp_path), [att], diff.Table(True), set(), frozenset())
    assert plan.proxies == [att] and any(m.proxy for _w, m in plan.fixes)
    assert reconcile.plan(str(tmp_path), [att], diff.Table(True), set(), frozenset({11})).proxies == []
    assert ops_view.proxy_cell(ops_view.proxy_json(att, frozenset())) == "agent (down)"
    assert ops_view.proxy_cell(ops_view.proxy_json(att_with(rec._replace(mode="process", pid=9)),
                                                   frozenset({11}))) == "pid 9"
    assert ops_view.proxy_cell(ops_view.proxy_json(att_with(None), frozenset())) == "-"


class FakeForwarder:
    def __init__(self) -> None:
        self.bound: dict[Any, list[ProxyListener]] = {}

    def bind(self, key: Any, listeners: list[ProxyListener]) -> tuple[list[ProxyListener], list[str]]:
        done = [li._replace(cookies=(100 + i,)) for i, li in enumerate(listeners) if li.host_lo != 666]
        self.bound[key] = done
        return done, [f"{li.spec()}: EADDRINUSE" for li in listeners if li.host_lo == 666]

    def unbind(self, key: Any) -> None:
        self.bound.pop(key, None)


def test_service_serves_what_the_journal_says_and_writes_the_cookies_back(tmp_path: Path) -> None:
    root = str(tmp_path)
    journal = state.Journal(root, "net", "c1", "eth0")
    wanted = (LI._replace(cookies=()), ProxyListener("udp", 666, 666, "fd00::2", 53))
    journal.put("portmap", section(proxy=ProxyRecord(records.PROXY_AGENT, wanted, socket="/s").to_json()))
    service = proxy.Service(root, str(tmp_path / "svc"))
    fake = FakeForwarder()
    service.forwarder = fake  # type: ignore[assignment]
    assert service.load() == 1
    key = (root, "net", "c1", "eth0")
    assert [li.host_lo for li in fake.bound[key]] == [8080]
    saved = PortmapRecord.from_json(journal.section("portmap") or {}).proxy
    assert saved is not None and [li.cookies for li in saved.listeners] == [(100,)]
    request = {"root": root, "network": "net", "containerID": "c1", "ifname": "eth0"}
    assert service.answer({**request, "op": "sync"})["listeners"][0]["cookies"] == [100]
    assert service.answer({**request, "op": "drop"}) == {"ok": True, "listeners": []} and key not in fake.bound
    # a process-mode record, or none: nothing of the service's
    journal.put("portmap", section(proxy=ProxyRecord(records.PROXY_PROCESS, wanted, pid=1).to_json()))
    assert service.answer({**request, "op": "sync"})["listeners"] == [] and key not in fake.bound
    journal.drop("portmap")
    assert service.answer({**request, "op": "sync"})["listeners"] == []


def test_kill_never_takes_a_reused_pid_and_waits_for_the_exit() -> None:
    from cni import sysctl

    child = subprocess.Popen(["sleep", "60"])
    try:
        start = proxy.start_time(child.pid)
        assert start is not None
        wrong = ProxyRecord(records.PROXY_PROCESS, (), pid=child.pid, start=start + 1, boot=sysctl.boot_id())
        proxyctl.kill(wrong)
        assert child.poll() is None  # another process behind that pid: left alone
        proxyctl.kill(wrong._replace(start=start, boot="an earlier boot"))
        assert child.poll() is None
        assert proxyctl.alive(wrong._replace(start=start))
        proxyctl.kill(wrong._replace(start=start))
        deadline = time.monotonic() + 10
        while child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert child.returncode == -9
        assert not proxyctl.alive(wrong._replace(start=start))
        proxyctl.kill(wrong._replace(start=start))  # gone: nothing to do, no error
    finally:
        child.kill()
        child.wait()
