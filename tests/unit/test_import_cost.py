"""The plugin execution path stays cheap to import: a standalone plugin pays its
imports on every exec. dataclasses (it pulls inspect, plus a cost per class),
hashlib (OpenSSL), typing, json and re (json compiles regular expressions on
import; re pulls enum) stay out: see cni.tuples, cni.jsonc, the TYPE_CHECKING
imports and the builtin _sha512/_blake2 modules.

Third-party code we load on some paths is not covered: pyroute2's conntrack
(portmap/conntrack.py, only to flush UDP/SCTP entries) imports asyncio and
dataclasses, and with them inspect; the nftables binding imports none of the three.
"""

from __future__ import annotations

import subprocess
import sys

_HEAVY = ("dataclasses", "hashlib", "inspect", "typing", "json", "re", "enum", "importlib", "warnings")

_PROBE = """
import sys
import cni.bridge, cni.bridge_conf, cni.netlink, cni.rtnl, cni.state
import ipam.allocator, ipam.config, ipam.hostlocal, ipam.ranges
import portmap.layout, portmap.masq, portmap.portmap, portmap.ports
portmap.layout.dnat_chain_name("net", "c1")  # the chain-name hash
cni.rtnl.encode("link", {{"index": 1}}, [["IFLA_IFNAME", "x"]])  # the request codec every netlink call uses
import cni.main
for name in ("berth-bridge", "berth-host-local", "berth-portmap"):
    cni.main.plugin_funcs(name)
portmap.nft._import_binding()  # the libnftables binding, as a transaction loads it
print(",".join(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def test_plugin_path_imports_none_of_the_heavy_modules() -> None:
    proc = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=_HEAVY)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"the plugin path imports {proc.stdout.strip()}"


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
