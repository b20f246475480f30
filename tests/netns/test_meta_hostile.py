"""Hostile input against berth-loopback, -tuning, -firewall and -bandwidth, in-process as test_rel_hostile runs them.

Each call runs the real verb in a forked child inside fresh network namespaces of
its own (tests/netns/test_rel_hostile.py's runner): every answer is one CNI JSON
object with a fitting code, never a traceback or 999; a failed call leaves no
link and no per-attachment nft state; nothing is written outside the test's
directories. The exec'd cases in tests/netns/test_meta_plugins.py check the
node's own interfaces and sysctls stay untouched.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.netns.test_rel_hostile import (
    CONTAINER,
    PROFILE,
    _outside_files,
    check_answer,
    env_for,
    hostile_text,
    put,
    run_isolated,
    sandbox,  # noqa: F401 - the module-scoped fixture
    values,
)

PLUGINS = ("berth-loopback", "berth-tuning", "berth-firewall", "berth-bandwidth")
VERBS = ("ADD", "DEL", "CHECK", "GC", "STATUS")
FIELDS = ["name", "cniVersion", "type", "prevResult", "prevResult.ips", "prevResult.ips.0.address",
          "prevResult.interfaces", "prevResult.interfaces.0.name", "prevResult.interfaces.0", "sysctl",
          "sysctl.net/core/somaxconn", "mac", "mtu", "promisc", "allmulti", "txQLen", "dataDir", "args", "args.cni",
          "args.cni.sysctl", "args.cni.mtu", "runtimeConfig", "runtimeConfig.mac", "runtimeConfig.bandwidth",
          "runtimeConfig.bandwidth.egressRate", "backend", "ingressPolicy", "iptablesAdminChainName", "firewalldZone",
          "ingressRate", "ingressBurst", "egressRate", "egressBurst", "shapedSubnets",
          "cni.dev/valid-attachments", "cni.dev/valid-attachments.0.containerID"]


def meta_config(plugin: str) -> dict[str, Any]:
    interfaces = [{"name": "bh0"}, {"name": "veth0"}, {"name": "eth0", "sandbox": "/x"}]
    prev = {"cniVersion": "1.1.0", "interfaces": interfaces,
            "ips": [{"address": "10.66.0.5/24", "interface": 2}, {"address": "fd00:66::5/64", "interface": 2}]}
    return {
        "cniVersion": "1.1.0", "name": "hostile", "type": plugin, "prevResult": prev,
        "sysctl": {"net/core/somaxconn": "512"}, "mac": "02:00:00:00:00:05", "mtu": 1400, "promisc": True,
        "allmulti": False, "txQLen": 100, "backend": "iptables", "ingressPolicy": "same-bridge",
        "ingressRate": 8000, "ingressBurst": 800, "egressRate": 8000, "egressBurst": 800,
        "runtimeConfig": {"mac": "02:00:00:00:00:06", "bandwidth": {"egressRate": 8000, "egressBurst": 800}},
        "args": {"cni": {"mtu": 1300, "sysctl": {"net/ipv4/ip_forward": "0"}}},
        "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}],
    }


def encoded(config: dict[str, Any]) -> bytes:
    try:
        return json.dumps(config).encode("utf-8", "surrogatepass")
    except (ValueError, UnicodeEncodeError):
        return json.dumps(config, ensure_ascii=True, allow_nan=True).encode()


@PROFILE
@given(plugin=st.sampled_from(PLUGINS), verb=st.sampled_from(VERBS), ifname=st.sampled_from(["eth0", "lo"]),
       edits=st.lists(st.tuples(st.sampled_from(FIELDS), values), min_size=1, max_size=3))
def test_hostile_config_fields(sandbox: dict[str, Any], plugin: str, verb: str, ifname: str,  # noqa: F811
                               edits: list[tuple[str, Any]]) -> None:
    config = meta_config(plugin)
    for path, value in edits:
        put(config, path, copy.deepcopy(value))
    res = run_isolated(plugin, env_for(sandbox, verb, CNI_IFNAME=ifname), encoded(config), str(sandbox["root"] / "cwd"))
    check_answer(res, plugin)
    assert _outside_files(sandbox["root"]) == []


@PROFILE
@given(plugin=st.sampled_from(PLUGINS), verb=st.sampled_from(VERBS), cid=hostile_text, name=hostile_text,
       key=hostile_text, interface=hostile_text, netns=st.sampled_from([CONTAINER, "", "/proc/self/ns/net",
                                                                         "/run/netns/../../etc/passwd", "/"]))
def test_hostile_names_keys_and_netns(sandbox: dict[str, Any], plugin: str, verb: str, cid: str,  # noqa: F811
                                      name: str, key: str, interface: str, netns: str) -> None:
    """Traversal in container IDs, network names, sysctl keys, prevResult interface names and CNI_NETNS."""
    config = meta_config(plugin)
    config["name"] = name
    config["sysctl"] = {f"net/{key}": "1", f"net.ipv4.conf.{key}.arp_filter": "1"}
    config["prevResult"]["interfaces"][0]["name"] = interface
    env = env_for(sandbox, verb, CNI_CONTAINERID=cid, CNI_NETNS=netns)
    env = {k: v.replace("\0", "").encode("utf-8", "surrogateescape").decode("utf-8", "replace") for k, v in env.items()}
    res = run_isolated(plugin, env, encoded(config), str(sandbox["root"] / "cwd"))
    check_answer(res, plugin)
    assert _outside_files(sandbox["root"]) == []
