"""`python -m bench.small`: berth-loopback, -tuning, -firewall and -bandwidth exec'd
standalone against Debian's Go plugins of the same name, on the same configs.

Both get the same node namespace and each its own container namespace (a veth
pair node `vb-<impl>` <-> container `eth0`, as a bridge or ptp plugin leaves it:
the reference bandwidth's DEL leaves the host veth's qdiscs to the veth's end), and
for every sample an ADD (timed) then a DEL (timed), berth and reference
alternating, so both share the machine's state. What is reported per plugin and
implementation: the CPU time of the exec (user + system of the process and the
children it waited for, from getrusage(RUSAGE_CHILDREN): a loaded machine
stretches wall time more than CPU time), its mean over the samples, and the wall
time's median; the same for VERSION. Namespaces are `bb-<run>-...` and removed
at the end; the host namespace is never touched.

    sudo .venv/bin/python -m bench.small [--n 20] [--bin dist/berth] [--ref /usr/lib/cni] [--ref-prefix berth-]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.harness import Netns, setns_net

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = ("loopback", "tuning", "firewall", "bandwidth")
ADDRESS = "10.89.0.2/24"


def prev_result(netns: str, host_veth: str) -> dict[str, Any]:
    return {"cniVersion": "1.0.0",
            "interfaces": [{"name": "vb0", "mac": "02:00:00:00:00:01"},
                           {"name": host_veth, "mac": "02:00:00:00:00:02"},
                           {"name": "eth0", "mac": "02:00:00:00:00:03", "sandbox": netns}],
            "ips": [{"interface": 2, "address": ADDRESS, "gateway": "10.89.0.1"}],
            "routes": [{"dst": "0.0.0.0/0"}], "dns": {}}


def config(plugin: str, netns: str, host_veth: str, data_dir: str) -> dict[str, Any]:
    """A typical config of each: the CRI's loopback network, a tuning with sysctls
    and an MTU, podman's firewall, a Kubernetes bandwidth annotation pair."""
    base: dict[str, Any] = {"cniVersion": "1.0.0", "name": f"bench-{plugin}", "type": plugin}
    if plugin == "loopback":
        return base
    base["prevResult"] = prev_result(netns, host_veth)
    if plugin == "tuning":
        base.update(sysctl={"net.core.somaxconn": "512", "net.ipv4.conf.eth0.arp_filter": "1"}, mtu=1400,
                    dataDir=data_dir)
    elif plugin == "firewall":
        base.update(backend="iptables")
    elif plugin == "bandwidth":
        base.update(capabilities={"bandwidth": True},
                    runtimeConfig={"bandwidth": {"ingressRate": 10_000_000, "ingressBurst": 1_000_000,
                                                 "egressRate": 10_000_000, "egressBurst": 1_000_000}})
    return base


def exec_plugin(exe: str, node: Netns, env: dict[str, str], stdin: bytes) -> tuple[float, float, int, bytes]:
    """(CPU seconds, wall seconds, rc, stdout) of one exec inside the node namespace."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    path = node.path
    proc = subprocess.run([exe], input=stdin, capture_output=True, env=env, timeout=60, check=False,
                          preexec_fn=lambda: setns_net(path), cwd="/")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, proc.returncode, proc.stdout + proc.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--bin", default=str(ROOT / "dist" / "berth"))
    parser.add_argument("--ref", default="/usr/lib/cni")
    parser.add_argument("--ref-prefix", default="", help="a prefix of the reference's names: `--ref OTHER/bin "
                        "--ref-prefix berth-` compares two builds of berth")
    parser.add_argument("--plugins", default=",".join(PLUGINS))
    opts = parser.parse_args()
    run_id = secrets.token_hex(3)
    tmp = Path(tempfile.mkdtemp(prefix=f"berth-bench-small-{run_id}-"))
    node = Netns(f"bb-{run_id}-node")
    impls = {"berth": lambda p: str(Path(opts.bin) / f"berth-{p}"),
             "reference": lambda p: f"{opts.ref}/{opts.ref_prefix}{p}"}
    conts = {impl: Netns(f"bb-{run_id}-c{impl[0]}") for impl in impls}
    figures: dict[str, dict[str, dict[str, float]]] = {}
    try:
        node.create()
        for impl, cont in conts.items():
            cont.create()
            node.ip("link", "add", f"vb-{impl}", "type", "veth", "peer", "name", "eth0", "netns", cont.name)
            node.ip("link", "set", f"vb-{impl}", "up")
            cont.ip("link", "set", "eth0", "up")
        for plugin in opts.plugins.split(","):
            samples: dict[str, dict[str, list[float]]] = {i: {"add_cpu": [], "add_wall": [], "del_cpu": [],
                                                               "version_cpu": [], "version_wall": []} for i in impls}
            for i in range(opts.n + 1):  # the first round is untimed: caches, the table's first creation
                for impl, exe_of in impls.items():
                    exe, cont = exe_of(plugin), conts[impl]
                    data_dir = str(tmp / impl / "data")
                    conf = config(plugin, cont.path, f"vb-{impl}", data_dir)
                    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_CONTAINERID": f"bench{plugin}",
                           "CNI_NETNS": cont.path, "CNI_IFNAME": "lo" if plugin == "loopback" else "eth0",
                           "CNI_PATH": str(Path(exe).parent), "BERTH_STATE_DIR": str(tmp / impl / "state"),
                           "BERTH_AGENT_SOCKET": "off"}
                    stdin = json.dumps(conf).encode()
                    add = exec_plugin(exe, node, dict(env, CNI_COMMAND="ADD"), stdin)
                    if add[2] != 0:
                        raise SystemExit(f"{impl} {plugin} ADD failed: {add[3].decode(errors='replace')}")
                    delete = exec_plugin(exe, node, dict(env, CNI_COMMAND="DEL"), stdin)
                    if delete[2] != 0:
                        raise SystemExit(f"{impl} {plugin} DEL failed: {delete[3].decode(errors='replace')}")
                    if plugin == "bandwidth":  # the reference's DEL leaves the host veth's qdiscs
                        node.exec(["tc", "qdisc", "del", "dev", f"vb-{impl}", "root"], check=False)
                        node.exec(["tc", "qdisc", "del", "dev", f"vb-{impl}", "ingress"], check=False)
                    version = exec_plugin(exe, node, dict(env, CNI_COMMAND="VERSION"), b'{"cniVersion":"1.0.0"}')
                    if i == 0:
                        continue
                    s = samples[impl]
                    s["add_cpu"].append(add[0])
                    s["add_wall"].append(add[1])
                    s["del_cpu"].append(delete[0])
                    s["version_cpu"].append(version[0])
                    s["version_wall"].append(version[1])
            figures[plugin] = {impl: {"add_cpu_ms": statistics.mean(s["add_cpu"]) * 1000,
                                      "add_wall_p50_ms": statistics.median(s["add_wall"]) * 1000,
                                      "del_cpu_ms": statistics.mean(s["del_cpu"]) * 1000,
                                      "version_cpu_ms": statistics.mean(s["version_cpu"]) * 1000,
                                      "version_wall_p50_ms": statistics.median(s["version_wall"]) * 1000}
                               for impl, s in samples.items()}
    finally:
        for cont in conts.values():
            cont.remove()
        node.remove()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(figures, indent=1))
    print()
    print("| plugin | ADD CPU ms berth / ref | DEL CPU ms berth / ref | VERSION CPU ms berth / ref "
          "| ADD wall p50 ms berth / ref |")
    print("|---|---|---|---|---|")
    for plugin, f in figures.items():
        b, r = f["berth"], f["reference"]
        print(f"| {plugin} | {b['add_cpu_ms']:.1f} / {r['add_cpu_ms']:.1f} | {b['del_cpu_ms']:.1f} / "
              f"{r['del_cpu_ms']:.1f} | {b['version_cpu_ms']:.1f} / {r['version_cpu_ms']:.1f} | "
              f"{b['add_wall_p50_ms']:.0f} / {r['add_wall_p50_ms']:.0f} |")
    print(f"\n{opts.n} samples each, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
