"""Real-kernel test harness: throwaway namespaces and plugin execution inside them.

Every namespace a test makes is called `bt-<run>-<role>` so the session check
(tests/conftest.py) can tell ours from anything else and prove none is left.
Plugins run as executables (the venv entry point or the PyInstaller bundle, see
plugin_dir()) inside the node namespace via setns in the child, exactly like a
runtime would exec them; the test process itself never leaves the host netns.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NETTOOL = str(Path(__file__).resolve().parent / "nettool.py")
SYSTEM_PYTHON = "/usr/bin/python3"
REFERENCE_DIR = "/usr/lib/cni"
# what `make install` links to berth: its own names, and with ALIASES=1 the upstream ones (cni/main.py)
BERTH_NAMES = ("berth", "berth-bridge", "berth-host-local", "berth-portmap", "berth-loopback", "berth-tuning",
               "berth-firewall", "berth-bandwidth")
ALIAS_NAMES = ("bridge", "host-local", "portmap", "loopback", "tuning", "firewall", "bandwidth")
NS_PREFIX = "bt-"


def session_tag() -> str:
    """Names carry the pid of the pytest session that made them (xdist workers
    inherit it), so concurrent sessions never clean up each other's namespaces."""
    tag = os.environ.get("BERTH_TEST_SESSION")
    if not tag:
        tag = str(os.getpid())
        os.environ["BERTH_TEST_SESSION"] = tag
    return tag


def owner_alive(name: str) -> bool:
    """Is the session that made namespace `name` (bt-<pid>-...) still running?"""
    parts = name.split("-")
    if len(parts) < 3 or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cgroup_roots() -> list[Path]:
    """The host's cgroup hierarchies (each v1 controller, or the one v2 tree)."""
    roots = []
    with open("/proc/self/mounts") as fh:
        for line in fh:
            _, mountpoint, fstype = line.split()[:3]
            if fstype in ("cgroup", "cgroup2") and mountpoint.startswith("/sys/fs/cgroup"):
                roots.append(Path(mountpoint))
    return roots


def cgroups_named(prefix: str) -> list[str]:
    """Top-level cgroups (in any hierarchy) whose name starts with `prefix`: where the client tests'
    runtimes put their containers (bt-<session>-...)."""
    return sorted({f"/{d.name}" for root in cgroup_roots() if root.is_dir()
                   for d in root.iterdir() if d.is_dir() and d.name.startswith(prefix)})


CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def setns_net(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def is_root() -> bool:
    return os.geteuid() == 0


def plugin_dir(tmp_root: Path) -> Path:
    """Directory holding berth's executables: BERTH_BIN_DIR (e.g. dist/berth) or
    links to the venv's `berth` entry point, named as the bundle names them."""
    given = os.environ.get("BERTH_BIN_DIR")
    if given:
        return Path(given).resolve()
    entry = ROOT / ".venv" / "bin" / "berth"
    out = tmp_root / "bin"
    out.mkdir(parents=True, exist_ok=True)
    for name in BERTH_NAMES:
        link = out / name
        if not link.exists():
            link.symlink_to(entry)
    return out


def run(argv: list[str], check: bool = True, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return proc


@dataclass
class Netns:
    name: str

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def create(self) -> Netns:
        run(["ip", "netns", "add", self.name])
        self.ip("link", "set", "lo", "up")
        return self

    def remove(self) -> None:
        if os.path.exists(self.path):
            # kill anything a test left running in it, then drop the namespace
            pids = run(["ip", "netns", "pids", self.name], check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            run(["ip", "netns", "del", self.name], check=False)

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["ip", "-n", self.name, *args], check=check)

    def ip_json(self, *args: str) -> Any:
        out = run(["ip", "-j", "-n", self.name, *args]).stdout
        return json.loads(out) if out.strip() else []

    def exec(
        self, argv: list[str], check: bool = True, timeout: float = 60, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        path = self.path
        return run(argv, check=check, timeout=timeout, preexec_fn=lambda: setns_net(path), **kw)

    def popen(self, argv: list[str], **kw: Any) -> subprocess.Popen[str]:
        path = self.path
        return subprocess.Popen(argv, preexec_fn=lambda: setns_net(path), text=True, **kw)

    def sysctl(self, key: str) -> str:
        return self.exec(["cat", "/proc/sys/" + key.replace(".", "/")]).stdout.strip()

    def set_sysctl(self, key: str, value: str) -> None:
        self.exec(["sh", "-c", f"echo {value} > /proc/sys/{key.replace('.', '/')}"])

    def links(self) -> list[str]:
        return [link["ifname"] for link in self.ip_json("link", "show")]

    def addresses(self, ifname: str) -> list[str]:
        out = []
        for link in self.ip_json("addr", "show", "dev", ifname):
            for info in link.get("addr_info", []):
                out.append(f"{info['local']}/{info['prefixlen']}")
        return out

    def nft_table(self, family: str = "inet", table: str = "berth") -> dict[str, Any] | None:
        proc = self.exec(["nft", "-j", "list", "table", family, table], check=False)
        if proc.returncode != 0:
            return None
        return json.loads(proc.stdout)

    def nft_text(self, family: str = "inet", table: str = "berth") -> str:
        return self.exec(["nft", "list", "table", family, table], check=False).stdout

    # --- traffic -----------------------------------------------------------
    @contextlib.contextmanager
    def server(self, port: int, proto: str = "tcp", family: str = "4", banner: str = "hello",
               bind: str = "") -> Iterator[None]:
        """A nettool server; `bind`: an address of its own instead of any (family from it)."""
        if bind:
            family = "6" if ":" in bind else "4"
        env = dict(os.environ, BANNER=banner, SERVE_SECONDS="60", BIND=bind)
        proc = self.popen(
            [SYSTEM_PYTHON, NETTOOL, f"serve-{proto}", str(port), family],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip() == "ready", f"server did not start: {line} {proc.stderr.read() if proc.stderr else ''}"
            yield
        finally:
            proc.kill()
            proc.wait()

    def connect(self, host: str, port: int, proto: str = "tcp", timeout: float = 2,
                source_port: int = 0) -> str | None:
        """The server's answer ("<banner> <peer-ip>") or None when unreachable."""
        argv = [SYSTEM_PYTHON, NETTOOL, proto, host, str(port)]
        if source_port:
            argv.append(str(source_port))
        proc = self.exec(argv, check=False, timeout=timeout + 10,
                         env=dict(os.environ, CLIENT_TIMEOUT=str(timeout)))
        return proc.stdout.strip() if proc.returncode == 0 else None


@dataclass
class PluginResult:
    rc: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout) if self.stdout.strip() else None

    def ok(self) -> Any:
        assert self.rc == 0, f"plugin failed rc={self.rc}: {self.stdout} {self.stderr}"
        return self.json


@dataclass
class Node(Netns):
    """The plugin's host: it holds the bridge, berth's nft table and the sysctls."""

    bin_dir: Path = field(default=Path("."))
    state_dir: Path = field(default=Path("."))
    data_dir: Path = field(default=Path("."))
    children: list[Netns] = field(default_factory=list)

    @property
    def cni_path(self) -> str:
        return f"{self.bin_dir}:{REFERENCE_DIR}"

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "BERTH_STATE_DIR": str(self.state_dir),
            "BERTH_CACHE_DIR": str(self.state_dir.parent / "cni-cache"),  # the runner's libcni cache
            # a developer's own agent must not serve the tests' calls (tests opt in explicitly)
            "BERTH_AGENT_SOCKET": "off",
        }
        env.update(extra)
        return env

    def plugin(
        self,
        plugin: str,
        command: str,
        conf: dict[str, Any] | str | bytes,
        container_id: str = "",
        netns: str = "",
        ifname: str = "eth0",
        cni_args: str = "",
        env: dict[str, str] | None = None,
        plugin_path: str | None = None,
        timeout: float = 60,
    ) -> PluginResult:
        if isinstance(conf, dict):
            data = json.dumps(conf).encode()
        else:
            data = conf if isinstance(conf, bytes) else conf.encode()
        full_env = self.env(
            CNI_COMMAND=command, CNI_CONTAINERID=container_id, CNI_NETNS=netns,
            CNI_IFNAME=ifname, CNI_ARGS=cni_args, CNI_PATH=self.cni_path,
        )
        full_env.update(env or {})
        exe = plugin_path or str(self.bin_dir / plugin)
        path = self.path
        proc = subprocess.run(
            [exe], input=data, capture_output=True, env=full_env, timeout=timeout, check=False,
            preexec_fn=lambda: setns_net(path), cwd="/",
        )
        return PluginResult(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))

    def berth(self, *argv: str, env: dict[str, str] | None = None, input: str | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the `berth` CLI inside the node namespace."""
        full_env = self.env(CNI_PATH=self.cni_path)
        full_env.update(env or {})
        return self.exec([str(self.bin_dir / "berth"), *argv], check=False, env=full_env, input=input,
                         timeout=timeout, cwd="/")

    def container(self, role: str = "") -> Netns:
        ns = Netns(f"{self.name}-c{role or len(self.children)}").create()
        self.children.append(ns)
        return ns

    def remove(self) -> None:
        for child in self.children:
            child.remove()
        super().remove()


class Topology:
    """node + an "outside" namespace linked to it; containers are made on demand.

    outside (198.51.100.2/24, fd00:5::2/64) <-veth-> node (198.51.100.1/24, fd00:5::1/64)
    The node's default route points at outside, so container egress leaves that way.
    """

    NODE_V4 = "198.51.100.1"
    OUTSIDE_V4 = "198.51.100.2"
    NODE_V6 = "fd00:5::1"
    OUTSIDE_V6 = "fd00:5::2"

    def __init__(self, tmp: Path, bin_dir: Path) -> None:
        run_id = f"{session_tag()}-{secrets.token_hex(3)}"
        self.tmp = tmp
        self.node = Node(f"{NS_PREFIX}{run_id}-node", bin_dir=bin_dir,
                         state_dir=tmp / "state", data_dir=tmp / "ipam")
        self.outside = Netns(f"{NS_PREFIX}{run_id}-out")
        self._made: list[Netns] = []

    def build(self) -> Topology:
        self.node.create()
        self._made.append(self.node)
        self.outside.create()
        self._made.append(self.outside)
        n, o = self.node, self.outside
        n.ip("link", "add", "o-node", "type", "veth", "peer", "name", "o-out", "netns", o.name)
        n.set_sysctl("net.ipv6.conf.o-node.accept_dad", "0")
        o.set_sysctl("net.ipv6.conf.o-out.accept_dad", "0")
        n.ip("addr", "add", f"{self.NODE_V4}/24", "dev", "o-node")
        n.ip("addr", "add", f"{self.NODE_V6}/64", "dev", "o-node", "nodad")
        o.ip("addr", "add", f"{self.OUTSIDE_V4}/24", "dev", "o-out")
        o.ip("addr", "add", f"{self.OUTSIDE_V6}/64", "dev", "o-out", "nodad")
        n.ip("link", "set", "o-node", "up")
        o.ip("link", "set", "o-out", "up")
        n.ip("route", "add", "default", "via", self.OUTSIDE_V4)
        n.ip("-6", "route", "add", "default", "via", self.OUTSIDE_V6)
        self.node.state_dir.mkdir(parents=True, exist_ok=True)
        self.node.data_dir.mkdir(parents=True, exist_ok=True)
        return self

    def container(self, role: str = "") -> Netns:
        return self.node.container(role)

    def destroy(self) -> None:
        for ns in reversed(self._made):
            ns.remove()
        shutil.rmtree(self.tmp, ignore_errors=True)


def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def bridge_conf(name: str = "testnet", subnet: str = "10.88.0.0/24", *, version: str = "1.0.0",
                bridge: str = "bt0", **extra: Any) -> dict[str, Any]:
    """A berth-bridge + berth-host-local config of the shape the upstream docs show."""
    ipam: dict[str, Any] = {"type": "berth-host-local", "ranges": [[{"subnet": subnet}]],
                            "routes": [{"dst": "0.0.0.0/0"}]}
    conf: dict[str, Any] = {
        "cniVersion": version, "name": name, "type": "berth-bridge", "bridge": bridge,
        "isGateway": True, "ipMasq": True, "ipam": ipam,
    }
    conf.update(extra)
    return conf


def journal_path(state_dir: Path, network: str, container_id: str, ifname: str = "eth0") -> Path:
    """An attachment's journal file: today's name, or an older berth's where only that exists."""
    from cni import state

    directory = state_dir / network
    current = directory / state.journal_name(container_id, ifname)
    legacy = directory / state.legacy_journal_name(container_id, ifname)
    return legacy if legacy.exists() and not current.exists() else current
