"""Helpers for the real-client tests: example conflists, leftovers, the realclient scripts.

The podman and containerd tests drive the offline smoke scripts in
../shared/realclient (beside the checkout in CI). Those scripts put every plugin
behind a logging wrapper, run the runtime inside their own rc-* namespaces and
leave behind, in their work dir, every CNI call (calls.jsonl) and `nft list
ruleset` dumps taken after ADD and after DEL inside the node namespace. We add
berth's own "nothing left" checks on top: journal files (BERTH_STATE_DIR, which
the runtimes pass through to the plugins), IPAM leases (ipam.dataDir redirected
into the test's tmp dir) and per-attachment chains / map elements in
`table inet berth`.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import harness

CONF_DIR = harness.ROOT / "conf"
REFERENCE_DIR = harness.REFERENCE_DIR
# CI checks the project out beside ../shared; BERTH_REALCLIENT_DIR overrides.
REALCLIENT_DIR = Path(os.environ.get("BERTH_REALCLIENT_DIR") or harness.ROOT.parent / "shared" / "realclient")
SCRIPT_LOCK = "/tmp/berth-realclient.lock"
# Per-attachment chains: upstream's names, "CNI-" + 24 hex / "CNI-DN-" + 21 hex.
_ATTACHMENT_CHAIN = re.compile(r"\bCNI-(?:DN-)?[0-9a-f]{20,24}\b")


def load_conf(name: str) -> dict[str, Any]:
    return json.loads((CONF_DIR / name).read_text())


def with_data_dir(conf: dict[str, Any], data_dir: Path) -> dict[str, Any]:
    """A copy of `conf` whose IPAM leases go to `data_dir` (never the host's /var/lib/cni)."""
    conf = json.loads(json.dumps(conf))
    for plugin in conf.get("plugins", [conf]):
        if isinstance(plugin.get("ipam"), dict):
            plugin["ipam"]["dataDir"] = str(data_dir)
    return conf


def subnets(conf: dict[str, Any]) -> list[str]:
    out = []
    for plugin in conf.get("plugins", [conf]):
        for rset in plugin.get("ipam", {}).get("ranges", []):
            out.extend(r["subnet"] for r in rset)
    return out


def bridge_name(conf: dict[str, Any]) -> str:
    return next(str(p["bridge"]) for p in conf.get("plugins", [conf]) if "bridge" in p)


def berth_table_block(ruleset: str) -> str:
    """The text of `table inet berth { ... }` inside an `nft list ruleset` dump ("" if absent)."""
    start = ruleset.find("table inet berth {")
    if start < 0:
        return ""
    depth = 0
    for i in range(start, len(ruleset)):
        if ruleset[i] == "{":
            depth += 1
        elif ruleset[i] == "}":
            depth -= 1
            if depth == 0:
                return ruleset[start : i + 1]
    return ruleset[start:]


def nft_leftovers(table_text: str) -> list[str]:
    """Per-attachment state still in berth's table: attachment chains and every rule or verdict-map
    element that jumps to one (static sets, e.g. of bridges, may legitimately stay)."""
    return [line.strip() for line in table_text.splitlines() if _ATTACHMENT_CHAIN.search(line)]


def journal_files(state_dir: Path) -> list[str]:
    return sorted(str(p) for p in state_dir.rglob("*.json")) if state_dir.exists() else []


def lease_files(data_dir: Path) -> list[str]:
    """IP reservation files (host-local layout: <dataDir>/<network>/<ip>)."""
    if not data_dir.exists():
        return []
    out = []
    for path in data_dir.rglob("*"):
        if path.is_file() and path.name != "lock" and not path.name.startswith("last_reserved_ip"):
            out.append(str(path))
    return sorted(out)


def need_root() -> None:
    if not harness.is_root():
        pytest.skip("needs root")


def need_commands(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (run 'make client-deps')")


def need_cgroups() -> None:
    if not Path("/sys/fs/cgroup").is_dir() or not any(Path("/sys/fs/cgroup").iterdir()):
        pytest.skip("no cgroup hierarchy mounted at /sys/fs/cgroup: containers cannot start here")


def need_realclient(script: str) -> Path:
    path = REALCLIENT_DIR / script
    if not path.is_file():
        pytest.skip(f"{path} missing: the realclient scripts live in ../shared/realclient beside the checkout "
                    "(or set BERTH_REALCLIENT_DIR)")
    return path


@dataclass
class SmokeRun:
    """What one realclient script run left behind in its work dir."""

    rc: int
    output: str
    work: Path
    checks: dict[str, bool]

    def calls(self) -> list[dict[str, Any]]:
        path = self.work / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def ruleset(self, stem: str) -> str:
        path = self.work / f"ruleset-{stem}.nft"
        return path.read_text() if path.exists() else ""

    def failed(self) -> list[str]:
        return [name for name, ok in self.checks.items() if not ok]


def run_smoke(script: Path, plugin_dirs: str, work: Path, state_dir: Path, args: list[str],
              timeout: float = 240) -> SmokeRun:
    """Run a realclient script with unique namespace names; BERTH_STATE_DIR reaches the plugins
    because podman/containerd exec them with their own environment plus CNI_*."""
    tag = secrets.token_hex(3)
    # One script at a time, even under xdist: the containerd runs share /run/containerd (shim
    # sockets) and the /opt/cni/bin mount point, which each run creates and removes.
    lock_fd = os.open(SCRIPT_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    env = dict(os.environ, BERTH_STATE_DIR=str(state_dir),
               RC_NODE_NS=f"rc-bt{tag}-n", RC_CLIENT_NS=f"rc-bt{tag}-c",
               PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        proc = subprocess.run(["bash", str(script), "--work", str(work), *args, plugin_dirs],
                              capture_output=True, text=True, env=env, timeout=timeout, check=False)
    finally:
        os.close(lock_fd)
    output = proc.stdout + proc.stderr
    checks: dict[str, bool] = {}
    for line in proc.stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("PASS", "FAIL") and rest:
            checks[rest.split(" ")[0]] = word == "PASS"
    return SmokeRun(proc.returncode, output, work, checks)


def berth_plugin_dirs(tmp: Path, state_dir: Path) -> str:
    """berth first, the reference behind it for `loopback` (CRI).

    Each berth name is a two-line wrapper that pins BERTH_STATE_DIR and execs the real link
    (venv entry point, or BERTH_BIN_DIR e.g. dist/berth), keeping argv[0]'s name: podman's
    conmon-started `container cleanup` sends DEL with a trimmed environment, and without the
    pin that DEL would look for the journal in (and write to) the host's /var/lib/cni/berth.
    """
    links = harness.plugin_dir(tmp / "links")
    out = tmp / "plugins"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("berth", "berth-bridge", "berth-host-local", "berth-portmap"):
        wrapper = out / name
        wrapper.write_text(f"#!/bin/sh\nexport BERTH_STATE_DIR='{state_dir}'\nexec '{links / name}' \"$@\"\n")
        wrapper.chmod(0o755)
    return f"{out}:{REFERENCE_DIR}"


def assert_clean_run(run: SmokeRun) -> None:
    assert run.checks, f"script printed no checks:\n{run.output[-4000:]}"
    assert not run.failed(), f"failed checks {run.failed()}:\n{run.output[-6000:]}"
    assert run.rc == 0, run.output[-4000:]


def assert_nothing_left(run: SmokeRun, after_del: list[str], state_dir: Path, data_dir: Path,
                        network: str) -> None:
    # the journal dir (and its lock) stays: proof that BERTH_STATE_DIR reached the plugins
    assert (state_dir / network).is_dir(), f"no journal dir under {state_dir}: BERTH_STATE_DIR not passed through?"
    assert (data_dir / network).is_dir(), f"no lease dir under {data_dir}: ipam.dataDir ignored?"
    for stem in after_del:
        left = nft_leftovers(berth_table_block(run.ruleset(stem)))
        assert not left, f"per-attachment nft state left in table inet berth after {stem}: {left}"
    assert not journal_files(state_dir), f"journal files left: {journal_files(state_dir)}"
    assert not lease_files(data_dir), f"IPAM leases left: {lease_files(data_dir)}"
