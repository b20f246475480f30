"""Namespaces of one bench run and thread pools that live inside them.

Every namespace is named `bb-<run>-<role>` and recorded in a registry that
removes them all at the end, on failure and on Ctrl-C/SIGTERM alike. Plugins
are exec'd from worker threads that `setns`ed into a node namespace once at
start (netns membership is per thread on Linux, and a child inherits its
creating thread's), so timed execs pay no extra fork hook and the bench
process itself never leaves, nor changes, the host namespace.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from tests.harness import Netns, run, setns_net

T = TypeVar("T")
NS_PREFIX = "bb-"
NODE_V4 = "198.51.100.1"
OUTSIDE_V4 = "198.51.100.2"


def ip_batch(lines: list[str], netns: str | None = None) -> None:
    """Many `ip` commands in one exec (`ip -batch`): 1,000 namespaces in a second."""
    if not lines:
        return
    argv = ["ip", "-force", "-batch", "-"]
    if netns:
        argv[1:1] = ["-n", netns]
    subprocess.run(argv, input="\n".join(lines) + "\n", capture_output=True, text=True, check=False, timeout=600)


def stale_namespaces() -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return sorted(line.split()[0] for line in out.splitlines() if line.startswith(NS_PREFIX))


class Registry:
    """Everything one run made: namespaces, servers, pools, a temp dir."""

    def __init__(self) -> None:
        self.run_id = secrets.token_hex(3)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"berth-bench-{self.run_id}-"))
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[Any]] = []
        self.pools: list[ThreadPoolExecutor] = []

    def name(self, role: str) -> str:
        return f"{NS_PREFIX}{self.run_id}-{role}"

    def make_namespaces(self, names: list[str]) -> list[Netns]:
        self.namespaces.extend(names)  # registered first: a half-done batch is still removed
        ip_batch([f"netns add {n}" for n in names])
        for n in names:
            if not os.path.exists(f"/run/netns/{n}"):
                raise RuntimeError(f"could not create namespace {n}")
        return [Netns(n) for n in names]

    def remove_namespaces(self, names: list[str]) -> None:
        gone = set(names)
        ip_batch([f"netns del {n}" for n in names])
        self.namespaces = [n for n in self.namespaces if n not in gone]

    def pool(self, netns: Netns, workers: int) -> ThreadPoolExecutor:
        pool = ThreadPoolExecutor(max_workers=workers, initializer=setns_net, initargs=(netns.path,),
                                  thread_name_prefix=netns.name)
        self.pools.append(pool)
        return pool

    def popen(self, netns: Netns, argv: list[str], **kw: Any) -> subprocess.Popen[str]:
        path = netns.path
        proc = subprocess.Popen(argv, preexec_fn=lambda: setns_net(path), text=True, **kw)
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.kill()
                proc.wait(timeout=5)
        for pool in self.pools:
            pool.shutdown(wait=True, cancel_futures=True)
        # kill anything still running inside our namespaces, then drop them
        for name in self.namespaces:
            pids = run(["ip", "netns", "pids", name], check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
        self.remove_namespaces(list(self.namespaces))
        left = [n for n in stale_namespaces() if n.startswith(self.name(""))]
        if left:  # a second attempt, one by one
            for n in left:
                run(["ip", "netns", "del", n], check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


def call(pool: ThreadPoolExecutor, fn: Any, *args: Any, **kw: Any) -> Any:
    fut: Future[Any] = pool.submit(fn, *args, **kw)
    return fut.result()


def link_node(reg: Registry, node: Netns, outside: Netns) -> None:
    """outside (198.51.100.2/24) <-veth-> node (198.51.100.1/24); node's default route via outside."""
    node.ip("link", "set", "lo", "up")
    outside.ip("link", "set", "lo", "up")
    node.ip("link", "add", "o-node", "type", "veth", "peer", "name", "o-out", "netns", outside.name)
    node.ip("addr", "add", f"{NODE_V4}/24", "dev", "o-node")
    outside.ip("addr", "add", f"{OUTSIDE_V4}/24", "dev", "o-out")
    node.ip("link", "set", "o-node", "up")
    outside.ip("link", "set", "o-out", "up")
    node.ip("route", "add", "default", "via", OUTSIDE_V4)
