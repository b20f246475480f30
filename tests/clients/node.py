"""A container runtime's node: the test's node network namespace plus a private mount namespace.

The runtime (podman, containerd, ctr) and every plugin it execs run inside both. In the mount
namespace the places where a node keeps runtime and CNI state are the test's own directories, so a
runtime left at its defaults writes nothing on the host, and berth's defaults are what is tested:

  /run            ROOT/run            runtime sockets and state, pod netns files, berth's agent socket
  /var            ROOT/var            /var/lib/cni: berth's journals (berth/), IPAM leases (networks/), libcni's
                                      cache; /var/lib/containers, /var/lib/containerd, /var/tmp
  /etc/cni/net.d  ROOT/etc/cni/net.d
  /dev/shm        a tmpfs             podman's lock segment is named, not per storage root
  /usr/lib/cni    an empty directory  unless a plugin source lives there: the runtime gets only its plugin dir

plus what a driver adds (its config dir, /opt/cni/bin). The mounts are slaves of the host's and
vanish with the namespace. Containers are kept under a cgroup parent of their own, so whatever a
runtime leaves running is found and killed by close().
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests import harness

NSHOLDER = str(Path(__file__).resolve().parent / "nsholder.py")
CLONE_NEWNS = 0x00020000
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REFERENCE_DIR = Path(harness.REFERENCE_DIR)
# whole /run and /var: their subdirectories need not exist on the host, and are not made there
STATE_DIRS = ("/run", "/var", "/etc/cni/net.d")
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Bind:
    """`inside` shows the host directory `source` (made if missing)."""

    source: Path
    inside: str


def _setns(path: str, flag: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, flag) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


class NodeHost:
    """Run commands in the node's network namespace and the private mount namespace described above."""

    def __init__(self, node: harness.Netns, root: Path, binds: Sequence[Bind] = (),
                 plugin_sources: Iterable[Path] = ()) -> None:
        self.node = node
        self.root = root
        self.cgroup_parent = f"/{harness.NS_PREFIX}{harness.session_tag()}-{secrets.token_hex(3)}"
        self.binds = [Bind(root / d.lstrip("/"), d) for d in STATE_DIRS] + list(binds)
        self._hide_reference = not any(REFERENCE_DIR in (Path(p).resolve(), *Path(p).resolve().parents)
                                       for p in plugin_sources)
        self._holder: subprocess.Popen[str] | None = None

    # --- paths ---------------------------------------------------------------
    def path(self, inside: str) -> Path:
        """The host-side path of `inside` as the node sees it (through the longest matching bind)."""
        best: Bind | None = None
        for bind in self.binds:
            if (inside == bind.inside or inside.startswith(bind.inside.rstrip("/") + "/")) and (
                    best is None or len(bind.inside) > len(best.inside)):
                best = bind
        if best is None:
            return Path(inside)
        return best.source / os.path.relpath(inside, best.inside)

    @property
    def started(self) -> bool:
        return self._holder is not None

    @property
    def tmp(self) -> str:
        return "/run/tmp"

    # --- life cycle ----------------------------------------------------------
    def start(self) -> NodeHost:
        ops: list[list[str]] = [["tmpfs", "/dev/shm", "1777"]]
        if any(b.inside.startswith("/opt/") for b in self.binds):
            # mount points there (/opt/cni/bin) may not exist on the host, and are not made there
            ops.append(["tmpfs", "/opt", "755"])
        for bind in self.binds:
            bind.source.mkdir(parents=True, exist_ok=True)
            if bind.inside.startswith("/opt/"):
                ops.append(["mkdir", bind.inside])
            ops.append(["bind", str(bind.source), bind.inside])
        if self._hide_reference and REFERENCE_DIR.is_dir():
            empty = self.root / "empty"
            empty.mkdir(parents=True, exist_ok=True)
            ops.append(["bind", str(empty), str(REFERENCE_DIR)])
        self._skeleton()
        self._holder = subprocess.Popen(
            [harness.SYSTEM_PYTHON, NSHOLDER, self.node.path, json.dumps(ops)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={"PATH": PATH})
        assert self._holder.stdout is not None
        line = self._holder.stdout.readline()
        if line.strip() != "ready":
            self._holder.kill()
            _, err = self._holder.communicate()
            raise AssertionError(f"node mount namespace not set up: {line}{err}")
        return self

    def _skeleton(self) -> None:
        var = self.path("/var")
        for sub in ("lib/cni", "lib/containers", "lib/containerd", "log", "cache"):
            (var / sub).mkdir(parents=True, exist_ok=True)
        for sub in ("tmp", "lock"):
            self.path(f"/run/{sub}").mkdir(parents=True, exist_ok=True)
        (var / "tmp").mkdir(exist_ok=True)
        (var / "tmp").chmod(0o1777)
        for name, target in (("run", "/run"), ("lock", "/run/lock")):
            if not (var / name).is_symlink():
                (var / name).symlink_to(target)
        for bind in self.binds:
            if not os.path.isdir(bind.inside) and not bind.inside.startswith("/opt/"):
                raise AssertionError(f"mount point {bind.inside} missing on this host (run 'make client-deps')")

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """A clean environment: nothing of the test's own (proxies, BERTH_*, PYTHON*) reaches the runtime."""
        env = {"PATH": PATH, "HOME": "/root", "TMPDIR": self.tmp, "LANG": "C.UTF-8"}
        env.update(extra or {})
        return env

    def _enter(self) -> Any:
        assert self._holder is not None, "start() first"
        pid = self._holder.pid

        def enter() -> None:
            _setns(f"/proc/{pid}/ns/net", harness.CLONE_NEWNET)
            _setns(f"/proc/{pid}/ns/mnt", CLONE_NEWNS)
            os.chdir("/")

        return enter

    def run(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, input: str | None = None,
            timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, env=self.env(env),
                              timeout=timeout, check=False, preexec_fn=self._enter())
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc

    def run_binary(self, argv: Sequence[str], data: bytes, *,
                   timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(list(argv), input=data, capture_output=True, env=self.env(), timeout=timeout,
                              check=False, preexec_fn=self._enter())

    def popen(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, **kw: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(list(argv), env=self.env(env), text=True, preexec_fn=self._enter(), **kw)

    def close(self) -> list[str]:
        """Kill what is still running in this node (containers under the cgroup parent, then every process in
        the mount namespace), remove the cgroups and the namespace. Returns what had to be killed."""
        killed = self._kill_mount_namespace() if self._holder is not None else []
        killed += remove_cgroup(self.cgroup_parent)
        if self._holder is not None:
            with contextlib.suppress(BrokenPipeError, OSError):
                assert self._holder.stdin is not None
                self._holder.stdin.close()
            try:
                self._holder.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._holder.kill()
                self._holder.wait()
            self._holder = None
        return killed

    def _kill_mount_namespace(self) -> list[str]:
        assert self._holder is not None
        mine = os.readlink(f"/proc/{self._holder.pid}/ns/mnt")
        killed = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == self._holder.pid:
                continue
            try:
                if os.readlink(f"/proc/{entry}/ns/mnt") != mine:
                    continue
                killed.append(f"{entry} ({_comm(int(entry))})")
                os.kill(int(entry), signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
        return killed


def remove_cgroup(name: str, timeout: float = 10) -> list[str]:
    """Kill every process in cgroup `name` and below, in every hierarchy, and remove those cgroups.
    Returns what had to be killed."""
    killed: dict[str, str] = {}
    tops = [root / name.lstrip("/") for root in harness.cgroup_roots()]
    deadline = time.monotonic() + timeout
    while True:
        busy = False
        for top in tops:
            if not top.is_dir():
                continue
            for cg, _, _ in os.walk(top, topdown=False):
                with contextlib.suppress(OSError):
                    for pid in Path(cg, "cgroup.procs").read_text().split():
                        killed.setdefault(pid, f"{pid} ({_comm(int(pid))}) in {cg}")
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
                try:
                    os.rmdir(cg)
                except FileNotFoundError:
                    pass
                except OSError:
                    busy = True  # its processes are still exiting
        if not busy or time.monotonic() > deadline:
            return list(killed.values())
        time.sleep(0.1)


def remove_stale_cgroups() -> None:
    """Node cgroups of test sessions that are gone (an interrupted run's containers)."""
    for name in harness.cgroups_named(harness.NS_PREFIX):
        if re.fullmatch(rf"/{harness.NS_PREFIX}\d+-[0-9a-f]{{6}}", name) and not harness.owner_alive(name[1:]):
            remove_cgroup(name)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"
