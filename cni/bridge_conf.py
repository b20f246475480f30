"""berth-bridge configuration: parsing and validation, no kernel access.

Accepts every field of upstream's bridge NetConf (plugins/main/bridge). Fields
whose behaviour berth does not implement are accepted when off and refused
with code 2 (unsupported field) when turned on, so nothing silently half-works:
vlanTrunk, macspoofchk, and isGateway together with vlan (upstream then puts
the gateway on a `<bridge>.<vlan>` sub-interface).
"""

from __future__ import annotations

from cni import errors
from cni.errors import CNIError
from cni.skel import ifname_problem

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from typing import Any

DEFAULT_BRIDGE = "cni0"
MIN_MTU = 68
MAX_MTU = 65535
NOT_IPAM = ("berth", "berth-bridge", "berth-portmap")  # berth's own names that are no IPAM plugin
HEX = frozenset("0123456789abcdefABCDEF")


def _mac_text(value: str) -> bool:
    """xx:xx:xx:xx:xx:xx in hex digits (no regex: `re` is a heavy import for every exec)."""
    parts = value.split(":")
    return len(parts) == 6 and all(len(p) == 2 and set(p) <= HEX for p in parts)

_BOOL_FIELDS = {
    "isGateway": "is_gateway",
    "isDefaultGateway": "is_default_gateway",
    "forceAddress": "force_address",
    "ipMasq": "ip_masq",
    "hairpinMode": "hairpin",
    "promiscMode": "promisc",
    "preserveDefaultVlan": "preserve_default_vlan",
    "enabledad": "enable_dad",
    "macspoofchk": "mac_spoof_check",
    "disableContainerInterface": "disable_container_interface",
    "portIsolation": "port_isolation",
}


class BridgeConf:
    """A parsed bridge config: parse() builds it and fills the fields in."""

    __slots__ = ("bridge", "disable_container_interface", "enable_dad", "force_address", "hairpin", "ip_masq",
                 "ip_masq_backend", "ipam", "is_default_gateway", "is_gateway", "isolate", "mac", "mac_spoof_check",
                 "mtu", "network", "port_isolation", "preserve_default_vlan", "promisc", "vlan")

    def __init__(self, network: str) -> None:
        self.network = network
        self.bridge = DEFAULT_BRIDGE
        self.is_gateway = False
        self.is_default_gateway = False
        self.force_address = False
        self.ip_masq = False
        self.ip_masq_backend = ""
        self.mtu = 0
        self.hairpin = False
        self.promisc = False
        self.vlan = 0
        self.preserve_default_vlan = True  # upstream's default
        self.enable_dad = False
        self.mac_spoof_check = False
        self.disable_container_interface = False
        self.port_isolation = False
        self.isolate = ""  # "" | "isolated" | "strict" (portmap/isolation.py)
        self.ipam: dict[str, Any] = {}
        self.mac: str | None = None

    @property
    def ipam_type(self) -> str:
        return str(self.ipam.get("type") or "")

    @property
    def layer3(self) -> bool:
        """An empty IPAM type means an L2-only attachment (no addresses), as upstream."""
        return bool(self.ipam_type)


def _valid_ifname(name: str) -> bool:
    return ifname_problem(name) is None


def normalize_mac(value: object, where: str) -> str:
    if not isinstance(value, str) or not _mac_text(value):
        raise errors.invalid_config(f"invalid MAC address in {where}", str(value)[:64])
    mac = value.lower()
    if int(mac[:2], 16) & 1:
        raise errors.invalid_config(f"MAC address in {where} is a multicast address", mac)
    return mac


def _mac_from(config: dict[str, Any], cni_args: dict[str, str]) -> str | None:
    """Runtime MAC: runtimeConfig.mac wins over args.cni.mac over CNI_ARGS MAC= (as upstream)."""
    runtime = config.get("runtimeConfig")
    if isinstance(runtime, dict) and runtime.get("mac"):
        return normalize_mac(runtime["mac"], "runtimeConfig.mac")
    args = config.get("args")
    if isinstance(args, dict) and isinstance(args.get("cni"), dict) and args["cni"].get("mac"):
        return normalize_mac(args["cni"]["mac"], "args.cni.mac")
    if cni_args.get("MAC"):
        return normalize_mac(cni_args["MAC"], "CNI_ARGS MAC")
    return None


def _isolate(value: object) -> str:
    """`isolate`: false (default, upstream parity), true, or "strict"; the strings
    "true"/"false" too, as netavark's options spell them."""
    # identity for the booleans: 0 == False and 1 == True must not slip through
    if value is None or value is False or value == "false":
        return ""
    if value is True or value == "true":
        return "isolated"
    if value == "strict":
        return "strict"
    raise errors.invalid_config('isolate must be true, false or "strict"', repr(value)[:64])


def parse(config: dict[str, Any], cni_args: dict[str, str] | None = None) -> BridgeConf:
    """Validate a bridge config; type errors are code 7, unimplemented options code 2."""
    conf = BridgeConf(network=str(config.get("name", "")))
    bridge = config.get("bridge", DEFAULT_BRIDGE)
    if bridge in (None, ""):
        bridge = DEFAULT_BRIDGE
    if not isinstance(bridge, str) or not _valid_ifname(bridge):
        raise errors.invalid_config("invalid bridge name", str(bridge)[:64])
    conf.bridge = bridge
    for key, attr in _BOOL_FIELDS.items():
        value = config.get(key)
        if value is None:
            continue
        if not isinstance(value, bool):
            raise errors.invalid_config(f"{key} must be a boolean", repr(value)[:64])
        setattr(conf, attr, value)
    backend = config.get("ipMasqBackend")
    if backend is not None:
        if backend not in ("", "iptables", "nftables"):
            raise errors.invalid_config("ipMasqBackend must be \"iptables\" or \"nftables\"", str(backend)[:64])
        conf.ip_masq_backend = backend  # berth masquerades with nftables either way
    for key in ("mtu", "vlan"):
        value = config.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise errors.invalid_config(f"{key} must be an integer", repr(value)[:64])
    mtu = config.get("mtu") or 0
    if mtu and not MIN_MTU <= mtu <= MAX_MTU:
        raise errors.invalid_config(f"invalid MTU {mtu}", f"must be 0 (kernel default) or {MIN_MTU}..{MAX_MTU}")
    conf.mtu = mtu
    vlan = config.get("vlan") or 0
    if not 0 <= vlan <= 4094:
        raise errors.invalid_config(f"invalid VLAN ID {vlan} (must be between 0 and 4094)")
    conf.vlan = vlan
    trunk = config.get("vlanTrunk")
    if trunk not in (None, []):
        if not isinstance(trunk, list):
            raise errors.invalid_config("vlanTrunk must be a list")
        raise CNIError(errors.UNSUPPORTED_FIELD, "vlanTrunk is not supported by berth-bridge")
    if conf.vlan and trunk:
        raise errors.invalid_config("cannot set vlan and vlanTrunk at the same time")
    if conf.mac_spoof_check:
        raise CNIError(errors.UNSUPPORTED_FIELD, "macspoofchk is not supported by berth-bridge")
    if conf.is_default_gateway:
        conf.is_gateway = True
    if conf.hairpin and conf.promisc:
        raise errors.invalid_config("cannot set hairpin mode and promiscuous mode at the same time")
    if conf.vlan and conf.is_gateway:
        raise CNIError(errors.UNSUPPORTED_FIELD, "isGateway together with vlan is not supported by berth-bridge")
    ipam = config.get("ipam")
    if ipam is None:
        ipam = {}
    if not isinstance(ipam, dict):
        raise errors.invalid_config("ipam must be an object")
    if not isinstance(ipam.get("type", ""), str):
        raise errors.invalid_config("ipam.type must be a string")
    if ipam.get("type") in NOT_IPAM:
        raise errors.invalid_config(f"invalid IPAM type {ipam['type']!r}", "berth's IPAM plugin is berth-host-local")
    conf.ipam = ipam
    if not conf.layer3 and conf.ip_masq:
        raise errors.invalid_config("ipMasq needs an IPAM plugin (no addresses to masquerade)")
    if conf.disable_container_interface and conf.layer3:
        # the interface stays down: addresses and routes on it could not work
        raise errors.invalid_config("disableContainerInterface is for L2-only networks (empty ipam)")
    conf.isolate = _isolate(config.get("isolate"))
    conf.mac = _mac_from(config, cni_args or {})
    return conf
