"""IP address text for the plugin paths that need only an address's family and
canonical form: the C library's inet_pton instead of the ipaddress module.

`ipaddress` pulls `functools`, `collections` and `types` (several ms per exec);
portmap's calls and a result's validation need none of its arithmetic. Every
function here takes its fast path only for the plain forms inet_pton reads
(dotted quad, colon-hex, an optional decimal prefix) and hands anything else to
`ipaddress` itself, so what is accepted, refused and printed is exactly what
`ipaddress` accepts, refuses and prints.
"""

import _socket
import struct

_HEX = frozenset("0123456789abcdefABCDEF:.")
_DIGITS = frozenset("0123456789")


def _packed(text: str) -> bytes | None:
    """The address's bytes when inet_pton reads it as written (4 or 16), else None."""
    if not text or not _HEX.issuperset(text):  # scope ids, spaces, anything odd: ipaddress decides
        return None
    try:
        return _socket.inet_pton(_socket.AF_INET6 if ":" in text else _socket.AF_INET, text)
    except OSError:
        return None


def _v6_text(packed: bytes) -> str:
    """ipaddress's str() of an IPv6Address: lower-case hex groups without leading
    zeros, the first of the longest runs of two or more zero groups as '::'."""
    groups = [f"{g:x}" for g in struct.unpack("!8H", packed)]
    run_start = run_len = best_start = best_len = 0
    for i, group in enumerate(groups):
        run_len = run_len + 1 if group == "0" else 0
        if run_len == 1:
            run_start = i
        if run_len > best_len:
            best_start, best_len = run_start, run_len
    if best_len < 2:
        return ":".join(groups)
    return ":".join(groups[:best_start]) + "::" + ":".join(groups[best_start + best_len:])


def canonical(text: str) -> str:
    """str(ipaddress.ip_address(text)); ValueError as ipaddress raises it."""
    packed = _packed(text)
    if packed is None:
        import ipaddress

        return str(ipaddress.ip_address(text))
    return _socket.inet_ntop(_socket.AF_INET, packed) if len(packed) == 4 else _v6_text(packed)


def version(text: str) -> int:
    """ipaddress.ip_address(text).version."""
    packed = _packed(text)
    if packed is None:
        import ipaddress

        return ipaddress.ip_address(text).version
    return 4 if len(packed) == 4 else 6


def _split(text: str) -> tuple[bytes, int] | None:
    """(address bytes, prefix) of "address/decimal-prefix" within range, else None."""
    address, slash, prefix = text.partition("/")
    packed = _packed(address)
    if packed is None or not slash or not prefix or not _DIGITS.issuperset(prefix) or len(prefix) > 3:
        return None
    if prefix != "0" and prefix.startswith("0"):
        return None  # ipaddress's own rules for such prefixes apply
    bits = int(prefix)
    return (packed, bits) if bits <= len(packed) * 8 else None


def interface_address(text: str) -> str:
    """str(ipaddress.ip_interface(text).ip): the address of "address/prefix"."""
    split = _split(text)
    if split is None:
        import ipaddress

        return str(ipaddress.ip_interface(text).ip)
    packed = split[0]
    return _socket.inet_ntop(_socket.AF_INET, packed) if len(packed) == 4 else _v6_text(packed)


def interface_version(text: str) -> int:
    """ipaddress.ip_interface(text).version."""
    split = _split(text)
    if split is None:
        import ipaddress

        return ipaddress.ip_interface(text).version
    return 4 if len(split[0]) == 4 else 6


def network(text: str) -> tuple[str, int, int]:
    """ipaddress.ip_network(text, strict=False) as (network address, prefix length,
    the family's maximum): host bits cleared, as ipaddress clears them."""
    split = _split(text)
    if split is None and "/" not in text:
        packed = _packed(text)
        split = (packed, len(packed) * 8) if packed is not None else None
    if split is None:
        import ipaddress

        net = ipaddress.ip_network(text, strict=False)
        return str(net.network_address), net.prefixlen, net.max_prefixlen
    packed, bits = split
    width = len(packed) * 8
    value = int.from_bytes(packed, "big") & (((1 << bits) - 1) << (width - bits))
    masked = value.to_bytes(len(packed), "big")
    text_out = _socket.inet_ntop(_socket.AF_INET, masked) if len(masked) == 4 else _v6_text(masked)
    return text_out, bits, width


def check_network(text: str) -> None:
    """ipaddress.ip_network(text, strict=False), for its ValueError only."""
    if _split(text) is None:
        import ipaddress

        ipaddress.ip_network(text, strict=False)
