"""containerd 1.6: the CRI plugin (kubelet's path) and `ctr run --cni` drive berth.

The CRI gets berth's install (`make install ALIASES=1`) as its only plugin directory, and the node
hides /usr/lib/cni: its own `loopback` network runs berth-loopback through the alias."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from tests import harness
from tests.clients import common, cri
from tests.clients.containerd_driver import Containerd
from tests.clients.plugins import PluginDir, add_del_problems

HOST_PORT = 18081
BERTH = {"berth-bridge", "berth-host-local", "berth-portmap"}
BANDWIDTH = {"kubernetes.io/ingress-bandwidth": "16M", "kubernetes.io/egress-bandwidth": "8M"}
HTTPD = ["httpd", "-f", "-p", str(common.POD_PORT), "-h", "/www"]


def _need_containerd() -> None:
    common.need_root()
    common.need_commands("containerd", "ctr", "runc", "busybox", "curl")
    common.need_cgroups()


def test_cri_pod_with_host_ports(topo: harness.Topology, tmp_path: Path) -> None:
    _need_containerd()
    name = "10-berth-containerd.conflist"
    conf = common.load_conf(name)
    network, bridge, subnet = conf["name"], common.bridge_name(conf), common.subnets(conf)[0]
    # the CRI also sets up its loopback network: berth's, through the `loopback` alias
    plugins = PluginDir(tmp_path / "plugins", [common.berth_install(tmp_path, topo.node.bin_dir)])
    page = f"berth-cri-{secrets.token_hex(4)}"

    with Containerd(topo.node, tmp_path / "containerd", plugins, common.CONF_DIR / name, page=page) as ctrd:
        var_lib_cni = ctrd.host.path("/var/lib/cni")
        ready, why = ctrd.network_ready()
        assert ready, f"CRI network not ready: {why}\n{ctrd.log()[-3000:]}"
        ports = [cri.PortMapping(common.POD_PORT, HOST_PORT),
                 cri.PortMapping(common.POD_PORT, HOST_PORT, cri.UDP, "127.0.0.1")]
        pod_id, container_id = ctrd.run_pod("web", ports, HTTPD)
        ips = ctrd.cri.pod_ips(pod_id)
        assert ips and common.pod_in(ips[0], subnet), f"pod IPs {ips} not in {subnet}\n{plugins.table()}"

        def pod_exec(script: str) -> str:
            return ctrd.cri_exec(container_id, script)

        common.check_published_pod(topo, ips[0], pod_exec, HOST_PORT, page)
        assert "CNI-DN-" in topo.node.nft_text(), "no DNAT chain in table inet berth while the pod runs"
        assert common.journal_files(var_lib_cni / "berth"), "ADD wrote no journal in the node's /var/lib/cni/berth"
        assert ctrd.netns_files(), "the CRI made no pod netns under the node's /run/netns"

        ctrd.remove_pod(pod_id)
        common.check_removed(topo, bridge, HOST_PORT)
        common.assert_nothing_left(topo.node, var_lib_cni, network)
        assert not ctrd.netns_files(), f"pod netns left after RemovePodSandbox: {ctrd.netns_files()}"

    calls = [c for c in plugins.calls() if c.command != "VERSION"]
    assert not add_del_problems(calls, network), f"{add_del_problems(calls, network)}\n{plugins.table()}"
    called = {c.plugin for c in calls}
    assert {"berth-bridge", "berth-portmap", "loopback"} <= called <= BERTH | {"loopback"}, called
    loopback = next(c for c in calls if c.plugin == "loopback" and c.command == "ADD")
    assert loopback.rc == 0 and loopback.env["CNI_IFNAME"] == "lo", plugins.table()
    assert [ip["address"] for ip in loopback.stdout["ips"]] == ["127.0.0.1/8", "::1/128"], loopback.stdout
    portmap_add = next(c for c in calls if c.plugin == "berth-portmap" and c.command == "ADD")
    assert portmap_add.stdin["cniVersion"] == conf["cniVersion"]
    # the CRI sends capitalised keys, every mapping with its HostIP
    assert sorted(portmap_add.stdin["runtimeConfig"]["portMappings"], key=lambda m: m["Protocol"]) == [
        {"HostPort": HOST_PORT, "ContainerPort": common.POD_PORT, "Protocol": "tcp", "HostIP": ""},
        {"HostPort": HOST_PORT, "ContainerPort": common.POD_PORT, "Protocol": "udp", "HostIP": "127.0.0.1"},
    ], portmap_add.stdin
    assert portmap_add.container_id == pod_id
    dels = [c for c in calls if c.plugin == "berth-bridge" and c.command == "DEL" and c.container_id == pod_id]
    # StopPodSandbox and RemovePodSandbox each send DEL; the second has no netns any more
    assert len(dels) >= 2 and all(c.rc == 0 for c in dels), plugins.table()
    assert any(not c.netns for c in dels), plugins.table()


def test_cri_pod_with_bandwidth_annotations(topo: harness.Topology, tmp_path: Path) -> None:
    """A Kubernetes-style list (bridge, portmap, bandwidth): the pod's bandwidth annotations reach berth-bandwidth
    as the `bandwidth` capability and become tbf qdiscs on the host veth and its ifb, gone with the pod."""
    _need_containerd()
    name = "15-berth-k8s-bandwidth.conflist"
    conf = common.load_conf(name)
    network, bridge, subnet = conf["name"], common.bridge_name(conf), common.subnets(conf)[0]
    plugins = PluginDir(tmp_path / "plugins", [common.berth_install(tmp_path, topo.node.bin_dir)])
    page = f"berth-bw-{secrets.token_hex(4)}"

    with Containerd(topo.node, tmp_path / "containerd", plugins, common.CONF_DIR / name, page=page) as ctrd:
        var_lib_cni = ctrd.host.path("/var/lib/cni")
        ready, why = ctrd.network_ready()
        assert ready, f"CRI network not ready: {why}\n{ctrd.log()[-3000:]}"
        pod_id, container_id = ctrd.run_pod("shaped", [cri.PortMapping(common.POD_PORT, HOST_PORT)], HTTPD,
                                            annotations=BANDWIDTH)
        ips = ctrd.cri.pod_ips(pod_id)
        assert ips and common.pod_in(ips[0], subnet), f"pod IPs {ips} not in {subnet}\n{plugins.table()}"
        common.check_published_pod(topo, ips[0], lambda script: ctrd.cri_exec(container_id, script), HOST_PORT, page)
        veths = [link["ifname"] for link in topo.node.ip_json("link", "show", "master", bridge)]
        assert len(veths) == 1, veths
        shaped = {dev: common.tbf_rate(topo.node, dev) for dev in (veths[0], common.ifbs(topo.node)[0])}
        assert sorted(shaped.values()) == [8_000_000, 16_000_000], shaped
        assert shaped[veths[0]] == 16_000_000, "ingress (into the pod) is shaped on the host veth"

        ctrd.remove_pod(pod_id)
        common.check_removed(topo, bridge, HOST_PORT)
        assert common.ifbs(topo.node) == [], "ifb left after RemovePodSandbox"
        common.assert_nothing_left(topo.node, var_lib_cni, network)

    calls = [c for c in plugins.calls() if c.command != "VERSION"]
    assert not add_del_problems(calls, network), f"{add_del_problems(calls, network)}\n{plugins.table()}"
    bw_add = next(c for c in calls if c.plugin == "berth-bandwidth" and c.command == "ADD")
    # the CRI sends capitalised keys (go-cni's struct), each burst as the largest 32-bit value
    assert bw_add.stdin["runtimeConfig"]["bandwidth"] == {"IngressRate": 16_000_000, "IngressBurst": 4294967295,
                                                          "EgressRate": 8_000_000, "EgressBurst": 4294967295}
    assert {c.plugin for c in calls} <= BERTH | {"berth-bandwidth", "loopback"}, plugins.table()


def test_ctr_run_cni(topo: harness.Topology, tmp_path: Path) -> None:
    """`ctr run --cni` cannot publish ports; it proves address, egress masquerade and DEL without netns."""
    _need_containerd()
    name = "20-berth-ctr.conflist"
    conf = common.load_conf(name)
    network, bridge, subnet = conf["name"], common.bridge_name(conf), common.subnets(conf)[0]
    plugins = PluginDir(tmp_path / "plugins", [topo.node.bin_dir])  # berth alone: ctr's /usr/lib/cni is hidden
    page = f"berth-ctr-{secrets.token_hex(4)}"

    with Containerd(topo.node, tmp_path / "containerd", plugins, common.CONF_DIR / name, page=page) as ctrd:
        var_lib_cni = ctrd.host.path("/var/lib/cni")
        run = ctrd.ctr_run("web", HTTPD)
        addr = ctrd.ctr_exec("web", "ip -4 -o addr show dev eth0")
        found = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", addr)
        assert found and common.pod_in(found[1], subnet), f"no address from {subnet}: {addr!r}\n{plugins.table()}"
        assert common.http_get(topo.node, f"http://{found[1]}:{common.POD_PORT}/") == page, "pod not reachable"
        common.check_egress(topo, lambda script: ctrd.ctr_exec("web", script))
        assert common.journal_files(var_lib_cni / "berth"), "ADD wrote no journal in the node's /var/lib/cni/berth"

        out = ctrd.ctr_stop("web", run)
        assert not ctrd.ctr_running("web"), out
        common.check_removed(topo, bridge, None)
        common.assert_nothing_left(topo.node, var_lib_cni, network)

    calls = [c for c in plugins.calls() if c.command != "VERSION"]
    assert not add_del_problems(calls, network), f"{add_del_problems(calls, network)}\n{plugins.table()}"
    called = {c.plugin for c in calls}
    assert {"berth-bridge", "berth-portmap"} <= called <= BERTH, f"ctr must call berth only: {called}"
    dels = [c for c in calls if c.plugin == "berth-bridge" and c.command == "DEL"]
    # ctr sends DEL once the task is gone: no netns path
    assert dels and all(c.rc == 0 and not c.netns for c in dels), plugins.table()
