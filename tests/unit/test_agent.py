"""The agent's wire format and the thin client's rules, without root or a kernel.

A fake agent (a thread on a Unix socket in tmp_path) answers, refuses, hangs or
hangs up, before or after the start/go handshake, and the client must print
the answer, run in-process when the call was not started (nothing sent, no
"start" in time, a hang-up or a fallback before it), and answer code 11 when
it had said "go" and got no good answer.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cni import agent, agent_client, agent_path
from cni.agent_client import Answer, encode_answer, encode_request, frame, recv_frame

ROOT = Path(__file__).resolve().parents[2]
CONF = b'{"cniVersion": "1.0.0", "name": "net1", "type": "berth-bridge"}'
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/run/netns/x",
       "CNI_PATH": "/opt/cni/bin", "BERTH_STATE_DIR": "/tmp/s", "PATH": "/usr/bin", "HOME": "/root",
       "SECRET_TOKEN": "x"}


class FakeAgent:
    """Accepts one connection at a time and lets `behave(conn)` answer it."""

    def __init__(self, path: Path, behave: Callable[[socket.socket], None]) -> None:
        self.path = str(path)
        self.behave = behave
        self.requests: list[tuple[agent.Request, bytes]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    self.behave(conn)
                except OSError:
                    pass

    def read_request(self, conn: socket.socket) -> tuple[agent.Request, bytes]:
        header = agent.parse_request(recv_frame(conn, agent_client.MAX_HEADER_BYTES))
        assert isinstance(header, agent.Request)
        data = recv_frame(conn, 1 << 23)
        self.requests.append((header, data))
        return header, data

    def start(self, conn: socket.socket) -> bool:
        """The agent's side of the handshake: True when the caller said "go"."""
        return agent.caller_says_go(conn)

    def read_and_start(self, conn: socket.socket) -> None:
        self.read_request(conn)
        assert self.start(conn)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[Callable[[Callable[[FakeAgent, socket.socket], None]], FakeAgent]]:
    made: list[FakeAgent] = []

    def make(behave: Callable[[FakeAgent, socket.socket], None]) -> FakeAgent:
        holder: list[FakeAgent] = []
        fa = FakeAgent(tmp_path / "agent.sock", lambda conn: behave(holder[0], conn))
        holder.append(fa)
        made.append(fa)
        return fa

    yield make
    for fa in made:
        fa.close()


def call(path: str, env: dict[str, str] | None = None, data: bytes = CONF) -> tuple[int | None, bytes | None, str,
                                                                                     str]:
    out, err = io.StringIO(), io.StringIO()
    rc, left = agent_client.forward("berth-bridge", {**ENV, **(env or {}), "BERTH_AGENT_SOCKET": path},
                                    io.BytesIO(data), out, err, "/opt/cni/bin/berth")
    return rc, left, out.getvalue(), err.getvalue()


# --- no agent: run in-process, stdin untouched --------------------------------------

def test_no_socket_file_falls_back_without_reading_stdin(tmp_path: Path) -> None:
    stdin = io.BytesIO(CONF)
    rc, left = agent_client.forward("berth-bridge", {**ENV, "BERTH_AGENT_SOCKET": str(tmp_path / "none")}, stdin,
                                    io.StringIO(), io.StringIO(), "/x")
    assert (rc, left) == (None, None)
    assert stdin.tell() == 0


def test_stale_socket_file_is_connection_refused_and_falls_back(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: what kill -9 of an agent leaves
    assert path.exists()
    assert call(str(path))[:2] == (None, None)


@pytest.mark.parametrize("value", ["off", "none", "OFF", "0"])
def test_forwarding_can_be_switched_off(value: str) -> None:
    assert call(value)[:2] == (None, None)


def test_no_agent_no_client(tmp_path: Path) -> None:
    """A plugin exec imports the forwarding client only where an agent could answer."""
    sock = tmp_path / "agent.sock"
    assert not agent_path.may_answer({"BERTH_AGENT_SOCKET": str(sock)})  # nothing there: every node without one
    assert not agent_path.may_answer({"BERTH_AGENT_SOCKET": "off"})
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(sock))
        assert agent_path.may_answer({"BERTH_AGENT_SOCKET": str(sock)})
        assert not agent_path.may_answer({"BERTH_AGENT_SOCKET": "OFF"})
    finally:
        listener.close()


def test_default_socket_path() -> None:
    assert agent_path.socket_path({}) == "/run/berth/agent.sock"
    assert agent_path.socket_path({"BERTH_AGENT_SOCKET": "/x/y"}) == "/x/y"


# --- an agent answers ------------------------------------------------------------

def test_answer_is_printed_and_only_cni_berth_path_env_is_sent(fake: Any) -> None:
    def behave(fa: FakeAgent, conn: socket.socket) -> None:
        fa.read_and_start(conn)
        conn.sendall(encode_answer(Answer(0, '{"cniVersion": "1.0.0"}\n', "note\n")))

    fa = fake(behave)
    rc, left, out, err = call(fa.path)
    assert (rc, left, out, err) == (0, None, '{"cniVersion": "1.0.0"}\n', "note\n")
    header, data = fa.requests[0]
    assert data == CONF
    assert header.plugin == "berth-bridge"
    assert header.self_path == "/opt/cni/bin/berth"
    assert header.netns == agent_client.netns_id()
    assert set(header.environ) == {"CNI_COMMAND", "CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS", "CNI_PATH",
                                      "BERTH_STATE_DIR", "PATH", "BERTH_AGENT_SOCKET"}


def test_error_answer_keeps_its_rc(fake: Any) -> None:
    body = json.dumps({"cniVersion": "1.0.0", "code": 7, "msg": "bad"}) + "\n"

    def behave(fa: FakeAgent, conn: socket.socket) -> None:
        fa.read_and_start(conn)
        conn.sendall(encode_answer(Answer(1, body, "")))

    rc, _left, out, _err = call(fake(behave).path)
    assert rc == 1 and out == body


def test_fallback_answer_hands_back_the_stdin_read(fake: Any) -> None:
    def behave(fa: FakeAgent, conn: socket.socket) -> None:
        fa.read_request(conn)
        conn.sendall(encode_answer(Answer(fallback="another netns")))

    rc, left, out, _err = call(fake(behave).path)
    assert (rc, left, out) == (None, CONF, "")


# --- not started: run in-process; started, then trouble: never redo, answer 11 --------------

def _assert_try_again(rc: int | None, left: bytes | None, out: str) -> dict[str, Any]:
    assert rc == 1 and left is None
    err = json.loads(out)
    assert err["code"] == 11 and err["cniVersion"] == "1.0.0"  # the config's version
    return err


def test_a_hang_up_before_the_start_runs_in_process(fake: Any) -> None:
    def behave(fa: FakeAgent, conn: socket.socket) -> None:
        fa.read_request(conn)  # ... and close without starting (a crashed child, an agent stopping)

    assert call(fake(behave).path)[:3] == (None, CONF, "")


def test_no_start_by_the_deadline_runs_in_process_and_never_in_the_agent(fake: Any) -> None:
    """The caller gives up waiting for a busy agent: the agent's later "start" gets no "go"."""
    gave_up = threading.Event()
    went: list[bool] = []

    def behave(fa: FakeAgent, conn: socket.socket) -> None:
        fa.read_request(conn)
        gave_up.wait(30)
        went.append(fa.start(conn))

    fa = fake(behave)
    assert call(fa.path, {"BERTH_AGENT_TIMEOUT": "0.3"})[:3] == (None, CONF, "")
    gave_up.set()
    assert harness_wait(lambda: went == [False])


def test_the_start_deadline_is_capped(fake: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_client, "START_TIMEOUT", 0.3)
    release = threading.Event()

    def behave(fa: FakeAgent, conn: socket.socket) -> None:
        fa.read_request(conn)
        release.wait(30)

    fa = fake(behave)
    assert call(fa.path, {"BERTH_AGENT_TIMEOUT": "200"})[:2] == (None, CONF)
    release.set()


def test_a_fallback_after_go_runs_in_process(fake: Any) -> None:
    def behave(fa: FakeAgent, conn: socket.socket) -> None:
        fa.read_and_start(conn)
        conn.sendall(encode_answer(Answer(fallback="not run after all")))

    assert call(fake(behave).path)[:2] == (None, CONF)


def test_agent_hangs_up_after_go_is_code_11(fake: Any) -> None:
    def behave(fa: FakeAgent, conn: socket.socket) -> None:
        fa.read_and_start(conn)  # ... and close without an answer (a crashed child)

    rc, left, out, _err = call(fake(behave).path)
    _assert_try_again(rc, left, out)


def test_timeout_after_go_is_code_11(fake: Any) -> None:
    release = threading.Event()

    def behave(fa: FakeAgent, conn: socket.socket) -> None:
        fa.read_and_start(conn)
        release.wait(5)

    fa = fake(behave)
    rc, left, out, _err = call(fa.path, {"BERTH_AGENT_TIMEOUT": "0.3"})
    release.set()
    assert "timed out" in _assert_try_again(rc, left, out)["msg"]


def test_the_answer_deadline_is_total_not_per_read(fake: Any) -> None:
    """An answer trickling in a byte at a time gets no more time than the deadline."""
    done = threading.Event()

    def behave(fa: FakeAgent, conn: socket.socket) -> None:
        fa.read_and_start(conn)
        for byte in encode_answer(Answer(0, "x" * 200, "")):
            if done.wait(0.05):
                return
            conn.sendall(bytes([byte]))

    fa = fake(behave)
    rc, left, out, _err = call(fa.path, {"BERTH_AGENT_TIMEOUT": "1"})
    stopped_early = not done.is_set()
    done.set()
    assert "timed out" in _assert_try_again(rc, left, out)["msg"] and stopped_early


BROKEN = [
    frame(b"not an answer") + frame(b"") + frame(b""), frame(b"rc\0-1") + frame(b"") + frame(b""),
    frame(b"rc\0") + frame(b"") + frame(b""), frame(b"rc\01"), frame(b"rc\0" + b"9" * 5000),
    frame(b"rc\00") + frame(b"out"), b"\0\0",
]


@pytest.mark.parametrize("answer", BROKEN)
def test_broken_answer_after_go_is_code_11(fake: Any, answer: bytes) -> None:
    def behave(fa: FakeAgent, conn: socket.socket) -> None:
        fa.read_and_start(conn)
        conn.sendall(answer)

    rc, left, out, _err = call(fake(behave).path)
    _assert_try_again(rc, left, out)


@pytest.mark.parametrize("answer", BROKEN)
def test_broken_answer_before_the_start_runs_in_process(fake: Any, answer: bytes) -> None:
    def behave(fa: FakeAgent, conn: socket.socket) -> None:
        fa.read_request(conn)
        conn.sendall(answer)

    assert call(fake(behave).path)[:2] == (None, CONF)


def test_oversized_answer_is_code_11(fake: Any) -> None:
    def behave(fa: FakeAgent, conn: socket.socket) -> None:
        fa.read_and_start(conn)
        conn.sendall(frame(b"rc\00") + (agent_client.MAX_ANSWER_BYTES + 1).to_bytes(4, "big"))

    rc, left, out, _err = call(fake(behave).path)
    _assert_try_again(rc, left, out)


def test_a_refusal_needs_no_start(fake: Any) -> None:
    def behave(fa: FakeAgent, conn: socket.socket) -> None:
        fa.read_request(conn)
        conn.sendall(encode_answer(Answer(1, "", "berth agent: root only\n")))

    assert call(fake(behave).path)[:2] == (1, None)


def harness_wait(predicate: Callable[[], bool], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.02)
    return predicate()


def test_stdin_is_forwarded_up_to_the_limit_plus_one(fake: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_client, "MAX_STDIN_BYTES", 10)

    def behave(fa: FakeAgent, conn: socket.socket) -> None:
        fa.read_request(conn)
        conn.sendall(encode_answer(Answer(0)))

    fa = fake(behave)
    call(fa.path, data=b"x" * 100)
    assert fa.requests[0][1] == b"x" * 11  # skel then refuses it as too large, as in-process


# --- the server's request parsing --------------------------------------------------

def _header(plugin: str = "berth-bridge", env: dict[str, str] | None = None, self_path: str = "/x",
            netns: str = "1:2") -> bytes:
    return encode_request(plugin, ENV if env is None else env, self_path, netns)


def test_request_round_trip_keeps_only_forwarded_env() -> None:
    env = {**ENV, "CNI_ARGS": "IP=10.0.0.5;K8S_POD_NAME=a=b", "BERTH_X": "\udcff odd bytes"}
    req = agent.parse_request(_header(env=env))
    assert isinstance(req, agent.Request)
    assert "HOME" not in req.environ and "SECRET_TOKEN" not in req.environ
    assert req.environ["CNI_ARGS"] == "IP=10.0.0.5;K8S_POD_NAME=a=b" and req.environ["BERTH_X"] == env["BERTH_X"]
    assert (req.plugin, req.self_path, req.netns) == ("berth-bridge", "/x", "1:2")


def test_smuggled_env_is_dropped_by_the_server_too() -> None:
    raw = b"\0".join([agent_client.MAGIC, b"berth-bridge", b"/x", b"1:2", b"CNI_COMMAND=ADD", b"LD_PRELOAD=/evil.so",
                      b"PYTHONPATH=/evil"])
    req = agent.parse_request(raw)
    assert isinstance(req, agent.Request) and req.environ == {"CNI_COMMAND": "ADD"}


def test_parse_request_other_protocol_is_a_fallback() -> None:
    answer = agent.parse_request(b"berth-agent/1\0x\0y\0z")
    assert isinstance(answer, Answer) and answer.fallback is not None


@pytest.mark.parametrize("raw", [
    b"", b"\xff\xfe", b"null", b"GET / HTTP/1.1", agent_client.MAGIC, agent_client.MAGIC + b"\0a\0b",
    agent_client.MAGIC + b"\0a\0b\0c\0NOEQUALS", agent_client.MAGIC + b"\0a\0b\0c\0=value",
    agent_client.MAGIC + b"\0a\0b\0c\0CNI_X=" + b"v" * 70000,
    b"\0".join([agent_client.MAGIC, b"a", b"b", b"c"] + [b"CNI_%d=x" % i for i in range(300)]),
])
def test_parse_request_rejects_garbage(raw: bytes) -> None:
    with pytest.raises(agent.BadRequest):
        agent.parse_request(raw)


def test_recv_frame_limits_and_early_close() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall((1000).to_bytes(4, "big"))
        with pytest.raises(ValueError):
            recv_frame(b, 999)
    a, b = socket.socketpair()
    with a, b:
        a.sendall((10).to_bytes(4, "big") + b"abc")
        a.close()
        with pytest.raises(EOFError):
            recv_frame(b, 100)


def test_the_agent_runs_a_request_only_after_go(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[agent.Request] = []
    monkeypatch.setattr(agent, "run_call", lambda req, data: ran.append(req) or Answer(0, "{}\n"))
    own = agent_client.netns_id()
    raw = frame(encode_request("berth-bridge", ENV, "", own)) + frame(CONF)
    conn, caller = socket.socketpair()
    caller.close()  # gave up before the start
    with conn:
        assert agent.serve_request(conn, raw, own) and ran == []
    conn, caller = socket.socketpair()
    with conn, caller:
        caller.sendall(frame(b"no"))  # anything but "go"
        assert agent.serve_request(conn, raw, own) and ran == []
    conn, caller = socket.socketpair()
    with conn, caller:
        caller.sendall(frame(agent_client.GO))
        assert agent.serve_request(conn, raw, own) and len(ran) == 1
        assert recv_frame(caller, 16) == agent_client.START
        assert agent_client.recv_answer(caller).stdout == "{}\n"


def test_the_parent_reads_two_frames_within_their_limits() -> None:
    a, b = socket.socketpair()
    with a, b:
        pending = agent.Pending(a, 0.0)
        assert pending.missing() == 4
        pending.buf += frame(b"head")[:6]
        assert pending.missing() == 6
        pending.buf += frame(b"head")[6:] + frame(b"xyz")
        assert pending.missing() == 0
        assert agent.split_request(bytes(pending.buf)) == (b"head", b"xyz")
        for raw in ((agent_client.MAX_HEADER_BYTES + 1).to_bytes(4, "big"),
                    frame(b"h") + (agent.MAX_STDIN_BYTES + 2).to_bytes(4, "big")):
            pending.buf = bytearray(raw)
            with pytest.raises(ValueError):
                pending.missing()


def test_outcome_and_describe() -> None:
    assert agent.outcome(Answer(0)) == "ok"
    assert agent.outcome(Answer(1, '{"code": 7}')) == "error 7"
    assert agent.outcome(Answer(1, "garbage")) == "rc 1"
    assert agent.outcome(Answer(fallback="x")).startswith("fallback")
    line = agent.describe(agent.Request("berth-portmap", "", "", ENV), CONF)
    assert line == "ADD berth-portmap container=c1 network=net1 ifname=eth0"


def test_journals_exist(tmp_path: Path) -> None:
    assert not agent.journals_exist(str(tmp_path / "missing"))
    (tmp_path / "net1").mkdir()
    (tmp_path / "net1" / "journal.lock").write_text("")
    assert not agent.journals_exist(str(tmp_path))
    (tmp_path / "net1" / "c1-eth0.json").write_text("{}")
    assert agent.journals_exist(str(tmp_path))


# --- the thin path stays thin ----------------------------------------------------------

HEAVY = ("pyroute2", "nftables", "asyncio", "cni.bridge", "ipam", "portmap", "cni.netlink", "cni.state",
         "cni.invoke", "cni.agent", "dataclasses", "typing", "struct", "subprocess", "socket", "json", "re",
         "enum", "cni.skel", "cni.spec", "cni.errors", "__future__", "ctypes")


def test_forwarding_plugin_imports_nothing_heavy(fake: Any, tmp_path: Path) -> None:
    def behave(fa: FakeAgent, conn: socket.socket) -> None:
        fa.read_and_start(conn)
        conn.sendall(encode_answer(Answer(0, "{}\n", "")))

    proc = run_thin(fake(behave), importtime=True)
    assert proc.returncode == 0 and proc.stdout == b"{}\n", proc.stderr[-2000:]
    modules = [line.split("|")[-1].strip() for line in proc.stderr.decode().splitlines() if "import time:" in line]
    heavy = sorted({m for m in modules if m.split(".")[0] in HEAVY or m in HEAVY})
    assert not heavy, heavy
    assert "cni.agent_client" in modules


def test_thin_client_keeps_skels_stdin_limit() -> None:
    from cni import skel

    assert agent_client.MAX_STDIN_BYTES == skel.MAX_STDIN_BYTES  # a copy, so skel stays off the thin path


def run_thin(fa: FakeAgent, env: dict[str, str] | None = None, importtime: bool = False,
             ) -> subprocess.CompletedProcess[bytes]:
    """The plugin as a process, started as the bundle's entry starts it (thin calls end with os._exit)."""
    entry = "import sys; from cni.main import main; sys.exit(main(fast_exit=True))"
    return subprocess.run(
        [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", entry, "plugin", "berth-bridge"],
        input=CONF, capture_output=True, cwd=str(ROOT), timeout=60, check=False,
        env={**ENV, **(env or {}), "BERTH_AGENT_SOCKET": fa.path, "PYTHONPATH": str(ROOT)},
    )


def test_forwarded_call_exits_fast_with_all_output_flushed(fake: Any) -> None:
    def behave(fa: FakeAgent, conn: socket.socket) -> None:
        fa.read_and_start(conn)
        conn.sendall(encode_answer(Answer(3, '{"code": 7}\n' + "x" * 100_000 + "\n", "berth-bridge: warned\n")))

    proc = run_thin(fake(behave))
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert proc.stdout == b'{"code": 7}\n' + b"x" * 100_000 + b"\n"
    assert proc.stderr == b"berth-bridge: warned\n"


def test_code_11_after_a_hang_up_is_flushed_too(fake: Any) -> None:
    def behave(fa: FakeAgent, conn: socket.socket) -> None:
        fa.read_and_start(conn)  # and hang up without an answer

    proc = run_thin(fake(behave))
    assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 11, proc


def test_version_exits_fast_with_its_output(fake: Any) -> None:
    fa = fake(lambda fa, conn: None)
    proc = run_thin(fa, {"CNI_COMMAND": "VERSION"})
    assert proc.returncode == 0 and "supportedVersions" in json.loads(proc.stdout), proc
    assert fa.requests == []


def test_lazy_ctypes_hook_runs_pyinstallers_hooks_on_first_import() -> None:
    """packaging/lazy_ctypes.py (the bundle's pyimod03_ctypes) defers PyInstaller's hooks to `import ctypes`."""
    script = """
import sys, types
calls = []
eager = types.ModuleType("pyimod03_ctypes_eager")
def install():
    import ctypes
    calls.append(ctypes.__name__)
    ctypes.CDLL.patched = True
eager.install = install
sys.modules["pyimod03_ctypes_eager"] = eager
sys.path.insert(0, 'packaging')
import lazy_ctypes
lazy_ctypes.install()
assert "ctypes" not in sys.modules and calls == []
import json  # other imports are not touched
assert calls == []
import ctypes
assert calls == ["ctypes"] and ctypes.CDLL.patched and ctypes.sizeof(ctypes.c_int) == 4
import ctypes.util
assert calls == ["ctypes"]  # once
assert not any(type(f).__name__ == "_CtypesFinder" for f in sys.meta_path)
print("ok")
"""
    proc = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True, text=True, cwd=str(ROOT),
                          env={"PYTHONPATH": str(ROOT)}, timeout=60, check=False)
    assert proc.returncode == 0 and proc.stdout == "ok\n", proc.stderr


def test_prewarm_runs_the_dispatch_without_side_effects(tmp_path: Path) -> None:
    """A spare worker runs VERSION through every plugin's dispatch before it waits: nothing
    is written, nothing printed (it replaces os.environ, so it runs in a process of its own)."""
    script = ("import sys; from cni import agent; agent.prewarm('1:2'); "
              "sys.__stdout__.write('ok ' + ','.join(sorted(__import__('os').environ)))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=str(tmp_path),
                          env={"PYTHONPATH": str(ROOT), "BERTH_STATE_DIR": str(tmp_path / "state"),
                               "HOME": str(tmp_path)}, timeout=60, check=False)
    assert proc.returncode == 0 and proc.stdout == "ok CNI_COMMAND" and proc.stderr == "", proc
    assert list(tmp_path.iterdir()) == []
