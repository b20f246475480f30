"""Helpers for the real-client tests: example conflists, traffic checks, berth's "nothing left" checks.

The podman and containerd tests drive the runtimes through the project's own drivers
(podman_driver.py, containerd_driver.py) on a node made by tests/clients/node.py: the test's node
network namespace with a private mount namespace, so berth's state (journals in
/var/lib/cni/berth, IPAM leases in /var/lib/cni/networks, libcni's cache) lands in the test's own
directories at the default paths. Every plugin call is logged (plugins.py). On top of what a user
sees (the pod's address, its published port, egress, hairpin) we check what berth must not leave:
journal files, leases and per-attachment chains / map elements in `table inet berth`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import harness

CONF_DIR = harness.ROOT / "conf"
REFERENCE_DIR = harness.REFERENCE_DIR
POD_PORT = 8080
OUT_PORT = 9000
# curl from the test's namespaces: no proxy settings of the caller's may redirect it
CURL_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NO_PROXY": "*", "no_proxy": "*"}
# Per-attachment chains: upstream's names, "CNI-" + 24 hex / "CNI-DN-" + 21 hex.
_ATTACHMENT_CHAIN = re.compile(r"\bCNI-(?:DN-)?[0-9a-f]{20,24}\b")


def berth_install(tmp: Path, bin_dir: Path) -> Path:
    """A plugin directory holding what `make install ALIASES=1` puts there and nothing else: the real
    install of the bundle when the tests run against it, else the same names linked to the venv's entry."""
    target = tmp / "opt-cni-bin"
    bundle = harness.ROOT / "dist" / "berth"
    if bin_dir.resolve() == bundle.resolve() and (bundle / "berth").is_file():
        harness.run(["make", "-s", "-C", str(harness.ROOT), "install", f"PREFIX={target}", "ALIASES=1"], timeout=300)
    else:
        target.mkdir(parents=True, exist_ok=True)
        real = os.path.realpath(bin_dir / "berth")
        for name in (*harness.BERTH_NAMES, *harness.ALIAS_NAMES):
            (target / name).symlink_to(real)
    executables = {p.name: os.path.realpath(p) for p in target.iterdir() if not p.name.startswith(".")}
    assert set(executables) == {*harness.BERTH_NAMES, *harness.ALIAS_NAMES}, sorted(executables)
    assert len(set(executables.values())) == 1, f"not all of them are berth: {executables}"
    return target


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
    out: list[str] = []
    for plugin in conf.get("plugins", [conf]):
        for rset in plugin.get("ipam", {}).get("ranges", []):
            out.extend(r["subnet"] for r in rset)
    return out


def bridge_name(conf: dict[str, Any]) -> str:
    return next(str(p["bridge"]) for p in conf.get("plugins", [conf]) if "bridge" in p)


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

# --- traffic ------------------------------------------------------------------
def http_get(ns: harness.Netns, url: str, tries: int = 10) -> str | None:
    """The body curl gets from `url` inside `ns`, or None when unreachable (retried: servers start async)."""
    for attempt in range(tries):
        proc = ns.exec(["curl", "-sS", "-m", "2", "--noproxy", "*", url], check=False, env=CURL_ENV)
        if proc.returncode == 0:
            return proc.stdout.strip()
        if attempt + 1 < tries:
            time.sleep(0.3)
    return None


def pod_get(host: str, port: int) -> str:
    """Shell for an HTTP GET from inside a busybox pod (its static wget cannot resolve; nc can connect)."""
    return f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port}"


PodExec = Callable[[str], str]  # runs a shell script in the pod, returns its stdout


def pod_in(ip: str, subnet: str) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(subnet)


def check_egress(topo: harness.Topology, pod_exec: PodExec) -> None:
    """The pod reaches a server in the client namespace, masqueraded to the node's address."""
    with topo.outside.server(OUT_PORT, banner="out"):
        answer = pod_exec(f"nc -w 3 {topo.OUTSIDE_V4} {OUT_PORT}").strip()
    assert answer == f"out {topo.NODE_V4}", f"pod egress not masqueraded to the node's address: {answer!r}"


def check_published_pod(topo: harness.Topology, ip: str, pod_exec: PodExec, host_port: int, page: str) -> None:
    """What a user of a pod with a published port sees, while it runs (the pod serves `page` on POD_PORT)."""
    node, outside = topo.node, topo.outside
    assert http_get(node, f"http://{ip}:{POD_PORT}/") == page, f"pod {ip}:{POD_PORT} not reachable from the node"
    assert http_get(node, f"http://127.0.0.1:{host_port}/") == page, "hostPort via the node's 127.0.0.1"
    assert http_get(node, f"http://{topo.NODE_V4}:{host_port}/") == page, "hostPort via the node's address"
    assert http_get(outside, f"http://{topo.NODE_V4}:{host_port}/") == page, "hostPort from the client namespace"
    check_egress(topo, pod_exec)
    hairpin = pod_exec(pod_get(topo.NODE_V4, host_port))
    assert page in hairpin, f"hairpin: pod to its own hostPort via {topo.NODE_V4}: {hairpin!r}"


def check_removed(topo: harness.Topology, bridge: str, host_port: int | None) -> None:
    """After the runtime removed the pod: no veth on the bridge, the published port closed."""
    node = topo.node
    assert bridge in node.links(), f"bridge {bridge} missing: {node.links()}"
    on_bridge = node.ip("-o", "link", "show", "master", bridge).stdout.strip()
    assert not on_bridge, f"veth left on {bridge}: {on_bridge}"
    if host_port is not None:
        assert http_get(node, f"http://127.0.0.1:{host_port}/", tries=1) is None, "hostPort still open after removal"
        assert http_get(topo.outside, f"http://{topo.NODE_V4}:{host_port}/", tries=1) is None, \
            "hostPort still open from the client namespace after removal"


def tbf_rate(node: harness.Netns, dev: str) -> int:
    """The rate (bits per second) of the root tbf qdisc of `dev`, 0 without one."""
    for qdisc in json.loads(node.exec(["tc", "-j", "qdisc", "show", "dev", dev]).stdout or "[]"):
        if qdisc["kind"] == "tbf":
            return int(qdisc["options"]["rate"]) * 8
    return 0


def ifbs(node: harness.Netns) -> list[str]:
    return sorted(link["ifname"] for link in node.ip_json("-d", "link", "show")
                  if link.get("linkinfo", {}).get("info_kind") == "ifb")


# --- berth's state ------------------------------------------------------------
def assert_nothing_left(node: harness.Netns, var_lib_cni: Path, network: str) -> None:
    """No journal, lease, libcni cache entry or per-attachment nft state left for `network`.

    `var_lib_cni` is the host-side path of the node's /var/lib/cni."""
    state_dir, data_dir = var_lib_cni / "berth", var_lib_cni / "networks"
    # the journal and lease dirs stay: proof that the plugins used the node's default paths
    assert (state_dir / network).is_dir(), f"no journal dir {state_dir / network}"
    assert (data_dir / network).is_dir(), f"no lease dir {data_dir / network}"
    assert not journal_files(state_dir), f"journal files left: {journal_files(state_dir)}"
    assert not lease_files(data_dir), f"IPAM leases left: {lease_files(data_dir)}"
    results = var_lib_cni / "results"
    cached = sorted(p.name for p in results.glob(f"{network}-*")) if results.is_dir() else []
    assert not cached, f"libcni result cache left (a DEL the runtime saw fail?): {cached}"
    left = nft_leftovers(node.nft_text())
    assert not left, f"per-attachment nft state left in table inet berth: {left}"
