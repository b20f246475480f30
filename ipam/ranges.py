"""Address ranges and range sets, parsed and checked the way upstream host-local does.

A Range is one subnet with an inclusive [start, end] window and a gateway that
is never handed out; a RangeSet is a list of same-family ranges from which one
address is allocated (dual stack = one range set per family). Iteration order
is upstream's round robin: continue after the last reserved address, walk the
ranges of the set in order, wrap around, stop where we started.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from cni import errors

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from typing import Any, NamedTuple
else:
    from cni.tuples import NamedTuple

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_RANGE_SETS = 64
MAX_RANGES_PER_SET = 256
_MAX_TEXT = 64  # longest address/CIDR text we bother parsing


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise errors.invalid_config(f"{what} must be a string, got {type(value).__name__}")
    if len(value) > _MAX_TEXT or "\0" in value:
        raise errors.invalid_config(f"invalid {what}", value[:_MAX_TEXT])
    return value.strip()


def parse_ip(value: object, what: str) -> IPAddress:
    """An address; a CIDR suffix is accepted and dropped (upstream's ip.ParseIP)."""
    text = _text(value, what)
    try:
        return ipaddress.ip_interface(text).ip if "/" in text else ipaddress.ip_address(text)
    except ValueError:
        raise errors.invalid_config(f"invalid {what} {text!r}") from None


def parse_subnet(value: object, what: str = "subnet") -> IPNetwork:
    text = _text(value, what)
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise errors.invalid_config(f"invalid {what} {text!r}") from None
    if "/" not in text:
        raise errors.invalid_config(f"invalid {what} {text!r}: missing prefix length")
    if net.version == 6 and net.network_address.ipv4_mapped is not None:
        # Go prints these as dotted IPv4, so lease names would differ from upstream's (which rejects them too)
        raise errors.invalid_config(f"invalid {what} {text!r}: IPv4-mapped IPv6 subnets are not supported")
    if net.network_address != ipaddress.ip_interface(text).ip:
        raise errors.invalid_config(
            f"network {text} has host bits set; for a prefix of length {net.prefixlen} "
            f"the network address is {net.network_address}"
        )
    return net


class Range(NamedTuple):
    subnet: IPNetwork
    start: IPAddress
    end: IPAddress
    gateway: IPAddress

    @property
    def version(self) -> int:
        return self.subnet.version

    def contains(self, addr: IPAddress) -> bool:
        return addr.version == self.version and self.start <= addr <= self.end  # type: ignore[operator]

    def overlaps(self, other: Range) -> bool:
        return self.version == other.version and self.start <= other.end and other.start <= self.end  # type: ignore[operator]

    def size(self) -> int:
        """How many addresses this range can hand out (the gateway excluded)."""
        total = int(self.end) - int(self.start) + 1
        return total - 1 if self.contains(self.gateway) else total

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"

    def to_json(self) -> dict[str, str]:
        return {"subnet": str(self.subnet), "rangeStart": str(self.start), "rangeEnd": str(self.end),
                "gateway": str(self.gateway)}


def _last_usable(net: IPNetwork) -> IPAddress:
    # IPv4 reserves the broadcast address; IPv6 has none (upstream's lastIP).
    return net.broadcast_address - 1 if net.version == 4 else net.broadcast_address


def parse_range(raw: object, where: str) -> Range:
    if not isinstance(raw, dict):
        raise errors.invalid_config(f"{where} must be an object")
    if "subnet" not in raw:
        raise errors.invalid_config(f"{where}: missing subnet")
    net = parse_subnet(raw["subnet"], f"{where}.subnet")
    if net.prefixlen > net.max_prefixlen - 2:
        # a /31, /32, /127, /128 has no address left once network and gateway are set aside
        raise errors.invalid_config(f"{where}: network {net} too small to allocate from")
    first, last = net.network_address + 1, _last_usable(net)

    def inside(key: str, default: IPAddress) -> IPAddress:
        value = raw.get(key)
        if value is None or value == "":
            return default
        addr = parse_ip(value, f"{where}.{key}")
        if addr not in net:
            raise errors.invalid_config(f"{where}: {key} {addr} not in network {net}")
        return addr

    gateway = inside("gateway", first)
    start = max(inside("rangeStart", first), first)  # the network address is never handed out
    end = min(inside("rangeEnd", last), last)  # clamp an end that names the broadcast address
    if start > end:  # type: ignore[operator]
        raise errors.invalid_config(f"{where}: rangeStart {start} is after rangeEnd {end}")
    rng = Range(net, start, end, gateway)
    if rng.size() < 1:
        raise errors.invalid_config(f"{where}: range {rng} has no address besides the gateway")
    return rng


class RangeSet(NamedTuple):
    ranges: tuple[Range, ...]

    @property
    def version(self) -> int:
        return self.ranges[0].version

    def range_for(self, addr: IPAddress) -> Range | None:
        return next((r for r in self.ranges if r.contains(addr)), None)

    def contains(self, addr: IPAddress) -> bool:
        return self.range_for(addr) is not None

    def overlaps(self, other: RangeSet) -> bool:
        return any(a.overlaps(b) for a in self.ranges for b in other.ranges)

    def size(self) -> int:
        return sum(r.size() for r in self.ranges)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.ranges)

    def candidates(self, last_reserved: IPAddress | None) -> Iterator[tuple[Range, IPAddress]]:
        """Every allocatable address once, in upstream's round-robin order."""
        idx, cur = 0, None
        if last_reserved is not None:
            for i, rng in enumerate(self.ranges):
                if rng.contains(last_reserved):
                    idx, cur = i, last_reserved
                    break
        count = len(self.ranges)
        if cur is None:
            # start at the first range's start, inclusive
            order = [(self.ranges[i], self.ranges[i].start) for i in range(count)]
        else:
            rng = self.ranges[idx]
            head = [(rng, cur + 1)] if cur < rng.end else []  # type: ignore[operator]
            order = head + [(self.ranges[(idx + k) % count], self.ranges[(idx + k) % count].start)
                            for k in range(1, count + 1)]
        stop = cur  # after wrapping, stop once we are back at the last reserved address
        for rng, first in order:
            addr = first
            while addr <= rng.end:  # type: ignore[operator]
                if stop is not None and addr == stop:
                    if addr != rng.gateway:
                        yield rng, addr
                    return
                if addr != rng.gateway:
                    yield rng, addr
                addr += 1


def parse_range_set(raw: object, where: str) -> RangeSet:
    if not isinstance(raw, list) or not raw:
        raise errors.invalid_config(f"{where} must be a non-empty list of ranges")
    if len(raw) > MAX_RANGES_PER_SET:
        raise errors.invalid_config(f"{where} has more than {MAX_RANGES_PER_SET} ranges")
    ranges = tuple(parse_range(item, f"{where}[{i}]") for i, item in enumerate(raw))
    if len({r.version for r in ranges}) > 1:
        raise errors.invalid_config(f"{where}: mixed address families in one range set")
    for i, a in enumerate(ranges):
        for b in ranges[i + 1:]:
            if a.overlaps(b):
                raise errors.invalid_config(f"{where}: range {a} overlaps with range {b}")
    return RangeSet(ranges)


def parse_range_sets(ipam: dict[str, Any]) -> list[RangeSet]:
    """`ranges` plus the legacy single range at the ipam level (which comes first, as upstream)."""
    raw_sets = ipam.get("ranges")
    if raw_sets is None:
        raw_sets = []
    if not isinstance(raw_sets, list):
        raise errors.invalid_config("ipam.ranges must be a list of range sets")
    sets: list[RangeSet] = []
    if ipam.get("subnet") not in (None, ""):
        legacy = {k: ipam.get(k) for k in ("subnet", "rangeStart", "rangeEnd", "gateway")}
        sets.append(parse_range_set([legacy], "ipam"))
    sets += [parse_range_set(rs, f"ipam.ranges[{i}]") for i, rs in enumerate(raw_sets)]
    if not sets:
        raise errors.invalid_config("no IP ranges specified")
    if len(sets) > MAX_RANGE_SETS:
        raise errors.invalid_config(f"more than {MAX_RANGE_SETS} range sets")
    for i, a in enumerate(sets):
        for j in range(i + 1, len(sets)):
            if a.overlaps(sets[j]):
                raise errors.invalid_config(f"range set {i} overlaps with range set {j}")
    return sets
