"""Helpers for the portmap namespace tests: a bridge (berth's or the reference)
then berth-portmap chained on its result, as a runtime would run the conflist."""

from __future__ import annotations

import copy
from typing import Any

from tests import harness

REF_BRIDGE = f"{harness.REFERENCE_DIR}/bridge"


def first_conf(node: harness.Node, *, name: str = "pmnet", subnets: tuple[str, ...] = ("10.88.0.0/24",),
               bridge: str = "bt0", kind: str = "berth") -> dict[str, Any]:
    """The bridge plugin's config: berth-bridge + berth-host-local, or the reference pair."""
    routes = [{"dst": "0.0.0.0/0"}] + ([{"dst": "::/0"}] if any(":" in s for s in subnets) else [])
    ipam: dict[str, Any] = {"type": "host-local" if kind == "ref" else "berth-host-local",
                            "ranges": [[{"subnet": s}] for s in subnets], "routes": routes,
                            "dataDir": str(node.data_dir)}
    return {"cniVersion": "1.0.0", "name": name, "type": "bridge" if kind == "ref" else "berth-bridge",
            "bridge": bridge, "isGateway": True, "ipMasq": False, "hairpinMode": True, "ipam": ipam}


def portmap_conf(name: str, mappings: list[dict[str, Any]], prev: dict[str, Any] | None = None,
                 **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {"cniVersion": "1.0.0", "name": name, "type": "berth-portmap",
                            "capabilities": {"portMappings": True},
                            "runtimeConfig": {"portMappings": mappings}}
    if prev is not None:
        conf["prevResult"] = prev
    conf.update(extra)
    return conf


class Pod:
    """One container attached through bridge + portmap."""

    def __init__(self, topo: harness.Topology, cid: str, mappings: list[dict[str, Any]], *, kind: str = "berth",
                 subnets: tuple[str, ...] = ("10.88.0.0/24",), name: str = "pmnet", **pm_extra: Any) -> None:
        self.node = topo.node
        self.cid = cid
        self.netns = topo.container()
        self.kind = kind
        self.bridge_conf = first_conf(self.node, name=name, subnets=subnets, kind=kind)
        self.mappings = mappings
        self.name = name
        self.pm_extra = pm_extra
        self.result: dict[str, Any] | None = None

    def _bridge(self, command: str) -> harness.PluginResult:
        path = REF_BRIDGE if self.kind == "ref" else None
        return self.node.plugin("berth-bridge", command, self.bridge_conf, container_id=self.cid,
                                netns=self.netns.path, plugin_path=path)

    def portmap(self, command: str, *, mappings: list[dict[str, Any]] | None = None, netns: str | None = None,
                **extra: Any) -> harness.PluginResult:
        conf = portmap_conf(self.name, self.mappings if mappings is None else mappings,
                            copy.deepcopy(self.result) if command != "DEL" or self.result else None,
                            **{**self.pm_extra, **extra})
        return self.node.plugin("berth-portmap", command, conf, container_id=self.cid,
                                netns=self.netns.path if netns is None else netns)

    def add(self, **extra: Any) -> harness.PluginResult:
        self.result = self._bridge("ADD").ok()
        res = self.portmap("ADD", **extra)
        if res.rc != 0:
            self._bridge("DEL")
        return res

    def delete(self) -> None:
        self.portmap("DEL").ok()
        self._bridge("DEL").ok()

    def address(self, version: int = 4) -> str:
        assert self.result is not None
        for ip in self.result["ips"]:
            addr = ip["address"].split("/")[0]
            if (":" in addr) == (version == 6):
                return addr
        raise AssertionError(f"no v{version} address in {self.result}")


def proxy_processes(node_path: str | None = None, key: str | None = None) -> list[int]:
    """pids of berth's [::1] proxy processes: forked ones (comm berth-proxy) and
    exec'd `berth proxy` ones; in the namespace `node_path` when given; of the
    attachment `key` (network/containerID/ifname) when given, told by the marker
    socket the process holds (portmap/proxyctl.py) or its command line."""
    import os
    from pathlib import Path

    from portmap import proxyctl

    node_ns = os.stat(node_path).st_ino if node_path else None
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        proc = Path("/proc") / name
        try:
            if node_ns is not None and os.stat(proc / "ns" / "net").st_ino != node_ns:
                continue
            cmdline = (proc / "cmdline").read_bytes()
            comm = (proc / "comm").read_bytes().strip()
            execd = b"\0proxy\0--id\0" in cmdline
            if comm != proxyctl.COMM and not execd:
                continue
            if key is not None:
                if execd:
                    if b"\0proxy\0--id\0" + key.encode() + b"\0" not in cmdline:
                        continue
                else:
                    marker = "@" + proxyctl.marker_name(tuple(key.split("/", 2)))  # type: ignore[arg-type]
                    inodes = {line.split()[6] for line in (proc / "net" / "unix").read_text().splitlines()[1:]
                              if len(line.split()) >= 8 and line.split()[7] == marker}
                    links = {os.readlink(proc / "fd" / fd) for fd in os.listdir(proc / "fd")}
                    if not any(f"socket:[{i}]" in links for i in inodes):
                        continue
            out.append(int(name))
        except (OSError, ValueError, IndexError):
            continue
    return out
