"""The thin side of the node agent: forward one plugin call to `berth agent`.

Runs on every plugin exec, so it imports only os, time and the C `_socket`
module (not cni.skel, nor __future__: the annotations that name typing-only
types are strings): `socket` (enum) and `json` (re) would each cost about as
much as the interpreter's own start-up on a busy node. The rules:
- no agent (no socket file, connection refused, cannot connect in time): the
  caller does the work in-process, exactly as without an agent;
- the agent runs a call only after asking "start" and hearing "go" back, and
  the caller says "go" only before its start deadline (min(BERTH_AGENT_TIMEOUT,
  START_TIMEOUT)): so a call the agent did not start in time (a queue behind
  slow callers, a hung agent) is never run by it, and the caller runs it
  in-process; so is one the agent closed, or answered "fallback" for (another
  netns, another protocol or build), before it started;
- once it said "go", never redo the work here: no answer by the total deadline
  (BERTH_AGENT_TIMEOUT from the request), a broken answer or a hang-up is CNI
  error 11 ("try again later").

Wire format, frames of a 4-byte big-endian length + payload. Request: a header
frame `berth-agent/2 NUL plugin NUL self-path NUL netns NUL K=V NUL K=V...`
(exec'd environments cannot hold NUL either), then the raw stdin frame. Then
the agent sends `start` and the caller `go`, or the agent answers at once
(a refusal, a fallback). Answer: three frames, `rc NUL <n>` or `fallback NUL
<reason>`, stdout, stderr.
"""

import _socket
import os
import time

from cni.agent_path import DISABLED, socket_path

TYPE_CHECKING = False  # mypy treats this name as True; typing stays out of the hot path
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import IO

MAX_STDIN_BYTES = 4 * 1024 * 1024  # cni.skel's limit (a test keeps them equal): skel stays off this path
MAGIC = b"berth-agent/2"
CONNECT_TIMEOUT = 1.0  # a listening Unix socket accepts at once; longer means a full backlog
DEFAULT_TIMEOUT = 240.0  # total deadline from the request (BERTH_AGENT_TIMEOUT overrides)
START_TIMEOUT = 30.0  # a call the agent has not started by then is run in-process instead
START, GO = b"start", b"go"
MAX_HEADER_BYTES = 1024 * 1024  # env + names; generous, but bounded
MAX_ANSWER_BYTES = 16 * 1024 * 1024
FORWARDED_PREFIXES = ("CNI_", "BERTH_")


class Answer:
    """What the agent said: rc + output, or fallback + why."""

    __slots__ = ("fallback", "rc", "stderr", "stdout")

    def __init__(self, rc: int = 0, stdout: str = "", stderr: str = "", fallback: str | None = None) -> None:
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
        self.fallback = fallback


def forwarded_env(environ: "Mapping[str, str]") -> dict[str, str]:
    """Only what a plugin may read: CNI_*, BERTH_* and PATH (for exec'd delegates)."""
    return {k: v for k, v in environ.items() if k.startswith(FORWARDED_PREFIXES) or k == "PATH"}


def netns_id() -> str:
    """Identity of our network namespace; the agent serves only its own."""
    st = os.stat("/proc/self/ns/net")
    return f"{st.st_dev}:{st.st_ino}"


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")  # os.environ's own round trip


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def encode_request(plugin: str, environ: "Mapping[str, str]", self_path: str, netns: str) -> bytes:
    fields = [MAGIC, _b(plugin), _b(self_path), _b(netns)]
    fields += [_b(f"{k}={v}") for k, v in forwarded_env(environ).items()]
    return b"\0".join(fields)


def encode_answer(answer: Answer) -> bytes:
    head = b"fallback\0" + _b(answer.fallback) if answer.fallback is not None else b"rc\0%d" % answer.rc
    return frame(head) + frame(_b(answer.stdout)) + frame(_b(answer.stderr))


def until(sock: _socket.socket, deadline: float | None) -> None:
    """Let the next socket call wait only for what is left before `deadline` (a
    total deadline, not one per call: a peer that sends a byte now and then
    gets no more time for it)."""
    if deadline is None:
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    sock.settimeout(left)


def recv_exact(sock: _socket.socket, size: int, deadline: float | None = None) -> bytes:
    chunks = []
    while size > 0:
        until(sock, deadline)
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise EOFError("connection closed early")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: _socket.socket, limit: int, deadline: float | None = None) -> bytes:
    size = int.from_bytes(recv_exact(sock, 4, deadline), "big")
    if size > limit:
        raise ValueError(f"frame of {size} bytes is over the {limit}-byte limit")
    return recv_exact(sock, size, deadline)


def recv_answer(sock: _socket.socket, deadline: float | None = None, head: bytes | None = None) -> Answer:
    """The three answer frames (`head`: the first, when already read)."""
    kind, _, value = (recv_frame(sock, 4096, deadline) if head is None else head).partition(b"\0")
    out = recv_frame(sock, MAX_ANSWER_BYTES, deadline).decode("utf-8", "surrogateescape")
    err = recv_frame(sock, MAX_ANSWER_BYTES, deadline).decode("utf-8", "surrogateescape")
    if kind == b"fallback":
        return Answer(fallback=value.decode("utf-8", "replace"))
    if kind != b"rc" or not value.isdigit() or len(value) > 3:
        raise ValueError(f"answer has the wrong shape: {kind[:20]!r}")
    return Answer(int(value), out, err)


def _timeout(environ: "Mapping[str, str]") -> float:
    try:
        value = float(environ.get("BERTH_AGENT_TIMEOUT") or DEFAULT_TIMEOUT)
    except ValueError:
        return DEFAULT_TIMEOUT
    return value if 0 < value < 86400 else DEFAULT_TIMEOUT


def connect(path: str) -> _socket.socket | None:
    """A connected socket, or None when no agent answers (nothing was sent)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        sock.connect(path)
    except OSError:  # ENOENT, ECONNREFUSED (stale file), EACCES, timeout: no agent for us
        sock.close()
        return None
    return sock


def forward(
    plugin: str, environ: "Mapping[str, str]", stdin: "IO[bytes]", stdout: "IO[str]", stderr: "IO[str]",
    self_path: str,
) -> tuple[int | None, bytes | None]:
    """(rc, None) when the agent answered; (None, stdin-bytes-or-None) to run in-process."""
    path = socket_path(environ)
    if path.lower() in DISABLED:
        return None, None
    sock = connect(path)
    if sock is None:
        return None, None
    try:
        data = stdin.read(MAX_STDIN_BYTES + 1)  # skel applies the same limit to what we forward
        total = _timeout(environ)
        now = time.monotonic()
        deadline, start_by = now + total, now + min(total, START_TIMEOUT)
        try:
            until(sock, start_by)
            sock.sendall(frame(encode_request(plugin, environ, self_path, netns_id())) + frame(data))
        except OSError:  # it may have answered without reading (a refusal): read that
            pass
        try:
            head = recv_frame(sock, 4096, start_by)
            if head == START:
                until(sock, start_by)
                sock.sendall(frame(GO))
        except (OSError, EOFError, ValueError):
            return None, data  # not started, and now it never will be: run it here
        try:
            answer = recv_answer(sock, deadline, None if head == START else head)
        except (OSError, EOFError, ValueError) as exc:
            if head != START:
                return None, data  # a broken refusal: nothing ran
            # it may have done part of the work: never redo it here
            return _try_again(plugin, path, exc, data, stdout, stderr), None
    finally:
        sock.close()
    if answer.fallback is not None:
        return None, data
    try:
        stdout.write(answer.stdout)
        stderr.write(answer.stderr)
        stdout.flush()
    except (OSError, ValueError):  # the runtime closed our pipes
        pass
    return answer.rc, None


def _try_again(plugin: str, path: str, exc: BaseException, data: bytes, stdout: "IO[str]", stderr: "IO[str]") -> int:
    from cni import errors, skel

    what = "timed out" if isinstance(exc, TimeoutError) else "failed"
    err = errors.CNIError(errors.TRY_AGAIN_LATER, f"berth agent at {path} {what}",
                          f"{type(exc).__name__}: {exc}"[:500])
    skel.print_error(err, data, stdout, stderr, plugin)
    return 1
