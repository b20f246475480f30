"""The real libcni in the client tests: its cnitool-like driver, plugin call logs, client runs.

The driver (tests/clients/libcni/main.go, built by build.sh against Debian's
golang-github-appc-cni-dev) is exactly what containerd, kubelet's go-cni,
nerdctl and cnitool link: version choice, runtimeConfig injection, the result
cache replayed as prevResult, DEL in reverse. berth's own runner (`berth
add|check|del`) re-implements that in Python; both are driven here through one
Client interface so a test can run the same list through each and compare.

Every plugin of a list is reached through a small sh wrapper (first on
CNI_PATH) that records its stdin, its CNI_* environment, its stdout and exit
status, then runs the real executable. IPAM types are not wrapped: berth runs
its own IPAM in-process and a wrapper would turn that into an exec.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import harness

SRC_DIR = harness.ROOT / "tests" / "clients" / "libcni"
BUILD_DIR = harness.ROOT / "build" / "libcni-driver"
DRIVER = BUILD_DIR / "berth-libcni"
# the environment libcni's invoke package sets for every plugin exec
CNI_ENV = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_ARGS", "CNI_IFNAME", "CNI_PATH")
BERTH_NAMES = harness.BERTH_NAMES
UPSTREAM_ALIASES = harness.ALIAS_NAMES  # `make install ALIASES=1`
FAIL_TYPE = "test-fail-add"
FAIL_MSG, FAIL_DETAILS = "refusing ADD", "test plugin"

_MAC = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$")
_VETH = re.compile(r"^veth[0-9a-f]{8}$")

_WRAPPER = """#!/bin/sh
# records one CNI call, then runs the real plugin on the same stdin
log='{log}'
n=$(date +%s%N).$$
cat > "$log/$n.stdin"
env | grep '^CNI_' > "$log/$n.env"
'{real}' < "$log/$n.stdin" > "$log/$n.stdout"
rc=$?
echo '{name}' "$rc" > "$log/$n.rc"
cat "$log/$n.stdout"
exit $rc
"""

# fails every ADD with a CNI error; DEL and CHECK succeed (a plugin with nothing to undo) unless
# CNI_ARGS holds FAIL=DEL or FAIL=CHECK
_FAIL_PLUGIN = f"""#!/bin/sh
cat > /dev/null
fail() {{ printf '{{"cniVersion":"1.0.0","code":100,"msg":"refusing %s","details":"{FAIL_DETAILS}"}}' "$1"; exit 1; }}
case "$CNI_COMMAND" in
ADD) fail ADD;;
DEL|CHECK) case ";$CNI_ARGS;" in *";FAIL=$CNI_COMMAND;"*) fail "$CNI_COMMAND";; esac;;
VERSION) printf '{{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}}';;
esac
exit 0
"""


def build_driver() -> Path:
    """Build (or let Go's cache find up to date) the driver; skip when Go or libcni is missing."""
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    # xdist workers share the output path: one build at a time
    with open(BUILD_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.run([str(SRC_DIR / "build.sh"), str(DRIVER)], capture_output=True, text=True,
                              timeout=600, check=False)
    if proc.returncode == 3:
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, f"building the libcni driver failed:\n{proc.stdout}{proc.stderr}"
    return DRIVER


def driver_version(driver: Path) -> str:
    """e.g. "libcni 1.1.2-1 (spec 1.0.0)": Debian's package version, as build.sh embeds it."""
    return harness.run([str(driver), "version"]).stdout.strip()


def container_id(netns: str) -> str:
    """cnitool's container ID for a netns path (both clients derive it the same way)."""
    return "cnitool-" + hashlib.sha512(os.path.abspath(netns).encode()).hexdigest()[:20]


# --- plugin directories and the call log ------------------------------------------------------------
@dataclass
class Call:
    plugin: str
    command: str
    env: dict[str, str]  # the CNI_* variables libcni sets
    stdin: dict[str, Any]
    stdout: str
    rc: int


class Plugins:
    """A CNI_PATH whose first directory wraps the given plugin types with the call recorder."""

    def __init__(self, tmp: Path, bin_dir: Path, types: set[str]) -> None:
        self.wrappers = tmp / "wrappers"
        self.real = tmp / "real"
        self.log_dir = tmp / "calls"
        for directory in (self.wrappers, self.real, self.log_dir):
            directory.mkdir(parents=True, exist_ok=True)
        target = os.path.realpath(bin_dir / "berth")
        # berth's names plus the upstream ones (the drop-in list), all the one multi-call executable
        for name in (*BERTH_NAMES, *UPSTREAM_ALIASES):
            (self.real / name).symlink_to(target)
        fail = self.real / FAIL_TYPE
        fail.write_text(_FAIL_PLUGIN)
        fail.chmod(0o755)
        for name in sorted(types):
            real = self.real / name if (self.real / name).exists() else Path(harness.REFERENCE_DIR) / name
            if not real.exists():  # left unwrapped: the clients' own "not found" is under test
                continue
            wrapper = self.wrappers / name
            wrapper.write_text(_WRAPPER.format(log=self.log_dir, real=real, name=name))
            wrapper.chmod(0o755)

    @property
    def cni_path(self) -> str:
        return f"{self.wrappers}:{self.real}:{harness.REFERENCE_DIR}"

    def calls(self) -> list[Call]:
        out = []
        for rc_file in sorted(self.log_dir.glob("*.rc"), key=lambda p: [int(x) for x in p.stem.split(".")]):
            stem = self.log_dir / rc_file.stem
            name, rc = rc_file.read_text().split()
            env = dict(line.split("=", 1) for line in Path(f"{stem}.env").read_text().splitlines() if "=" in line)
            out.append(Call(plugin=name, command=env.get("CNI_COMMAND", ""),
                            env={k: env.get(k, "") for k in CNI_ENV},
                            stdin=json.loads(Path(f"{stem}.stdin").read_bytes()),
                            stdout=Path(f"{stem}.stdout").read_text(), rc=int(rc)))
        return out

    def take_calls(self) -> list[Call]:
        """The calls recorded so far; the log starts afresh."""
        calls = self.calls()
        for path in self.log_dir.iterdir():
            path.unlink()
        return calls


def plugin_types(conf: dict[str, Any]) -> set[str]:
    return {str(p["type"]) for p in conf.get("plugins", [conf])}


# --- configuration ---------------------------------------------------------------------------------------
def adjust(conf: dict[str, Any], tag: str, data_dir: Path, version: str | None = None) -> dict[str, Any]:
    """A copy of an example list with its own name and subnets (10.202.* -> 10.203.*, fd00:202: ->
    fd00:203:), leases in `data_dir` and, when given, another cniVersion."""
    text = json.dumps(conf).replace('"10.202.', '"10.203.').replace('"fd00:202:', '"fd00:203:')
    out: dict[str, Any] = json.loads(text)
    out["name"] = f"{conf['name']}-{tag}"
    if version is not None:
        out["cniVersion"] = version
    for plugin in out.get("plugins", [out]):
        if isinstance(plugin.get("ipam"), dict):
            plugin["ipam"]["dataDir"] = str(data_dir)
    return out


def write_netconf(directory: Path, filename: str, conf: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    path.write_text(json.dumps(conf, indent=2) + "\n")
    return path


# --- clients ---------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    rc: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout) if self.stdout.strip() else None

    def ok(self) -> Any:
        assert self.rc == 0, f"failed ({self.rc}): {self.stdout}{self.stderr}"
        return self.json


@dataclass
class Client:
    """libcni's driver or berth's runner, cnitool's command line for both, with its own cache dir."""

    name: str  # "libcni" or "berth"
    executable: Path
    cache_dir: Path

    def run(self, node: harness.Node, verb: str, network: str, netns: str, env: dict[str, str]) -> Outcome:
        cache = {"CNI_CACHE_DIR": str(self.cache_dir)} if self.name == "libcni" else {
            "BERTH_CACHE_DIR": str(self.cache_dir)}
        proc = node.exec([str(self.executable), verb, network, netns], check=False,
                         env=node.env(**env, **cache), timeout=120, cwd="/")
        return Outcome(proc.returncode, proc.stdout, proc.stderr)

    def cache_file(self, network: str, netns: str, ifname: str = "eth0") -> Path:
        return self.cache_dir / "results" / f"{network}-{container_id(netns)}-{ifname}"

    def cache_entry(self, network: str, netns: str, ifname: str = "eth0") -> dict[str, Any]:
        """The cached attachment, its base64 "config" decoded to text."""
        entry: dict[str, Any] = json.loads(self.cache_file(network, netns, ifname).read_text())
        entry["config"] = base64.b64decode(entry["config"]).decode()
        return entry

    def error(self, outcome: Outcome) -> str:
        """The failure as the client reports it: libcni's error string (cnitool prints it on stderr),
        or berth's CNI error JSON on stdout, msg and details joined as libcni's types.Error does."""
        if self.name == "libcni":
            return outcome.stderr.strip()
        err = json.loads(outcome.stdout)
        return str(err["msg"]) + (f"; {err['details']}" if err.get("details") else "")


def normalise(value: Any) -> Any:
    """Random per-attachment values (MACs, host veth names) replaced, so two attachments compare."""
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    if isinstance(value, str) and _MAC.match(value):
        return "<mac>"
    if isinstance(value, str) and _VETH.match(value):
        return "<veth>"
    return value


def call_summary(calls: list[Call]) -> list[tuple[str, str, int]]:
    return [(c.plugin, c.command, c.rc) for c in calls]


def comparable_calls(calls: list[Call]) -> list[dict[str, Any]]:
    return [normalise({"plugin": c.plugin, "rc": c.rc, "env": c.env, "stdin": c.stdin,
                       "stdout": json.loads(c.stdout) if c.stdout.strip() else None}) for c in calls]


def reset_allocator(data_dir: Path) -> None:
    """Forget host-local's last-reserved hint, so the next client's ADD gets the address the previous
    one had (both start from the same allocator state; the leases themselves are checked gone)."""
    for path in data_dir.rglob("last_reserved_ip*"):
        path.unlink()
