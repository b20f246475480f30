"""berth-bridge against the real kernel: addresses, routes, traffic, result shapes, CHECK, bad input."""

from __future__ import annotations

import pytest

from tests import harness
from tests.netns.test_bridge_common import (
    IPAM,
    MASQ_READY,
    add,
    assert_clean,
    conf,
    delete,
    ipv4,
    ipv6,
    journal,
    leases,
    veths,
)


def test_container_reaches_gateway_and_outside(topo: harness.Topology) -> None:
    node, ns = topo.node, topo.container()
    result = add(node, conf(node), ns)
    ip = ipv4(result)
    assert ns.addresses("eth0")[0] == f"{ip}/24"
    routes = ns.ip_json("route", "show", "default")
    assert routes and routes[0]["gateway"] == "10.88.0.1"
    assert node.addresses("bt0")[0] == "10.88.0.1/24"
    assert node.sysctl("net.ipv4.ip_forward") == "1"
    with node.server(8081, banner="gw"):
        assert ns.connect("10.88.0.1", 8081) == f"gw {ip}"
    # without masquerade the outside host needs a route back to the pod subnet
    topo.outside.ip("route", "add", "10.88.0.0/24", "via", topo.NODE_V4)
    with topo.outside.server(8082, banner="out"):
        assert ns.connect(topo.OUTSIDE_V4, 8082) == f"out {ip}"
    delete(node, conf(node), netns=ns.path)
    assert_clean(node)


@pytest.mark.xfail(not MASQ_READY, reason="portmap.masq not landed yet", strict=False)
def test_masquerade_outside_sees_node_address(topo: harness.Topology) -> None:
    node, ns = topo.node, topo.container()
    c = conf(node, ipMasq=True)
    add(node, c, ns)
    with topo.outside.server(8083, banner="out"):
        assert ns.connect(topo.OUTSIDE_V4, 8083) == f"out {topo.NODE_V4}"
    assert journal(node)["bridge"]["masq"] is not None
    res = node.plugin("berth-bridge", "CHECK", dict(c, prevResult=add_result_placeholder(node, c, ns)),
                      container_id="c1", netns=ns.path)
    assert res.rc == 0, res.stdout
    delete(node, c, netns=ns.path)
    assert_clean(node)


def add_result_placeholder(node: harness.Node, c: dict, ns: harness.Netns) -> dict:
    """The result CHECK compares with, rebuilt from the journal (as a runtime cache would hold it)."""
    rec = journal(node)["bridge"]
    return {"cniVersion": c["cniVersion"], "interfaces": [{"name": "eth0", "mac": rec["mac"], "sandbox": ns.path}],
            "ips": [{"address": a, "interface": 0} for a in rec["ips"]], "routes": []}


def test_two_containers_reach_each_other(topo: harness.Topology) -> None:
    node = topo.node
    a, b = topo.container("a"), topo.container("b")
    c = conf(node)
    ra, rb = add(node, c, a, "ca"), add(node, c, b, "cb")
    assert ipv4(ra) != ipv4(rb)
    with b.server(8084, banner="b"):
        assert a.connect(ipv4(rb), 8084) == f"b {ipv4(ra)}"
    delete(node, c, "ca", a.path)
    delete(node, c, "cb", b.path)
    assert_clean(node)


def test_dual_stack(topo: harness.Topology) -> None:
    node, ns = topo.node, topo.container()
    c = conf(node, subnets=("10.88.0.0/24", "fd00:88::/64"))
    result = add(node, c, ns)
    v4, v6 = ipv4(result), ipv6(result)
    assert {r["dst"] for r in result["routes"]} >= {"0.0.0.0/0", "::/0"}
    assert node.sysctl("net.ipv6.conf.all.forwarding") == "1"
    # NODAD: the address is usable at once, not "tentative"
    info = [a for link in ns.ip_json("-6", "addr", "show", "dev", "eth0") for a in link["addr_info"]
            if a["local"] == v6]
    assert info and not info[0].get("tentative")
    topo.outside.ip("route", "add", "10.88.0.0/24", "via", topo.NODE_V4)
    topo.outside.ip("-6", "route", "add", "fd00:88::/64", "via", topo.NODE_V6)
    with topo.outside.server(8085, family="6", banner="out6"):
        assert ns.connect(topo.OUTSIDE_V6, 8085) == f"out6 {v6}"
    with topo.outside.server(8086, banner="out4"):
        assert ns.connect(topo.OUTSIDE_V4, 8086) == f"out4 {v4}"
    delete(node, c, netns=ns.path)
    assert_clean(node)


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_result_shape_per_version(topo: harness.Topology, version: str) -> None:
    if version == "1.1.0" and IPAM == "host-local":
        pytest.skip("the reference host-local 1.1.1 does not speak 1.1.0")
    node, ns = topo.node, topo.container()
    c = conf(node, version=version)
    result = add(node, c, ns)
    assert result["cniVersion"] == version
    ifaces = result["interfaces"]
    assert ifaces[0]["name"] == "bt0" and ifaces[1]["name"].startswith("veth")
    assert len(ifaces[1]["name"]) == 12 and ifaces[2] == {**ifaces[2], "name": "eth0", "sandbox": ns.path}
    assert all(len(i["mac"]) == 17 for i in ifaces)
    ip = result["ips"][0]
    assert ip["interface"] == 2 and ip["gateway"] == "10.88.0.1"
    if version.startswith("0."):
        assert ip["version"] == "4"
    else:
        assert "version" not in ip
    assert ifaces[1]["name"] in veths(node)
    if version != "0.3.0" and version != "0.3.1":
        check = node.plugin("berth-bridge", "CHECK", dict(c, prevResult=result), container_id="c1", netns=ns.path)
        assert check.rc == 0, check.stdout
    delete(node, c, netns=ns.path)
    assert_clean(node)


def test_check_detects_missing_address_and_route(topo: harness.Topology) -> None:
    node, ns = topo.node, topo.container()
    c = conf(node, version="1.0.0")
    result = add(node, c, ns)
    ns.ip("addr", "del", result["ips"][0]["address"], "dev", "eth0")
    res = node.plugin("berth-bridge", "CHECK", dict(c, prevResult=result), container_id="c1", netns=ns.path)
    assert res.rc == 1 and res.json["code"] == 106 and "address" in res.json["msg"]
    nores = node.plugin("berth-bridge", "CHECK", c, container_id="c1", netns=ns.path)
    assert nores.json["code"] == 7
    delete(node, c, netns=ns.path)
    assert_clean(node)


def test_result_macs_are_the_kernels(topo: harness.Topology) -> None:
    """The MACs ADD reports (read with berth's own netlink decoder) are the ones `ip` shows,
    the bridge's read after its first port joined (it takes the lowest port MAC)."""
    node, ns = topo.node, topo.container()
    result = add(node, conf(node), ns)
    bridge, host, cont = result["interfaces"]
    assert node.ip_json("link", "show", bridge["name"])[0]["address"] == bridge["mac"]
    assert node.ip_json("link", "show", host["name"])[0]["address"] == host["mac"]
    assert ns.ip_json("link", "show", "eth0")[0]["address"] == cont["mac"]


def test_runtime_mac_mtu_hairpin_and_l2_only(topo: harness.Topology) -> None:
    node, ns = topo.node, topo.container()
    c = conf(node, mtu=1400, hairpinMode=True, runtimeConfig={"mac": "0A:58:0A:58:00:99"})
    result = add(node, c, ns)
    assert result["interfaces"][2]["mac"] == "0a:58:0a:58:00:99"
    link = ns.ip_json("link", "show", "eth0")[0]
    assert link["mtu"] == 1400 and link["address"] == "0a:58:0a:58:00:99"
    port = node.ip_json("-d", "link", "show", result["interfaces"][1]["name"])[0]
    assert port["linkinfo"]["info_slave_data"]["hairpin"] is True
    delete(node, c, netns=ns.path)
    l2 = topo.container("l2")
    l2conf = {"cniVersion": "1.0.0", "name": "l2net", "type": "berth-bridge", "bridge": "bt1", "ipam": {}}
    res = add(node, l2conf, l2, "l2c")
    assert res["ips"] == [] and len(res["interfaces"]) == 3
    assert l2.addresses("eth0") == [a for a in l2.addresses("eth0") if a.startswith("fe80")]
    delete(node, l2conf, "l2c", l2.path)
    assert_clean(node)
    assert_clean(node, "l2net")


def _fails(node: harness.Node, c: dict, ns_path: str, code: int, cid: str = "bad", **kw) -> dict:
    res = node.plugin("berth-bridge", "ADD", c, container_id=cid, netns=ns_path, **kw)
    assert res.rc != 0, res.stdout
    assert res.json["code"] == code, res.stdout
    return res.json


def test_bad_input_changes_nothing(topo: harness.Topology) -> None:
    node, ns = topo.node, topo.container()
    # bad MTU, bad types, unsupported options: rejected before anything is touched
    _fails(node, conf(node, mtu=10), ns.path, 7)
    _fails(node, conf(node, mtu="1500"), ns.path, 7)
    _fails(node, conf(node, hairpinMode="yes"), ns.path, 7)
    _fails(node, conf(node, vlanTrunk=[{"id": 5}]), ns.path, 2)
    _fails(node, conf(node, runtimeConfig={"mac": "zz"}), ns.path, 7)
    # a wrong subnet is the IPAM's error, passed through (the Go host-local calls it 999)
    _fails(node, conf(node, subnets=("10.88.0.0/33",)), ns.path, 999 if IPAM == "host-local" else 7)
    # missing netns: code 8
    _fails(node, conf(node), "/run/netns/bt-does-not-exist", 8)
    # a bridge name that is taken by a non-bridge link
    # (no dummy module in this kernel: a veth is just as much "not a bridge")
    node.ip("link", "add", "btdummy", "type", "veth", "peer", "name", "btdummyp")
    err = _fails(node, conf(node, bridge="btdummy"), ns.path, 103)
    assert "not a bridge" in err["msg"]
    node.ip("link", "del", "btdummy")
    # the interface name already exists in the container
    ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    _fails(node, conf(node), ns.path, 103)
    ns.ip("link", "del", "eth0")
    # exhausted range: the IPAM error passes through
    small = conf(node, subnets=("10.89.0.0/30",))
    ok = add(node, small, ns, "only")
    other = topo.container("x")
    res = node.plugin("berth-bridge", "ADD", small, container_id="second", netns=other.path)
    assert res.rc != 0 and "no IP addresses available" in res.json["msg"], res.stdout
    if IPAM != "host-local":  # the Go host-local reports it as 999
        assert res.json["code"] != 999
    delete(node, small, "only", ns.path)
    assert ok["ips"]
    # the bridge address differs from an existing one and forceAddress is off
    node.ip("link", "add", "bt5", "type", "bridge")
    node.ip("addr", "add", "10.77.0.9/24", "dev", "bt5")
    _fails(node, conf(node, bridge="bt5"), ns.path, 7)
    assert [a for a in node.addresses("bt5") if not a.startswith("fe80")] == ["10.77.0.9/24"]
    assert veths(node) == [] and leases(node) == [] and leases(node, "testnet") == []
    assert_clean(node)


def test_force_address_replaces_bridge_address(topo: harness.Topology) -> None:
    node, ns = topo.node, topo.container()
    node.ip("link", "add", "bt6", "type", "bridge")
    node.ip("addr", "add", "10.88.0.200/24", "dev", "bt6")
    c = conf(node, bridge="bt6", forceAddress=True)
    add(node, c, ns)
    assert [a for a in node.addresses("bt6") if not a.startswith("fe80")] == ["10.88.0.1/24"]
    delete(node, c, netns=ns.path)
    assert_clean(node)


def test_reference_host_local_by_exec(topo: harness.Topology) -> None:
    """Any IPAM on CNI_PATH works: the Go host-local is exec'd, its lease file is upstream's format."""
    node, ns = topo.node, topo.container()
    c = conf(node, ipam_type="host-local", subnets=("10.88.0.0/24", "fd00:88::/64"))
    result = add(node, c, ns)
    assert ipv4(result) == "10.88.0.2" and ipv6(result) == "fd00:88::2"
    assert (node.data_dir / "testnet" / "10.88.0.2").read_bytes() == b"c1\r\neth0"
    delete(node, c, netns=ns.path)
    assert_clean(node)


def test_vlan_port_or_clean_refusal(topo: harness.Topology) -> None:
    """vlan needs bridge VLAN filtering in the kernel (this CI kernel has none): tagged port or a clean error."""
    node, ns = topo.node, topo.container()
    c = conf(node, isGateway=False, isDefaultGateway=False, vlan=10, preserveDefaultVlan=False)
    res = node.plugin("berth-bridge", "ADD", c, container_id="c1", netns=ns.path)
    if res.rc == 0:
        port = res.json["interfaces"][1]["name"]
        vlans = harness.run(["bridge", "-n", node.name, "-j", "vlan", "show", "dev", port]).stdout
        assert '"vlan":10' in vlans.replace(" ", "") and '"vlan":1,' not in vlans.replace(" ", "")
        delete(node, c, netns=ns.path)
    else:
        assert res.json["code"] == 105 and "vlan" in res.json["msg"], res.stdout
        assert ns.links() == ["lo"]
    assert_clean(node)


def test_proc_pid_netns_path(topo: harness.Topology) -> None:
    """Runtimes also pass /proc/<pid>/ns/net (podman, ctr): it works like a bound netns."""
    node, ns = topo.node, topo.container()
    holder = ns.popen(["sleep", "60"])
    try:
        path = f"/proc/{holder.pid}/ns/net"
        c = conf(node)
        result = node.plugin("berth-bridge", "ADD", c, container_id="c1", netns=path).ok()
        assert result["interfaces"][2]["sandbox"] == path and "eth0" in ns.links()
        delete(node, c, netns=path)
    finally:
        holder.kill()
        holder.wait()
    assert_clean(node)
