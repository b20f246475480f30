"""berth's userland proxy: what answers on [::1]:hostPort.

The kernel cannot DNAT a connection to ::1 (what it rewrites keeps its source
::1, which may not leave lo), so the upstream plugins and netavark leave
[::1]:hostPort unanswered; Docker runs docker-proxy. Here a proxy listens on
[::1]:hostPort for TCP and UDP and connects to the container's address (IPv6
when it has one, else IPv4, as docker-proxy does); the output chain leaves ::1
alone so its connections reach it (portmap/layout.py).

One Forwarder holds the listeners of one attachment (a `berth proxy` process,
started by portmap ADD) or of every attachment the agent serves (its proxy
service, below). Its thread runs a selector over the listening sockets and
the UDP flows; each TCP connection gets two threads that splice(2) bytes from
one socket to the other through a pipe (no copy through Python), closing each
direction on its own end of file. UDP keeps one connected upstream socket per
client address, dropped after UDP_IDLE_SECONDS without traffic.

A proxy process is forked by portmap ADD with its sockets already bound and
loads this module only once the ADD has committed it (serve_adopted,
portmap/proxyctl.py). `berth proxy` (main; exec'd by a caller with threads
running, or run by hand) binds them itself, reports on its ready fd what it
bound with each socket's SO_COOKIE, then waits on its commit fd the same way.

The agent's service (Service) answers on a root-only Unix socket: "sync" reads
one attachment's journal and binds what its proxy record lists (mode agent),
"drop" forgets one; at start it serves every journaled attachment of the
agent's state directory and writes the new cookies back.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable

from cni import jsonc, records, state
from cni.records import ProxyListener
from portmap import proxyctl
from portmap.proxyctl import SO_COOKIE, start_time

TYPE_CHECKING = False  # mypy treats this name as True
if TYPE_CHECKING:
    from typing import Any

CONNECT_TIMEOUT_SECONDS = 10.0
UDP_IDLE_SECONDS = 60.0
UDP_MAX_FLOWS = 4096  # per listening socket: the oldest goes first
DATAGRAM_BYTES = 65535
SPLICE_BYTES = 1 << 20
F_SETPIPE_SZ = 1031
THREAD_STACK_BYTES = 256 * 1024
LOOP_SECONDS = 5.0
CONTROL_TIMEOUT_SECONDS = 5.0
SECTION = "portmap"

Key = tuple[str, str, str, str]  # state root, network, containerID, ifname


def log(line: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, f"berth-proxy[{os.getpid()}]: {line}\n".encode(errors="replace"))


def cookie(sock: socket.socket) -> int:
    return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), "little")


# --- TCP: two threads per connection ----------------------------------------------

def _pump(src: socket.socket, dst: socket.socket) -> bool:
    """Bytes from src to dst until src's end of file (True) or an error (False)."""
    try:
        r, w = os.pipe2(os.O_CLOEXEC)
    except OSError:
        return _copy(src, dst)
    with contextlib.suppress(OSError):  # fewer, larger splices (the default pipe holds 64 KiB)
        fcntl.fcntl(w, F_SETPIPE_SZ, SPLICE_BYTES)
    try:
        while True:
            try:
                n = os.splice(src.fileno(), w, SPLICE_BYTES)
            except OSError as exc:
                if exc.errno == errno.EINVAL:  # a kernel that cannot splice this pair
                    return _copy(src, dst)
                return False
            if n == 0:
                return True
            while n:
                n -= os.splice(r, dst.fileno(), n)
    except OSError:
        return False
    finally:
        os.close(r)
        os.close(w)


def _copy(src: socket.socket, dst: socket.socket) -> bool:
    buf = bytearray(1 << 16)
    view = memoryview(buf)
    try:
        while True:
            n = src.recv_into(buf)
            if n == 0:
                return True
            dst.sendall(view[:n])
    except OSError:
        return False


def _direction(src: socket.socket, dst: socket.socket) -> None:
    if _pump(src, dst):
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)  # a half close travels on; the other direction goes on
    else:
        for sock in (src, dst):  # a reset: end the other direction too
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _connection(client: socket.socket, target: tuple[str, int]) -> None:
    try:
        upstream = socket.create_connection(target, timeout=CONNECT_TIMEOUT_SECONDS)
    except OSError:
        client.close()  # the client sees its connection closed, as when nothing listens
        return
    try:
        for sock in (client, upstream):
            sock.settimeout(None)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        back = threading.Thread(target=_direction, args=(upstream, client), daemon=True)
        back.start()
        _direction(client, upstream)
        back.join()
    finally:
        upstream.close()
        client.close()


# --- the listeners ------------------------------------------------------------------

class Flow:
    __slots__ = ("client", "last", "upstream")

    def __init__(self, upstream: socket.socket, client: Any) -> None:
        self.upstream = upstream
        self.client = client
        self.last = time.monotonic()


class Bound:
    """One port's listening socket and where it forwards."""

    __slots__ = ("flows", "protocol", "sock", "target")

    def __init__(self, sock: socket.socket, protocol: str, target: tuple[str, int]) -> None:
        self.sock = sock
        self.protocol = protocol
        self.target = target
        self.flows: dict[Any, Flow] = {}


def bind_port(protocol: str, port: int) -> socket.socket:
    return socket.socket(fileno=proxyctl.bind_port(protocol, port).detach())


class Forwarder:
    """Listening sockets by owner key, served by one selector loop (run)."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.owned: dict[Any, list[Bound]] = {}
        self.stop = False

    def bind(self, key: Any, listeners: list[ProxyListener]) -> tuple[list[ProxyListener], list[str]]:
        """Bind every port of `listeners` (replacing what `key` had): the listeners
        bound, with their cookies, and what failed ("<spec>: <why>")."""
        self.unbind(key)
        pairs, failed = proxyctl.bind_all(listeners)
        return self.adopt(key, [(li, [sk.detach() for sk in socks]) for li, socks in pairs]), failed

    def adopt(self, key: Any, pairs: list[tuple[ProxyListener, list[int]]]) -> list[ProxyListener]:
        """Serve sockets bound already (descriptors, one per port of each listener)."""
        bound: list[Bound] = []
        for li, fds in pairs:
            for offset, fd in enumerate(fds):
                sock = socket.socket(fileno=fd)
                b = Bound(sock, li.protocol, (li.target, li.target_lo + offset))
                self.selector.register(sock, selectors.EVENT_READ, (self._accept if li.protocol == "tcp"
                                                                   else self._datagram, b))
                bound.append(b)
        if bound:
            self.owned.setdefault(key, []).extend(bound)
        return [li for li, _fds in pairs]

    def unbind(self, key: Any) -> None:
        for b in self.owned.pop(key, []):
            for flow in b.flows.values():
                self._close_flow(flow)
            self.selector.unregister(b.sock)
            b.sock.close()

    def keys(self) -> list[Any]:
        return list(self.owned)

    def watch(self, sock: Any, handler: Callable[[], None]) -> None:
        """Run `handler` in the loop whenever `sock` is readable."""
        self.selector.register(sock, selectors.EVENT_READ, (lambda _b: handler(), None))

    def run(self) -> None:
        threading.stack_size(THREAD_STACK_BYTES)
        next_sweep = time.monotonic() + LOOP_SECONDS
        while not self.stop:
            try:
                events = self.selector.select(LOOP_SECONDS)
            except InterruptedError:
                continue
            for key, _mask in events:
                handler, bound = key.data
                handler(bound)
            now = time.monotonic()
            if now >= next_sweep:
                self._sweep(now)
                next_sweep = now + LOOP_SECONDS

    def _accept(self, b: Bound) -> None:
        while True:
            try:
                client, _ = b.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log(f"cannot accept on [::1]:{b.sock.getsockname()[1]}: {exc.strerror}")
                return
            client.setblocking(True)
            try:
                threading.Thread(target=_connection, args=(client, b.target), daemon=True).start()
            except RuntimeError:  # no more threads: this connection is refused
                client.close()

    def _datagram(self, b: Bound) -> None:
        for _ in range(64):  # then let the other sockets have their turn
            try:
                data, client = b.sock.recvfrom(DATAGRAM_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            flow = b.flows.get(client)
            if flow is None:
                flow = self._open_flow(b, client)
                if flow is None:
                    continue
            flow.last = time.monotonic()
            with contextlib.suppress(OSError):
                flow.upstream.send(data)

    def _open_flow(self, b: Bound, client: Any) -> Flow | None:
        if len(b.flows) >= UDP_MAX_FLOWS:
            oldest = min(b.flows.values(), key=lambda f: f.last)
            self._close_flow(b.flows.pop(oldest.client))
        family = socket.AF_INET6 if ":" in b.target[0] else socket.AF_INET
        upstream = socket.socket(family, socket.SOCK_DGRAM)
        try:
            upstream.connect(b.target)
            upstream.setblocking(False)
        except OSError:
            upstream.close()
            return None
        flow = Flow(upstream, client)
        b.flows[client] = flow
        self.selector.register(upstream, selectors.EVENT_READ, (self._reply, (b, flow)))
        return flow

    def _reply(self, pair: tuple[Bound, Flow]) -> None:
        b, flow = pair
        for _ in range(64):
            try:
                data = flow.upstream.recv(DATAGRAM_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error from the container's side: the client hears nothing, as with NAT
                return
            flow.last = time.monotonic()
            with contextlib.suppress(OSError):
                b.sock.sendto(data, flow.client)

    def _close_flow(self, flow: Flow) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(flow.upstream)
        flow.upstream.close()

    def _sweep(self, now: float) -> None:
        for bound in self.owned.values():
            for b in bound:
                for client, flow in list(b.flows.items()):
                    if now - flow.last > UDP_IDLE_SECONDS:
                        self._close_flow(b.flows.pop(client))


# --- `berth proxy`: one attachment's process --------------------------------------------

def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def main(command: str, argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog=f"berth {command}",
        description="berth's userland proxy for [::1]:hostPort (started by berth-portmap ADD, stopped by its DEL "
                    "and GC). Without --ready-fd it serves in the foreground until killed.",
        epilog="A listener is PROTO:HOSTPORT[-END]=TARGET:PORT, e.g. tcp:8080=fd00::2:80.",
    )
    parser.add_argument("--id", default="", help="the attachment served (network/containerID/ifname): for ps")
    parser.add_argument("--ready-fd", type=int, default=-1, help="where to report what was bound")
    parser.add_argument("--commit-fd", type=int, default=-1, help="serve once this says commit")
    parser.add_argument("listeners", nargs="+", metavar="LISTENER")
    args = parser.parse_args(argv)
    try:
        wanted = [ProxyListener.parse(spec) for spec in args.listeners]
    except ValueError as exc:
        parser.error(str(exc))
    forwarder = Forwarder()
    done, failed = forwarder.bind(None, wanted)
    report = {"pid": os.getpid(), "start": start_time(os.getpid()) or 0,
              "listeners": [li.to_json() for li in done], "failed": failed}
    if args.ready_fd >= 0:
        try:
            _write_all(args.ready_fd, jsonc.dumps(report).encode() + b"\n")
            os.close(args.ready_fd)
        except OSError:
            return 1
    if not done:
        return 1
    if args.commit_fd >= 0:
        said = b""
        while True:
            try:
                chunk = os.read(args.commit_fd, 64)
            except InterruptedError:
                continue
            if not chunk:
                break
            said += chunk
        os.close(args.commit_fd)
        if said.strip() != b"commit":
            return 0  # the ADD did not journal this proxy (killed, failed): nothing of it may stay
    if args.id:
        proxyctl.hold_marker(tuple(args.id.split("/", 2)))
    signal.signal(signal.SIGTERM, lambda _s, _f: sys.exit(0))
    forwarder.run()
    return 0


def serve_adopted(fds: list[int], listeners: list[ProxyListener], marker: int) -> int:
    """A forked proxy process, committed: serve the sockets the ADD bound (one
    descriptor per port of each listener, in order) until killed."""
    forwarder = Forwarder()
    pairs = []
    for li in listeners:
        count = li.host_hi - li.host_lo + 1
        pairs.append((li, fds[:count]))
        fds = fds[count:]
    forwarder.adopt(None, pairs)
    # `marker` stays open for the process's life: what a DEL without the journal finds it by
    signal.signal(signal.SIGTERM, lambda _s, _f: sys.exit(0))
    try:
        forwarder.run()
    except SystemExit:
        pass
    return 0


# --- the agent's proxy service -------------------------------------------------------

class Service:
    """Every journaled attachment whose proxy record names the agent, in one Forwarder."""

    def __init__(self, root: str, path: str) -> None:
        self.root = root
        self.path = path
        self.forwarder = Forwarder()
        self.control: socket.socket | None = None

    def listen(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a killed service's (the agent's lock makes this agent the only one)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        sock.listen(64)
        sock.setblocking(False)
        self.control = sock
        self.forwarder.watch(sock, self._accept)

    def load(self) -> int:
        """Serve every attachment of the state root journaled with mode agent; write
        the new sockets' cookies back. The number served."""
        served = 0
        for _path, data in state.journals(self.root):
            section = data.get(SECTION)
            network, cid, ifname = (str(data.get(k, "")) for k in ("network", "containerID", "ifname"))
            if isinstance(section, dict) and network and cid and ifname and self.sync((self.root, network, cid,
                                                                                         ifname)):
                served += 1
        return served

    def sync(self, key: Key) -> list[ProxyListener]:
        """Serve what the attachment's journal lists now (nothing: forget it); its
        listeners, bound, with cookies (also written to the journal)."""
        root, network, cid, ifname = key
        journal = state.Journal(root, network, cid, ifname)
        try:
            section = journal.section(SECTION)
        except Exception:
            section = None
        record = records.PortmapRecord.from_json(section).proxy if section is not None else None
        if record is None or record.mode != records.PROXY_AGENT or not record.listeners:
            self.forwarder.unbind(key)
            return []
        wanted = [li._replace(cookies=()) for li in record.listeners]
        done, failed = self.forwarder.bind(key, wanted)
        for problem in failed:
            log(f"{network}/{cid}/{ifname}: [::1] not served: {problem}")

        def with_cookies(current: dict[str, Any]) -> dict[str, Any] | None:
            now = records.PortmapRecord.from_json(current).proxy
            if now is None or now.mode != records.PROXY_AGENT or \
                    [li._replace(cookies=()) for li in now.listeners] != wanted:
                return None  # changed meanwhile: its writer syncs again
            return {**current, "proxy": now._replace(listeners=tuple(done)).to_json()}

        with contextlib.suppress(Exception):
            journal.update(SECTION, with_cookies)
        return done

    def _accept(self) -> None:
        assert self.control is not None
        try:
            conn, _ = self.control.accept()
        except OSError:
            return
        with conn:
            try:
                conn.settimeout(CONTROL_TIMEOUT_SECONDS)
                uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          struct.calcsize("3i")))[1]
                if uid != 0:
                    return
                raw = b""
                while not raw.endswith(b"\n") and len(raw) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    raw += chunk
                conn.sendall(jsonc.dumps(self.answer(jsonc.loads(raw))).encode() + b"\n")
            except (OSError, ValueError, TypeError, AttributeError) as exc:
                log(f"control request: {type(exc).__name__}: {exc}")

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        key: Key = (str(request["root"]), str(request["network"]), str(request["containerID"]),
                    str(request["ifname"]))
        if request.get("op") == "drop":
            self.forwarder.unbind(key)
            return {"ok": True, "listeners": []}
        done = self.sync(key)
        return {"ok": True, "listeners": [li.to_json() for li in done]}

    def run(self, parent_gone: int) -> None:
        """Serve until the agent goes (`parent_gone` reads end of file) or SIGTERM."""
        def stop() -> None:
            self.forwarder.stop = True

        self.forwarder.watch(parent_gone, stop)
        signal.signal(signal.SIGTERM, lambda _s, _f: stop())
        try:
            self.forwarder.run()
        finally:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
