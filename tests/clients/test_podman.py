"""podman 4.3 (CNI backend) runs a container with `-p` on conf/87-berth-podman.conflist through berth."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from tests import harness
from tests.clients import common
from tests.clients.plugins import PluginDir, add_del_problems
from tests.clients.podman_driver import Podman

CONFLIST = "87-berth-podman.conflist"
CYCLES = 2  # a second run/rm cycle catches leaked leases, rules and veths
HOST_PORT = 18080
BERTH = {"berth-bridge", "berth-host-local", "berth-portmap"}


def test_podman_publish_port_through_berth(topo: harness.Topology, tmp_path: Path) -> None:
    common.need_root()
    common.need_commands("podman", "crun", "conmon", "busybox", "curl")
    common.need_cgroups()
    conf = common.load_conf(CONFLIST)
    network, bridge, subnet = conf["name"], common.bridge_name(conf), common.subnets(conf)[0]
    plugins = PluginDir(tmp_path / "plugins", [topo.node.bin_dir])  # berth alone
    page = f"berth-podman-{secrets.token_hex(4)}"

    with Podman(topo.node, tmp_path / "podman", plugins, page=page, conflist=common.CONF_DIR / CONFLIST) as pm:
        var_lib_cni = pm.host.path("/var/lib/cni")
        for cycle in range(1, CYCLES + 1):
            name = f"web{cycle}"
            pm.run(name, [f"{HOST_PORT}:{common.POD_PORT}"], ["httpd", "-f", "-p", str(common.POD_PORT), "-h", "/www"])
            ip = pm.ip(name)
            assert common.pod_in(ip, subnet), f"cycle {cycle}: pod IP {ip!r} not in {subnet}\n{plugins.table()}"

            def pod_exec(script: str, name: str = name) -> str:
                return pm.exec(name, script).stdout

            common.check_published_pod(topo, ip, pod_exec, HOST_PORT, page)
            assert "CNI-DN-" in topo.node.nft_text(), "no DNAT chain in table inet berth while the pod runs"
            assert common.journal_files(var_lib_cni / "berth"), "ADD wrote no journal in the node's /var/lib/cni/berth"
            assert pm.netns_files(), "podman made no pod netns under the node's /run/netns"

            pm.rm(name)
            common.check_removed(topo, bridge, HOST_PORT)
            common.assert_nothing_left(topo.node, var_lib_cni, network)
            assert not pm.netns_files(), f"pod netns left after rm: {pm.netns_files()}"

    calls = plugins.calls()
    assert not add_del_problems(calls, network), f"{add_del_problems(calls, network)}\n{plugins.table()}"
    adds = [c for c in calls if c.command == "ADD"]
    assert len({c.container_id for c in adds}) == CYCLES, plugins.table()
    called = {c.plugin for c in adds}
    assert {"berth-bridge", "berth-portmap"} <= called <= BERTH, f"podman must call berth only: {called}"
    portmap_add = next(c for c in adds if c.plugin == "berth-portmap")
    assert portmap_add.stdin["cniVersion"] == "0.4.0"
    # podman sends lower-case keys
    expected = [{"hostPort": HOST_PORT, "containerPort": common.POD_PORT, "protocol": "tcp"}]
    assert portmap_add.stdin["runtimeConfig"]["portMappings"] == expected, portmap_add.stdin


def test_podman_generated_network_with_only_berth_installed(topo: harness.Topology, tmp_path: Path) -> None:
    """`podman network create`'s own conflist (bridge, portmap, firewall, tuning, host-local: the upstream
    names) with berth's `make install ALIASES=1` as the only plugin directory and /usr/lib/cni hidden."""
    common.need_root()
    common.need_commands("podman", "crun", "conmon", "busybox", "curl")
    common.need_cgroups()
    install = common.berth_install(tmp_path, topo.node.bin_dir)
    plugins = PluginDir(tmp_path / "plugins", [install])
    page = f"berth-podman-gen-{secrets.token_hex(4)}"
    network = "berth-podman-gen"

    with Podman(topo.node, tmp_path / "podman", plugins, page=page, network=network) as pm:
        generated = json.loads(pm.loaded_conflist())
        assert [p["type"] for p in generated["plugins"]] == ["bridge", "portmap", "firewall", "tuning"], generated
        bridge, subnet = common.bridge_name(generated), common.subnets(generated)[0]
        var_lib_cni = pm.host.path("/var/lib/cni")
        pm.run("web", [f"{HOST_PORT}:{common.POD_PORT}"], ["httpd", "-f", "-p", str(common.POD_PORT), "-h", "/www"])
        ip = pm.ip("web")
        assert common.pod_in(ip, subnet), f"pod IP {ip!r} not in {subnet}\n{plugins.table()}"
        common.check_published_pod(topo, ip, lambda script: pm.exec("web", script).stdout, HOST_PORT, page)
        elements = topo.node.exec(["nft", "list", "set", "inet", "berth", "firewall-v4"]).stdout
        assert f'{ip} . "{bridge}"' in elements, f"the firewall accepts nothing for the pod:\n{elements}"
        pm.rm("web")
        common.check_removed(topo, bridge, HOST_PORT)
        common.assert_nothing_left(topo.node, var_lib_cni, network)
        elements = topo.node.exec(["nft", "list", "set", "inet", "berth", "firewall-v4"]).stdout
        assert ip not in elements, elements

    calls = plugins.calls()
    assert not add_del_problems(calls, network), f"{add_del_problems(calls, network)}\n{plugins.table()}"
    called = {c.plugin for c in calls if c.command in ("ADD", "DEL")}
    assert called == {"bridge", "portmap", "firewall", "tuning", "host-local"}, plugins.table()
