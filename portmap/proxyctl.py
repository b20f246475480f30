"""What portmap ADD, DEL, GC and `berth reconcile` do with the [::1] proxy
(portmap/proxy.py): which mappings it serves, starting it, stopping it, and
whether it still serves.

Inside `berth agent` (AGENT_SERVICE is set before the agent forks) the
agent's proxy service serves the attachment: ADD journals the proxy record
(mode agent) and asks the service to sync, which binds what the journal lists;
DEL asks it to drop the attachment before the record goes. Anywhere else, and
when the service does not answer, ADD starts a `berth proxy` process of the
attachment's own: forked twice, in a session of its own, with /dev/null for
stdio and no other inherited descriptor, so it outlives the plugin and holds
nothing of the runtime's (a pipe the runtime waits on, its process group). It
reports what it bound and waits for "commit", which ADD sends once the journal
names it by pid, start time and boot id; a plugin killed before that leaves no
proxy (it sees end of file and leaves). DEL and GC kill it by that identity,
never a reused pid.

Whether it serves is told by its sockets: the journal keeps each port's
SO_COOKIE, and one sock_diag request (portmap/sockdiag.py) lists the cookies
bound on the proxied ports, for CHECK, `berth list`, `explain` and
`reconcile` alike (portmap/diff.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from cni import errors, records, sysctl
from cni.errors import CNIError
from cni.records import Attachment, PortMapping, ProxyListener, ProxyRecord
from portmap.listeners import PROXIED_PROTOCOLS

AGENT_SERVICE: str | None = None  # the agent's proxy service socket, in the agent and its children
START_TIMEOUT_SECONDS = 30.0  # for the proxy process to report (an exec of the bundle, then its binds)
STOP_TIMEOUT_SECONDS = 10.0
SERVICE_TIMEOUT_SECONDS = 10.0
SECTION = "portmap"

Key = tuple[str, str, str]  # network, containerID, ifname


def loopback_v6() -> bool:
    """Has this namespace a ::1 to listen on?"""
    return sysctl.read("net", "ipv6", "conf", "lo", "disable_ipv6") == "0" and socket.has_ipv6


def listeners(mappings: list[PortMapping], addresses: list[str]) -> list[ProxyListener]:
    """What the proxy serves: each TCP/UDP mapping on any address or on ::1, to the
    container's IPv6 address, or its IPv4 one when it has none (as docker-proxy)."""
    target = next((a for a in addresses if ":" in a), addresses[0] if addresses else "")
    if not target:
        return []
    return [ProxyListener(m.protocol, m.host_lo, m.host_hi, target, m.container_lo) for m in mappings
            if m.host_ip in ("", "::1") and m.protocol in PROXIED_PROTOCOLS]


def executable() -> str | None:
    """berth's executable, to run `berth proxy` with."""
    from cni import invoke

    own = invoke.own_executable()
    if own:
        return own
    path = sys.executable if getattr(sys, "frozen", False) else sys.argv[0]
    return os.path.realpath(path) if path and os.path.basename(path).startswith("berth") else None


class Started(NamedTuple):
    """A proxy that is up: what the journal records of it, what it could not bind,
    and (a process) the pipe on which it waits for "commit"."""

    record: ProxyRecord
    failed: tuple[str, ...]
    commit_fd: int = -1

    def commit(self) -> None:
        if self.commit_fd < 0:
            return
        try:
            os.write(self.commit_fd, b"commit\n")
        except OSError:
            pass  # it is gone: CHECK and `berth list` will say so, reconcile restarts it
        finally:
            os.close(self.commit_fd)

    def abort(self) -> None:
        """Without a commit the process leaves by itself; close our end."""
        if self.commit_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.commit_fd)


def start(root: str, key: Key, wanted: list[ProxyListener],
          journal: Callable[[ProxyRecord | None], None]) -> Started:
    """Bring the attachment's proxy up, journaling it (`journal`, None: no proxy)
    before it serves. The record of what serves, empty when nothing could be
    bound (then `failed` says why). Raises CNIError only for what is the
    caller's to roll back."""
    if AGENT_SERVICE:
        intent = ProxyRecord(records.PROXY_AGENT, tuple(wanted), socket=AGENT_SERVICE)
        journal(intent)  # the service binds what the journal says
        try:
            served = service_call(AGENT_SERVICE, {"op": "sync", "root": root, "network": key[0],
                                                  "containerID": key[1], "ifname": key[2]})
        except (OSError, ValueError):
            journal(None)  # not listening (restarting): a process of its own instead
        else:
            listed = served.get("listeners")
            done = tuple(ProxyListener.from_json(li) for li in listed if isinstance(li, dict)) \
                if isinstance(listed, list) else ()
            bound = {d.spec() for d in done}
            failed = tuple(f"{li.spec()}: not bound by the agent's proxy service (its log says why)"
                           for li in wanted if li.spec() not in bound)
            record = intent._replace(listeners=done)
            journal(record if done else None)
            return Started(record, failed)
    exe = executable()
    if exe is None:
        return Started(ProxyRecord(records.PROXY_PROCESS, ()), ("berth's own executable is not known",))
    started = spawn(exe, key, wanted)
    if not started.record.listeners:
        return started
    try:
        journal(started.record)
    except BaseException:
        started.abort()
        kill(started.record)
        raise
    return started


def spawn(exe: str, key: Key, wanted: list[ProxyListener]) -> Started:
    """Run `berth proxy` detached and wait for its report; a record without
    listeners when it bound nothing (it has left then)."""
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    commit_r, commit_w = os.pipe2(os.O_CLOEXEC)
    argv = [exe, "proxy", "--id", "/".join(key), "--ready-fd", "3", "--commit-fd", "4",
            *(li.spec() for li in wanted)]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child execs or exits
        code = 127
        try:
            os.setsid()  # out of the runtime's session and process group
            if os.fork() != 0:
                os._exit(0)  # the plugin reaps this one; the proxy goes to init
            devnull = os.open("/dev/null", os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            # the two pipes as 3 and 4, above everything else first so that no dup2 overwrites the other
            high_r, high_w = os.dup(ready_w), os.dup(commit_r)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)
            os.closerange(5, 1 << 20)
            os.chdir("/")
            os.execv(exe, argv)
        except BaseException:
            pass
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(commit_r)
    try:
        os.waitpid(pid, 0)
        report = _read_report(ready_r)
    except BaseException:
        os.close(commit_w)
        raise
    finally:
        os.close(ready_r)
    done = tuple(ProxyListener.from_json(li) for li in report.get("listeners") or [])
    failed = tuple(str(f) for f in report.get("failed") or [])
    if not done:
        os.close(commit_w)
        return Started(ProxyRecord(records.PROXY_PROCESS, ()), failed)
    record = ProxyRecord(records.PROXY_PROCESS, done, pid=int(report.get("pid") or 0),
                         start=int(report.get("start") or 0), boot=sysctl.boot_id())
    return Started(record, failed, commit_w)


def _read_report(fd: int) -> dict[str, Any]:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    raw = b""
    while not raw.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise CNIError(errors.INTERNAL, "berth proxy did not report in time")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        raw += chunk
    if not raw.strip():
        raise CNIError(errors.INTERNAL, "berth proxy exited before it reported")
    try:
        report = json.loads(raw)
    except ValueError:
        raise CNIError(errors.INTERNAL, "berth proxy reported garbage", repr(raw[:200])) from None
    if not isinstance(report, dict):
        raise CNIError(errors.INTERNAL, "berth proxy reported garbage", repr(raw[:200]))
    return report


def stop(record: ProxyRecord | None, key: Key | None = None, root: str = "") -> None:
    """Stop the attachment's proxy; nothing when it is gone already. Never raises
    for a process that is gone or a service that does not answer."""
    if record is None:
        return
    if record.mode == records.PROXY_PROCESS:
        kill(record)
    elif record.mode == records.PROXY_AGENT and record.socket and key is not None:
        with contextlib.suppress(OSError, ValueError):
            service_call(record.socket, {"op": "drop", "root": root, "network": key[0], "containerID": key[1],
                                         "ifname": key[2]})


def alive(record: ProxyRecord) -> bool:
    """Is the process the record names still running (the same process, not a reused pid)?"""
    from portmap.proxy import start_time

    return (record.mode == records.PROXY_PROCESS and record.pid > 0 and record.boot == sysctl.boot_id()
            and start_time(record.pid) == record.start)


def kill(record: ProxyRecord) -> None:
    """SIGKILL the proxy process the record names, and wait until it is gone."""
    if record.pid <= 0 or record.boot != sysctl.boot_id():
        return  # never started, or of an earlier boot: gone with it
    from portmap.proxy import start_time

    try:
        pidfd = os.pidfd_open(record.pid)
    except OSError:
        return  # no such process
    try:
        if start_time(record.pid) != record.start:
            return  # that pid is someone else now (checked with the pidfd held: it cannot change again)
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        ready, _, _ = select.select([pidfd], [], [], STOP_TIMEOUT_SECONDS)
        if not ready:
            raise CNIError(errors.INTERNAL, f"berth proxy {record.pid} did not exit after SIGKILL")
    finally:
        os.close(pidfd)


def service_call(path: str, request: dict[str, str]) -> dict[str, Any]:
    """One request to the agent's proxy service; OSError when it does not answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(SERVICE_TIMEOUT_SECONDS)
        sock.connect(path)
        sock.sendall(json.dumps(request).encode() + b"\n")
        raw = b""
        while not raw.endswith(b"\n"):
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ConnectionResetError(104, "the proxy service closed the connection")
            raw += chunk
    finally:
        sock.close()
    answer = json.loads(raw)
    if not isinstance(answer, dict) or not answer.get("ok"):
        raise ConnectionResetError(104, f"the proxy service refused: {raw[:200]!r}")
    return answer


def present(ports: dict[str, list[tuple[int, int]]]) -> frozenset[int] | None:
    """The cookies of the sockets bound on ::1 on these ports (diff.proxied_ports),
    one sock_diag request per protocol; None when the kernel cannot tell."""
    from portmap import sockdiag

    if not ports:
        return frozenset()
    try:
        return frozenset(s.cookie for s in sockdiag.bound(ports) if s.address == "::1")
    except sockdiag.Unavailable:
        return None


def restart(root: str, att: Attachment) -> list[str]:
    """Start the attachment's proxy again from its record (`berth reconcile`): the
    old one stopped first; in the agent's service when this runs in the agent.
    What could not be bound; the record stays as it was when nothing was."""
    from cni import state

    record = att.portmap
    old = record.proxy if record is not None else None
    if old is None:
        return []
    key = (att.network, att.container_id, att.ifname)
    stop(old, key, root)
    journal = state.Journal(root, *key)

    def put(proxy: ProxyRecord | None) -> None:
        new = proxy or old
        journal.update(SECTION, lambda section: {**section, "proxy": new.to_json()})

    started = start(root, key, [li._replace(cookies=()) for li in old.listeners], put)
    started.commit()
    return list(started.failed)


def stop_unjournaled(key: Key, root: str) -> None:
    """A DEL that lost the journal: a `berth proxy` process started for this
    attachment (its command line names it), and the agent's service's copy.
    A walk over every process: only on this rare path."""
    from portmap.proxy import start_time

    wanted = b"\0proxy\0--id\0" + "/".join(key).encode() + b"\0"
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        pids = []
    boot = sysctl.boot_id()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        if wanted in cmdline and pid != os.getpid():
            start = start_time(pid)
            if start is not None:
                kill(ProxyRecord(records.PROXY_PROCESS, (), pid=pid, start=start, boot=boot))
    if AGENT_SERVICE:
        stop(ProxyRecord(records.PROXY_AGENT, (), socket=AGENT_SERVICE), key, root)
