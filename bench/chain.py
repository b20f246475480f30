"""The benchmarked conflist and a chain runner that execs plugins as libcni does.

ADD runs the plugins in order, each getting the previous result as prevResult
and, when it declares the capability, runtimeConfig.portMappings; DEL runs them
in reverse with the ADD's result as prevResult (libcni's cached result). Every
exec is timed on its own, so one chain ADD also yields the per-plugin split. A
failing exec is recorded, never raised: the bench reports errors, it does not crash.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CNI_VERSION = "1.0.0"
NETWORK = "benchnet"
SUBNET = "10.99.0.0/20"  # 4,094 addresses: room for 1,000+ attachments per node
BRIDGE = "bench0"
EXEC_TIMEOUT = 120.0


@dataclass(frozen=True)
class Mode:
    name: str  # "berth", "ref"
    bin_dir: Path
    bridge: str
    ipam: str
    portmap: str
    origin: str  # where the executables come from, for the report
    in_process_ipam: bool  # IPAM runs inside the bridge process (no extra exec)
    agent: bool = False  # a `berth agent` in the node namespace serves the calls

    def conflist(self, data_dir: Path) -> dict[str, Any]:
        return {
            "cniVersion": CNI_VERSION,
            "name": NETWORK,
            "plugins": [
                {
                    "type": self.bridge, "bridge": BRIDGE, "isGateway": True, "ipMasq": True,
                    "ipam": {"type": self.ipam, "ranges": [[{"subnet": SUBNET}]],
                             "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(data_dir)},
                },
                {"type": self.portmap, "capabilities": {"portMappings": True}, "snat": True},
            ],
        }


@dataclass
class Exec:
    plugin: str
    command: str
    rc: int
    seconds: float
    stdout: str
    stderr: str
    phases: dict[str, float] = field(default_factory=dict)  # ms, with BERTH_PHASES=1 (cni/phases.py)

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def error_text(self) -> str:
        text = self.stdout.strip() or self.stderr.strip() or f"exit {self.rc}"
        try:
            parsed = json.loads(self.stdout)
            text = f"code {parsed.get('code')}: {parsed.get('msg')} {parsed.get('details', '')}".strip()
        except (ValueError, AttributeError):
            pass
        return f"{self.plugin} {self.command}: {text}"[:400]


@dataclass
class ChainOutcome:
    ok: bool
    seconds: float
    execs: list[Exec] = field(default_factory=list)
    result: dict[str, Any] | None = None
    error: str = ""

    def plugin_seconds(self, plugin: str) -> float | None:
        times = [e.seconds for e in self.execs if e.plugin == plugin]
        return sum(times) if times else None


def exec_plugin(exe: Path, command: str, conf: dict[str, Any], env: dict[str, str], plugin: str) -> Exec:
    """Exec one plugin (in the calling thread's netns) and time it."""
    data = json.dumps(conf).encode()
    if env.get("BERTH_PHASES"):
        env = dict(env, BERTH_T0=str(time.monotonic_ns()))
    start = time.perf_counter()
    try:
        proc = subprocess.run([str(exe)], input=data, env=env, capture_output=True, timeout=EXEC_TIMEOUT,
                              check=False, cwd="/")
        rc, out, err = proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    except subprocess.TimeoutExpired:
        rc, out, err = -1, "", f"timed out after {EXEC_TIMEOUT:.0f}s"
    except OSError as exc:
        rc, out, err = -1, "", f"cannot exec {exe}: {exc}"
    seconds = time.perf_counter() - start
    return Exec(plugin, command, rc, seconds, out, err, phases_of(err, seconds))


def phases_of(stderr: str, seconds: float) -> dict[str, float]:
    """The `berth-phases {...}` line of a plugin's stderr (cni/phases.py), with what the
    process took after its last mark as "exit"; {} when there is none."""
    for line in stderr.splitlines():
        if line.startswith("berth-phases "):
            try:
                found = {str(k): float(v) for k, v in json.loads(line[len("berth-phases "):]).items()}
            except (ValueError, AttributeError):
                return {}
            found["exit"] = round(max(0.0, seconds * 1000 - sum(found.values())), 3)
            return found
    return {}


class Chain:
    """One mode's conflist, run against one node namespace's state and data dirs."""

    def __init__(self, mode: Mode, work: Path) -> None:
        self.mode = mode
        self.state_dir = work / "state"
        self.data_dir = work / "ipam"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.conflist = mode.conflist(self.data_dir)
        # berth modes name their agent explicitly: "off" (no such socket) keeps standalone
        # calls from reaching some agent listening at the default path
        self.agent_socket = str(work / "agent.sock") if mode.agent else "off"
        self.phases = False  # BERTH_PHASES=1 on the execs: the cold-path breakdown (bench/run.py)

    def env(self, command: str, container_id: str, netns: str) -> dict[str, str]:
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",  # the reference portmap execs iptables from PATH
            "CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
            "CNI_IFNAME": "eth0", "CNI_ARGS": "", "CNI_PATH": str(self.mode.bin_dir),
            "BERTH_STATE_DIR": str(self.state_dir), "BERTH_AGENT_SOCKET": self.agent_socket,
        }
        if self.phases:
            env["BERTH_PHASES"] = "1"
        return env

    def _plugin_conf(self, plugin: dict[str, Any], prev: dict[str, Any] | None,
                     mappings: list[dict[str, Any]]) -> dict[str, Any]:
        conf = dict(plugin, name=self.conflist["name"], cniVersion=self.conflist["cniVersion"])
        if prev is not None:
            conf["prevResult"] = prev
        if plugin.get("capabilities", {}).get("portMappings"):
            conf["runtimeConfig"] = {"portMappings": mappings}
        return conf

    def add(self, container_id: str, netns: str, mappings: list[dict[str, Any]]) -> ChainOutcome:
        start = time.perf_counter()
        out = ChainOutcome(ok=True, seconds=0.0)
        prev: dict[str, Any] | None = None
        for plugin in self.conflist["plugins"]:
            conf = self._plugin_conf(plugin, prev, mappings)
            ex = exec_plugin(self.mode.bin_dir / plugin["type"], "ADD", conf,
                             self.env("ADD", container_id, netns), plugin["type"])
            out.execs.append(ex)
            if not ex.ok:
                out.ok, out.error = False, ex.error_text()
                break
            try:
                prev = json.loads(ex.stdout)
            except ValueError:
                out.ok, out.error = False, f"{plugin['type']} ADD printed no JSON: {ex.stdout[:200]}"
                break
        out.seconds = time.perf_counter() - start
        out.result = prev if out.ok else None
        return out

    def delete(self, container_id: str, netns: str, mappings: list[dict[str, Any]],
               prev: dict[str, Any] | None) -> ChainOutcome:
        start = time.perf_counter()
        out = ChainOutcome(ok=True, seconds=0.0)
        for plugin in reversed(self.conflist["plugins"]):
            conf = self._plugin_conf(plugin, prev, mappings)
            ex = exec_plugin(self.mode.bin_dir / plugin["type"], "DEL", conf,
                             self.env("DEL", container_id, netns), plugin["type"])
            out.execs.append(ex)
            if not ex.ok and out.ok:  # keep going, as runtimes do: DEL is best effort
                out.ok, out.error = False, ex.error_text()
        out.seconds = time.perf_counter() - start
        return out

    def ipam(self, command: str, container_id: str, netns: str) -> Exec:
        """The IPAM plugin exec'd on its own, with the network config as a runtime would pass it."""
        bridge = self.conflist["plugins"][0]
        conf = dict(bridge, name=self.conflist["name"], cniVersion=self.conflist["cniVersion"])
        return exec_plugin(self.mode.bin_dir / self.mode.ipam, command, conf,
                           self.env(command, container_id, netns), self.mode.ipam)

    def version(self, plugin: str) -> Exec:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": "VERSION"}
        return exec_plugin(self.mode.bin_dir / plugin, "VERSION", {"cniVersion": CNI_VERSION}, env, plugin)


def addresses(result: dict[str, Any] | None) -> list[str]:
    if not result:
        return []
    return [str(ip.get("address", "")).split("/")[0] for ip in result.get("ips", [])]


def mappings_for(first_port: int, count: int = 2) -> list[dict[str, Any]]:
    """`count` TCP hostPorts from first_port, to container ports 8080, 8081, ..."""
    return [{"hostPort": first_port + i, "containerPort": 8080 + i, "protocol": "tcp"} for i in range(count)]


def python_pass() -> Exec:
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/python3", "-c", "pass"], capture_output=True, check=False, env={}, cwd="/")
    return Exec("python3", "-c pass", proc.returncode, time.perf_counter() - start, "", "")


def ensure_links(entry: Path, out: Path, names: tuple[str, ...]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        link = out / name
        if not link.exists():
            os.symlink(entry, link)
    return out
