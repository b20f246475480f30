"""Spec versions and results, with conversion between the result formats.

Plugins build results in the newest shape (1.1.0: `interfaces`, `ips` without
`version`, `routes`, `dns`) and the dispatcher converts at print time, the way
libcni's types.PrintResult does. prevResult arrives in the config's version and
is converted to the current shape before a plugin reads it.
"""

from __future__ import annotations

from cni.errors import DECODE_FAILURE, INCOMPATIBLE_VERSION, INVALID_NETWORK_CONFIG, CNIError

# typing is imported where used (a VERSION call needs none); addresses go through cni.addrs.
TYPE_CHECKING = False  # mypy treats this name as True
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

CURRENT_VERSION = "1.1.0"
SUPPORTED_VERSIONS: tuple[str, ...] = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
# A config without cniVersion is 0.1.0 by the spec; we do not speak it.
MISSING_VERSION = "0.1.0"

if TYPE_CHECKING:
    Result = dict[str, Any]
    Converter = Callable[[Result, str], Result]
else:  # importable names for annotations elsewhere, without importing typing
    Result = dict
    Converter = object


def parse_version(version: str) -> tuple[int, int, int]:
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() and len(p) <= 4 for p in parts):
        raise CNIError(INCOMPATIBLE_VERSION, f"invalid version {version!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def version_at_least(version: str, minimum: str) -> bool:
    return parse_version(version) >= parse_version(minimum)


def require_supported(version: object) -> str:
    if not isinstance(version, str) or version not in SUPPORTED_VERSIONS:
        raise CNIError(
            INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f"config is {version!r}, plugin supports {list(SUPPORTED_VERSIONS)}",
        )
    return version


def _family_of(address: object) -> str:
    from cni import addrs

    if not isinstance(address, str):
        raise CNIError(DECODE_FAILURE, f"invalid address {address!r} in result")
    try:
        return "4" if addrs.interface_version(address) == 4 else "6"
    except ValueError:
        raise CNIError(DECODE_FAILURE, f"invalid address {address!r} in result") from None


def _copy(result: Result) -> Result:
    """A deep copy of a result (copy.deepcopy's answer for JSON data, without
    importing copy and weakref on every exec)."""
    out: Result = _copy_value(result)
    return out


def _copy_value(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_value(v) for v in value]
    return value  # str, numbers, None: immutable


def _to_0x(result: Result, version: str) -> Result:
    """1.x shape -> 0.3.x/0.4.0 shape: every ip carries "version"."""
    out = _copy(result)
    for ip in out.get("ips", []) or []:
        ip["version"] = _family_of(ip.get("address", ""))
    for iface in out.get("interfaces", []) or []:
        for key in ("mtu", "socketPath", "pciID"):
            iface.pop(key, None)
    for route in out.get("routes", []) or []:
        for key in ("mtu", "advmss", "priority", "table", "scope"):
            route.pop(key, None)
    out["cniVersion"] = version
    return out


def _to_1x(result: Result, version: str) -> Result:
    out = _copy(result)
    for ip in out.get("ips", []) or []:
        ip.pop("version", None)
    if version == "1.0.0":
        for iface in out.get("interfaces", []) or []:
            for key in ("mtu", "socketPath", "pciID"):
                iface.pop(key, None)
        for route in out.get("routes", []) or []:
            for key in ("mtu", "advmss", "priority", "table", "scope"):
                route.pop(key, None)
    out["cniVersion"] = version
    return out


_CONVERTERS: dict[tuple[str, str], Converter] = {}


def register_converter(from_versions: tuple[str, ...], to_versions: tuple[str, ...], fn: Converter) -> None:
    for src in from_versions:
        for dst in to_versions:
            if (src, dst) in _CONVERTERS:
                raise ValueError(f"duplicate converter {src} -> {dst}")
            _CONVERTERS[(src, dst)] = fn


_OLD = ("0.3.0", "0.3.1", "0.4.0")
_NEW = ("1.0.0", "1.1.0")
register_converter(_OLD + _NEW, _OLD, _to_0x)
register_converter(_OLD + _NEW, _NEW, _to_1x)


def convert_result(result: Result, to_version: str) -> Result:
    """Convert a result (whose cniVersion names its shape) to another version."""
    if not isinstance(result, dict):
        raise CNIError(DECODE_FAILURE, "result is not a JSON object")
    src = result.get("cniVersion", CURRENT_VERSION)
    if not isinstance(src, str):
        raise CNIError(DECODE_FAILURE, "result cniVersion must be a string")
    if src == to_version:
        return _copy(result)
    fn = _CONVERTERS.get((src, to_version))
    if fn is None:
        raise CNIError(
            INCOMPATIBLE_VERSION, f"cannot convert a result from version {src!r} to {to_version!r}"
        )
    return fn(result, to_version)


def validate_result(result: object) -> Result:
    """Check the fields plugins rely on; raise a decode error on anything odd."""
    if not isinstance(result, dict):
        raise CNIError(DECODE_FAILURE, "prevResult is not a JSON object")
    for key, kind in (("interfaces", list), ("ips", list), ("routes", list), ("dns", dict)):
        if key in result and result[key] is not None and not isinstance(result[key], kind):
            raise CNIError(DECODE_FAILURE, f"prevResult.{key} must be a {kind.__name__}")
    for ip in result.get("ips") or []:
        if not isinstance(ip, dict) or not isinstance(ip.get("address"), str):
            raise CNIError(DECODE_FAILURE, "prevResult.ips entries need an address")
        _family_of(ip["address"])
        index = ip.get("interface")
        if index is not None and (type(index) is not int or index < 0):  # bool is an int: refuse it too
            raise CNIError(DECODE_FAILURE, "prevResult.ips[].interface must be an index")
        if ip.get("gateway") is not None:
            _ip_of(ip["gateway"], "prevResult.ips[].gateway")
    for iface in result.get("interfaces") or []:
        if not isinstance(iface, dict) or not isinstance(iface.get("name"), str):
            raise CNIError(DECODE_FAILURE, "prevResult.interfaces entries need a name")
    for route in result.get("routes") or []:
        if not isinstance(route, dict) or not isinstance(route.get("dst"), str):
            raise CNIError(DECODE_FAILURE, "prevResult.routes entries need a dst")
        _network_of(route["dst"], "prevResult.routes[].dst")
        if route.get("gw") is not None:
            _ip_of(route["gw"], "prevResult.routes[].gw")
    return result


def _ip_of(value: object, where: str) -> None:
    from cni import addrs

    try:
        addrs.canonical(value if isinstance(value, str) else "")
    except ValueError:
        raise CNIError(DECODE_FAILURE, f"{where} is not an IP address: {str(value)[:60]!r}") from None


def _network_of(value: str, where: str) -> None:
    from cni import addrs

    try:
        addrs.check_network(value)
    except ValueError:
        raise CNIError(DECODE_FAILURE, f"{where} is not a CIDR: {value[:60]!r}") from None


def prev_result(config: dict[str, Any]) -> Result | None:
    """prevResult of a chained call in the current shape, or None when absent."""
    raw = config.get("prevResult")
    if raw is None:
        return None
    validate_result(raw)
    shaped = dict(raw)
    shaped.setdefault("cniVersion", config.get("cniVersion", CURRENT_VERSION))
    if shaped["cniVersion"] not in SUPPORTED_VERSIONS:
        shaped["cniVersion"] = config.get("cniVersion", CURRENT_VERSION)
    return convert_result(shaped, CURRENT_VERSION)


def valid_attachments(config: dict[str, Any]) -> set[tuple[str, str]]:
    """GC's list of attachments that are still in use, as (containerID, ifname).

    Spec 1.1.0 names it `cni.dev/valid-attachments` (libcni also sends the
    earlier `cni.dev/attachments`). A missing or null list means what an empty
    one means, nothing is valid: libcni sends none when its caller gave no
    list (cnitool gc), and GC then removes every attachment of the network."""
    raw = config.get("cni.dev/valid-attachments")
    if raw is None:
        raw = config.get("cni.dev/attachments")
    if raw is None:
        return set()
    if not isinstance(raw, list):
        raise CNIError(INVALID_NETWORK_CONFIG, "cni.dev/valid-attachments must be a list")
    valid: set[tuple[str, str]] = set()
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("containerID"), str) \
                or not isinstance(item.get("ifname"), str):
            raise CNIError(INVALID_NETWORK_CONFIG,
                           f"cni.dev/valid-attachments[{i}] needs containerID and ifname strings")
        valid.add((item["containerID"].strip(), item["ifname"]))
    return valid
