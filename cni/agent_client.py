"""The thin side of the node agent: forward one plugin call to `berth agent`.

Runs on every plugin exec, so it imports only os/socket/json (json lazily, after
an agent accepted). The rules (issue #10):
- no agent (no socket file, connection refused, cannot connect in time): the
  caller does the work in-process, exactly as without an agent;
- once the request may have reached the agent, never redo the work here: a
  timeout or a broken answer is CNI error 11 ("try again later");
- the agent may answer "fallback" (another netns, another protocol version)
  having done nothing; only then the caller runs in-process with the stdin we read.

Wire format (both directions): frames of a 4-byte big-endian length + payload.
Request: a JSON header frame, then the raw stdin frame. Answer: one JSON frame,
{"rc", "stdout", "stderr"} or {"fallback": reason}.
"""

from __future__ import annotations

import os
import socket

from cni.skel import MAX_STDIN_BYTES

TYPE_CHECKING = False  # mypy treats this name as True; typing stays out of the hot path
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import IO, Any

PROTOCOL = 1
DEFAULT_SOCKET = "/run/berth/agent.sock"
CONNECT_TIMEOUT = 1.0  # a listening Unix socket accepts at once; longer means a full backlog
DEFAULT_TIMEOUT = 240.0  # answer deadline once sent (BERTH_AGENT_TIMEOUT overrides)
MAX_HEADER_BYTES = 1024 * 1024  # env + names; generous, but bounded
MAX_ANSWER_BYTES = 16 * 1024 * 1024
FORWARDED_PREFIXES = ("CNI_", "BERTH_")
DISABLED = ("off", "none", "0")


def socket_path(environ: Mapping[str, str]) -> str:
    return environ.get("BERTH_AGENT_SOCKET") or DEFAULT_SOCKET


def forwarded_env(environ: Mapping[str, str]) -> dict[str, str]:
    """Only what a plugin may read: CNI_*, BERTH_* and PATH (for exec'd delegates)."""
    return {k: v for k, v in environ.items() if k.startswith(FORWARDED_PREFIXES) or k == "PATH"}


def netns_id() -> list[int]:
    """Identity of our network namespace; the agent serves only its own."""
    st = os.stat("/proc/self/ns/net")
    return [st.st_dev, st.st_ino]


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise EOFError("connection closed early")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket, limit: int) -> bytes:
    size = int.from_bytes(recv_exact(sock, 4), "big")
    if size > limit:
        raise ValueError(f"frame of {size} bytes is over the {limit}-byte limit")
    return recv_exact(sock, size)


def _timeout(environ: Mapping[str, str]) -> float:
    try:
        value = float(environ.get("BERTH_AGENT_TIMEOUT") or DEFAULT_TIMEOUT)
    except ValueError:
        return DEFAULT_TIMEOUT
    return value if 0 < value < 86400 else DEFAULT_TIMEOUT


def connect(path: str) -> socket.socket | None:
    """A connected socket, or None when no agent answers (nothing was sent)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        sock.connect(path)
    except OSError:  # ENOENT, ECONNREFUSED (stale file), EACCES, timeout: no agent for us
        sock.close()
        return None
    return sock


def forward(
    plugin: str, environ: Mapping[str, str], stdin: IO[bytes], stdout: IO[str], stderr: IO[str],
    self_path: str,
) -> tuple[int | None, bytes | None]:
    """(rc, None) when the agent answered; (None, stdin-bytes-or-None) to run in-process."""
    path = socket_path(environ)
    if path.lower() in DISABLED:
        return None, None
    sock = connect(path)
    if sock is None:
        return None, None
    import json

    with sock:
        data = stdin.read(MAX_STDIN_BYTES + 1)  # skel applies the same limit to what we forward
        header = {"v": PROTOCOL, "plugin": plugin, "environ": forwarded_env(environ), "self": self_path,
                  "netns": netns_id()}
        try:
            sock.settimeout(_timeout(environ))
            sock.sendall(frame(json.dumps(header).encode()) + frame(data))
            answer = json.loads(recv_frame(sock, MAX_ANSWER_BYTES))
            if not isinstance(answer, dict):
                raise ValueError("answer is not an object")
            if "fallback" in answer:
                return None, data
            rc, out, err = answer["rc"], answer["stdout"], answer["stderr"]
            if type(rc) is not int or not isinstance(out, str) or not isinstance(err, str):
                raise ValueError("answer has the wrong shape")
        except (OSError, EOFError, ValueError, KeyError, RecursionError) as exc:
            # it may have done part of the work: never redo it here
            return _try_again(plugin, path, exc, data, stdout, stderr), None
    try:
        stdout.write(out)
        stderr.write(err)
        stdout.flush()
    except (OSError, ValueError):  # the runtime closed our pipes
        pass
    return rc, None


def _try_again(plugin: str, path: str, exc: BaseException, data: bytes, stdout: IO[str], stderr: IO[str]) -> int:
    from cni import errors, skel

    what = "timed out" if isinstance(exc, TimeoutError) else "failed"
    err = errors.CNIError(errors.TRY_AGAIN_LATER, f"berth agent at {path} {what}",
                          f"{type(exc).__name__}: {exc}"[:500])
    skel._print_error(err, data, stdout, stderr, plugin)
    return 1


def request(path: str, header: dict[str, Any], data: bytes, timeout: float = 30.0) -> dict[str, Any]:
    """One raw round trip (tests and `berth agent --ping`): the answer object."""
    import json

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(frame(json.dumps(header).encode()) + frame(data))
        answer: dict[str, Any] = json.loads(recv_frame(sock, MAX_ANSWER_BYTES))
        return answer
