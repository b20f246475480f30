"""The `ipam` section of a network config, as upstream host-local reads it.

Accepts `ranges` (list of range sets), the legacy single range at the ipam level,
`routes`, `dataDir`, `resolvConf`; static addresses from CNI_ARGS `IP=a,b`,
`args.cni.ips` and `runtimeConfig.ips` (in that order, as upstream appends them).
"""

from __future__ import annotations

import ipaddress

from cni import errors
from ipam.ranges import IPAddress, RangeSet, parse_ip, parse_range_sets
from ipam.store import DEFAULT_DATA_DIR

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from typing import Any

MAX_ROUTES = 1024
MAX_REQUESTED = 64
MAX_RESOLV_BYTES = 64 * 1024
_ROUTE_INT_FIELDS = ("mtu", "advmss", "priority", "table", "scope")


class IPAMConfig:
    """A parsed host-local IPAM config."""

    __slots__ = ("data_dir", "dns", "network", "range_sets", "requested", "routes")

    def __init__(
        self, network: str, range_sets: list[RangeSet], data_dir: str = DEFAULT_DATA_DIR,
        routes: list[dict[str, Any]] | None = None, dns: dict[str, Any] | None = None,
        requested: list[IPAddress] | None = None,
    ) -> None:
        self.network = network
        self.range_sets = range_sets
        self.data_dir = data_dir
        self.routes: list[dict[str, Any]] = [] if routes is None else routes
        self.dns: dict[str, Any] = {} if dns is None else dns
        self.requested: list[IPAddress] = [] if requested is None else requested


def _routes(raw: object) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_ROUTES:
        raise errors.invalid_config(f"ipam.routes must be a list of at most {MAX_ROUTES} routes")
    out = []
    for i, route in enumerate(raw):
        if not isinstance(route, dict) or not isinstance(route.get("dst"), str) or len(route["dst"]) > 64:
            raise errors.invalid_config(f"ipam.routes[{i}] needs a dst string")
        try:
            dst = ipaddress.ip_interface(route["dst"].strip())
        except ValueError:
            raise errors.invalid_config(f"ipam.routes[{i}].dst {route['dst']!r} is not a CIDR") from None
        entry: dict[str, Any] = {"dst": str(dst)}
        if route.get("gw") not in (None, ""):
            gw = parse_ip(route["gw"], f"ipam.routes[{i}].gw")
            if gw.version != dst.version:
                raise errors.invalid_config(f"ipam.routes[{i}]: gw {gw} and dst {dst} differ in family")
            entry["gw"] = str(gw)
        for key in _ROUTE_INT_FIELDS:
            value = route.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
                raise errors.invalid_config(f"ipam.routes[{i}].{key} must be an unsigned 32-bit integer")
            entry[key] = value
        out.append(entry)
    return out


def parse_resolv_conf(path: str) -> dict[str, Any]:
    """nameserver/domain/search/options into the result's dns, as upstream's parseResolvConf."""
    try:
        with open(path, "rb") as fh:
            text = fh.read(MAX_RESOLV_BYTES).decode("utf-8", "replace")
    except OSError as exc:
        raise errors.invalid_config(f"cannot read resolvConf {path}", exc.strerror or str(exc)) from None
    dns: dict[str, Any] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        fields = line.split()
        if len(fields) < 2:
            continue
        key, values = fields[0], fields[1:]
        if key == "nameserver":
            dns.setdefault("nameservers", []).append(values[0])
        elif key == "domain":
            dns["domain"] = values[0]
        elif key == "search":
            dns.setdefault("search", []).extend(values)
        elif key == "options":
            dns.setdefault("options", []).extend(values)
    return dns


def _ip_list(raw: object, where: str) -> list[IPAddress]:
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_REQUESTED:
        raise errors.invalid_config(f"{where} must be a list of at most {MAX_REQUESTED} addresses")
    return [parse_ip(item, where) for item in raw]


def _nested(config: dict[str, Any], *keys: str) -> object:
    node: object = config
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def cni_args_ips(raw_args: str) -> list[IPAddress]:
    """`IP=a,b` from raw CNI_ARGS (read raw: a delegating plugin passes its own env through)."""
    found: list[IPAddress] = []
    for pair in raw_args.split(";"):
        key, sep, value = pair.partition("=")
        if sep and key.strip() == "IP" and value.strip():
            parts = [p for p in value.split(",") if p.strip()]
            if len(parts) > MAX_REQUESTED:
                raise errors.invalid_env(f"CNI_ARGS IP lists more than {MAX_REQUESTED} addresses")
            try:
                found += [parse_ip(p, "CNI_ARGS IP") for p in parts]
            except errors.CNIError as exc:
                raise errors.invalid_env(exc.msg) from None
    return found


def requested_ips(config: dict[str, Any], raw_args: str) -> list[IPAddress]:
    wanted = cni_args_ips(raw_args)
    wanted += _ip_list(_nested(config, "args", "cni", "ips"), "args.cni.ips")
    wanted += _ip_list(_nested(config, "runtimeConfig", "ips"), "runtimeConfig.ips")
    unique: list[IPAddress] = []
    for addr in wanted:
        if addr not in unique:
            unique.append(addr)
    return unique


def _ipam(config: dict[str, Any]) -> dict[str, Any]:
    ipam = config.get("ipam")
    if not isinstance(ipam, dict):
        raise errors.invalid_config("IPAM config missing 'ipam' key")
    return ipam


def location(config: dict[str, Any]) -> tuple[str, str]:
    """(network, dataDir): all DEL and GC need, so they work even if the ranges changed."""
    from cni.skel import validate_network_name

    network = validate_network_name(config.get("name"))  # also keeps the store under dataDir
    data_dir = _ipam(config).get("dataDir") or DEFAULT_DATA_DIR
    if not isinstance(data_dir, str) or "\0" in data_dir or len(data_dir) > 4096:
        raise errors.invalid_config("ipam.dataDir must be a path string")
    return network, data_dir


def load(config: dict[str, Any], raw_args: str = "") -> IPAMConfig:
    """Parse and check everything before any file is touched (bad input changes nothing)."""
    network, data_dir = location(config)
    ipam = _ipam(config)
    resolv = ipam.get("resolvConf")
    if resolv not in (None, "") and (not isinstance(resolv, str) or "\0" in resolv):
        raise errors.invalid_config("ipam.resolvConf must be a path string")
    conf = IPAMConfig(
        network=network,
        range_sets=parse_range_sets(ipam),
        data_dir=data_dir,
        routes=_routes(ipam.get("routes")),
        requested=requested_ips(config, raw_args),
    )
    if isinstance(resolv, str) and resolv:
        conf.dns = parse_resolv_conf(resolv)
    return conf
