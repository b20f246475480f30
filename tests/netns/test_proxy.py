"""[::1]:hostPort through berth's userland proxy, on the real kernel: curl on the
node reaches the container over TCP, UDP answers, for dual-stack and IPv4-only
containers; the proxy process is detached from the runtime and recorded with
what identifies it; DEL, GC, a plugin killed mid-ADD, a failed ADD and a
killed proxy leave nothing; `berth list`, `explain` and `reconcile` know it;
and with `berth agent` the agent's service serves it, also after a restart."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import harness
from tests.netns.portmap_helpers import Pod, portmap_conf, proxy_processes
from tests.netns.test_agent import AgentProc, use_socket

DUAL = ("10.88.0.0/24", "fd00:88::/64")
WEB = [{"hostPort": 18180, "containerPort": 80}]
WEB_DNS = [*WEB, {"hostPort": 18153, "containerPort": 53, "protocol": "udp"}]


NODE: list[str] = []  # this test's node namespace (set by no_proxy_left_behind): tests run in parallel


def proxies(key: str) -> list[int]:
    """pids of the proxy processes started for `key` (network/containerID/ifname) in this test's node."""
    return proxy_processes(NODE[-1] if NODE else None, key=key)


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def journal(pod: Pod) -> dict[str, Any]:
    path = harness.journal_path(pod.node.state_dir, pod.name, pod.cid)
    return dict(json.loads(path.read_text())) if path.exists() else {}


def listening(node: harness.Node, port: int, proto: str = "tcp") -> bool:
    flag = "-ltn" if proto == "tcp" else "-lun"
    out = node.exec(["ss", "-H", flag, f"sport = :{port}"], check=False).stdout
    return bool(out.strip())


@contextlib.contextmanager
def http_server(ns: harness.Netns, port: int, body: bytes) -> Iterator[None]:
    """python3 -m http.server in the container, serving one file, on :: (both families)."""
    root = Path(f"/tmp/berth-http-{ns.name}")
    root.mkdir(exist_ok=True)
    (root / "index.html").write_bytes(body)
    proc = ns.popen([harness.SYSTEM_PYTHON, "-m", "http.server", "--bind", "::", "--directory", str(root),
                     str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        host = "::1"
        assert harness.wait_for(lambda: ns.exec(["curl", "-s", "-o", "/dev/null", "-g", f"http://[{host}]:{port}/"],
                                                check=False).returncode == 0, timeout=20)
        yield
    finally:
        proc.kill()
        proc.wait()
        for f in root.iterdir():
            f.unlink()
        root.rmdir()


def curl(node: harness.Node, url: str, timeout: int = 5) -> str | None:
    proc = node.exec(["curl", "-s", "-g", "--max-time", str(timeout), url], check=False, timeout=timeout + 10)
    return proc.stdout if proc.returncode == 0 else None


@pytest.fixture(autouse=True)
def no_proxy_left_behind(topo: harness.Topology) -> Iterator[None]:
    """Whatever a test did, no proxy process is left in its node namespace (checked
    before the namespace goes, which would kill it)."""
    NODE.append(topo.node.path)
    try:
        yield
    finally:
        NODE.remove(topo.node.path)
    # one that is on its way out (its agent just killed) gets a moment to finish exiting
    harness.wait_for(lambda: not proxy_processes(topo.node.path), timeout=5)
    left = proxy_processes(topo.node.path)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    assert not left, f"proxy processes left running: {left}"


def add_with(pod: Pod, env: dict[str, str]) -> harness.PluginResult:
    """bridge ADD, then portmap ADD with `env` (the failure-injection hooks)."""
    pod.result = pod._bridge("ADD").ok()
    conf = portmap_conf(pod.name, pod.mappings, pod.result)
    return pod.node.plugin("berth-portmap", "ADD", conf, container_id=pod.cid, netns=pod.netns.path, env=env)


def test_curl_on_loopback_v6_reaches_the_container_then_del_leaves_nothing(topo: harness.Topology) -> None:
    node = topo.node
    pod = Pod(topo, "c1", WEB_DNS, subnets=DUAL)
    pod.add().ok()
    record = journal(pod)["portmap"]["proxy"]
    assert record["mode"] == "process" and record["boot"] and record["start"] > 0
    assert [(li["protocol"], li["hostPort"], li["target"], li["targetPort"]) for li in record["listeners"]] == [
        ("tcp", 18180, pod.address(6), 80), ("udp", 18153, pod.address(6), 53)]
    pid = record["pid"]
    assert proxies("pmnet/c1/eth0") == [pid]
    # detached from the runtime: a session and process group of its own, /dev/null for stdio, no pipe of ours
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    pgrp, session = int(stat[2]), int(stat[3])
    assert pgrp == session and session not in (os.getsid(0), os.getpgrp(), pid), stat[:4]  # a session of its own
    def fds() -> dict[str, str]:
        return {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}

    assert all(fds()[fd] == "/dev/null" for fd in ("0", "1", "2")), fds()
    # the ready and commit pipes are closed once the proxy has read the commit (ADD does not wait for that)
    assert harness.wait_for(lambda: not [t for t in fds().values() if t.startswith("pipe:")], timeout=10), fds()
    assert Path(f"/proc/{pid}/cwd").resolve() == Path("/")
    with http_server(pod.netns, 80, b"hello from the container\n"), \
            pod.netns.server(53, "udp", "6", banner="dns6"):
        assert curl(node, "http://[::1]:18180/") == "hello from the container\n"
        assert node.connect("::1", 18153, "udp") == "dns6 fd00:88::1"  # from the proxy: the node's gateway address
        # the IPv4 paths are NAT's, unchanged
        assert curl(node, "http://127.0.0.1:18180/") == "hello from the container\n"
        assert curl(node, f"http://[{harness.Topology.NODE_V6}]:18180/") == "hello from the container\n"
        out = node.berth("list")
        assert f"pid {pid}" in out.stdout and " ok" in out.stdout.splitlines()[1], out.stdout
        out = node.berth("explain", "18180")
        hop = next(ln for ln in out.stdout.splitlines() if " proxy " in ln)
        assert hop.split()[0] == "ok" and f"[::1]:18180->[{pod.address(6)}]:80/tcp served by berth proxy pid {pid}" \
            in hop, out.stdout
        assert out.returncode == 0, out.stdout
    pod.delete()
    assert gone(pid) and proxies("pmnet/c1/eth0") == []
    assert not listening(node, 18180) and not listening(node, 18153, "udp")
    assert curl(node, "http://[::1]:18180/", timeout=2) is None


def test_ipv4_only_container_is_reached_on_its_ipv4_address(topo: harness.Topology) -> None:
    pod = Pod(topo, "c4", WEB)
    pod.add().ok()
    assert journal(pod)["portmap"]["proxy"]["listeners"][0]["target"] == pod.address(4)
    with pod.netns.server(80, banner="web4"):
        assert topo.node.connect("::1", 18180) == "web4 10.88.0.1"
    pod.delete()
    assert proxies("pmnet/c4/eth0") == []


def test_a_transfer_through_the_proxy_loses_nothing(topo: harness.Topology) -> None:
    body = os.urandom(8 << 20)
    pod = Pod(topo, "c1", WEB, subnets=DUAL)
    pod.add().ok()
    with http_server(pod.netns, 80, body):
        out = topo.node.exec(["sh", "-c", "curl -s -g --max-time 60 'http://[::1]:18180/' | sha256sum"],
                             timeout=90).stdout.split()[0]
        assert out == hashlib.sha256(body).hexdigest()
    pod.delete()


def test_killed_proxy_shows_in_list_and_explain_reconcile_restarts_it_del_leaves_nothing(
        topo: harness.Topology) -> None:
    node = topo.node
    pod = Pod(topo, "c1", WEB, subnets=DUAL)
    pod.add().ok()
    pid = journal(pod)["portmap"]["proxy"]["pid"]
    os.kill(pid, 9)
    assert harness.wait_for(lambda: gone(pid), timeout=10)
    assert not listening(node, 18180)
    out = node.berth("list")
    assert "partial" in out.stdout and "is not served" in out.stdout and "(down)" in out.stdout, out.stdout
    check = pod.portmap("CHECK")
    assert check.rc != 0 and check.json["code"] == 106 and "proxy" in check.json["details"], check.stdout
    out = node.berth("explain", "c1")
    assert out.returncode == 1 and "BROKEN at proxy" in out.stdout, out.stdout
    fixed = node.berth("reconcile")
    assert fixed.returncode == 0 and "[::1] proxy started again" in fixed.stdout, fixed.stdout + fixed.stderr
    new = journal(pod)["portmap"]["proxy"]["pid"]
    assert new != pid and proxies("pmnet/c1/eth0") == [new]
    with pod.netns.server(80, "tcp", "6", banner="web6"):
        assert (node.connect("::1", 18180) or "").startswith("web6 ")
    pod.portmap("CHECK").ok()
    # a killed proxy does not stop a DEL either
    os.kill(new, 9)
    assert harness.wait_for(lambda: gone(new), timeout=10)
    pod.delete()
    assert proxies("pmnet/c1/eth0") == [] and "portmap" not in journal(pod)


@pytest.mark.parametrize("how", ["kill", "fail"])
def test_plugin_killed_or_failing_mid_add_leaves_no_proxy(topo: harness.Topology, how: str) -> None:
    node = topo.node
    pod = Pod(topo, "c1", WEB, subnets=DUAL)
    env = {"BERTH_TEST_KILL_AFTER" if how == "kill" else "BERTH_TEST_FAIL_AFTER": "portmap-proxy"}
    res = add_with(pod, env)
    assert res.rc == (-9 if how == "kill" else 1), res.stdout + res.stderr
    # never told to serve, the proxy leaves by itself (what the plugin's death tells it)
    assert harness.wait_for(lambda: proxies("pmnet/c1/eth0") == [], timeout=20)
    assert not listening(node, 18180)
    if how == "kill":  # the runtime's DEL cleans the rest, as after any kill
        pod.delete()
    else:
        assert "portmap" not in journal(pod)  # the rollback dropped the section
        pod._bridge("DEL").ok()
    assert proxies("pmnet/c1/eth0") == []


def test_gc_stops_the_proxy_of_an_attachment_it_removes(topo: harness.Topology) -> None:
    node = topo.node
    pod = Pod(topo, "c1", WEB, subnets=DUAL)
    pod.add().ok()
    pid = journal(pod)["portmap"]["proxy"]["pid"]
    gc = {"cniVersion": "1.1.0", "name": "pmnet", "type": "berth-portmap", "cni.dev/valid-attachments": []}
    node.plugin("berth-portmap", "GC", gc).ok()
    assert gone(pid) and proxies("pmnet/c1/eth0") == []
    pod.delete()


def test_readd_keeps_the_port_and_a_host_listener_on_loopback_v6_is_refused(topo: harness.Topology) -> None:
    node = topo.node
    pod = Pod(topo, "c1", WEB, subnets=DUAL)
    pod.add().ok()
    first = journal(pod)["portmap"]["proxy"]["pid"]
    # a re-ADD: its own proxy's socket on [::1]:18180 is no host service; the new proxy replaces the old
    pod.portmap("ADD").ok()
    second = journal(pod)["portmap"]["proxy"]["pid"]
    assert gone(first) and proxies("pmnet/c1/eth0") == [second]
    pod.delete()
    # a node process on [::1]:18181 (v6-only): the proxy would take it
    other = Pod(topo, "c2", [{"hostPort": 18181, "containerPort": 80}], subnets=DUAL)
    with node.server(18181, bind="::1", banner="host"):
        other.result = other._bridge("ADD").ok()
        res = other.portmap("ADD")
        assert res.rc != 0 and res.json["code"] == 102 and "[::1]:18181/tcp" in res.json["msg"], res.stdout
        # allowed on purpose: NAT serves the other addresses, [::1] stays the host's
        res = other.portmap("ADD", hostListenerPolicy="allow")
        assert res.rc == 0 and "[::1] not proxied: tcp:18181" in res.stderr and "EADDRINUSE" in res.stderr, \
            res.stderr
        assert "proxy" not in journal(other)["portmap"]
        assert node.connect("::1", 18181) == "host ::1"
    other.delete()


def test_userland_proxy_off(topo: harness.Topology) -> None:
    pod = Pod(topo, "c1", WEB, subnets=DUAL, userlandProxy=False)
    pod.add().ok()
    assert "proxy" not in journal(pod)["portmap"] and proxies("pmnet/c1/eth0") == []
    assert topo.node.connect("::1", 18180, timeout=1) is None
    pod.delete()


def test_the_agent_serves_it_also_after_a_restart(topo: harness.Topology, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    node = topo.node
    agent = AgentProc(node, tmp_path)
    use_socket(node, monkeypatch, agent.sock)
    try:
        agent.start()
        assert harness.wait_for(lambda: "proxy service: serving 0 attachment(s)" in agent.log(), timeout=30)
        pod = Pod(topo, "c1", WEB_DNS, subnets=DUAL)
        pod.add().ok()
        assert agent.served("ADD", "c1", wait=2) == 2  # bridge and portmap, both in the agent
        record = journal(pod)["portmap"]["proxy"]
        assert record["mode"] == "agent" and record["socket"] == f"{agent.sock}.proxy"
        assert proxies("pmnet/c1/eth0") == []  # no process of its own
        with pod.netns.server(80, "tcp", "6", banner="web6"), pod.netns.server(53, "udp", "6", banner="dns6"):
            assert (node.connect("::1", 18180) or "").startswith("web6 ")
            assert (node.connect("::1", 18153, "udp") or "").startswith("dns6 ")
            assert "agent" in node.berth("list").stdout
            # a restart: the new agent's service serves what the journal says
            agent.kill()
            assert harness.wait_for(lambda: not listening(node, 18180), timeout=20)
            agent.start()
            assert harness.wait_for(lambda: "proxy service: serving 1 attachment(s)" in agent.log(), timeout=30)
            assert (node.connect("::1", 18180) or "").startswith("web6 ")
            assert (node.connect("::1", 18153, "udp") or "").startswith("dns6 ")
            assert " ok" in node.berth("list").stdout, node.berth("list").stdout  # new cookies journaled
            # its service killed: the agent forks another, which serves it again
            service = [ln for ln in agent.log().splitlines() if "proxy service: serving" in ln][-1]
            os.kill(int(service.split("[", 1)[1].split("]", 1)[0]), 9)
            assert harness.wait_for(lambda: agent.log().count("proxy service: serving 1") >= 2, timeout=30)
            assert (node.connect("::1", 18180) or "").startswith("web6 ")
        pod.delete()
        assert harness.wait_for(lambda: not listening(node, 18180), timeout=10)
        assert not listening(node, 18153, "udp")
    finally:
        agent.kill()
    # the agent gone, its service with it
    assert harness.wait_for(lambda: not Path(f"{agent.sock}.proxy").exists(), timeout=10)


def test_without_the_agent_reconcile_moves_its_proxies_to_processes(topo: harness.Topology, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    node = topo.node
    agent = AgentProc(node, tmp_path)
    use_socket(node, monkeypatch, agent.sock)
    try:
        agent.start()
        assert harness.wait_for(lambda: "proxy service: serving" in agent.log(), timeout=30)
        pod = Pod(topo, "c1", WEB, subnets=DUAL)
        pod.add().ok()
        assert journal(pod)["portmap"]["proxy"]["mode"] == "agent"
    finally:
        agent.kill()
    assert harness.wait_for(lambda: not listening(node, 18180), timeout=20)
    assert "(down)" in node.berth("list").stdout
    fixed = node.berth("reconcile")
    assert fixed.returncode == 0 and "[::1] proxy started again" in fixed.stdout, fixed.stdout + fixed.stderr
    record = journal(pod)["portmap"]["proxy"]
    assert record["mode"] == "process" and proxies("pmnet/c1/eth0") == [record["pid"]]
    with pod.netns.server(80, "tcp", "6", banner="web6"):
        assert (node.connect("::1", 18180) or "").startswith("web6 ")
    pod.delete()
    assert proxies("pmnet/c1/eth0") == []
