"""What portmap ADD, DEL, GC and `berth reconcile` do with the [::1] proxy
(portmap/proxy.py): which mappings it serves, starting it, stopping it, and
whether it still serves.

Inside `berth agent` (AGENT_SERVICE is set before the agent forks) the
agent's proxy service serves the attachment: ADD journals the proxy record
(mode agent) and asks the service to sync, which binds what the journal lists;
DEL asks it to drop the attachment before the record goes. Anywhere else, and
when the service does not answer, ADD starts a `berth proxy` process of the
attachment's own: ADD binds the [::1] sockets itself (the C socket module,
nothing imported for it), then forks twice without an exec: the process, in a
session of its own with /dev/null for stdio and no other inherited descriptor
than its sockets and a pipe, outlives the plugin and holds nothing of the
runtime's (a pipe the runtime waits on, its process group). It waits for
"commit", which ADD writes once the journal names it by pid, start time and
boot id, and only then loads the forwarding code (portmap/proxy.py) and
serves; a plugin killed before that leaves no proxy (its end of the pipe
closes: the process sees end of file and leaves). DEL and GC kill it by that
identity, never a reused pid. Its name (comm) is berth-proxy, and it holds
an abstract Unix socket named after the attachment (marker) for a DEL that
lost the journal. A caller with threads running (where only an exec is safe
after a fork) execs `berth proxy` instead, which binds and reports itself.

Whether it serves is told by its sockets: the journal keeps each port's
SO_COOKIE, and one sock_diag request (portmap/sockdiag.py) lists the cookies
bound on the proxied ports, for CHECK, `berth list`, `explain` and
`reconcile` alike (portmap/diff.py).
"""

from __future__ import annotations

import _signal  # the C module: signal.py would import enum for every exec
import _socket  # the C module: socket.py would import enum and selectors for every exec
import errno
import os
import select
import sys
import time

from cni import ctx, errors, jsonc, records, sysctl
from cni.errors import CNIError
from cni.records import Attachment, PortMapping, ProxyListener, ProxyRecord
from portmap.listeners import PROXIED_PROTOCOLS

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NamedTuple
else:
    from cni.tuples import NamedTuple

AGENT_SERVICE: str | None = None  # the agent's proxy service socket, in the agent and its children
START_TIMEOUT_SECONDS = 30.0  # for an exec'd `berth proxy` to report (the bundle's start, then its binds)
STOP_TIMEOUT_SECONDS = 10.0
SERVICE_TIMEOUT_SECONDS = 10.0
SECTION = "portmap"
LOOPBACK = "::1"
SO_COOKIE = 57
COMM = b"berth-proxy"
MARKER = "berth-proxy/"  # + the attachment (or its digest): an abstract Unix socket's name
MAX_MARKER = 107  # sun_path without the leading NUL

Key = tuple[str, str, str]  # network, containerID, ifname


def loopback_v6() -> bool:
    """Has this namespace a ::1 to listen on (IPv6 on lo)? lo being down shows
    as EADDRNOTAVAIL at bind, before anything is forked."""
    return _socket.has_ipv6 and sysctl.read("net", "ipv6", "conf", "lo", "disable_ipv6") == "0"


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks after boot): with the pid and the boot,
    what tells this process from a later one with the same pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2:].split()
    try:
        return None if fields[0] == b"Z" else int(fields[19])
    except (IndexError, ValueError):
        return None


def marker_name(key: Key) -> str:
    """The abstract socket a proxy process of `key` holds (in the node's namespace)."""
    name = MARKER + "/".join(key)
    if len(name.encode()) > MAX_MARKER:
        from _sha512 import sha512

        name = MARKER + sha512("/".join(key).encode()).hexdigest()[:64]
    return name


def hold_marker(key: Key) -> int:
    """Bind the marker socket; its descriptor (-1 when that fails: a proxy without it)."""
    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    except OSError:
        return -1
    try:
        sock.bind("\0" + marker_name(key))
    except OSError:
        sock.close()
        return -1
    return int(sock.detach())


def cookie(sock: Any) -> int:
    return int.from_bytes(sock.getsockopt(_socket.SOL_SOCKET, SO_COOKIE, 8), "little")


def bind_port(protocol: str, port: int) -> Any:
    """A non-blocking [::1]:port socket (TCP listening), close-on-exec: a _socket.socket."""
    kind = _socket.SOCK_STREAM if protocol == "tcp" else _socket.SOCK_DGRAM
    sock = _socket.socket(_socket.AF_INET6, kind | _socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 1)
        if protocol == "tcp":
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)  # a predecessor's TIME_WAIT
        sock.bind((LOOPBACK, port))
        if protocol == "tcp":
            sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_all(wanted: list[ProxyListener]) -> tuple[list[tuple[ProxyListener, list[Any]]], list[str]]:
    """Bind every port of `wanted`: (listener with its cookies, its sockets) for each
    one bound whole, and what failed ("<spec>: <why>")."""
    done: list[tuple[ProxyListener, list[Any]]] = []
    failed: list[str] = []
    for li in wanted:
        socks: list[Any] = []
        try:
            for offset in range(li.host_hi - li.host_lo + 1):
                socks.append(bind_port(li.protocol, li.host_lo + offset))
        except OSError as exc:
            for sock in socks:
                sock.close()
            failed.append(f"{li.spec()}: {errno.errorcode.get(exc.errno or 0, '')} {exc.strerror or exc}")
            continue
        done.append((li._replace(cookies=tuple(cookie(s) for s in socks)), socks))
    return done, failed


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
            with ctx.suppress(OSError):
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
    if _threads_running():
        exe = executable()
        if exe is None:
            return Started(ProxyRecord(records.PROXY_PROCESS, ()), ("berth's own executable is not known",))
        started = spawn_exec(exe, key, wanted)
    else:
        started = spawn(key, wanted)
    if not started.record.listeners:
        return started
    try:
        journal(started.record)
    except BaseException:
        started.abort()
        kill(started.record)
        raise
    return started


def _threads_running() -> bool:
    threading = sys.modules.get("threading")
    return threading is not None and threading.active_count() > 1


def spawn(key: Key, wanted: list[ProxyListener]) -> Started:
    """Bind the ports here, then fork the proxy process that serves them (twice:
    it goes to init, nothing to reap later); a record without listeners when
    nothing could be bound (then nothing was forked)."""
    bound, failed = bind_all(wanted)
    if not bound:
        return Started(ProxyRecord(records.PROXY_PROCESS, ()), tuple(failed))
    socks = [s for _li, ss in bound for s in ss]
    done = tuple(li for li, _ss in bound)
    try:
        pid_r, pid_w = os.pipe2(os.O_CLOEXEC)
        commit_r, commit_w = os.pipe2(os.O_CLOEXEC)
    except OSError as exc:
        for sock in socks:
            sock.close()
        raise CNIError(errors.INTERNAL, f"cannot start berth proxy: {exc.strerror or exc}") from None
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            code = 1
            try:
                os.setsid()  # out of the runtime's session and process group
                os.close(commit_w)  # the plugin's end alone: its exit is the end of file
                os.close(pid_r)
                child = os.fork()
                if child != 0:
                    os.write(pid_w, b"%d" % child)  # the plugin reaps this one; the proxy goes to init
                    code = 0
                else:
                    os.close(pid_w)
                    code = _serve_forked(key, [s.detach() for s in socks], done, commit_r)
            except BaseException:
                pass
            finally:
                os._exit(code)
        os.close(pid_w)
        os.close(commit_r)
        os.waitpid(pid, 0)
        raw = os.read(pid_r, 32)  # written before the intermediate exited
    except BaseException:
        os.close(commit_w)
        raise
    finally:
        for sock in socks:
            sock.close()  # the proxy's now: the ports go with it
        os.close(pid_r)
    proxy_pid = int(raw) if raw.isdigit() else 0
    start = start_time(proxy_pid) if proxy_pid else None
    if start is None:
        os.close(commit_w)
        raise CNIError(errors.INTERNAL, "berth proxy exited as it started")
    record = ProxyRecord(records.PROXY_PROCESS, done, pid=proxy_pid, start=start, boot=sysctl.boot_id())
    return Started(record, tuple(failed), commit_w)


def _serve_forked(key: Key, fds: list[int], done: tuple[ProxyListener, ...], commit_fd: int) -> int:
    """The forked proxy process: its descriptors put in order, then "commit" awaited
    with nothing loaded (a plugin killed before that leaves nothing), then served."""
    import gc

    gc.freeze()  # the plugin's objects stay as they are: none is collected (and closes a descriptor) here
    devnull = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    keep = sorted({commit_fd, *fds})
    low = 3
    for fd in keep:
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)
    os.chdir("/")
    with ctx.suppress(OSError), open("/proc/self/comm", "wb") as fh:
        fh.write(COMM)
    marker = hold_marker(key)
    said = b""
    while True:
        try:
            chunk = os.read(commit_fd, 64)
        except InterruptedError:
            continue
        if not chunk:
            break
        said += chunk
    os.close(commit_fd)
    if said.strip() != b"commit":
        return 0  # the ADD did not journal this proxy (killed, failed): nothing of it may stay
    from portmap import proxy

    return proxy.serve_adopted(fds, list(done), marker)


def spawn_exec(exe: str, key: Key, wanted: list[ProxyListener]) -> Started:
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
        report = jsonc.loads(raw)
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
        with ctx.suppress(OSError, ValueError):
            service_call(record.socket, {"op": "drop", "root": root, "network": key[0], "containerID": key[1],
                                         "ifname": key[2]})


def alive(record: ProxyRecord) -> bool:
    """Is the process the record names still running (the same process, not a reused pid)?"""
    return (record.mode == records.PROXY_PROCESS and record.pid > 0 and record.boot == sysctl.boot_id()
            and start_time(record.pid) == record.start)


def kill(record: ProxyRecord) -> None:
    """SIGKILL the proxy process the record names, and wait until it is gone."""
    if record.pid <= 0 or record.boot != sysctl.boot_id():
        return  # never started, or of an earlier boot: gone with it

    try:
        pidfd = os.pidfd_open(record.pid)
    except OSError:
        return  # no such process
    try:
        if start_time(record.pid) != record.start:
            return  # that pid is someone else now (checked with the pidfd held: it cannot change again)
        with ctx.suppress(ProcessLookupError):
            _signal.pidfd_send_signal(pidfd, _signal.SIGKILL)
        ready, _, _ = select.select([pidfd], [], [], STOP_TIMEOUT_SECONDS)
        if not ready:
            raise CNIError(errors.INTERNAL, f"berth proxy {record.pid} did not exit after SIGKILL")
    finally:
        os.close(pidfd)


def service_call(path: str, request: dict[str, str]) -> dict[str, Any]:
    """One request to the agent's proxy service; OSError when it does not answer."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(SERVICE_TIMEOUT_SECONDS)
        sock.connect(path)
        sock.sendall(jsonc.dumps(request).encode() + b"\n")
        raw = b""
        while not raw.endswith(b"\n"):
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ConnectionResetError(104, "the proxy service closed the connection")
            raw += chunk
    finally:
        sock.close()
    answer = jsonc.loads(raw)
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
    """A DEL that lost the journal: a proxy process started for this attachment
    (it holds the attachment's marker socket, or an exec'd one names it on its
    command line), and the agent's service's copy. A walk over every process:
    only on this rare path."""
    markers = marker_inodes(key)
    wanted = b"\0proxy\0--id\0" + "/".join(key).encode() + b"\0"
    boot = sysctl.boot_id()
    for pid in processes(lambda pid, cmdline, sockets: wanted in cmdline or bool(markers & sockets)):
        start = start_time(pid)
        if start is not None:
            kill(ProxyRecord(records.PROXY_PROCESS, (), pid=pid, start=start, boot=boot))
    if AGENT_SERVICE:
        stop(ProxyRecord(records.PROXY_AGENT, (), socket=AGENT_SERVICE), key, root)


def marker_inodes(key: Key | None = None) -> set[int]:
    """Inodes of the marker sockets in this namespace (of `key`, or of every proxy)."""
    name = "@" + marker_name(key) if key is not None else "@" + MARKER
    out: set[int] = set()
    try:
        with open("/proc/self/net/unix", "rb") as fh:
            lines = fh.read().decode(errors="replace").splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) >= 8 and (parts[7] == name if key is not None else parts[7].startswith(name)):
            with ctx.suppress(ValueError):
                out.add(int(parts[6]))
    return out


def processes(match: Callable[[int, bytes, set[int]], bool]) -> list[int]:
    """pids (not this one) for which match(pid, cmdline, socket inodes) holds."""
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []
    out = []
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read()
            sockets = set()
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with ctx.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        sockets.add(int(link[8:-1]))
        except (OSError, ValueError):
            continue
        if match(pid, cmdline, sockets):
            out.append(pid)
    return out
