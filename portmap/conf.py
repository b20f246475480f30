"""berth-portmap's configuration: the portMappings capability (podman's
lower-case keys and CRI's capitalised ones), upstream's options (snat,
masqAll, markMasqBit, externalSetMarkChain, conditionsV4/V6) and berth's own
(conflictPolicy, hostListenerPolicy, userlandProxy)."""

from __future__ import annotations

from cni import addrs, errors
from cni.errors import CNIError
from cni.records import PortMapping
from cni.skel import ifname_problem
from portmap import layout

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from typing import Any

PROTOCOLS = ("tcp", "udp", "sctp")
MAX_RANGE = 1024
LAST_WINS = "last-wins"
ALLOW = "allow"
CHAIN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def _port_text(text: str) -> tuple[int, int] | None:
    """"8080" or "30000-30100" (1-5 digits each side), else None; no regex: `re` is
    a heavy import for every exec."""
    lo_text, sep, hi_text = text.partition("-")
    parts = [lo_text, hi_text] if sep else [lo_text]
    if not all(0 < len(p) <= 5 and p.isascii() and p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[-1])


def valid_chain_name(name: str) -> bool:
    """A name for externalSetMarkChain: a letter, then up to 63 of [A-Za-z0-9_.-]."""
    return 0 < len(name) <= 64 and name[0].isascii() and name[0].isalpha() and set(name) <= CHAIN_CHARS


def _get(entry: dict[str, Any], key: str) -> Any:
    """lower-case keys (podman, cnitool) or CRI's capitalised ones."""
    if key in entry:
        return entry[key]
    return entry.get(key[0].upper() + key[1:])


def _port_span(value: Any, what: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise errors.invalid_config(f"invalid {what} {value!r}")
    if isinstance(value, int):
        lo = hi = value
    elif isinstance(value, str) and (found := _port_text(value.strip())):
        lo, hi = found
    else:
        raise errors.invalid_config(f"invalid {what} {value!r}", "a port is an integer 1-65535")
    if not (1 <= lo <= hi <= 65535):
        raise errors.invalid_config(f"invalid {what} {value!r}", "ports must be 1-65535 (ranges low-high)")
    return lo, hi


def parse_mapping(entry: Any) -> PortMapping:
    if not isinstance(entry, dict):
        raise errors.invalid_config("portMappings entries must be objects")
    host_lo, host_hi = _port_span(_get(entry, "hostPort"), "hostPort")
    cont_lo, cont_hi = _port_span(_get(entry, "containerPort"), "containerPort")
    width = entry.get("range", 1)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise errors.invalid_config(f"invalid range {width!r}")
    if width > 1:
        if host_lo != host_hi or cont_lo != cont_hi:
            raise errors.invalid_config("give either a port range or \"range\", not both")
        host_hi = host_lo + width - 1
        if host_hi > 65535 or cont_lo + width - 1 > 65535:
            raise errors.invalid_config("port range exceeds 65535")
    elif cont_hi != cont_lo and cont_hi - cont_lo != host_hi - host_lo:
        raise errors.invalid_config("hostPort and containerPort ranges differ in size")
    if host_hi - host_lo + 1 > MAX_RANGE:
        raise errors.invalid_config(f"port range wider than {MAX_RANGE}")
    protocol = _get(entry, "protocol")
    protocol = "tcp" if protocol in (None, "") else protocol
    if not isinstance(protocol, str) or protocol.lower() not in PROTOCOLS:
        raise errors.invalid_config(f"invalid protocol {protocol!r}", f"one of {', '.join(PROTOCOLS)}")
    host_ip = _get(entry, "hostIP") or ""
    if not isinstance(host_ip, str):
        raise errors.invalid_config(f"invalid hostIP {host_ip!r}")
    if host_ip:
        try:
            parsed = addrs.canonical(host_ip.strip())
        except ValueError:
            raise errors.invalid_config(f"invalid hostIP {host_ip!r}") from None
        # 0.0.0.0 / :: mean "any local address", as upstream treats them
        host_ip = "" if parsed in ("0.0.0.0", "::") else parsed
    return PortMapping(host_lo, host_hi, cont_lo, protocol.lower(), host_ip)


def parse_mappings(config: dict[str, Any]) -> list[PortMapping]:
    runtime = config.get("runtimeConfig") or {}
    if not isinstance(runtime, dict):
        raise errors.invalid_config("runtimeConfig must be an object")
    raw = runtime.get("portMappings") or []
    if not isinstance(raw, list):
        raise errors.invalid_config("runtimeConfig.portMappings must be a list")
    out: list[PortMapping] = []
    for entry in raw:
        m = parse_mapping(entry)
        if m in out:
            continue  # the same mapping twice (CRI repeats them per family)
        for other in out:
            if (other.host_ip, other.protocol) == (m.host_ip, m.protocol) and \
                    other.host_lo <= m.host_hi and m.host_lo <= other.host_hi:
                raise errors.invalid_config(f"portMappings overlap on host port {m.host_lo}/{m.protocol}")
        out.append(m)
    return out


class Conf:
    def __init__(self, config: dict[str, Any]) -> None:
        self.snat = _bool(config, "snat", True)
        self.masq_all = _bool(config, "masqAll", False)
        bit = config.get("markMasqBit", layout.DEFAULT_MASQ_BIT)
        if isinstance(bit, bool) or not isinstance(bit, int) or not 0 <= bit <= 31:
            raise errors.invalid_config(f"invalid markMasqBit {bit!r}", "must be an integer 0-31")
        self.mark_bit = bit
        ext = config.get("externalSetMarkChain")
        if ext is not None and (not isinstance(ext, str) or not valid_chain_name(ext)):
            raise errors.invalid_config(f"invalid externalSetMarkChain {ext!r}")
        if ext and "markMasqBit" in config:
            raise errors.invalid_config("externalSetMarkChain and markMasqBit are mutually exclusive")
        self.external_setmark: str | None = ext or None
        self.conditions = {4: parse_conditions(config, "conditionsV4", 4),
                           6: parse_conditions(config, "conditionsV6", 6)}
        policy = config.get("conflictPolicy", "error")
        if policy not in ("error", LAST_WINS):
            raise errors.invalid_config(f"invalid conflictPolicy {policy!r}", 'one of "error", "last-wins"')
        self.last_wins = policy == LAST_WINS
        listening = config.get("hostListenerPolicy", "error")
        if listening not in ("error", ALLOW):
            raise errors.invalid_config(f"invalid hostListenerPolicy {listening!r}", 'one of "error", "allow"')
        # a host socket on a mapped port loses its traffic to the container: only on purpose
        self.allow_host_listeners = listening == ALLOW
        # [::1]:hostPort through berth's userland proxy (the kernel cannot DNAT ::1)
        self.userland_proxy = _bool(config, "userlandProxy", True)
        self.mappings = parse_mappings(config)


_COND_FLAGS = {"-s": "saddr", "--source": "saddr", "-d": "daddr", "--destination": "daddr",
               "-i": "iifname", "--in-interface": "iifname"}


def parse_conditions(config: dict[str, Any], key: str, version: int) -> list[dict[str, Any]]:
    """upstream's conditionsV4/V6 (iptables match arguments), in the subset that has
    an exact nft equivalent: [!] -s/-d CIDR, [!] -i IFNAME. They restrict every rule
    of the attachment's DNAT chain (upstream puts them on the entry jump)."""
    raw = config.get(key)
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(t, str) for t in raw):
        raise errors.invalid_config(f"{key} must be a list of strings")
    tokens = [t for item in raw for t in item.split()]  # ["-d 1.2.3.4"] and ["-d", "1.2.3.4"] alike
    out: list[dict[str, Any]] = []
    i = 0
    while i < len(tokens):
        negate = tokens[i] == "!"
        i += negate
        if i + 1 >= len(tokens) or tokens[i] not in _COND_FLAGS:
            raise CNIError(errors.UNSUPPORTED_FIELD, f"{key}: unsupported condition {' '.join(tokens[i:i + 2])!r}",
                           "berth-portmap understands [!] -s/-d CIDR and [!] -i IFNAME; put anything else "
                           "in chain CNI-ADMIN of table inet berth")
        field, value = _COND_FLAGS[tokens[i]], tokens[i + 1]
        op = "!=" if negate else "=="
        if field == "iifname":
            if ifname_problem(value) is not None:
                raise errors.invalid_config(f"{key}: invalid interface {value!r}")
            out.append(layout.match(layout.meta("iifname"), value, op))
        else:
            try:
                _address, _bits, width = addrs.network(value)
            except ValueError:
                raise errors.invalid_config(f"{key}: invalid address {value!r}") from None
            if (4 if width == 32 else 6) != version:
                raise errors.invalid_config(f"{key}: {value} is not an IPv{version} address")
            out.append(layout.match(layout.payload(layout.ip_proto(version), field), layout.prefix(value), op))
        i += 2
    return out


def _bool(config: dict[str, Any], key: str, default: bool) -> bool:
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise errors.invalid_config(f"{key} must be a boolean")
    return value
