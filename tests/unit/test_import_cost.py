"""The plugin execution path stays cheap to import: a standalone plugin pays its
imports on every exec. dataclasses (it pulls inspect, plus a cost per class),
hashlib (OpenSSL), typing, json and re (json compiles regular expressions on
import; re pulls enum), copy (and weakref) stay out: see cni.tuples, cni.jsonc,
the TYPE_CHECKING imports, the builtin _sha512/_blake2 modules and cni.spec's
copy of a result.

Third-party code we load on some paths is not covered: pyroute2's conntrack
(portmap/conntrack.py, only to flush UDP/SCTP entries) imports asyncio and
dataclasses, and with them inspect; the nftables binding imports none of the three.
"""

from __future__ import annotations

import subprocess
import sys

_HEAVY = ("dataclasses", "hashlib", "inspect", "typing", "json", "re", "enum", "importlib", "warnings", "copy")

_PROBE = """
import sys
import cni.bridge, cni.bridge_conf, cni.netlink, cni.rtnl, cni.state
import cni.loopback, cni.tuning, cni.firewall, cni.bandwidth, cni.meta, cni.tc
import ipam.allocator, ipam.config, ipam.hostlocal, ipam.ranges
import portmap.layout, portmap.masq, portmap.portmap, portmap.ports, portmap.firewall
portmap.layout.dnat_chain_name("net", "c1")  # the chain-name hash
cni.rtnl.encode("link", {{"index": 1}}, [["IFLA_IFNAME", "x"]])  # the request codec every netlink call uses
import cni.main
for name in ("berth-bridge", "berth-host-local", "berth-portmap", "berth-loopback", "berth-tuning", "berth-firewall",
             "berth-bandwidth"):
    cni.main.plugin_funcs(name)
# the small plugins' config parsers, as each ADD runs them (tuning's duplicate-key scan included)
cni.tuning.parse({{"sysctl": {{"net.ipv4.conf.IFNAME.forwarding": "1"}}, "mac": "c2:b0:57:49:47:f1", "mtu": 1400}},
                 {{}}, "eth0", b'{{"sysctl": {{"net.core.somaxconn": "500"}}}}',
                 {{"BERTH_TUNING_ALLOWLIST": "/nonexistent"}})
cni.firewall.expected(cni.firewall.parse({{"backend": "iptables", "ingressPolicy": "same-bridge"}}),
                      {{"interfaces": [{{"name": "cni0"}}], "ips": [{{"address": "10.0.0.2/24"}}]}})
cni.bandwidth.parse({{"runtimeConfig": {{"bandwidth": {{"IngressRate": 8000, "IngressBurst": 8000}}}}}})
cni.bandwidth.ifb_name("net", "c1", "eth0")
cni.tc.tbf_parameters(1000000, 8000)
import cni.spec  # a chained plugin's prevResult, converted to the config's version
cni.spec.convert_result({{"cniVersion": "1.0.0", "ips": [{{"address": "10.0.0.2/24"}}]}}, "0.4.0")
cni.spec.convert_result({{"cniVersion": "1.0.0", "ips": []}}, "1.0.0")
portmap.nft._import_binding()  # the libnftables binding, as a transaction loads it
print(",".join(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def test_plugin_path_imports_none_of_the_heavy_modules() -> None:
    proc = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=_HEAVY)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"the plugin path imports {proc.stdout.strip()}"


_PORTMAP_CALL = """
import sys
import cni.main
from cni import spec
from portmap import conf, layout, portmap
cni.main.plugin_funcs("berth-portmap")
config = {{"cniVersion": "1.0.0", "name": "n", "type": "berth-portmap", "snat": True,
          "runtimeConfig": {{"portMappings": [{{"hostPort": 8080, "containerPort": 80, "protocol": "tcp",
                                               "hostIP": "2001:db8::1"}},
                                              {{"hostPort": 53, "containerPort": 53, "protocol": "udp"}}]}},
          "prevResult": {{"cniVersion": "1.0.0", "interfaces": [{{"name": "eth0", "sandbox": "/run/netns/x"}}],
                         "ips": [{{"address": "10.0.0.2/24", "interface": 0}},
                                 {{"address": "fd00::2/64", "interface": 0}}], "routes": [{{"dst": "0.0.0.0/0"}}]}}}}
c = conf.Conf(config)
result = spec.prev_result(config)
addresses = portmap.container_addresses(result, "eth0")
layout.base_layout(None, ()) + layout.mark_layout(c.mark_bit)
layout.attachment_add("CNI-DN-x", c.mappings, addresses, snat=True)
print(",".join(sorted(m for m in {stdlib!r} if m in sys.modules)))
"""


def test_portmap_path_needs_no_ipaddress() -> None:
    """portmap's ADD (config, prevResult, rules) reads addresses through cni.addrs:
    ipaddress, and with it functools, collections and contextlib, stay out."""
    proc = subprocess.run([sys.executable, "-c", _PORTMAP_CALL.format(
        stdlib=("ipaddress", "functools", "collections", "contextlib"))], capture_output=True, text=True,
        timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"the portmap path imports {proc.stdout.strip()}"


def test_chain_name_hash_is_sha512() -> None:
    """The builtin _sha512 gives what hashlib gives (chain names are upstream's)."""
    import hashlib

    from portmap import layout

    text = layout.hash_input("net", "c1", "eth1")
    assert layout.format_chain_name("CNI-DN-", text) == ("CNI-DN-" + hashlib.sha512(text.encode()).hexdigest())[:28]


_BRIDGE_CALL = """
import sys
from cni import netlink, rtnl
for kind, fields, attrs in [
        ("link", {{"index": 0}}, [["IFLA_IFNAME", "b"], netlink.linkinfo("bridge", [["IFLA_BR_VLAN_FILTERING", 1]])]),
        ("addr", {{"family": 2, "prefixlen": 24, "index": 1}}, [["IFA_ADDRESS", "10.0.0.1"]]),
        ("route", {{"family": 2, "table": 254}}, [["RTA_OIF", 1], ["RTA_GATEWAY", "10.0.0.1"]])]:
    rtnl.encode(kind, fields, attrs)
print(",".join(sorted(m for m in sys.modules if m.split(".")[0] == "pyroute2")))
"""


def test_netlink_requests_load_no_pyroute2() -> None:
    """A plugin call encodes and decodes its netlink messages itself: pyroute2 stays
    out of the exec path (its message classes cost more than the rest of the imports)."""
    proc = subprocess.run([sys.executable, "-c", _BRIDGE_CALL.format()], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"pyroute2 modules loaded: {proc.stdout.strip()}"
