"""Allocator logic against the in-memory store: round robin, wrap, exhaustion, static IPs, GC."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from cni import errors
from cni.errors import CNIError
from ipam import allocator
from ipam.ranges import RangeSet, parse_range_sets
from ipam.store import MemoryStore

A = ipaddress.ip_address


def sets(*ranges: Any) -> list[RangeSet]:
    return parse_range_sets({"ranges": list(ranges)})


def add(store: MemoryStore, rs: list[RangeSet], cid: str, ifname: str = "eth0",
        requested: list[str] | None = None) -> list[str]:
    with store.lock(True):
        allocs = allocator.allocate(store, rs, cid, ifname, [A(r) for r in requested or []])
    return [str(a.address) for a in allocs]


def rel(store: MemoryStore, cid: str, ifname: str = "eth0") -> list[str]:
    with store.lock(False):
        return [str(a) for a in allocator.release(store, cid, ifname)]


SMALL = [{"subnet": "10.0.0.0/29"}]  # .1 gateway, .2-.6 usable


def test_sequential_skips_gateway_and_exhausts() -> None:
    store, rs = MemoryStore(), sets(SMALL)
    got = [add(store, rs, f"c{i}")[0] for i in range(5)]
    assert got == ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
    with pytest.raises(CNIError) as info:
        add(store, rs, "c9")
    assert info.value.code == errors.ADDRESS_EXHAUSTED
    assert "no IP addresses available in range set: 10.0.0.1-10.0.0.6" in info.value.msg


def test_round_robin_continues_after_last_then_wraps() -> None:
    store, rs = MemoryStore(), sets(SMALL)
    for i in range(3):
        add(store, rs, f"c{i}")  # .2 .3 .4
    rel(store, "c0")  # .2 free again, but round robin goes on
    assert add(store, rs, "c3") == ["10.0.0.5"]
    assert add(store, rs, "c4") == ["10.0.0.6"]
    assert add(store, rs, "c5") == ["10.0.0.2"]  # wrapped


def test_dual_stack_one_per_set_and_rollback_on_exhaustion() -> None:
    store = MemoryStore()
    rs = sets([{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/126"}])  # v6: ::2, ::3
    assert add(store, rs, "a") == ["10.0.0.2", "fd00::2"]
    assert add(store, rs, "b") == ["10.0.0.3", "fd00::3"]
    with pytest.raises(CNIError):
        add(store, rs, "c")
    assert sorted(map(str, store.leases())) == ["10.0.0.2", "10.0.0.3", "fd00::2", "fd00::3"]


def test_retried_add_returns_what_is_held() -> None:
    store, rs = MemoryStore(), sets(SMALL)
    first = add(store, rs, "c1")
    assert add(store, rs, "c1") == first
    assert add(store, rs, "c1", requested=first) == first
    assert len(store.leases()) == 1
    assert add(store, rs, "c1", "eth1") != first  # another interface is another attachment
    with pytest.raises(CNIError) as info:
        add(store, rs, "c1", requested=["10.0.0.6"])
    assert "already holds" in info.value.msg


def test_static_requests() -> None:
    store, rs = MemoryStore(), sets(SMALL, [{"subnet": "fd00::/120"}])
    assert add(store, rs, "a", requested=["10.0.0.5"]) == ["10.0.0.5", "fd00::2"]
    assert add(store, rs, "b", requested=["fd00::80", "10.0.0.6"]) == ["10.0.0.6", "fd00::80"]
    # round robin continues after the last reservation, static ones included (upstream)
    assert add(store, rs, "c") == ["10.0.0.2", "fd00::81"]


@pytest.mark.parametrize(("requested", "needle"), [
    (["10.0.0.1"], "subnet's gateway"),
    (["10.0.0.5"], "not available"),
    (["192.0.2.9"], "not in any range set"),
    (["10.0.0.7"], "not in any range set"),  # the broadcast address
    (["10.0.0.2", "10.0.0.3"], "failed to allocate all requested IPs: 10.0.0.3"),
])
def test_static_request_errors_change_nothing(requested: list[str], needle: str) -> None:
    store, rs = MemoryStore(), sets(SMALL)
    add(store, rs, "owner", requested=["10.0.0.5"])
    before = store.leases()
    with pytest.raises(CNIError) as info:
        add(store, rs, "x", requested=requested)
    assert info.value.code == errors.INVALID_NETWORK_CONFIG
    assert needle in info.value.msg
    if needle == "not available":
        assert "owner" in info.value.details
    assert store.leases() == before


def test_release_matches_ifname_and_legacy_id_only_leases() -> None:
    store, rs = MemoryStore(), sets([{"subnet": "10.0.0.0/24"}])
    add(store, rs, "c1", "eth0")
    add(store, rs, "c1", "eth1")
    store.data[A("10.0.0.100")] = ("c1", "")  # a legacy lease: ID only
    assert rel(store, "c1", "eth0") == ["10.0.0.2", "10.0.0.100"]
    assert [str(a) for a in store.leases()] == ["10.0.0.3"]
    assert rel(store, "c1", "eth0") == []  # idempotent


def test_gc_keeps_only_valid_attachments() -> None:
    store, rs = MemoryStore(), sets([{"subnet": "10.0.0.0/24"}])
    for cid in ("a", "b", "c"):
        add(store, rs, cid)
    store.data[A("10.0.0.50")] = ("b", "")
    store.data[A("10.0.0.51")] = ("z", "")
    with store.lock(False):
        gone = allocator.gc(store, {("a", "eth0"), ("b", "eth0")})
    assert sorted(map(str, gone)) == ["10.0.0.4", "10.0.0.51"]
    assert sorted(map(str, store.leases())) == ["10.0.0.2", "10.0.0.3", "10.0.0.50"]


def test_free_problem() -> None:
    store, rs = MemoryStore(), sets([{"subnet": "10.0.0.0/30"}], [{"subnet": "fd00::/64"}])
    assert allocator.free_problem(store, rs) is None
    add(store, rs, "a")
    problem = allocator.free_problem(store, rs)
    assert problem and "no free addresses in range set 0" in problem
