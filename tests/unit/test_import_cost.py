"""The plugin execution path stays cheap to import: a standalone plugin pays its
imports on every exec. dataclasses (~8 ms, it pulls inspect, plus ~0.4 ms per
class) and hashlib (~3 ms, OpenSSL) stay out; see the NamedTuples and plain
classes in cni/, ipam/, portmap/ and the builtin _sha512/_blake2 modules.

Third-party code we load on some paths is not covered: pyroute2's conntrack
(portmap/conntrack.py, only to flush UDP/SCTP entries) imports asyncio and
dataclasses, and with them inspect. pyroute2's message modules
(cni.rtnl.messages()) and the nftables binding import none of the three.
"""

from __future__ import annotations

import subprocess
import sys

_HEAVY = ("dataclasses", "hashlib", "inspect")

_PROBE = """
import sys
import cni.bridge, cni.bridge_conf, cni.netlink, cni.rtnl, cni.state
import cni.loopback, cni.tuning, cni.firewall, cni.bandwidth, cni.meta, cni.tc
import ipam.allocator, ipam.config, ipam.hostlocal, ipam.ranges
import portmap.layout, portmap.masq, portmap.portmap, portmap.ports, portmap.firewall
portmap.layout.dnat_chain_name("net", "c1")  # the chain-name hash
cni.rtnl.messages()  # pyroute2's message classes, as every netlink call loads them
print(",".join(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def test_plugin_path_imports_neither_dataclasses_nor_hashlib() -> None:
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
