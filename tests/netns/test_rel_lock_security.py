"""Reliability: locking between networks, dead lock holders, and security
(127.0.0.0/8 from off-node, foreign tables untouched, file modes)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from tests import harness
from tests.netns.test_rel_crash import NET, add_pod, bridge_conf, del_pod, gc_all, gc_conf, leftovers, portmap_conf

TARGET = "127.0.0.2"  # node-local (127/8 is local); the attacker's 127.0.0.1 stays its own
HOLD = """
import fcntl, os, sys, time
fds = []
for path in sys.argv[1:]:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    fds.append(fd)
print("held", flush=True)
time.sleep(120)
"""


def _hold(paths: list[Path]) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, *map(str, paths)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _network_locks(node: harness.Node, network: str) -> list[Path]:
    """The per-network locks: host-local's store lock and the journal lock."""
    return [node.data_dir / network / "lock", node.state_dir / network / "journal.lock"]


def test_two_networks_never_block_each_other(topo: harness.Topology) -> None:
    node, ns = topo.node, topo.container()
    holder = _hold(_network_locks(node, "othernet"))
    try:
        conf = bridge_conf(node)
        started = time.monotonic()
        _br, pm = add_pod(node, ns, "c1", conf)
        assert pm is not None
        pm.ok()
        del_pod(node, ns.path, "c1", conf)
        elapsed = time.monotonic() - started
        assert elapsed < 10, f"ADD+DEL on {NET} took {elapsed:.1f}s while othernet's locks were held"
        assert holder.poll() is None  # really held the whole time
    finally:
        holder.kill()
        holder.wait()
    assert leftovers(node) == []


def test_lock_held_by_a_killed_process_does_not_wedge(topo: harness.Topology) -> None:
    node, ns = topo.node, topo.container()
    holder = _hold([*_network_locks(node, NET), node.state_dir / "ports" / "lock"])
    os.kill(holder.pid, signal.SIGKILL)  # dies holding every lock berth takes
    holder.wait()
    conf = bridge_conf(node)
    started = time.monotonic()
    _br, pm = add_pod(node, ns, "c1", conf)
    assert pm is not None
    pm.ok()
    del_pod(node, ns.path, "c1", conf)
    assert time.monotonic() - started < 10
    assert leftovers(node) == []


# --- security -----------------------------------------------------------------------

def test_off_node_packets_to_loopback_are_dropped(topo: harness.Topology) -> None:
    """CVE-2020-8558: portmap turns route_localnet on for the bridge; a neighbour
    on it sending to 127.0.0.1 via the node must not reach the node's localhost
    services. Control: with the guard chain flushed the same packet does get in."""
    node, pod, attacker = topo.node, topo.container("pod"), topo.container("evil")
    conf = bridge_conf(node, subnets=("10.79.0.0/24",), bridge="brsec")
    _br, pm = add_pod(node, pod, "pod", conf)
    assert pm is not None
    pm.ok()
    res = node.plugin("berth-bridge", "ADD", conf, container_id="evil", netns=attacker.path).ok()
    gw = "10.79.0.1"
    assert node.sysctl("net.ipv4.conf.brsec.route_localnet") == "1"
    # the attacker routes 127.0.0.0/8 (but its own 127.0.0.1) to the node
    attacker.ip("route", "del", "local", "127.0.0.0/8", "dev", "lo", "table", "local")
    attacker.ip("route", "add", "127.0.0.0/8", "via", gw, "dev", "eth0")
    attacker.set_sysctl("net.ipv4.conf.eth0.route_localnet", "1")
    attacker.set_sysctl("net.ipv4.conf.all.route_localnet", "1")
    with node.server(18999, "tcp", "4", banner="node-local"):
        assert node.connect(TARGET, 18999) is not None  # the service is there
        assert attacker.connect(TARGET, 18999, timeout=1) is None, "off-node packet reached 127.0.0.1"
        node.exec(["nft", "flush", "chain", "inet", "berth", "guard"])
        control = attacker.connect(TARGET, 18999, timeout=2)
        assert control is not None, "control failed: the test's path to the node's 127.0.0.1 does not work"
        # berth reconcile puts the guard back (CHECK and explain name the gap meanwhile)
        assert node.berth("reconcile").returncode == 0
        assert attacker.connect(TARGET, 18999, timeout=1) is None
        # and so does the next portmap ADD, which re-asserts the static layout
        node.exec(["nft", "flush", "chain", "inet", "berth", "guard"])
        assert attacker.connect(TARGET, 18999, timeout=2) is not None
        other = topo.container("other")
        _br2, pm2 = add_pod(node, other, "other", conf,
                            mappings=[{"hostPort": 18081, "containerPort": 80, "protocol": "tcp"}])
        assert pm2 is not None
        pm2.ok()
        assert attacker.connect(TARGET, 18999, timeout=1) is None
        del_pod(node, other.path, "other", conf)
    assert res["ips"]
    node.plugin("berth-bridge", "DEL", conf, container_id="evil", netns=attacker.path).ok()
    del_pod(node, pod.path, "pod", conf)
    assert leftovers(node) == []


FOREIGN_NFT = """
table ip nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "o-node" ip saddr 192.0.2.0/24 masquerade
    }
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        tcp dport 2222 dnat to 192.0.2.10:22
    }
}
table inet other {
    set blocked {
        type ipv4_addr
        elements = { 192.0.2.99 }
    }
    chain input {
        type filter hook input priority 0; policy accept;
        ip saddr @blocked drop
    }
}
"""
IPTABLES = [
    ["iptables-nft", "-A", "FORWARD", "-s", "192.0.2.0/24", "-j", "DROP"],
    ["iptables-nft", "-A", "INPUT", "-p", "tcp", "--dport", "2323", "-j", "REJECT"],
    ["iptables-nft", "-t", "mangle", "-A", "PREROUTING", "-p", "udp", "--dport", "5353", "-j", "MARK",
     "--set-mark", "7"],
    ["ip6tables-nft", "-A", "FORWARD", "-s", "2001:db8::/32", "-j", "DROP"],
]
FOREIGN_TABLES = [("ip", "nat"), ("inet", "other"), ("ip", "filter"), ("ip", "mangle"), ("ip6", "filter")]


def _foreign(node: harness.Node) -> dict[str, str]:
    out = {f"{fam} {name}": node.exec(["nft", "list", "table", fam, name]).stdout for fam, name in FOREIGN_TABLES}
    out["iptables-save"] = "\n".join(line for line in node.exec(["iptables-nft-save"]).stdout.splitlines()
                                     if not line.startswith("#"))
    return out


def test_foreign_tables_are_never_modified(topo: harness.Topology) -> None:
    node, ns = topo.node, topo.container()
    node.exec(["nft", "-f", "-"], input=FOREIGN_NFT)
    for argv in IPTABLES:
        node.exec(argv)
    before = _foreign(node)
    assert "2222" in before["ip nat"] and "192.0.2.0/24" in before["ip filter"]
    conf = bridge_conf(node)
    br, pm = add_pod(node, ns, "c1", conf)
    assert pm is not None
    pm.ok()
    prev = dict(br.json)
    node.plugin("berth-bridge", "CHECK", dict(conf, prevResult=prev), container_id="c1", netns=ns.path).ok()
    node.plugin("berth-portmap", "CHECK", portmap_conf(NET, prev), container_id="c1", netns=ns.path).ok()
    node.plugin("berth-portmap", "GC", gc_conf(portmap_conf(NET, None), [{"containerID": "c1", "ifname": "eth0"}])).ok()
    node.berth("reconcile")
    node.berth("list")
    del_pod(node, ns.path, "c1", conf)
    gc_all(node, conf)
    assert _foreign(node) == before
    assert leftovers(node) == []


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_are_created_with_safe_modes(topo: harness.Topology) -> None:
    node, ns = topo.node, topo.container()
    conf = bridge_conf(node)
    old = os.umask(0)  # the plugin must not rely on the runtime's umask
    try:
        _br, pm = add_pod(node, ns, "c1", conf)
    finally:
        os.umask(old)
    assert pm is not None
    pm.ok()
    state, data = node.state_dir, node.data_dir / NET
    files = [p for p in (*state.rglob("*"), *data.rglob("*")) if p.is_file()]
    dirs = [p for p in (*state.rglob("*"), data) if p.is_dir()]
    assert any(p.suffix == ".json" for p in files) and any(p.parent.name == "ports" for p in files)
    loose = {str(p): oct(_mode(p)) for p in files if _mode(p) & 0o077}
    assert not loose, f"group/other may read or write: {loose}"
    loose = {str(p): oct(_mode(p)) for p in dirs if _mode(p) & 0o077}
    assert not loose, f"directories open to group/other: {loose}"
    del_pod(node, ns.path, "c1", conf)
    assert leftovers(node) == []
