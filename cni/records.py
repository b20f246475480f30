"""The attachment journal's sections as typed records.

A journal file (cni/state.py) holds one JSON object per attachment: the
attachment's names, when it was made, and one section per plugin ("bridge",
"portmap", "tuning", "firewall", "bandwidth"). These records are those sections with the same JSON keys: every
section is built through a record's to_json() and read through its
from_json(), which reads what any berth wrote (older journals lack keys that
newer ones have) and never raises on a hand-edited one: what cannot be read
is left out, and DEL/GC then clean what the names tell.

Records are NamedTuples and plain classes (docs/contributing.md: what the exec
path may import).

Schema versions ("layout" in the JSON, for where an ADD put its nft objects):
    portmap  0: every hostPort element in interval maps keyed l4proto . port
             2: single ports in the hash maps, ranges still there
             3: ranges in the per-protocol interval maps (portmap/layout.py)
    masq     0: a CNI-<hash> chain per attachment (the "chain" key)
             2: a per-subnet owner map looked up as a set by the subnet's rule
             3: a per-subnet owner map beside an address set the rule looks up
"""

from __future__ import annotations

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from typing import Any, NamedTuple
else:
    from cni.tuples import NamedTuple

BRIDGE = "bridge"
PORTMAP = "portmap"
TUNING = "tuning"
FIREWALL = "firewall"
BANDWIDTH = "bandwidth"
PORTMAP_SCHEMA = 3
MASQ_SCHEMA = 3
# every portmap schema whose elements a DEL may have to find
PORTMAP_SCHEMAS = (0, 2, PORTMAP_SCHEMA)


def schema(section: dict[str, Any] | None) -> int:
    """A section's schema version ("layout"); 0 when absent (berths before it)."""
    value = (section or {}).get("layout")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


class PortMapping(NamedTuple):
    """One validated portMapping; ports are inclusive ranges (lo == hi for one port)."""

    host_lo: int
    host_hi: int
    container_lo: int
    protocol: str  # tcp | udp | sctp
    host_ip: str = ""  # "" = any local address

    @property
    def container_hi(self) -> int:
        return self.container_lo + (self.host_hi - self.host_lo)

    @property
    def host_version(self) -> int | None:
        if not self.host_ip:
            return None
        return 6 if ":" in self.host_ip else 4

    def applies_to(self, version: int) -> bool:
        """A v4 hostIP only maps to v4 container addresses and vice versa."""
        return self.host_version in (None, version)

    def to_json(self) -> dict[str, Any]:
        return {"hostPort": self.host_lo, "hostPortEnd": self.host_hi, "containerPort": self.container_lo,
                "protocol": self.protocol, "hostIP": self.host_ip}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PortMapping:
        return cls(int(data["hostPort"]), int(data["hostPortEnd"]), int(data["containerPort"]),
                   str(data["protocol"]), str(data.get("hostIP", "")))


def mappings_of(raw: Any) -> list[PortMapping]:
    """The mappings a section lists; one that cannot be read is skipped."""
    out = []
    for item in raw if isinstance(raw, list) else []:
        try:
            out.append(PortMapping.from_json(item))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return out


class ProxyListener(NamedTuple):
    """What berth's userland proxy serves for one mapping: [::1]:host_lo..host_hi to
    target:target_lo.., and the SO_COOKIE of each port's socket once bound (what
    proves the socket there is this proxy's, not another process's)."""

    protocol: str  # tcp | udp
    host_lo: int
    host_hi: int
    target: str  # the container's address
    target_lo: int
    cookies: tuple[int, ...] = ()

    @property
    def ports(self) -> str:
        return str(self.host_lo) if self.host_lo == self.host_hi else f"{self.host_lo}-{self.host_hi}"

    def spec(self) -> str:
        """`tcp:8080=fd00::2:80`, `udp:9000-9009=10.88.0.2:9000`: one command-line word."""
        return f"{self.protocol}:{self.ports}={self.target}:{self.target_lo}"

    @classmethod
    def parse(cls, spec: str) -> ProxyListener:
        head, _, tail = spec.partition("=")
        protocol, _, ports = head.partition(":")
        lo, _, hi = ports.partition("-")
        target, _, port = tail.rpartition(":")
        if protocol not in ("tcp", "udp") or not target:
            raise ValueError(f"not a proxy listener: {spec!r}")
        out = cls(protocol, int(lo), int(hi or lo), target, int(port))
        if not (1 <= out.host_lo <= out.host_hi <= 65535 and 1 <= out.target_lo <= 65535 - (out.host_hi - out.host_lo)):
            raise ValueError(f"ports out of range: {spec!r}")
        return out

    def describe(self) -> str:
        target = f"[{self.target}]" if ":" in self.target else self.target
        width = self.host_hi - self.host_lo
        tport = str(self.target_lo) if not width else f"{self.target_lo}-{self.target_lo + width}"
        return f"[::1]:{self.ports}->{target}:{tport}/{self.protocol}"

    def to_json(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "hostPort": self.host_lo, "hostPortEnd": self.host_hi,
                "target": self.target, "targetPort": self.target_lo, "cookies": list(self.cookies)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProxyListener:
        cookies = data.get("cookies")
        return cls(str(data["protocol"]), int(data["hostPort"]), int(data["hostPortEnd"]), str(data["target"]),
                   int(data["targetPort"]),
                   tuple(int(c) for c in cookies) if isinstance(cookies, list) else ())


PROXY_PROCESS = "process"  # a `berth proxy` process of the attachment's own
PROXY_AGENT = "agent"  # the proxy service of `berth agent`


class ProxyRecord(NamedTuple):
    """Who serves the attachment's [::1] ports: its own process (identified by pid,
    start time and boot, so that a reused pid is never taken for it) or the
    agent's proxy service (its control socket)."""

    mode: str
    listeners: tuple[ProxyListener, ...]
    pid: int = 0
    start: int = 0  # /proc/<pid>/stat starttime: clock ticks after boot
    boot: str = ""
    socket: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode, "listeners": [li.to_json() for li in self.listeners]}
        if self.mode == PROXY_PROCESS:
            out.update(pid=self.pid, start=self.start, boot=self.boot)
        else:
            out["socket"] = self.socket
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProxyRecord | None:
        """None for what cannot be read (hand-edited)."""
        try:
            listeners = tuple(ProxyListener.from_json(li) for li in data.get("listeners") or [])
            pid, start = data.get("pid", 0), data.get("start", 0)
            return cls(str(data.get("mode", "")), listeners, int(pid) if isinstance(pid, int) else 0,
                       int(start) if isinstance(start, int) else 0, _str(data.get("boot")), _str(data.get("socket")))
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


class PortmapRecord(NamedTuple):
    """berth-portmap's section: its DNAT chain, the mappings and where their elements went."""

    chain: str
    addresses: tuple[str, ...]
    bridge: str
    state: str  # "adding" until the ADD finished, then "done"
    mappings: tuple[PortMapping, ...]
    snat: bool = True
    mark_bit: int | None = None  # None: not recorded (berth before it): the default
    masq_all: bool = False
    external_setmark: str = ""
    boot: str = ""
    schema: int = PORTMAP_SCHEMA
    host_veth: str = ""  # what proves this owner gone to a later ADD wanting its ports
    netns: str = ""
    proxy: ProxyRecord | None = None  # [::1] ports (absent: none, or a berth before the proxy)

    @property
    def done(self) -> bool:
        return self.state == "done"

    def to_json(self) -> dict[str, Any]:
        return {"chain": self.chain, "addresses": list(self.addresses), "bridge": self.bridge, "state": self.state,
                "mappings": [m.to_json() for m in self.mappings], "snat": self.snat,
                # what `berth reconcile` needs to rebuild the mark chains as this ADD did
                "markMasqBit": self.mark_bit, "masqAll": self.masq_all,
                "externalSetMarkChain": self.external_setmark or None, "boot": self.boot,
                "hostVeth": self.host_veth, "netns": self.netns, "layout": self.schema,
                **({"proxy": self.proxy.to_json()} if self.proxy is not None else {})}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PortmapRecord:
        bit = data.get("markMasqBit")
        proxy = data.get("proxy")
        return cls(
            chain=_str(data.get("chain")), addresses=_strings(data.get("addresses")), bridge=_str(data.get("bridge")),
            state=_str(data.get("state")), mappings=tuple(mappings_of(data.get("mappings"))),
            snat=bool(data.get("snat", True)),
            mark_bit=bit if isinstance(bit, int) and not isinstance(bit, bool) and 0 <= bit <= 31 else None,
            masq_all=bool(data.get("masqAll", False)), external_setmark=_str(data.get("externalSetMarkChain")),
            boot=_str(data.get("boot")), schema=schema(data), host_veth=_str(data.get("hostVeth")),
            netns=_str(data.get("netns")), proxy=ProxyRecord.from_json(proxy) if isinstance(proxy, dict) else None)


class MasqRecord(NamedTuple):
    """berth-bridge's ipMasq objects, in one of the forms an ADD journals:
    the intent before nft is touched ({"tag": N}: DEL finds the elements by that
    tag; an older berth's intent was {} and left the tag to be derived), the
    per-subnet elements (schema 2 and 3), or an older berth's CNI-<hash> chain."""

    schema: int = 0
    tag: int | None = None
    subnets: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()
    bridge: str = ""
    chain: str = ""  # schema 0: the attachment's CNI-<hash> chain

    @property
    def per_subnet(self) -> bool:
        return self.schema >= 2

    @property
    def is_intent(self) -> bool:
        return not self.per_subnet and not self.chain and not self.addresses

    def to_json(self) -> dict[str, Any]:
        if self.per_subnet:
            return {"layout": self.schema, "tag": self.tag or 0, "subnets": list(self.subnets),
                    "addresses": list(self.addresses), "bridge": self.bridge}
        if not self.is_intent:
            return {"chain": self.chain, "addresses": list(self.addresses), "bridge": self.bridge}
        return {} if self.tag is None else {"tag": self.tag}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MasqRecord:
        tag = data.get("tag")
        return cls(schema=schema(data), tag=tag if isinstance(tag, int) and not isinstance(tag, bool) else None,
                   subnets=_strings(data.get("subnets")), addresses=_strings(data.get("addresses")),
                   bridge=_str(data.get("bridge")), chain=_str(data.get("chain")))


class BridgeRecord(NamedTuple):
    """berth-bridge's section: the host veth, the container side, IPAM and masquerade."""

    state: str  # "adding" until the ADD finished, then "added"
    bridge: str
    host_veth: str
    netns: str
    ifname: str
    ipam_type: str
    ips: tuple[str, ...] = ()
    mac: str = ""
    masq: MasqRecord | None = None  # None: no ipMasq
    isolate: str = ""

    @property
    def added(self) -> bool:
        return self.state == "added"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "bridge": self.bridge, "hostVeth": self.host_veth,
                               "netns": self.netns, "ifname": self.ifname, "ipamType": self.ipam_type}
        if self.ips:
            out["ips"] = list(self.ips)
        if self.mac:
            out["mac"] = self.mac
        if self.masq is not None or self.state == "added":
            out["masq"] = self.masq.to_json() if self.masq is not None else None
        if self.isolate:
            out["isolate"] = self.isolate
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BridgeRecord:
        masq = data.get("masq")
        return cls(
            state=_str(data.get("state")), bridge=_str(data.get("bridge")), host_veth=_str(data.get("hostVeth")),
            netns=_str(data.get("netns")), ifname=_str(data.get("ifname")), ipam_type=_str(data.get("ipamType")),
            ips=_strings(data.get("ips")), mac=_str(data.get("mac")),
            masq=MasqRecord.from_json(masq) if isinstance(masq, dict) else None, isolate=_str(data.get("isolate")))


class LinkAttrs(NamedTuple):
    """Link attributes of the container interface, as tuning found them before
    changing them (None: not changed, so nothing to restore)."""

    mac: str | None = None
    mtu: int | None = None
    promisc: bool | None = None
    allmulti: bool | None = None
    txqlen: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in (("mac", self.mac), ("mtu", self.mtu), ("promisc", self.promisc),
                           ("allmulti", self.allmulti), ("txQLen", self.txqlen)):
            if value is not None:
                out[key] = value
        return out

    @classmethod
    def from_json(cls, data: Any) -> LinkAttrs:
        data = data if isinstance(data, dict) else {}
        mac, promisc, allmulti = data.get("mac"), data.get("promisc"), data.get("allmulti")
        return cls(mac=mac if isinstance(mac, str) and mac else None, mtu=_count(data.get("mtu")),
                   promisc=promisc if isinstance(promisc, bool) else None,
                   allmulti=allmulti if isinstance(allmulti, bool) else None, txqlen=_count(data.get("txQLen")))


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class TuningRecord(NamedTuple):
    """berth-tuning's section: the interface it changed, what it found there
    (restored on DEL, as upstream's backup file is) and the sysctls it wrote
    with their values before (what a failed ADD puts back)."""

    state: str  # "adding" until the ADD finished, then "done"
    netns: str
    ifname: str
    original: LinkAttrs
    sysctls: tuple[tuple[tuple[str, ...], str], ...] = ()  # (name parts, value before)

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "netns": self.netns, "ifname": self.ifname, "original": self.original.to_json(),
                "sysctls": [{"name": list(parts), "was": was} for parts, was in self.sysctls]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TuningRecord:
        sysctls = []
        raw = data.get("sysctls")
        for item in raw if isinstance(raw, list) else []:
            if isinstance(item, dict) and isinstance(item.get("name"), list) and isinstance(item.get("was"), str):
                sysctls.append((tuple(str(p) for p in item["name"]), item["was"]))
        return cls(state=_str(data.get("state")), netns=_str(data.get("netns")), ifname=_str(data.get("ifname")),
                   original=LinkAttrs.from_json(data.get("original")), sysctls=tuple(sysctls))


class FirewallRecord(NamedTuple):
    """berth-firewall's section: the host-side interface and the container
    addresses it accepts (elements `address . interface` of the firewall sets),
    and the bridge it put in the same-bridge sets ("" for ingressPolicy open)."""

    state: str  # "adding" until the ADD finished, then "done"
    interface: str
    addresses: tuple[str, ...] = ()
    same_bridge: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "interface": self.interface, "addresses": list(self.addresses),
                "sameBridge": self.same_bridge}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FirewallRecord:
        return cls(state=_str(data.get("state")), interface=_str(data.get("interface")),
                   addresses=_strings(data.get("addresses")), same_bridge=_str(data.get("sameBridge")))


class BandwidthRecord(NamedTuple):
    """berth-bandwidth's section: the host veth it shaped (by name and index:
    names get reused) and the ifb device it made for egress ("" for none)."""

    state: str  # "adding" until the ADD finished, then "done"
    host_veth: str
    host_index: int
    ifb: str = ""
    ingress: bool = False  # a tbf on the host veth (traffic into the container)

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "hostVeth": self.host_veth, "hostIndex": self.host_index, "ifb": self.ifb,
                "ingress": self.ingress}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BandwidthRecord:
        return cls(state=_str(data.get("state")), host_veth=_str(data.get("hostVeth")),
                   host_index=_count(data.get("hostIndex")) or 0, ifb=_str(data.get("ifb")),
                   ingress=data.get("ingress") is True)


class Attachment:
    """One journal file read back: (network, container, ifname) and its sections."""

    __slots__ = ("bridge", "container_id", "created", "ifname", "network", "path", "portmap")

    def __init__(self, network: str, container_id: str, ifname: str, path: str = "", created: float | None = None,
                 bridge: BridgeRecord | None = None, portmap: PortmapRecord | None = None) -> None:
        self.network = network
        self.container_id = container_id
        self.ifname = ifname
        self.path = path
        self.created = created
        self.bridge = bridge
        self.portmap = portmap

    @classmethod
    def from_journal(cls, path: str, data: dict[str, Any]) -> Attachment | None:
        """None for a file that does not name its attachment."""
        cid, ifname, network = data.get("containerID"), data.get("ifname"), data.get("network")
        if not all(isinstance(v, str) and v for v in (cid, ifname, network)):
            return None
        created = data.get("created")
        bridge, portmap = data.get(BRIDGE), data.get(PORTMAP)
        return cls(str(network), str(cid), str(ifname), path,
                   float(created) if isinstance(created, int | float) and not isinstance(created, bool) else None,
                   BridgeRecord.from_json(bridge) if isinstance(bridge, dict) else None,
                   PortmapRecord.from_json(portmap) if isinstance(portmap, dict) else None)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.network, self.container_id, self.ifname

    def describe(self) -> str:
        return f"{self.container_id}/{self.ifname} on {self.network}"

    @property
    def netns(self) -> str:
        return self.bridge.netns if self.bridge is not None else ""

    @property
    def cidrs(self) -> list[str]:
        return list(self.bridge.ips) if self.bridge is not None else []

    @property
    def addresses(self) -> list[str]:
        """Container addresses (no prefix): the bridge's record, else portmap's."""
        out = [c.split("/", 1)[0] for c in self.cidrs if "/" in c]
        return out or (list(self.portmap.addresses) if self.portmap is not None else [])

    @property
    def mappings(self) -> list[PortMapping]:
        return list(self.portmap.mappings) if self.portmap is not None else []

    @property
    def masq(self) -> MasqRecord | None:
        return self.bridge.masq if self.bridge is not None else None

    @property
    def bridge_name(self) -> str:
        return (self.bridge.bridge if self.bridge is not None else "") or \
            (self.portmap.bridge if self.portmap is not None else "")

    def complete(self) -> bool:
        """Did every recorded plugin finish its ADD (half-done ADDs are DEL's business)?"""
        if self.bridge is not None and not self.bridge.added:
            return False
        return self.portmap is None or self.portmap.done
