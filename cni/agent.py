"""`berth agent`: the optional node agent.

One process per node keeps pyroute2, the libnftables binding and the plugin
modules imported, and serves plugin calls forwarded by the thin executables
(cni.agent_client) on a root-only Unix socket.

Requests run in forked worker children, one call at a time each: the warm
imports are inherited, file locks (flock on journal, IPAM and ports files) are
taken and released by each call exactly as with one exec per call, a crash in
one request kills only that worker, and the request's environment becomes the
worker's whole os.environ, never the agent's own. The worker runs cni.skel.run,
the very code path of an exec'd plugin; only the transport differs. A worker
serves up to CALLS_PER_WORKER calls (its pages stay warm: a fresh fork pays
copy-on-write faults on every page a call touches) and leaves after any call
that did not go normally, so no failure's leftovers meet the next call.

The parent accepts every connection, checks the peer's uid and reads the
request itself, without blocking, many at a time: each must be complete within
READ_DEADLINE of its accept (a total, not per read), at most MAX_PENDING are
held (more are closed unread, and their callers run in-process), and
MAX_BUFFERED bytes in all. So a caller that connects and sends slowly, or a
flood of them, costs the parent a socket each, never a worker. A complete
request goes to an idle worker with the connection (SCM_RIGHTS: the
connection, and the request in a memfd). Before running it the worker asks
the caller "start" and runs only on its "go", which the caller sends only
before its own start deadline (cni.agent_client): a call whose caller gave up
(timed out, closed, answered itself) is never run; one whose caller closes
while it waits in the parent is dropped there.

The children are forked ahead of the calls (a pool of `--spare-workers`, default
2: a chain call nests one plugin call in another): each spare child pre-faults
the pages a call touches and waits for the parent to hand it a request; once
it has answered it tells the parent it is free again, and the parent keeps it
as a spare or, with enough spares waiting, retires it or a never-used spare
(SIGUSR1: it leaves once idle). The parent forks only when no spare waits (a
burst; at most `--max-workers` children) or when spare and busy workers are
fewer than `--spare-workers` (one crashed or left). So neither a fork (with
the parent's page-table copy) nor the first call's copy-on-write faults are
on a caller's clock.

The parent stays single-threaded and holds no state besides what is on disk
(journals, leases): kill -9 loses nothing, in-flight children finish on their
own, and spare children exit when the parent stops or dies (they watch a pipe
whose write end only the parent holds). Every `--check-interval` seconds it looks for `table inet berth`; when
it is gone (someone flushed the ruleset) while journals exist, a child runs
`berth reconcile`'s logic to re-create it from the journals.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import io
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from typing import Any

from cni import agent_client, agent_path
from cni.agent_client import MAGIC, Answer, encode_answer, recv_frame
from cni.skel import MAX_ID_LENGTH, MAX_IFNAME_LENGTH, MAX_NAME_LENGTH, MAX_STDIN_BYTES

READ_DEADLINE = 10.0  # from the accept: a client sends its whole request at once; slower is hostile or dead
QUEUE_DEADLINE = 2 * agent_client.START_TIMEOUT  # a complete request no worker took by then: its caller is gone
GO_TIMEOUT = 10.0  # the caller answers "start" at once; without "go" the call is not run
SEND_TIMEOUT = 10.0  # for the answer: a caller that does not read it is gone
MAX_PENDING = 256  # connections the parent holds (reading, or waiting for a worker)
MAX_BUFFERED = 64 * 1024 * 1024  # bytes of requests the parent holds in all
DEFAULT_CHECK_INTERVAL = 2.0
MAX_CHECK_BACKOFF = 60.0
CALLS_PER_WORKER = 64  # then the worker leaves and a fresh fork takes its place (bounds any slow leak)
IDLE_POLL_SECONDS = 1.0  # how soon an idle worker the parent retired notices
DEFAULT_MAX_WORKERS = 16  # each in-flight call is a child with ~8-9 MiB of private pages
DEFAULT_SPARE_WORKERS = 2  # children forked ahead, waiting for a call (a chain call nests two)
PROXY_RESTART_SECONDS = 1.0  # a proxy service that keeps dying is forked again no faster
PROXY_SERVICE_NAME = "berth-proxy"
MAX_ENV_ENTRIES = 256
MAX_VALUE_CHARS = 64 * 1024


class BadRequest(Exception):
    pass


def log(line: str) -> None:
    """One line to stderr in one write (children share the stream)."""
    with contextlib.suppress(OSError):
        os.write(2, f"berth-agent[{os.getpid()}]: {line}\n".encode(errors="replace"))


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


# --- warm-up and per-child reset ----------------------------------------------

def warm_up() -> list[str]:
    """Import what a plugin call needs and load the shared libraries; what failed."""
    from cni import main

    problems = []
    for name in main.PLUGINS:
        try:
            main.plugin_funcs(name)
        except ImportError as exc:
            problems.append(f"{name}: {exc}")
    try:
        warm_netlink()  # the netlink codec and one round trip, once here instead of in every child
    except Exception as exc:
        problems.append(f"netlink: {exc}")
    try:
        from portmap import nft

        nft.list_table()  # imports the binding and dlopens libnftables
    except Exception as exc:
        problems.append(f"nftables: {exc}")
    with contextlib.suppress(ImportError):
        import portmap.reconcile  # noqa: F401  # warm for the flush watcher
    return problems


def warm_netlink() -> None:
    """Load and prepare, once, everything a plugin call uses here, so the node
    agent's forked children inherit it: the netlink codec, libc for setns, and
    one real round trip of each request kind."""
    from cni import netns
    from cni.netlink import addresses, link_by_name, open_node, routes

    with open_node() as node:
        lo = link_by_name(node, "lo")
        if lo is not None:
            addresses(node, lo.index)
            routes(node, lo.index)
    with netns.entered(netns.OWN):
        pass


def fresh_handles() -> None:
    """After fork: a child must not share the parent's libnftables context (its
    netlink socket and sequence numbers would be shared with other children)."""
    from portmap import nft

    nft.forget_context()


# --- the request ----------------------------------------------------------------

class Request:
    __slots__ = ("environ", "netns", "plugin", "self_path")

    def __init__(self, plugin: str, self_path: str, netns: str, environ: dict[str, str]) -> None:
        self.plugin = plugin
        self.self_path = self_path
        self.netns = netns
        self.environ = environ


def parse_request(header: bytes) -> Request | Answer:
    """Validate the header frame: a Request, a fallback Answer (another protocol),
    or a BadRequest (never a crash)."""
    fields = header.split(b"\0")
    if fields[0] != MAGIC:
        if fields[0].startswith(MAGIC.split(b"/")[0] + b"/"):
            return Answer(fallback=f"protocol {fields[0][:40]!r} not served (agent speaks {MAGIC.decode()})")
        raise BadRequest("not a berth-agent request")
    if len(fields) < 4 or len(fields) - 4 > MAX_ENV_ENTRIES:
        raise BadRequest(f"{len(fields)} header fields")
    try:
        plugin, self_path, netns, *pairs = (f.decode("utf-8", "surrogateescape") for f in fields[1:])
    except UnicodeDecodeError:  # pragma: no cover - surrogateescape decodes any bytes
        raise BadRequest("undecodable header") from None
    environ = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or len(value) > MAX_VALUE_CHARS:
            raise BadRequest(f"bad environment entry {key[:40]!r}")
        environ[key] = value
    # only what the thin client forwards; anything else is not the caller's to set
    return Request(plugin, self_path, netns, agent_client.forwarded_env(environ))


def run_call(req: Request, data: bytes) -> Answer:
    """Run the plugin exactly as an exec would."""
    from cni import invoke, main, skel

    os.environ.clear()  # the request's env is the whole process env, as in an exec
    os.environ.update(req.environ)
    invoke.register_own(main.plugin_funcs, req.self_path or None)
    funcs = main.load_funcs(req.plugin)
    out, err = io.StringIO(), io.StringIO()
    # plugin code that writes to sys.stderr itself (warnings) reaches the caller too
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = skel.run(funcs, dict(req.environ), io.BytesIO(data), out, err)
    return Answer(rc, out.getvalue(), err.getvalue())


def outcome(answer: Answer) -> str:
    if answer.fallback is not None:
        return f"fallback ({answer.fallback})"
    if answer.rc == 0:
        return "ok"
    try:
        return f"error {json.loads(answer.stdout or '{}').get('code')}"
    except (ValueError, AttributeError):
        return f"rc {answer.rc}"


def describe(req: Request | None, data: bytes) -> str:
    if req is None:
        return "?"
    env = req.environ
    network = ""
    with contextlib.suppress(Exception):
        network = str(json.loads(data).get("name", ""))[:MAX_NAME_LENGTH]
    return (f"{env.get('CNI_COMMAND', '')[:16]} {req.plugin[:40]} "
            f"container={env.get('CNI_CONTAINERID', '')[:MAX_ID_LENGTH]} network={network} "
            f"ifname={env.get('CNI_IFNAME', '')[:MAX_IFNAME_LENGTH]}")


def prewarm(own_netns: str) -> None:
    """In a spare child, before any caller waits: run the dispatch once (a
    VERSION call: no disk, no kernel) so the pages a call touches are already
    copied (fork shares them copy-on-write; reference counts write to them)."""
    with contextlib.suppress(Exception):
        for plugin in ("berth-bridge", "berth-host-local", "berth-portmap"):
            req = parse_request(agent_client.encode_request(plugin, {"CNI_COMMAND": "VERSION"}, "", own_netns))
            if isinstance(req, Request):
                answer = run_call(req, b"")
                encode_answer(answer)
                describe(req, b"{}")
                outcome(answer)
    # the kernel-facing code paths too: netlink message codecs (and one round
    # trip), this child's own libnftables context, which the call then uses
    with contextlib.suppress(Exception):
        from portmap import nft

        warm_netlink()
        nft.prepare()


# what the agent runs: (device, inode, size, mtime) of its executable, set at start
OWN_BUILD: tuple[int, int, int, int] | None = None


def build_identity(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(os.path.realpath(path))
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def own_executable() -> str:
    return sys.executable if getattr(sys, "frozen", False) else sys.argv[0]


def other_build(self_path: str) -> bool:
    """Is the caller another berth build than ours (an upgrade installed since
    the agent started)? Then it runs its own code in-process: an old agent must
    not write the old build's rules for new plugins."""
    if not self_path or OWN_BUILD is None:
        return False
    return build_identity(self_path) != OWN_BUILD


def split_request(raw: bytes) -> tuple[bytes, bytes]:
    """(header, stdin) of a complete request as read off the wire (two frames)."""
    size = int.from_bytes(raw[:4], "big")
    header, rest = raw[4:4 + size], raw[4 + size:]
    return header, rest[4:4 + int.from_bytes(rest[:4], "big")]


def serve_request(conn: socket.socket, raw: bytes, own_netns: str) -> bool:
    """In the child: run the request read from `conn`, once its caller said "go",
    and answer; never raises. True when the call went normally (answered rc 0 or
    a fallback, or not run), so the worker may serve another; after anything
    else it leaves, taking whatever state the failure may have left behind."""
    started = time.monotonic()
    req: Request | None = None
    data = b""
    try:
        header, data = split_request(raw)
        parsed = parse_request(header)
        if isinstance(parsed, Answer):
            answer = parsed
        else:
            req = parsed
            if req.netns != own_netns:
                answer = Answer(fallback="caller is in another network namespace")
            elif other_build(req.self_path):
                answer = Answer(fallback="caller is another berth build than the agent's (restart the agent "
                                         "after an upgrade)")
            elif not caller_says_go(conn):
                log(f"{describe(req, data)}: caller gone before the call started: not run")
                return True
            else:
                answer = run_call(req, data)
    except (BadRequest, ValueError) as exc:
        log(f"bad request: {type(exc).__name__}: {str(exc)[:200]}")
        return False
    try:
        conn.settimeout(SEND_TIMEOUT)
        conn.sendall(encode_answer(answer))
    except OSError as exc:  # the caller gave up (its timeout) after its "go": the work is done all the same
        log(f"{describe(req, data)}: caller gone before the answer ({exc.strerror or exc})")
    log(f"{describe(req, data)} {(time.monotonic() - started) * 1000:.1f} ms {outcome(answer)}")
    return answer.fallback is not None or answer.rc == 0


def caller_says_go(conn: socket.socket) -> bool:
    """Ask the caller whether it still waits: it answers "go" only before its
    start deadline, so a call it has given up on is never run."""
    deadline = time.monotonic() + GO_TIMEOUT
    try:
        agent_client.until(conn, deadline)
        conn.sendall(agent_client.frame(agent_client.START))
        return recv_frame(conn, 16, deadline) == agent_client.GO
    except (OSError, EOFError, ValueError):
        return False


# --- the listening socket -------------------------------------------------------

def peer_uid(conn: socket.socket) -> int:
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


def prepare_dir(path: str) -> None:
    """Make the socket's directory root-only if we create it; refuse a directory others may write."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
    st = os.stat(directory)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise SystemExit(f"berth agent: {directory} must be owned by us and not group/world-writable")


def take_lock(path: str) -> int:
    """One agent per socket: an flock next to it, held for the parent's life."""
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SystemExit(f"berth agent: another agent serves {path}") from None
    return fd


def bind(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a stale socket of a killed agent (we hold the lock: nobody else serves it)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


# --- the flush watcher ----------------------------------------------------------

def journals_exist(root: str) -> bool:
    try:
        with os.scandir(root) as networks:
            for net in networks:
                if net.is_dir(follow_symlinks=False):
                    with os.scandir(net.path) as entries:
                        if any(e.name.endswith(".json") for e in entries):
                            return True
    except OSError:
        return False
    return False


def reconcile_child(root: str) -> int:
    try:
        from portmap.reconcile import reconcile
    except ImportError as exc:
        log(f"reconcile: not available ({exc})")
        return 1
    try:
        plan, error, warnings = reconcile(root, False)
    except Exception as exc:  # a child: log and exit, the parent tries later
        log(f"reconcile: failed: {type(exc).__name__}: {exc}")
        return 1
    log(f"reconcile after a flush: {len(plan.fixes)} fix(es), {len(plan.skipped)} skipped"
        + (f", error: {error}" if error else "") + "".join(f"; warning: {w}" for w in warnings))
    return 1 if error else 0


def proxy_service(root: str, path: str, parent_gone: int) -> int:
    """In the proxy service child: serve the journaled [::1] proxies until the agent goes."""
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
        comm.write(PROXY_SERVICE_NAME)  # what `ps` shows of it, beside the workers
    try:
        from portmap.proxy import Service

        service = Service(root, path)
        service.listen()
        served = service.load()
        log(f"proxy service: serving {served} attachment(s) on {path}")
        service.run(parent_gone)
    except Exception as exc:  # a child: log and exit, the parent forks another
        log(f"proxy service: failed: {type(exc).__name__}: {exc}")
        return 1
    return 0


# --- the server loop ------------------------------------------------------------

class Pending:
    """A connection the parent reads a request from, then holds until a worker takes it."""

    __slots__ = ("buf", "conn", "deadline", "queued")

    def __init__(self, conn: socket.socket, now: float) -> None:
        self.conn = conn
        self.buf = bytearray()
        self.deadline = now + READ_DEADLINE
        self.queued = False  # complete, waiting for an idle worker

    def missing(self) -> int:
        """Bytes still to read for the two frames; raises ValueError for a frame over its limit."""
        need = 4
        if len(self.buf) >= 4:
            size = int.from_bytes(self.buf[:4], "big")
            if size > agent_client.MAX_HEADER_BYTES:
                raise ValueError(f"header frame of {size} bytes")
            need = 8 + size
            if len(self.buf) >= need:
                data = int.from_bytes(self.buf[need - 4:need], "big")
                if data > MAX_STDIN_BYTES + 1:
                    raise ValueError(f"stdin frame of {data} bytes")
                need += data
        return need - len(self.buf)


class Agent:
    def __init__(self, path: str, root: str, check_interval: float, max_workers: int,
                 spare_workers: int = DEFAULT_SPARE_WORKERS) -> None:
        self.path = path
        self.root = root
        self.check_interval = check_interval
        self.max_workers = max_workers
        self.spare_workers = max(1, min(spare_workers, max_workers))
        self.children: set[int] = set()  # every child: spare, busy, reconciler
        self.spare: set[int] = set()  # forked ahead, waiting for a call
        self.busy: set[int] = set()  # serving a call; back to spare (or retired) after it
        self.fresh: set[int] = set()  # spare workers that have not served yet (cold pages)
        self.control: dict[int, socket.socket] = {}  # worker pid -> the parent's end of its socketpair
        self.pending: dict[int, Pending] = {}  # fd -> connection being read or waiting for a worker
        self.buffered = 0
        self.refused = 0  # connections closed unread since the last log line about it
        self.refused_logged = 0.0
        self.reconciler: int | None = None
        self.proxy_path = f"{path}.proxy"  # the [::1] proxy service's control socket (portmap/proxy.py)
        self.proxy: int | None = None  # the proxy service child
        self.proxy_forked = -PROXY_RESTART_SECONDS
        self.next_check = 0.0
        self.backoff = check_interval
        self.table_seen = False
        self.stop = False
        self.own_netns = agent_client.netns_id()
        self.parent_fds: list[int] = []  # closed in every child
        self.child_fds: list[int] = []  # what a worker keeps besides its control socket (closed in the reconciler)
        self.busy_r = self.busy_w = self.alive_r = -1

    def fork(self, close: list[int]) -> int:
        """fork(); in the child, drop the parent's fds (`close`, and every
        connection and worker socket the parent holds) and signal handlers."""
        held = [p.conn.fileno() for p in self.pending.values()] + [c.fileno() for c in self.control.values()]
        pid = os.fork()
        if pid == 0:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            signal.set_wakeup_fd(-1)
            for fd in close + held:
                with contextlib.suppress(OSError):
                    os.close(fd)
            fresh_handles()
        return pid

    def reap(self) -> None:
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            self.spare.discard(pid)
            self.busy.discard(pid)
            self.fresh.discard(pid)
            control = self.control.pop(pid, None)
            if control is not None:
                control.close()
            if pid == self.reconciler:
                self.reconciler = None
            if pid == self.proxy:
                self.proxy = None

    def watch_flush(self) -> None:
        """Re-create the table from the journals when it is gone (a flush).

        Gone after we saw it: reconcile at once. Absent without our having seen
        it (at start-up, or created and flushed between two checks, or never
        needed because no attachment has nft rules): reconcile too, but with a
        delay doubling up to MAX_CHECK_BACKOFF, so a node that needs no table
        costs one fork a minute at most.
        """
        now = time.monotonic()
        if self.check_interval <= 0 or now < self.next_check or self.reconciler is not None:
            return
        self.next_check = now + self.check_interval
        from portmap import nft

        exists = nft.kernel_table_exists()
        if exists is None:
            return
        if exists:
            self.table_seen, self.backoff = True, self.check_interval
            return
        if not journals_exist(self.root):
            return
        if not self.table_seen:
            self.next_check = now + self.backoff
            self.backoff = min(self.backoff * 2, MAX_CHECK_BACKOFF)
        self.table_seen = False
        pid = self.fork(self.parent_fds + self.child_fds)
        if pid == 0:
            os._exit(reconcile_child(self.root))
        self.reconciler = pid
        self.children.add(pid)

    def keep_proxy(self) -> None:
        """The [::1] proxy service runs in a child of its own, forked again when it
        died (at most once per PROXY_RESTART_SECONDS); it leaves with the agent."""
        now = time.monotonic()
        if self.proxy is not None or self.stop or now - self.proxy_forked < PROXY_RESTART_SECONDS:
            return
        self.proxy_forked = now
        try:
            pid = self.fork([*self.parent_fds, self.busy_w])
        except OSError as exc:
            log(f"cannot fork the proxy service: {exc.strerror or exc}")
            return
        if pid == 0:
            os._exit(proxy_service(self.root, self.proxy_path, self.alive_r))
        self.proxy = pid

    def read_busy(self) -> None:
        """Workers say when they are free again (-pid, 4 bytes). A free worker is
        kept as a spare while fewer than `spare_workers` wait, in place of a spare
        that never served (its pages are cold) if need be; otherwise it is retired
        (SIGUSR1: it leaves once idle)."""
        try:
            data = os.read(self.busy_r, 4096)
        except BlockingIOError:
            return
        for i in range(0, len(data) - 3, 4):
            pid = abs(int.from_bytes(data[i:i + 4], "little", signed=True))
            self.busy.discard(pid)
            if pid not in self.children:
                continue
            retire = pid
            if len(self.spare) < self.spare_workers:
                retire = 0
            elif self.fresh & self.spare:
                retire = min(self.fresh & self.spare)
                self.spare.discard(retire)
                self.fresh.discard(retire)
            if retire != pid:
                self.spare.add(pid)
            if retire:
                with contextlib.suppress(OSError):
                    os.kill(retire, signal.SIGUSR1)

    def wanted(self) -> bool:
        """Fork another worker? When none waits (calls would queue), or when spare and
        busy ones together are fewer than `spare_workers` (one crashed or left):
        a busy worker comes back as a spare, so a sequential stream of calls is
        served by the same warm workers, without a fork per call."""
        if self.stop or len(self.children) >= self.max_workers:
            return False
        return not self.spare or len(self.spare) + len(self.busy) < self.spare_workers

    def replenish(self) -> None:
        """Fork workers while wanted(), within `max_workers` children in all."""
        while self.wanted():
            parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                pid = self.fork([*self.parent_fds, parent_end.fileno()])
            except OSError as exc:  # EAGAIN/ENOMEM: calls wait in the parent; try again next turn
                log(f"cannot fork a worker: {exc.strerror or exc}")
                parent_end.close()
                child_end.close()
                return
            if pid == 0:
                code = 0
                try:
                    self.serve_one(child_end)
                except BaseException:  # never run the parent's loop in a child
                    code = 1
                finally:
                    os._exit(code)
            child_end.close()
            parent_end.setblocking(False)
            self.control[pid] = parent_end
            self.children.add(pid)
            self.spare.add(pid)
            self.fresh.add(pid)

    # --- the parent's intake: accept, check, read, hand over ---------------------

    def accept(self, listener: socket.socket) -> None:
        """Take every waiting connection: root callers are read, others refused;
        beyond MAX_PENDING a connection is closed unread (its caller, not started,
        runs in-process)."""
        while True:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:  # EMFILE and the like: the backlog waits
                log(f"cannot accept: {exc.strerror or exc}")
                return
            if len(self.pending) >= MAX_PENDING:
                self.refuse(conn)
                continue
            conn.setblocking(False)
            if admit(conn):
                self.pending[conn.fileno()] = Pending(conn, time.monotonic())
            else:
                conn.close()

    def refuse(self, conn: socket.socket) -> None:
        conn.close()
        self.refused += 1
        now = time.monotonic()
        if now - self.refused_logged >= 10:
            log(f"{self.refused} connection(s) closed unread: {MAX_PENDING} already held (their callers run "
                "in-process)")
            self.refused, self.refused_logged = 0, now

    def drop(self, pending: Pending, why: str | None) -> None:
        if why:
            log(why)
        self.pending.pop(pending.conn.fileno(), None)
        self.buffered -= len(pending.buf)
        pending.conn.close()

    def readable(self, pending: Pending) -> None:
        """Read what has arrived; a queued one that becomes readable has hung up (or broke the protocol)."""
        if pending.queued:
            self.drop(pending, "caller gone before its call started: not run")
            return
        try:
            want = pending.missing()
            chunk = pending.conn.recv(min(want, 1 << 16))
        except BlockingIOError:
            return
        except (OSError, ValueError) as exc:
            self.drop(pending, f"bad request: {type(exc).__name__}: {str(exc)[:200]}")
            return
        if not chunk:
            self.drop(pending, "bad request: EOFError: connection closed early")
            return
        pending.buf += chunk
        self.buffered += len(chunk)
        try:
            pending.queued = pending.missing() == 0
        except ValueError as exc:
            self.drop(pending, f"bad request: ValueError: {str(exc)[:200]}")
            return
        if pending.queued:
            pending.deadline = time.monotonic() + QUEUE_DEADLINE

    def expire(self, now: float) -> None:
        for pending in [p for p in self.pending.values() if now >= p.deadline]:
            what = "no worker took it" if pending.queued else f"not complete within {READ_DEADLINE:.0f} s"
            self.drop(pending, f"bad request: {what}")

    def dispatch(self) -> None:
        """Hand complete requests, oldest first, to idle workers."""
        for pending in sorted((p for p in self.pending.values() if p.queued), key=lambda p: p.deadline):
            if not self.spare or not self.hand_over(pending):
                return

    def hand_over(self, pending: Pending) -> bool:
        """Send the connection and its request (in a memfd) to a spare worker; False when none takes it."""
        memfd = os.memfd_create("berth-request", os.MFD_CLOEXEC)
        try:
            view = memoryview(pending.buf)
            while view:
                view = view[os.write(memfd, view):]
            while self.spare:
                pid = min(self.spare - self.fresh or self.spare)  # a warm one first: a fresh one may still prewarm
                self.spare.discard(pid)
                try:
                    socket.send_fds(self.control[pid], [b"r"], [pending.conn.fileno(), memfd])
                except (OSError, KeyError):
                    continue  # gone (reaped soon), or its socket is full: another one
                self.fresh.discard(pid)
                self.busy.add(pid)
                self.drop(pending, None)  # the worker holds the connection now
                return True
            return False
        finally:
            os.close(memfd)

    def watched(self) -> list[Any]:
        """The connections to select on: the ones being read (while the buffer
        budget lasts) and the queued ones (their caller may hang up)."""
        return [p.conn for p in self.pending.values() if p.queued or self.buffered < MAX_BUFFERED]

    # --- a worker ------------------------------------------------------------------

    def serve_one(self, control: socket.socket) -> None:
        """In a worker: wait for the parent to hand over a request, serve it, and
        wait again, one call at a time, until CALLS_PER_WORKER calls, a call that
        did not go normally, the parent's retirement signal, or the parent's end
        (then return, to exit). Reusing a worker keeps its pages and caches warm
        (a fresh fork pays copy-on-write faults on every page a call touches);
        each call still takes and releases its own file locks, as an exec would."""
        retired = False

        def retire(_sig: int, _frame: object) -> None:
            nonlocal retired
            retired = True

        signal.signal(signal.SIGUSR1, retire)
        prewarm(self.own_netns)
        served = 0
        while not retired and served < CALLS_PER_WORKER:
            try:
                watched: list[Any] = [control, self.alive_r]
                ready, _, _ = select.select(watched, [], [], IDLE_POLL_SECONDS)
            except InterruptedError:
                continue
            if self.alive_r in ready:  # the parent stopped or died: take no new call
                return
            if control not in ready:
                continue
            handed = receive(control)
            if handed is None:
                return  # the parent closed our socket
            conn, raw = handed
            with conn:
                if not serve_request(conn, raw, self.own_netns):
                    return
            served += 1
            if served < CALLS_PER_WORKER and not retired:
                with contextlib.suppress(OSError):  # a full pipe: the parent learns it from the exit
                    os.write(self.busy_w, (-os.getpid()).to_bytes(4, "little", signed=True))

    def run(self) -> int:
        lock_fd = take_lock(self.path)
        listener = bind(self.path)
        listener.setblocking(False)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.busy_r, self.busy_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.alive_r, alive_w = os.pipe2(os.O_CLOEXEC)  # EOF for the children when the parent goes
        self.parent_fds = [lock_fd, wake_r, wake_w, self.busy_r, alive_w, listener.fileno()]
        self.child_fds = [self.busy_w, self.alive_r]
        signal.set_wakeup_fd(wake_w)
        from portmap import proxyctl

        proxyctl.AGENT_SERVICE = self.proxy_path  # workers forked from here on ask the service

        def on_stop(_sig: int, _frame: object) -> None:
            self.stop = True

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGCHLD, lambda _s, _f: None)  # only to wake select()
        ino = os.stat(self.path).st_ino
        log(f"listening on {self.path} (state {self.root}, rss {rss_mib():.1f} MiB, "
            f"{self.spare_workers} spare / {self.max_workers} max workers)")
        try:
            while not self.stop:
                self.turn(listener, wake_r)
        finally:
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == ino:  # not a newer agent's socket
                    os.unlink(self.path)
            for pending in list(self.pending.values()):
                self.drop(pending, None)  # not started: their callers run in-process
            os.close(alive_w)  # spare children see EOF and exit; busy ones finish their call
            listener.close()
            os.close(lock_fd)
        log("stopped (in-flight calls finish on their own)")
        return 0

    def turn(self, listener: socket.socket, wake_r: int) -> None:
        """One round of the parent's loop."""
        self.reap()
        self.read_busy()
        self.keep_proxy()
        self.watch_flush()
        self.replenish()
        self.dispatch()
        now = time.monotonic()
        self.expire(now)
        timeout = max(0.0, min(self.next_check - now, 1.0)) if self.check_interval > 0 else 1.0
        if self.pending:
            timeout = max(0.0, min([timeout] + [p.deadline - now for p in self.pending.values()]))
        conns = self.watched()
        try:
            ready, _, _ = select.select([wake_r, self.busy_r, listener, *conns], [], [], timeout)
        except InterruptedError:
            return
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)
        if listener in ready:
            self.accept(listener)
        for conn in conns:
            pending = self.pending.get(conn.fileno()) if conn in ready else None
            if pending is not None:
                self.readable(pending)


def receive(control: socket.socket) -> tuple[socket.socket, bytes] | None:
    """In a worker: the connection and request the parent handed over; None when the parent is gone."""
    try:
        msg, fds, _flags, _addr = socket.recv_fds(control, 16, 2)
    except OSError:
        return None
    if not msg or len(fds) != 2:
        for fd in fds:
            os.close(fd)
        return None
    conn_fd, memfd = fds
    try:
        size = os.fstat(memfd).st_size
        raw = os.pread(memfd, size, 0)
    finally:
        os.close(memfd)
    return socket.socket(fileno=conn_fd), raw


def admit(conn: socket.socket) -> bool:
    """Root callers only (SO_PEERCRED); a refused caller is answered and logged."""
    try:
        uid = peer_uid(conn)
    except OSError:
        return False
    if uid == 0:
        return True
    log(f"refused a caller with uid {uid}: root only")
    with contextlib.suppress(OSError):
        conn.setblocking(False)  # a few bytes: they fit the socket's buffer, or the caller gets nothing
        conn.send(encode_answer(Answer(1, "", "berth agent: root only\n")))
    return False


def main(command: str, argv: list[str]) -> int:
    from cni import state

    parser = argparse.ArgumentParser(
        prog=f"berth {command}",
        description="Serve plugin calls with warm imports on a root-only Unix socket. Plugin executables "
                    "forward to it when it listens and do the work themselves when it does not.",
        epilog="Env: BERTH_AGENT_SOCKET (socket, both sides; 'off' disables forwarding), BERTH_STATE_DIR "
               "(journals, for the flush watcher), BERTH_AGENT_TIMEOUT (client's answer deadline, s).",
    )
    parser.add_argument("--socket", default=agent_path.socket_path(os.environ),
                        help=f"Unix socket path (default {agent_path.DEFAULT_SOCKET})")
    parser.add_argument("--state-dir", default=None, help="journal root (default BERTH_STATE_DIR or "
                                                          f"{state.DEFAULT_ROOT})")
    parser.add_argument("--check-interval", type=float, default=DEFAULT_CHECK_INTERVAL,
                        help="seconds between checks that berth's nft table exists (0: never)")
    parser.add_argument("--max-workers", type=int, default=DEFAULT_MAX_WORKERS,
                        help="concurrent calls; more wait in the socket's backlog")
    parser.add_argument("--spare-workers", type=int, default=DEFAULT_SPARE_WORKERS,
                        help="children forked ahead of the calls, waiting (1..max-workers)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.stderr.write("berth agent: must run as root\n")
        return 1
    if args.socket.lower() in agent_path.DISABLED or args.max_workers < 1 or args.spare_workers < 1:
        parser.error("a socket path, --max-workers >= 1 and --spare-workers >= 1 are required")
    root = args.state_dir or state.state_root()
    started = time.monotonic()
    global OWN_BUILD
    OWN_BUILD = build_identity(own_executable())
    problems = warm_up()
    for problem in problems:
        log(f"warm-up: {problem}")
    import gc

    gc.freeze()  # a child's collections then leave the warm objects' pages shared
    log(f"warm in {(time.monotonic() - started) * 1000:.0f} ms")
    try:
        prepare_dir(args.socket)
        return Agent(args.socket, root, args.check_interval, args.max_workers, args.spare_workers).run()
    except OSError as exc:
        sys.stderr.write(f"berth agent: {args.socket}: {exc.strerror or exc}\n")
        return 1 if exc.errno != errno.EADDRINUSE else 2
