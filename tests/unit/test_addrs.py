"""cni.addrs agrees with ipaddress on every input: what it accepts, refuses and prints."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cni import addrs

_GROUP = st.one_of(st.just(0), st.integers(0, 0xFFFF))
_V6 = st.lists(_GROUP, min_size=8, max_size=8).map(lambda g: ipaddress.IPv6Address(struct.pack("!8H", *g)))
_V4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
# texts ipaddress may or may not take: forms of real addresses, and near misses
_TEXT = st.one_of(
    _V4.map(str), _V6.map(str), _V6.map(lambda a: a.exploded), _V6.map(lambda a: a.exploded.upper()),
    st.text(alphabet="0123456789abcdefABCDEF:./% x-", max_size=45),
    st.tuples(st.one_of(_V4.map(str), _V6.map(str)), st.integers(0, 130)).map(lambda t: f"{t[0]}/{t[1]}"),
    st.sampled_from(["", "::", "::1", "1::", "::ffff:1.2.3.4", "1.2.3", "01.2.3.4", "1.2.3.256", "fe80::1%eth0",
                     " 1.2.3.4", "1.2.3.4 ", "1:2:3:4:5:6:7:8:9", "1::2::3", ":::", "12345::", "::1.2.3.4",
                     "1.2.3.4/24", "1.2.3.4/033", "1.2.3.4/33", "::/0", "::/129", "10.0.0.0/255.255.255.0",
                     "10.0.0.1/", "/24", "1.2.3.4/24/1", "1.2.3.4/+24", "1.2.3.4/ 24", "a.b.c.d"]),
)


def outcome(fn, text: str) -> object:  # type: ignore[no-untyped-def]
    try:
        return ("ok", fn(text))
    except ValueError:
        return ("ValueError",)


@given(_V6)
def test_ipv6_text_is_ipaddress_text(addr: ipaddress.IPv6Address) -> None:
    assert addrs.canonical(addr.exploded) == str(addr)
    assert addrs.canonical(str(addr)) == str(addr)


@given(_TEXT)
def test_same_verdicts_and_texts_as_ipaddress(text: str) -> None:
    assert outcome(addrs.canonical, text) == outcome(lambda t: str(ipaddress.ip_address(t)), text)
    assert outcome(addrs.version, text) == outcome(lambda t: ipaddress.ip_address(t).version, text)
    assert outcome(addrs.interface_address, text) == outcome(lambda t: str(ipaddress.ip_interface(t).ip), text)
    assert outcome(addrs.interface_version, text) == outcome(lambda t: ipaddress.ip_interface(t).version, text)
    assert outcome(addrs.check_network, text) == outcome(lambda t: ipaddress.ip_network(t, strict=False) and None,
                                                         text)

    def net(t: str) -> tuple[str, int, int]:
        n = ipaddress.ip_network(t, strict=False)
        return str(n.network_address), n.prefixlen, n.max_prefixlen

    assert outcome(addrs.network, text) == outcome(net, text)


@pytest.mark.parametrize("text", ["0.0.0.0", "255.255.255.255", "::", "::1", "1::", "1:0:0:2::3", "1::2:0:0:3",
                                  "::ffff:1.2.3.4", "fe80::1", "2001:db8::", "0:0:1::"])
def test_known_forms(text: str) -> None:
    assert addrs.canonical(text) == str(ipaddress.ip_address(text))
