"""Network configuration lists, loaded and injected the way libcni does it.

Loading follows libcni's LoadNetworkConf: `*.conflist` files in NETCONFPATH
(sorted) first, then the deprecated single-plugin `*.conf` / `*.json` files,
upconverted to a one-plugin list. Per plugin, libcni injects `name` and
`cniVersion` from the list, `prevResult` when chained, and a `runtimeConfig`
holding only the capability arguments the plugin declares in `capabilities`.
Plugins get compact JSON with sorted keys, as Go's json.Marshal of a map does.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from cni import errors
from cni.errors import CNIError
from cni.spec import CURRENT_VERSION, parse_version

DEFAULT_NETCONF_DIR = "/etc/cni/net.d"
MAX_CONF_BYTES = 4 * 1024 * 1024


@dataclass
class NetworkList:
    name: str
    version: str
    plugins: list[dict[str, Any]]
    raw: bytes  # the list's bytes as loaded (cached with the result, as libcni does)
    disable_check: bool = False
    disable_gc: bool = False
    source: str = ""


def dumps(value: Any) -> bytes:
    """JSON the way Go marshals a map: compact, keys sorted."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _decode(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CNIError(errors.DECODE_FAILURE, f"error parsing {what}", str(exc)[:300]) from None
    if not isinstance(value, dict):
        raise CNIError(errors.DECODE_FAILURE, f"error parsing {what}: not a JSON object")
    return value


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONF_BYTES + 1)
    except OSError as exc:
        raise CNIError(errors.IO_FAILURE, f"error reading {path}", str(exc)) from None
    if len(data) > MAX_CONF_BYTES:
        raise CNIError(errors.DECODE_FAILURE, f"{path} is larger than {MAX_CONF_BYTES} bytes")
    return data


def _read_bool(raw: dict[str, Any], key: str) -> bool:
    value = raw.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise errors.invalid_config(f"error parsing configuration list: invalid value {value!r} for {key}")


def _newer(a: str, b: str) -> bool:
    return parse_version(a) > parse_version(b)


def _pick_version(raw: dict[str, Any]) -> str:
    """cniVersion, or the highest entry of cniVersions this implementation knows (libcni)."""
    version = raw.get("cniVersion", "")
    if not isinstance(version, str):
        raise errors.invalid_config("error parsing configuration list: invalid cniVersion type")
    versions = raw.get("cniVersions")
    if versions is None:
        return version
    if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
        raise errors.invalid_config("error parsing configuration list: cniVersions must be a list of strings")
    usable: list[str] = [str(v) for v in versions if not _newer(v, CURRENT_VERSION)]
    if version and not _newer(version, CURRENT_VERSION):
        usable.append(version)
    if not usable:
        return version
    best = usable[0]
    for v in usable[1:]:
        if _newer(v, best):
            best = v
    return best


def plugin_from(raw: Any, index: int) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise errors.invalid_config(f"failed to parse plugin config {index}: not a JSON object")
    plugin_type = raw.get("type")
    if not isinstance(plugin_type, str) or not plugin_type:
        raise errors.invalid_config(f"failed to parse plugin config {index}: missing 'type'")
    caps = raw.get("capabilities", {})
    if caps is not None and (not isinstance(caps, dict) or not all(isinstance(v, bool) for v in caps.values())):
        raise errors.invalid_config(f"failed to parse plugin config {index}: capabilities must map names to booleans")
    return raw


def list_from_bytes(data: bytes, source: str = "") -> NetworkList:
    """Parse a conflist (libcni NetworkConfFromBytes, inlined plugins only)."""
    raw = _decode(data, "configuration list")
    name = raw.get("name")
    if not isinstance(name, str):
        raise errors.invalid_config("error parsing configuration list: no name" if name is None else
                                    "error parsing configuration list: invalid name type")
    plugins = raw.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise errors.invalid_config(f"error parsing configuration list {name!r}: no plugins in list")
    return NetworkList(
        name=name, version=_pick_version(raw), plugins=[plugin_from(p, i) for i, p in enumerate(plugins)],
        raw=data, disable_check=_read_bool(raw, "disableCheck"), disable_gc=_read_bool(raw, "disableGC"),
        source=source,
    )


def list_from_conf(data: bytes, source: str = "") -> NetworkList:
    """Upconvert a single-plugin .conf into a one-plugin list (libcni ConfListFromConf)."""
    raw = plugin_from(_decode(data, "configuration"), 0)
    name = raw.get("name", "")
    version = raw.get("cniVersion", "")
    if not isinstance(name, str) or not isinstance(version, str):
        raise errors.invalid_config(f"error parsing configuration {source}: name and cniVersion must be strings")
    wrapped = dumps({"cniVersion": version, "name": name, "plugins": [raw]})
    return list_from_bytes(wrapped, source)


def conf_files(directory: str, extensions: tuple[str, ...]) -> list[str]:
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CNIError(errors.IO_FAILURE, f"cannot read {directory}", str(exc)) from None
    out = []
    for name in names:
        path = os.path.join(directory, name)
        if os.path.splitext(name)[1] in extensions and not os.path.isdir(path):
            out.append(path)
    return out


def load(directory: str, name: str) -> NetworkList:
    """Find network `name` in `directory` (libcni LoadNetworkConf order and errors)."""
    lists = conf_files(directory, (".conflist",))
    for path in lists:
        netlist = list_from_bytes(_read(path), path)
        if netlist.name == name:
            return netlist
    singles = conf_files(directory, (".conf", ".json"))
    if not singles and not lists:
        raise errors.invalid_config(f"no net configurations found in {directory}")
    for path in singles:
        netlist = list_from_conf(_read(path), path)
        if netlist.name == name:
            return netlist
    raise errors.invalid_config(f'no net configuration with name "{name}" in {directory}')


def plugin_config(
    netlist: NetworkList,
    plugin: dict[str, Any],
    prev_result: dict[str, Any] | None = None,
    capability_args: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """The stdin for one plugin: name/cniVersion/prevResult injected, runtimeConfig filtered."""
    config = dict(plugin)
    config["name"] = netlist.name
    config["cniVersion"] = netlist.version
    if prev_result is not None:
        config["prevResult"] = prev_result
    runtime = {
        cap: capability_args[cap]
        for cap, enabled in (plugin.get("capabilities") or {}).items()
        if enabled and capability_args and cap in capability_args
    }
    if runtime:
        config["runtimeConfig"] = runtime
    config.update(extra or {})
    return dumps(config)
