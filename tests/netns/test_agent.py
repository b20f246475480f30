"""The node agent on the real kernel.

The parametrized tests run the same calls twice: through `berth agent` (started
inside the test's node namespace, on a socket of the test's own) and standalone
(BERTH_AGENT_SOCKET names a socket nobody listens on), so the two paths cannot
drift. The agent-only tests cover what only the agent has: kill -9, restart on a
stale socket, hostile requests, a non-root peer, a caller in another netns,
and re-creating the nft table after a flush.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cni.agent_client import GO, MAGIC, START, Answer, encode_request, frame, recv_answer, recv_frame
from tests import harness
from tests.netns.portmap_helpers import Pod

NODE4, OUTSIDE4 = harness.Topology.NODE_V4, harness.Topology.OUTSIDE_V4


class AgentProc:
    """`berth agent` running inside the node namespace; its log is a file."""

    def __init__(self, node: harness.Node, tmp: Path) -> None:
        self.node = node
        self.sock = tmp / "agent" / "agent.sock"
        self.logpath = tmp / "agent.log"
        self.proc: subprocess.Popen[str] | None = None

    def start(self, *extra: str) -> AgentProc:
        starts = self.log().count("listening on")
        with open(self.logpath, "a") as log:
            self.proc = self.node.popen([str(self.node.bin_dir / "berth"), "agent", "--socket", str(self.sock), *extra],
                                        env=self.node.env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=log)
        assert harness.wait_for(lambda: self.log().count("listening on") > starts, timeout=30), self.log()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        return self.logpath.read_text() if self.logpath.exists() else ""

    def served(self, verb: str, container: str, wait: int = 0) -> int:
        """Calls the log shows; a worker logs just after answering (off the caller's clock),
        so `wait` for that many lines first (up to 10 s)."""
        def count() -> int:
            return sum(1 for line in self.log().splitlines()
                       if f" {verb} " in line and f"container={container} " in line)

        harness.wait_for(lambda: count() >= wait, timeout=10)
        return count()


def use_socket(node: harness.Node, monkeypatch: pytest.MonkeyPatch, sock: Path) -> None:
    """Every plugin call of this test names `sock` as its agent."""
    original = node.env
    monkeypatch.setattr(node, "env", lambda **extra: {**original(**extra), "BERTH_AGENT_SOCKET": str(sock)})


@pytest.fixture(params=["agent", "standalone"])
def mode(request: pytest.FixtureRequest, topo: harness.Topology, tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[AgentProc | None]:
    if request.param == "standalone":
        use_socket(topo.node, monkeypatch, tmp_path / "nobody-listens.sock")
        yield None
        return
    agent = AgentProc(topo.node, tmp_path).start("--check-interval", "0")
    use_socket(topo.node, monkeypatch, agent.sock)
    try:
        yield agent
        assert agent.alive(), agent.log()
        assert "fallback" not in agent.log() and "bad request" not in agent.log(), agent.log()
    finally:
        agent.kill()


@pytest.fixture
def agent(topo: harness.Topology, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AgentProc]:
    proc = AgentProc(topo.node, tmp_path).start("--check-interval", "0.3")
    use_socket(topo.node, monkeypatch, proc.sock)
    try:
        yield proc
    finally:
        proc.kill()


def journals(node: harness.Node) -> list[Path]:
    return sorted(node.state_dir.glob("*/*.json"))


def leases(node: harness.Node, network: str = "pmnet") -> list[Path]:
    return sorted(p for p in (node.data_dir / network).glob("*") if p.name[0].isdigit())


def bridge_check(pod: Pod) -> harness.PluginResult:
    conf = {**copy.deepcopy(pod.bridge_conf), "prevResult": copy.deepcopy(pod.result)}
    return pod.node.plugin("berth-bridge", "CHECK", conf, container_id=pod.cid, netns=pod.netns.path)


# --- both modes ----------------------------------------------------------------------

def test_chain_add_traffic_check_del_idempotent(topo: harness.Topology, mode: AgentProc | None) -> None:
    node = topo.node
    pod = Pod(topo, "c1", [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
    result = pod.add().ok()
    assert result["ips"][0]["address"] == "10.88.0.2/24"
    assert [i["name"] for i in result["interfaces"]][2] == "eth0"
    with pod.netns.server(80, "tcp", banner="web"):
        assert topo.outside.connect(NODE4, 8080) == f"web {OUTSIDE4}"
    bridge_check(pod).ok()
    pod.portmap("CHECK").ok()
    assert len(journals(node)) == 1 and len(leases(node)) == 1
    pod.delete()
    # containerd's second DEL: empty netns, no prevResult; then once more
    pod.result = None
    for _ in range(2):
        pod.portmap("DEL", mappings=[], netns="").ok()
        node.plugin("berth-bridge", "DEL", pod.bridge_conf, container_id="c1", netns="").ok()
    assert "CNI-DN-" not in node.nft_text()
    assert journals(node) == [] and leases(node) == []
    assert pod.netns.links() == ["lo"]
    if mode is not None:
        assert mode.served("ADD", "c1", 2) == 2 and mode.served("DEL", "c1", 6) == 6
        assert mode.served("CHECK", "c1", 2) == 2


def test_bad_input_is_the_same_error_and_changes_nothing(topo: harness.Topology, mode: AgentProc | None) -> None:
    node = topo.node
    netns = topo.container()
    conf = harness.bridge_conf("badnet", "10.88.0.0/33")
    conf["ipam"]["dataDir"] = str(node.data_dir)
    res = node.plugin("berth-bridge", "ADD", conf, container_id="c1", netns=netns.path)
    assert res.rc != 0 and res.json["code"] == 7 and res.json["cniVersion"] == "1.0.0", res
    res = node.plugin("berth-bridge", "ADD", harness.bridge_conf(), container_id="", netns=netns.path)
    assert res.rc != 0 and res.json["code"] == 4, res
    res = node.plugin("berth-bridge", "ADD", b"{not json", container_id="c1", netns=netns.path)
    assert res.rc != 0 and res.json["code"] == 6, res
    assert netns.links() == ["lo"] and journals(node) == []
    assert "bt0" not in node.links()
    if mode is not None:
        assert mode.served("ADD", "c1", 2) == 2 and mode.log().count("error 7") == 1


def test_concurrent_adds_get_distinct_addresses(topo: harness.Topology, mode: AgentProc | None) -> None:
    node = topo.node
    conf = harness.bridge_conf("cc", "10.89.0.0/24")
    conf["ipam"]["dataDir"] = str(node.data_dir)
    pods = [(f"cc{i}", topo.container()) for i in range(6)]
    results: dict[str, harness.PluginResult] = {}

    def add(cid: str, netns: harness.Netns) -> None:
        results[cid] = node.plugin("berth-bridge", "ADD", conf, container_id=cid, netns=netns.path)

    threads = [threading.Thread(target=add, args=pod) for pod in pods]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    addresses = {results[cid].ok()["ips"][0]["address"] for cid, _ in pods}
    assert len(addresses) == len(pods)
    for cid, netns in pods:
        node.plugin("berth-bridge", "DEL", conf, container_id=cid, netns=netns.path).ok()
    assert journals(node) == [] and leases(node, "cc") == []


# --- agent only ----------------------------------------------------------------------

def test_kill_9_then_calls_fall_back_and_a_restart_serves_again(topo: harness.Topology, agent: AgentProc) -> None:
    node = topo.node
    pod = Pod(topo, "k1", [{"hostPort": 8081, "containerPort": 80}])
    pod.add().ok()
    assert agent.served("ADD", "k1", 2) == 2
    agent.kill()
    assert agent.sock.exists()  # stale: connection refused -> in-process
    with pod.netns.server(80, "tcp", banner="web"):
        assert topo.outside.connect(NODE4, 8081) == f"web {OUTSIDE4}"  # nothing was lost
    pod.delete()
    assert agent.served("DEL", "k1") == 0 and journals(node) == []
    pod2 = Pod(topo, "k2", [{"hostPort": 8082, "containerPort": 80}])
    pod2.add().ok()
    agent.start("--check-interval", "0")  # over the stale socket file
    pod2.delete()
    assert agent.served("ADD", "k2") == 0 and agent.served("DEL", "k2", 2) == 2
    assert "CNI-DN-" not in node.nft_text() and journals(node) == []
    # a second agent on the same socket refuses to start; SIGTERM stops cleanly and removes the socket
    second = node.exec([str(node.bin_dir / "berth"), "agent", "--socket", str(agent.sock)], check=False,
                       env=node.env(), timeout=60)
    assert second.returncode != 0 and "another agent serves" in second.stderr
    assert agent.proc is not None
    agent.proc.terminate()
    assert agent.proc.wait(10) == 0 and not agent.sock.exists()
    assert "stopped" in agent.log()


def test_a_call_that_crashes_kills_only_its_child(topo: harness.Topology, agent: AgentProc) -> None:
    node = topo.node
    netns = topo.container()
    conf = harness.bridge_conf("crash", "10.90.0.0/24")
    conf["ipam"]["dataDir"] = str(node.data_dir)
    res = node.plugin("berth-bridge", "ADD", conf, container_id="x1", netns=netns.path,
                      env={"BERTH_TEST_KILL_AFTER": "veth"})
    # the work may be half done: the caller is told to retry, nothing is redone in-process
    assert res.rc == 1 and res.json["code"] == 11, res
    assert agent.alive() and agent.served("ADD", "x1") == 0
    node.plugin("berth-bridge", "DEL", conf, container_id="x1", netns=netns.path).ok()
    assert journals(node) == [] and leases(node, "crash") == [] and netns.links() == ["lo"]
    node.plugin("berth-bridge", "ADD", conf, container_id="x2", netns=netns.path).ok()
    node.plugin("berth-bridge", "DEL", conf, container_id="x2", netns=netns.path).ok()
    assert agent.served("ADD", "x2", 1) == 1


def test_calls_over_max_workers_wait_their_turn(topo: harness.Topology, agent: AgentProc) -> None:
    node = topo.node
    agent.kill()
    agent.start("--max-workers", "1", "--check-interval", "0")
    conf = harness.bridge_conf("mw", "10.91.0.0/24")
    conf["ipam"]["dataDir"] = str(node.data_dir)
    pods = [(f"mw{i}", topo.container()) for i in range(4)]
    results: dict[str, harness.PluginResult] = {}

    def add(cid: str, netns: harness.Netns) -> None:
        results[cid] = node.plugin("berth-bridge", "ADD", conf, container_id=cid, netns=netns.path)

    threads = [threading.Thread(target=add, args=pod) for pod in pods]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({results[cid].ok()["ips"][0]["address"] for cid, _ in pods}) == 4
    assert harness.wait_for(lambda: sum(agent.served("ADD", cid) for cid, _ in pods) == 4, timeout=10)  # none fell back
    for cid, netns in pods:
        node.plugin("berth-bridge", "DEL", conf, container_id=cid, netns=netns.path).ok()
    assert journals(node) == [] and leases(node, "mw") == []


def workers(agent: AgentProc) -> set[int]:
    """The agent's children: its spare and busy workers (and a reconciler, if one runs),
    not its [::1] proxy service."""
    assert agent.proc is not None
    pid = agent.proc.pid
    try:
        children = {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()
    return {p for p in children if not is_proxy_service(p)}


def is_proxy_service(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "berth-proxy"
    except OSError:
        return False


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_spare_workers_are_bounded_replaced_after_a_crash_and_leave_with_the_agent(
        topo: harness.Topology, agent: AgentProc) -> None:
    node = topo.node
    agent.kill()
    agent.start("--max-workers", "3", "--spare-workers", "5", "--check-interval", "0")
    assert "3 spare / 3 max workers" in agent.log()
    assert harness.wait_for(lambda: len(workers(agent)) == 3, timeout=15), workers(agent)
    first = workers(agent)
    for pid in first:  # spare workers that crash (or are killed) before taking a call
        os.kill(pid, 9)
    assert harness.wait_for(lambda: len(workers(agent)) == 3 and not workers(agent) & first, timeout=15)
    conf = harness.bridge_conf("sp", "10.92.0.0/24")
    conf["ipam"]["dataDir"] = str(node.data_dir)
    netns = topo.container()
    node.plugin("berth-bridge", "ADD", conf, container_id="sp1", netns=netns.path).ok()
    node.plugin("berth-bridge", "DEL", conf, container_id="sp1", netns=netns.path).ok()
    assert agent.served("ADD", "sp1", 1) == 1 and agent.served("DEL", "sp1", 1) == 1  # served, not fallen back
    assert harness.wait_for(lambda: len(workers(agent)) == 3, timeout=15)  # each served call was replaced
    spare = workers(agent)
    assert agent.proc is not None
    agent.proc.terminate()
    assert agent.proc.wait(10) == 0
    assert harness.wait_for(lambda: all(gone(pid) for pid in spare), timeout=10)  # no worker outlives it
    agent.start("--check-interval", "0")
    assert harness.wait_for(lambda: len(workers(agent)) == 2, timeout=15)  # the default: 2 spare
    spare = workers(agent)
    agent.kill()  # kill -9: the spare workers see the parent's pipe close and leave too
    assert harness.wait_for(lambda: all(gone(pid) for pid in spare), timeout=10)
    assert journals(node) == [] and leases(node, "sp") == []


def serving_pids(agent: AgentProc, container: str) -> list[int]:
    """The workers that logged a call for `container`, in order."""
    return [int(m.group(1)) for m in re.finditer(rf"berth-agent\[(\d+)\]: \S+ \S+ container={container} ",
                                                  agent.log())]


def test_a_worker_serves_calls_in_turn_and_leaves_after_a_failed_one(
        topo: harness.Topology, agent: AgentProc) -> None:
    node = topo.node
    conf = {"cniVersion": "1.0.0", "name": "wk", "type": "berth-host-local",
            "ipam": {"type": "berth-host-local", "ranges": [[{"subnet": "10.93.0.0/24"}]],
                     "dataDir": str(node.data_dir)}}
    for i in range(6):
        node.plugin("berth-host-local", "DEL", conf, container_id="wk1").ok()
        assert agent.served("DEL", "wk1", i + 1) == i + 1  # served by the agent, one log line each
    pids = serving_pids(agent, "wk1")
    assert len(pids) == 6 and len(set(pids)) <= 2, pids  # the same warm workers serve a stream of calls
    bad = node.plugin("berth-host-local", "ADD", {**conf, "ipam": {"type": "berth-host-local"}},
                      container_id="wk2")
    assert bad.rc != 0 and bad.json["code"] in (4, 7)
    assert harness.wait_for(lambda: len(serving_pids(agent, "wk2")) == 1)
    failed = serving_pids(agent, "wk2")[0]
    assert harness.wait_for(lambda: gone(failed), timeout=10)  # that worker left; a fresh one serves on
    node.plugin("berth-host-local", "DEL", conf, container_id="wk3").ok()
    assert harness.wait_for(lambda: len(serving_pids(agent, "wk3")) == 1)
    assert serving_pids(agent, "wk3")[0] != failed and agent.alive()


def _raw(sock: Path, payload: bytes, close_write: bool = True) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(15)
        conn.connect(str(sock))
        conn.sendall(payload)
        if close_write:
            conn.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:  # closed with our bytes unread: no answer either
            pass
        return b"".join(chunks)


def test_hostile_requests_do_not_kill_it(topo: harness.Topology, agent: AgentProc) -> None:
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "h1", "CNI_IFNAME": "eth0", "CNI_PATH": "/x"}
    header = encode_request("berth-bridge", env, "", "0:0")
    hostile = [
        b"", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\xff\xff\xff\xff", (2**31).to_bytes(4, "big") + b"x" * 100,
        frame(b"not a request") + frame(b""), frame(b"\xff\xfe") + frame(b""),
        frame(MAGIC + b"\0a\0b\0c\0NOEQUALS") + frame(b""),
        frame(header) + (10**6).to_bytes(4, "big") + b"short",
        frame(header),  # no stdin frame: early close
    ]
    for payload in hostile:
        assert _raw(agent.sock, payload) == b""  # closed without an answer, nothing done
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:  # connects, sends nothing, goes away
        conn.connect(str(agent.sock))
    # a caller claiming another netns is told to do it itself
    assert ask(agent.sock, frame(header) + frame(b"{}")).fallback
    # a made-up plugin name in the agent's own netns: a CNI error, not a crash or a file access
    own = topo.node.exec([harness.SYSTEM_PYTHON, "-c", "import os;s=os.stat('/proc/self/ns/net');"
                          "print(f'{s.st_dev}:{s.st_ino}')"]).stdout.strip()
    conf = json.dumps(harness.bridge_conf()).encode()
    answer = ask(agent.sock, frame(encode_request("../../etc/passwd", env, "", own)) + frame(conf))
    assert answer.rc == 1 and json.loads(answer.stdout)["code"] == 100
    assert agent.alive()
    pod = Pod(topo, "h2", [{"hostPort": 8083, "containerPort": 80}])
    pod.add().ok()
    pod.delete()
    assert agent.alive() and agent.served("ADD", "h2", 2) == 2
    assert agent.log().count("bad request") >= 8, agent.log()


def ask(sock: Path, payload: bytes) -> Answer:
    """Send a request as the thin client does: say "go" when the agent asks."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(15)
        conn.connect(str(sock))
        conn.sendall(payload)
        head = recv_frame(conn, 4096)
        if head == START:
            conn.sendall(frame(GO))
            return recv_answer(conn)
        return recv_answer(conn, head=head)


def test_non_root_peer_is_refused(topo: harness.Topology, agent: AgentProc) -> None:
    # let uid 65534 reach the socket at all, so SO_PEERCRED is what refuses it
    os.chmod(agent.sock.parent, 0o755)
    os.chmod(agent.sock, 0o666)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(read_fd)
            os.chdir(agent.sock.parent)
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(10)
                conn.connect(agent.sock.name)
                try:  # it may refuse (and close) before reading what we send
                    conn.sendall(frame(encode_request("berth-bridge", {}, "", "0:0")) + frame(b"{}"))
                except OSError:
                    pass
                answer = recv_answer(conn)
                os.write(write_fd, f"{answer.rc} {answer.stderr}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as reader:
        answer = reader.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert answer.startswith("1 ") and "root only" in answer
    assert "refused a caller with uid 65534" in agent.log()
    assert agent.alive()


def test_caller_in_another_netns_runs_in_process(topo: harness.Topology, agent: AgentProc) -> None:
    env = {**topo.node.env(), "CNI_COMMAND": "DEL", "CNI_CONTAINERID": "o1", "CNI_IFNAME": "eth0", "CNI_NETNS": "",
           "CNI_PATH": topo.node.cni_path}
    conf = json.dumps(harness.bridge_conf("othernet")).encode()
    proc = subprocess.run([str(topo.node.bin_dir / "berth-bridge")], input=conf, capture_output=True, env=env,
                          preexec_fn=lambda: harness.setns_net(topo.outside.path), timeout=60, check=False)
    assert proc.returncode == 0, proc
    assert "DEL berth-bridge container=o1" in agent.log() and "fallback (caller is in another network" in agent.log()


def test_caller_of_another_build_runs_in_process(topo: harness.Topology, agent: AgentProc, tmp_path: Path) -> None:
    """After an upgrade the old agent must not do the new build's work: the new plugin runs in-process."""
    bin_dir = topo.node.bin_dir
    other = tmp_path / "upgraded"
    if (bin_dir / "_internal").is_dir():  # the bundle: the executable needs its libraries beside it
        shutil.copytree(bin_dir, other, symlinks=True)
    else:
        other.mkdir()
        shutil.copy2(os.path.realpath(bin_dir / "berth"), other / "berth")
        (other / "berth-bridge").symlink_to("berth")
    env = {**topo.node.env(), "BERTH_AGENT_SOCKET": str(agent.sock), "CNI_COMMAND": "DEL", "CNI_CONTAINERID": "u1",
           "CNI_IFNAME": "eth0", "CNI_NETNS": "", "CNI_PATH": topo.node.cni_path}
    conf = json.dumps(harness.bridge_conf("upgradenet")).encode()
    proc = subprocess.run([str(other / "berth-bridge")], input=conf, capture_output=True, env=env,
                          preexec_fn=lambda: harness.setns_net(topo.node.path), timeout=60, check=False)
    assert proc.returncode == 0, proc
    assert harness.wait_for(lambda: "fallback (caller is another berth build" in agent.log()), agent.log()
    assert agent.alive()


def test_flush_is_repaired_from_the_journals(topo: harness.Topology, agent: AgentProc) -> None:
    pytest.importorskip("cni.ops.reconcile")
    node = topo.node
    pod = Pod(topo, "f1", [{"hostPort": 8084, "containerPort": 80}])
    pod.add().ok()
    node.exec(["nft", "flush", "ruleset"])
    assert harness.wait_for(lambda: "CNI-DN-" in node.nft_text(), timeout=45), agent.log()
    assert fixes(agent) == 1, agent.log()
    with pod.netns.server(80, "tcp", banner="web"):
        assert topo.outside.connect(NODE4, 8084) == f"web {OUTSIDE4}"
    # flushed while no agent ran: repaired when one starts
    agent.kill()
    node.exec(["nft", "flush", "ruleset"])
    agent.start("--check-interval", "0.3")
    assert harness.wait_for(lambda: "CNI-DN-" in node.nft_text(), timeout=45), agent.log()
    assert fixes(agent) == 2, agent.log()
    pod.delete()
    assert agent.alive()


def fixes(agent: AgentProc) -> int:
    """Reconciles that re-created something (no-op ones may run while the table is absent)."""
    return len(re.findall(r"reconcile after a flush: [1-9][0-9]* fix", agent.log()))


def test_slow_callers_cannot_starve_it(topo: harness.Topology, agent: AgentProc) -> None:
    """Twenty connections announcing 1 MiB and sending a byte now and then hold
    no worker; a real call is served at once, and each of them is dropped within
    the total deadline of its request."""
    node = topo.node
    agent.kill()
    agent.start("--max-workers", "2", "--check-interval", "0")
    stop = threading.Event()
    drips: list[socket.socket] = []

    def drip(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.sendall((1 << 20).to_bytes(4, "big"))
            while not stop.wait(0.5):
                conn.sendall(b"x")

    for _ in range(20):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(agent.sock))
        drips.append(conn)
    threads = [threading.Thread(target=drip, args=(c,), daemon=True) for c in drips]
    for t in threads:
        t.start()
    try:
        conf = harness.bridge_conf("drip", "10.94.0.0/24")
        conf["ipam"]["dataDir"] = str(node.data_dir)
        netns = topo.container()
        res = node.plugin("berth-bridge", "ADD", conf, container_id="dr1", netns=netns.path,
                          env={"BERTH_AGENT_TIMEOUT": "20"})
        res.ok()
        assert agent.served("ADD", "dr1", 1) == 1  # by the agent, not in-process
        assert harness.wait_for(lambda: agent.log().count("not complete within") == 20, timeout=60), agent.log()
        node.plugin("berth-bridge", "DEL", conf, container_id="dr1", netns=netns.path).ok()
    finally:
        stop.set()
        for conn in drips:
            conn.close()
    assert agent.alive() and journals(node) == []


def test_a_call_its_caller_gave_up_on_never_runs(topo: harness.Topology, agent: AgentProc) -> None:
    """The only worker is busy; a caller that stops waiting runs its call itself,
    and the agent, once free, never runs it a second time."""
    node = topo.node
    agent.kill()
    agent.start("--max-workers", "1", "--spare-workers", "1", "--check-interval", "0")
    slow = harness.bridge_conf("slow", "10.95.0.0/24", bridge="bt1")
    quick = harness.bridge_conf("quick", "10.96.0.0/24", bridge="bt2")
    for conf in (slow, quick):
        conf["ipam"]["dataDir"] = str(node.data_dir)
    held, gave_up = topo.container(), topo.container()
    (node.state_dir / "slow").mkdir(mode=0o700)
    results: dict[str, harness.PluginResult] = {}
    with open(node.state_dir / "slow" / "journal.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the slow call waits for it in the only worker
        blocker = threading.Thread(target=lambda: results.setdefault(
            "slow", node.plugin("berth-bridge", "ADD", slow, container_id="sl1", netns=held.path)))
        blocker.start()
        lock_path = str(node.state_dir / "slow" / "journal.lock")
        assert harness.wait_for(lambda: any(holds_open(pid, lock_path) for pid in workers(agent)), timeout=30)
        res = node.plugin("berth-bridge", "ADD", quick, container_id="qk1", netns=gave_up.path,
                          env={"BERTH_AGENT_TIMEOUT": "1"})
        assert res.rc == 0, res  # not "try again later": it ran here, in-process
    blocker.join(60)
    assert harness.wait_for(lambda: "caller gone before its call started: not run" in agent.log(), timeout=30)
    assert agent.served("ADD", "sl1", 1) == 1 and agent.served("ADD", "qk1") == 0, agent.log()
    assert sorted(gave_up.links()) == ["eth0", "lo"]  # once: the agent never ran it a second time
    node.plugin("berth-bridge", "DEL", quick, container_id="qk1", netns=gave_up.path).ok()
    node.plugin("berth-bridge", "DEL", slow, container_id="sl1", netns=held.path).ok()
    assert gave_up.links() == ["lo"] and journals(node) == []
    assert leases(node, "quick") == [] and agent.alive()


def holds_open(pid: int, path: str) -> bool:
    """Has process `pid` the file `path` open (a worker waiting for its lock)?"""
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == path for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False
