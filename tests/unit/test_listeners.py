"""Host services on published ports without a kernel: the sock_diag port filter
run by a model of the kernel's bytecode checker and interpreter, which sockets a
mapping would take traffic from, the refusal, and the portmap option."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cni.errors import CNIError
from cni.records import PortMapping
from portmap import listeners, sockdiag
from portmap.conf import Conf
from portmap.sockdiag import Socket

OP = struct.Struct("=BBH")


def audit(code: bytes) -> bool:
    """net/ipv4/inet_diag.c inet_diag_bc_audit for the ops port_filter writes."""
    def valid_cc(cc: int) -> bool:
        length, pos = len(code), 0
        while length >= 0:
            if cc > length:
                return False
            if cc == length:
                return True
            _c, yes, _no = OP.unpack_from(code, pos)
            if yes < 4 or yes & 3:
                return False
            length -= yes
            pos += yes
        return False

    length, pos = len(code), 0
    while length > 0:
        op, yes, no = OP.unpack_from(code, pos)
        min_len = 4
        if op in (sockdiag.BC_S_GE, sockdiag.BC_S_LE):
            if length < 8:
                return False
            min_len = 8
        elif op != sockdiag.BC_JMP:
            return False
        if no < min_len or no > length + 4 or no & 3:
            return False
        if no < length and not valid_cc(length - no):
            return False
        if yes < min_len or yes > length + 4 or yes & 3:
            return False
        pos += yes
        length -= yes
    return length == 0


def run(code: bytes, sport: int) -> bool:
    """inet_diag_bc_run for a socket whose local port is `sport`."""
    length, pos = len(code), 0
    while length > 0:
        op, yes, no = OP.unpack_from(code, pos)
        if op == sockdiag.BC_JMP:
            ok = False
        else:
            port = OP.unpack_from(code, pos + 4)[2]
            ok = sport >= port if op == sockdiag.BC_S_GE else sport <= port
        step = yes if ok else no
        length -= step
        pos += step
    return length == 0


ranges = st.lists(st.tuples(st.integers(1, 65535), st.integers(0, 40)).map(lambda t: (t[0], min(65535, t[0] + t[1]))),
                  min_size=1, max_size=12)


@given(ranges, st.lists(st.integers(1, 65535), max_size=30))
def test_port_filter_passes_the_kernels_audit_and_matches_exactly_the_ranges(spans: list[tuple[int, int]],
                                                                              probes: list[int]) -> None:
    code = sockdiag.port_filter(spans)
    assert audit(code)
    for port in probes + [p for lo, hi in spans for p in (lo - 1, lo, hi, hi + 1) if 0 < p < 65536]:
        assert run(code, port) == any(lo <= port <= hi for lo, hi in spans), (spans, port)


def test_merge_joins_overlapping_and_adjacent_ranges() -> None:
    assert sockdiag.merge([(10, 20), (21, 25), (5, 6), (15, 30), (40, 40)]) == [(5, 6), (10, 30), (40, 40)]


def sock(address: str, port: int = 8080, protocol: str = "tcp", v6only: bool = False, cookie: int = 1) -> Socket:
    return Socket(protocol, 6 if ":" in address else 4, address, port, v6only, 4242, 0, cookie)


@pytest.mark.parametrize(("address", "v6only", "dest", "hit"), [
    ("0.0.0.0", False, (4, None), True),
    ("0.0.0.0", False, (4, "198.51.100.1"), True),
    ("0.0.0.0", False, (6, None), False),
    ("127.0.0.1", False, (4, None), True),  # the any-address DNAT catches 127.0.0.1:port from the node too
    ("127.0.0.1", False, (4, "198.51.100.1"), False),
    ("198.51.100.1", False, (4, "198.51.100.1"), True),
    ("::", False, (4, "198.51.100.1"), True),  # a dual-stack socket
    ("::", True, (4, "198.51.100.1"), False),
    ("::", True, (6, "::1"), True),
    ("::1", True, (6, None), False),  # never DNAT'ed: only the proxy takes [::1]
    ("::1", True, (6, "::1"), True),
    ("fd00:5::1", True, (6, "fd00:5::9"), False),
    ("::ffff:198.51.100.1", False, (4, "198.51.100.1"), True),
    ("::ffff:198.51.100.1", False, (4, "10.0.0.1"), False),
    ("::ffff:198.51.100.1", False, (6, None), False),
])
def test_receives_as_the_kernel_delivers(address: str, v6only: bool, dest: Any, hit: bool) -> None:
    assert listeners.receives(sock(address, v6only=v6only), dest) is hit


def test_conflicts_by_protocol_port_family_and_proxy() -> None:
    any80 = PortMapping(8080, 8080, 80, "tcp")
    rng = PortMapping(8000, 8100, 8000, "tcp")
    on_node = PortMapping(8080, 8080, 80, "tcp", "198.51.100.1")
    udp = PortMapping(8080, 8080, 80, "udp")
    v4 = [sock("0.0.0.0")]
    assert listeners.conflicts([any80], (4,), False, v4) == [(any80, v4[0])]
    assert listeners.conflicts([rng], (4,), False, v4) == [(rng, v4[0])]
    assert listeners.conflicts([on_node], (4,), False, v4) == [(on_node, v4[0])]
    assert listeners.conflicts([udp], (4,), False, v4) == []  # another protocol
    assert listeners.conflicts([any80], (6,), False, v4) == []  # a v6-only container takes no v4 traffic
    assert listeners.conflicts([any80], (4,), False, [sock("0.0.0.0", port=8081)]) == []
    # [::1]: taken only when the proxy would serve it
    loop6 = [sock("::1", v6only=True)]
    assert listeners.conflicts([any80], (4,), False, loop6) == []
    assert listeners.conflicts([any80], (4,), True, loop6) == [(any80, loop6[0])]
    assert listeners.conflicts([PortMapping(8080, 8080, 80, "sctp")], (4,), True,
                               [sock("::1", protocol="sctp", v6only=True)]) == []  # no SCTP proxy
    # berth's own proxy sockets (by cookie) are not host services
    assert listeners.conflicts([any80], (4,), True, loop6 + v4, own=frozenset({1})) == []


def test_refusal_names_the_port_and_the_socket() -> None:
    m = PortMapping(22, 22, 2222, "tcp")
    err = listeners.refusal([(m, sock("0.0.0.0", 22)), (m, sock("::", 22))])
    assert err.code == 102
    assert err.msg == ("host port 22/tcp is in use on this node: a socket listens on 0.0.0.0:22/tcp "
                       "(socket inode 4242, uid 0) (and 1 more)")
    assert "hostListenerPolicy" in err.details
    udp = listeners.refusal([(PortMapping(53, 53, 53, "udp", "fd00::1"), sock("::", 53, "udp"))])
    assert udp.msg.startswith("host port [fd00::1]:53/udp is in use on this node: a socket is bound to [::]:53/udp")


def test_check_asks_the_kernel_once_for_the_adds_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[dict[str, list[tuple[int, int]]]] = []

    def bound(ports: dict[str, list[tuple[int, int]]]) -> list[Socket]:
        asked.append(ports)
        return [sock("0.0.0.0", 9000, "udp")]

    monkeypatch.setattr(sockdiag, "bound", bound)
    maps = [PortMapping(8080, 8080, 80, "tcp"), PortMapping(9000, 9009, 9000, "udp")]
    with pytest.raises(CNIError) as exc:
        listeners.check(maps, (4,), False)
    assert asked == [{"tcp": [(8080, 8080)], "udp": [(9000, 9009)]}]
    assert "9000/udp" in exc.value.msg

    def unavailable(ports: Any) -> list[Socket]:
        raise sockdiag.Unavailable(2, "sock_diag: No such file or directory")

    monkeypatch.setattr(sockdiag, "bound", unavailable)
    assert listeners.check(maps, (4,), False) == ["host listeners not checked: sock_diag: No such file or directory"]


@pytest.mark.parametrize(("value", "allow"), [(None, False), ("error", False), ("allow", True)])
def test_host_listener_policy(value: Any, allow: bool) -> None:
    config: dict[str, Any] = {"cniVersion": "1.0.0", "name": "n", "type": "berth-portmap"}
    if value is not None:
        config["hostListenerPolicy"] = value
    assert Conf(config).allow_host_listeners is allow


@pytest.mark.parametrize("value", ["Allow", True, 1, "", "ignore"])
def test_bad_host_listener_policy_is_code_7(value: Any) -> None:
    with pytest.raises(CNIError) as exc:
        Conf({"cniVersion": "1.0.0", "name": "n", "type": "berth-portmap", "hostListenerPolicy": value})
    assert exc.value.code == 7
