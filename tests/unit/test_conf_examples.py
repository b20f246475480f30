"""Every example in conf/ is a valid network config a runtime can load next to the others."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import pytest

from cni.main import ALIASES, PLUGINS
from cni.spec import SUPPORTED_VERSIONS

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
FILES = sorted(p for p in CONF_DIR.iterdir() if p.is_file())
KNOWN_TYPES = set(PLUGINS) | set(ALIASES)
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
CLIENT_TESTS_NET = ipaddress.ip_network("10.202.0.0/16")
# kept clear for the client tests' own networks: podman's default network and pool (tests/clients/podman_driver.py),
# and 10.202.0.0/24 for a node/client link
RESERVED = [ipaddress.ip_network(n) for n in ("10.202.0.0/24", "10.202.88.0/24", "10.202.128.0/17")]


def _plugins(conf: dict[str, Any]) -> list[dict[str, Any]]:
    return list(conf["plugins"]) if "plugins" in conf else [conf]


def _load(path: Path) -> dict[str, Any]:
    conf = json.loads(path.read_text())
    assert isinstance(conf, dict)
    return conf


def test_conf_dir_has_every_client() -> None:
    names = {p.name for p in FILES}
    for needed in ("10-berth-containerd.conflist", "99-loopback.conf", "20-berth-ctr.conflist",
                   "nerdctl-berth.conflist", "87-berth-podman.conflist", "30-berth-dualstack.conflist",
                   "40-dropin-upstream-types.conflist", "88-berth-podman-firewall.conflist",
                   "15-berth-k8s-bandwidth.conflist"):
        assert needed in names


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_example_is_valid(path: Path) -> None:
    assert path.suffix in (".conf", ".conflist")
    conf = _load(path)
    assert NAME_RE.match(conf["name"]), conf["name"]
    assert conf["cniVersion"] in SUPPORTED_VERSIONS
    assert ("plugins" in conf) == (path.suffix == ".conflist")
    plugins = _plugins(conf)
    assert plugins
    for plugin in plugins:
        assert plugin["type"] in KNOWN_TYPES, plugin["type"]
        assert "cniVersion" not in plugin or plugin["cniVersion"] == conf["cniVersion"]
        if "ipam" in plugin:
            assert plugin["ipam"]["type"] in KNOWN_TYPES
            assert "dataDir" not in plugin["ipam"], "examples use the upstream-compatible default store"
        if plugin["type"] in ("berth-bridge", "bridge"):
            assert plugin["isGateway"] is True and plugin["ipMasq"] is True and plugin["hairpinMode"] is True
            assert 1 <= len(plugin["bridge"]) <= 15
        if plugin["type"] in ("berth-portmap", "portmap"):
            assert plugin["capabilities"] == {"portMappings": True}
        if plugin["type"] in ("berth-bandwidth", "bandwidth"):
            assert plugin["capabilities"] == {"bandwidth": True}
    if path.name.startswith("nerdctl-"):  # nerdctl only lists its own files, with an ID
        assert re.fullmatch(r"[0-9a-f]{64}", conf["nerdctlID"])


def test_examples_can_coexist_on_one_node() -> None:
    """Distinct names, bridges and subnets; IPv4 inside 10.202.0.0/16 clear of what the client tests use."""
    names, bridges, nets = [], [], []
    for path in FILES:
        conf = _load(path)
        names.append(conf["name"])
        for plugin in _plugins(conf):
            if "bridge" in plugin:
                bridges.append(plugin["bridge"])
            for rset in plugin.get("ipam", {}).get("ranges", []):
                for rng in rset:
                    net = ipaddress.ip_network(rng["subnet"])
                    assert ipaddress.ip_address(rng["gateway"]) in net
                    if net.version == 4:
                        assert net.subnet_of(CLIENT_TESTS_NET), net  # type: ignore[arg-type]
                        assert not any(net.overlaps(r) for r in RESERVED), net
                    nets.append(net)
    assert len(set(names)) == len(names)
    assert len(set(bridges)) == len(bridges)
    for i, a in enumerate(nets):
        for b in nets[i + 1 :]:
            assert a.version != b.version or not a.overlaps(b), (a, b)  # type: ignore[arg-type]


def test_dropin_uses_only_upstream_types() -> None:
    conf = _load(CONF_DIR / "40-dropin-upstream-types.conflist")
    types = {p["type"] for p in conf["plugins"]} | {p["ipam"]["type"] for p in conf["plugins"] if "ipam" in p}
    assert types <= set(ALIASES)


def test_podman_and_kubernetes_style_lists() -> None:
    """podman's generated list (bridge, portmap, firewall, tuning) and a Kubernetes one with bandwidth."""
    podman = [p["type"] for p in _load(CONF_DIR / "88-berth-podman-firewall.conflist")["plugins"]]
    assert podman == ["berth-bridge", "berth-portmap", "berth-firewall", "berth-tuning"]
    k8s = [p["type"] for p in _load(CONF_DIR / "15-berth-k8s-bandwidth.conflist")["plugins"]]
    assert k8s == ["berth-bridge", "berth-portmap", "berth-bandwidth"]
