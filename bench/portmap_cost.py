"""`python -m bench.portmap_cost`: what the [::1] proxy start and the host-listener
check (sock_diag) add to one standalone berth-portmap ADD.

One node namespace, one dual-stack container (berth-bridge ADD once), then
portmap ADD + DEL of one TCP mapping, in rounds that rotate three configs:

    full         userlandProxy on, hostListenerPolicy "error" (the default)
    no-proxy     userlandProxy false (the sock_diag request stays)
    neither      userlandProxy false, hostListenerPolicy "allow"

CPU time is the plugin's (user + system, from the kernel's accounting of the
waited child, with what it waited for) plus, with the proxy, the proxy
process's own CPU up to the moment ADD returned (its start-up before it
reported is part of the ADD's cost wherever it runs); wall time beside it. On a
loaded machine CPU time is the steadier figure. A UDP mapping would add the
conntrack flush (pyroute2), which is not what this measures.
Writes bench/results/portmap-cost-<date>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.proxy import bin_dir, confs
from bench.topo import Registry
from tests.harness import Node, setns_net

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"full": {"userlandProxy": True},
           "no-proxy": {"userlandProxy": False},
           "neither": {"userlandProxy": False, "hostListenerPolicy": "allow"}}
TICK = os.sysconf("SC_CLK_TCK")


def proxy_cpu_ms(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * 1000 / TICK


def run_plugin(node: Node, command: str, conf: dict[str, Any], netns: str) -> tuple[float, float, dict[str, Any]]:
    """(cpu ms, wall ms, parsed stdout) of one plugin exec."""
    env = node.env(CNI_COMMAND=command, CNI_CONTAINERID="pc1", CNI_NETNS=netns, CNI_IFNAME="eth0", CNI_ARGS="",
                   CNI_PATH=node.cni_path)
    path = node.path
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([str(node.bin_dir / "berth-portmap")], input=json.dumps(conf).encode(),
                          capture_output=True, env=env, timeout=120, check=False,
                          preexec_fn=lambda: setns_net(path), cwd="/")
    wall = (time.perf_counter() - started) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"portmap {command} failed: {proc.stdout!r} {proc.stderr!r}")
    cpu = ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) * 1000
    return cpu, wall, json.loads(proc.stdout or b"{}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.portmap_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--label", default="", help="a word for the results file (e.g. before, after)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.stderr.write("bench.portmap_cost: needs root (it makes network namespaces)\n")
        return 2
    reg = Registry()
    node_ns, ctr = reg.make_namespaces([reg.name("node"), reg.name("c0")])
    node = Node(node_ns.name, bin_dir=bin_dir(), state_dir=reg.tmp / "state", data_dir=reg.tmp / "ipam")
    node.state_dir.mkdir()
    node.data_dir.mkdir()
    bridge, portmap = confs(node)
    portmap["name"] = bridge["name"]
    portmap["runtimeConfig"] = {"portMappings": [{"hostPort": 18080, "containerPort": 80}]}
    samples: dict[str, dict[str, list[float]]] = {c: {"cpu": [], "wall": [], "proxy_cpu": []} for c in CONFIGS}
    try:
        node.ip("link", "set", "lo", "up")  # ::1 (make_namespaces leaves lo down)
        prev = node.plugin("berth-bridge", "ADD", bridge, container_id="pc1", netns=ctr.path).ok()
        names = list(CONFIGS)
        for i in range(args.rounds + 1):  # the first round warms the page cache and is dropped
            for name in names[i % len(names):] + names[:i % len(names)]:
                conf = {**portmap, **CONFIGS[name]}
                cpu, wall, _ = run_plugin(node, "ADD", {**conf, "prevResult": prev}, ctr.path)
                extra = 0.0
                journal = next((node.state_dir / bridge["name"]).glob("*.json"))
                proxy = json.loads(journal.read_text()).get("portmap", {}).get("proxy") or {}
                if proxy.get("pid"):
                    extra = proxy_cpu_ms(int(proxy["pid"]))
                run_plugin(node, "DEL", conf, ctr.path)
                if i:
                    samples[name]["cpu"].append(cpu + extra)
                    samples[name]["wall"].append(wall)
                    samples[name]["proxy_cpu"].append(extra)
        summary = {name: {key: round(statistics.median(vals), 1) for key, vals in s.items()}
                   for name, s in samples.items()}
        result = {"date": time.strftime("%Y-%m-%d %H:%M"), "label": args.label, "rounds": args.rounds,
                  "machine": f"{os.cpu_count()} CPUs, {os.uname().release}, load {os.getloadavg()[0]:.1f}",
                  "bin_dir": str(node.bin_dir), "summary": summary, "samples": samples}
        lines = [f"# portmap ADD cost {args.label}, {result['date']}", "",
                 f"machine: {result['machine']}; {args.rounds} rounds, medians; one TCP mapping", "",
                 "| config | CPU ms (plugin + proxy start) | of it the proxy process | wall ms |", "|---|---|---|---|"]
        for name, s in summary.items():
            lines.append(f"| {name} | {s['cpu']} | {s['proxy_cpu']} | {s['wall']} |")
        text = "\n".join(lines) + "\n"
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"portmap-cost-{time.strftime('%Y-%m-%d-%H%M')}{'-' + args.label if args.label else ''}"
        stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
        stem.with_suffix(".md").write_text(text)
        sys.stdout.write(text)
    finally:
        node.plugin("berth-bridge", "DEL", bridge, container_id="pc1", netns=ctr.path)
        reg.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
