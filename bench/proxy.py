"""`python -m bench.proxy`: what berth's [::1] userland proxy costs against the NAT path.

One node namespace with one dual-stack container (berth-bridge + berth-portmap
from BERTH_BIN_DIR, else dist/berth), TCP 18080->80 and UDP 18053->53
published; a traffic server in the container (bench/proxytraffic.py). From the
node, in rounds that rotate the order of the paths:

    direct     the container's IPv6 address and its own ports (no NAT, no proxy)
    nat-v6     the node's IPv6 address: DNAT in the output chain
    nat-v4-lo  127.0.0.1: DNAT and masquerade (route_localnet)
    proxy      [::1]: berth's proxy process (the agent's service runs the same code)

each path gets one TCP transfer (throughput, bytes counted at both ends), TCP
request/response round trips of 64 bytes on one connection, new connections
(connect, one byte each way, close) and UDP round trips. Also the portmap ADD
(+DEL) with and without the proxy, and the proxy process's memory. Namespaces
are `bb-<run>-...` and all go at the end; the host namespace is never touched.
Writes bench/results/proxy-<date>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.topo import Registry, link_node
from tests.harness import Node, setns_net

ROOT = Path(__file__).resolve().parent.parent
TRAFFIC = str(Path(__file__).resolve().parent / "proxytraffic.py")
SYSTEM_PYTHON = "/usr/bin/python3"
NODE_V6 = "fd00:5::1"
PATHS = ("direct", "nat-v6", "nat-v4-lo", "proxy")


def bin_dir() -> Path:
    given = os.environ.get("BERTH_BIN_DIR")
    return Path(given).resolve() if given else ROOT / "dist" / "berth"


def confs(node: Node, proxy: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    bridge = {"cniVersion": "1.0.0", "name": "pxnet", "type": "berth-bridge", "bridge": "bpx0", "isGateway": True,
              "ipMasq": True, "ipam": {"type": "berth-host-local", "dataDir": str(node.data_dir),
                                       "ranges": [[{"subnet": "10.98.0.0/24"}], [{"subnet": "fd00:98::/64"}]],
                                       "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}}
    portmap = {"cniVersion": "1.0.0", "name": "pxnet", "type": "berth-portmap", "userlandProxy": proxy,
               "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80},
                                                  {"hostPort": 18053, "containerPort": 53, "protocol": "udp"}]}}
    return bridge, portmap


def timed_portmap(node: Node, netns: str, prev: dict[str, Any], proxy: bool, samples: int) -> list[float]:
    """portmap ADD wall time (ms), each followed by its DEL."""
    _, portmap = confs(node, proxy)
    out = []
    for _ in range(samples):
        started = time.perf_counter()
        node.plugin("berth-portmap", "ADD", {**portmap, "prevResult": prev}, container_id="px1", netns=netns).ok()
        out.append((time.perf_counter() - started) * 1000)
        node.plugin("berth-portmap", "DEL", portmap, container_id="px1", netns=netns).ok()
    return out


def client(node: Node, host: str, tcp: int, udp: int, args: argparse.Namespace) -> dict[str, Any]:
    proc = subprocess.run([SYSTEM_PYTHON, TRAFFIC, "client", host, str(tcp), str(udp), str(args.mib),
                           str(args.pings), str(args.conns)], capture_output=True, text=True, timeout=900,
                          preexec_fn=lambda: setns_net(node.path), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"client to {host} failed: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def summary(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for path in PATHS:
        samples = [r[path] for r in rounds]
        out[path] = {
            "MiB_per_s": statistics.median(s["throughput"]["MiB_per_s"] for s in samples),
            "lost_bytes": max(s["throughput"]["lost"] for s in samples),
            "tcp_rtt_p50_us": statistics.median(s["tcp_rtt"]["p50_us"] for s in samples),
            "tcp_rtt_p99_us": statistics.median(s["tcp_rtt"]["p99_us"] for s in samples),
            "tcp_connect_p50_us": statistics.median(s["tcp_connect"]["p50_us"] for s in samples),
            "udp_rtt_p50_us": statistics.median(s["udp_rtt"]["p50_us"] for s in samples),
            "udp_lost": max(s["udp_rtt"]["lost"] for s in samples),
        }
    return out


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = [f"# [::1] proxy against NAT, {result['date']}", "", f"machine: {result['machine']}; "
             f"{result['args']['mib']} MiB per transfer, {result['args']['pings']} round trips, "
             f"{result['args']['conns']} connections, {result['args']['rounds']} rounds (medians)", "",
             "| path | TCP MiB/s | TCP RTT p50 µs | TCP RTT p99 µs | connect p50 µs | UDP RTT p50 µs | lost |",
             "|---|---|---|---|---|---|---|"]
    for path in PATHS:
        r = s[path]
        lines.append(f"| {path} | {r['MiB_per_s']:.0f} | {r['tcp_rtt_p50_us']:.0f} | {r['tcp_rtt_p99_us']:.0f} | "
                     f"{r['tcp_connect_p50_us']:.0f} | {r['udp_rtt_p50_us']:.0f} | "
                     f"{int(r['lost_bytes'])} B, {int(r['udp_lost'])} datagrams |")
    add = result["portmap_add_ms"]
    lines += ["", f"portmap ADD p50: {add['with_proxy']:.0f} ms with the proxy, {add['without']:.0f} ms without; "
              f"proxy process: {result['proxy_rss_kib'] / 1024:.1f} MiB resident", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.proxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="MiB per throughput transfer")
    parser.add_argument("--pings", type=int, default=2000, help="round trips per path and round")
    parser.add_argument("--conns", type=int, default=200, help="new connections per path and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--add-samples", type=int, default=10, help="portmap ADDs with and without the proxy")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.stderr.write("bench.proxy: needs root (it makes network namespaces)\n")
        return 2
    reg = Registry()
    node_ns, outside, ctr = reg.make_namespaces([reg.name("node"), reg.name("out"), reg.name("c0")])
    node = Node(node_ns.name, bin_dir=bin_dir(), state_dir=reg.tmp / "state", data_dir=reg.tmp / "ipam")
    node.state_dir.mkdir()
    node.data_dir.mkdir()
    bridge, portmap = confs(node)
    added = False
    try:
        link_node(reg, node, outside)
        node.ip("addr", "add", f"{NODE_V6}/64", "dev", "o-node", "nodad")
        ctr.ip("link", "set", "lo", "up")
        prev = node.plugin("berth-bridge", "ADD", bridge, container_id="px1", netns=ctr.path).ok()
        ctr_v6 = next(ip["address"].split("/")[0] for ip in prev["ips"] if ":" in ip["address"])
        server = reg.popen(ctr, [SYSTEM_PYTHON, TRAFFIC, "serve", "80", "53"], stdout=subprocess.PIPE)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        add_ms = {"with_proxy": statistics.median(timed_portmap(node, ctr.path, prev, True, args.add_samples)),
                  "without": statistics.median(timed_portmap(node, ctr.path, prev, False, args.add_samples))}
        node.plugin("berth-portmap", "ADD", {**portmap, "prevResult": prev}, container_id="px1",
                    netns=ctr.path).ok()
        added = True
        journal = next((node.state_dir / "pxnet").glob("*.json"))
        pid = json.loads(journal.read_text())["portmap"]["proxy"]["pid"]
        targets = {"direct": (ctr_v6, 80, 53), "nat-v6": (NODE_V6, 18080, 18053),
                   "nat-v4-lo": ("127.0.0.1", 18080, 18053), "proxy": ("::1", 18080, 18053)}
        warm = argparse.Namespace(mib=8, pings=50, conns=10)
        for host, tcp, udp in targets.values():  # warm up: neighbours, the server's threads
            client(node, host, tcp, udp, warm)
        rounds = []
        for i in range(args.rounds):
            order = PATHS[i % len(PATHS):] + PATHS[:i % len(PATHS)]
            rounds.append({path: client(node, *targets[path], args) for path in order})
        rss = rss_kib(pid)
        result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{os.cpu_count()} CPUs, {os.uname().release}",
                  "args": vars(args), "summary": summary(rounds), "rounds": rounds, "portmap_add_ms": add_ms,
                  "proxy_rss_kib": rss, "bin_dir": str(node.bin_dir)}
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"proxy-{time.strftime('%Y-%m-%d-%H%M')}"
        stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
        text = markdown(result)
        stem.with_suffix(".md").write_text(text)
        sys.stdout.write(text)
    finally:
        if added:
            node.plugin("berth-portmap", "DEL", portmap, container_id="px1", netns=ctr.path)
        node.plugin("berth-bridge", "DEL", bridge, container_id="px1", netns=ctr.path)
        reg.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
