"""Allocation logic over a Store: one address per range set, round robin, static requests.

Every function expects the caller to hold store.lock() for the whole operation.

Retried ADD (same containerID and ifname): upstream refuses ("duplicate allocation
is not allowed"); we return the address the attachment already holds in that
range set, so a runtime retrying after a timeout gets the same answer and leaks
nothing. A static request for a different address than the one held is refused.
"""

from __future__ import annotations

from cni import errors
from cni.errors import CNIError
from ipam.ranges import IPAddress, Range, RangeSet
from ipam.store import Owner, Store

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from typing import NamedTuple
else:
    from cni.tuples import NamedTuple


class Allocation(NamedTuple):
    range_set: int
    range: Range
    address: IPAddress
    new: bool  # False when the attachment already held it (retried ADD)

    def to_json(self) -> dict[str, str]:
        return {"address": f"{self.address}/{self.range.subnet.prefixlen}", "gateway": str(self.range.gateway)}


def held_by(store: Store, container_id: str, ifname: str) -> list[IPAddress]:
    """What (container_id, ifname) holds, legacy ID-only leases included; the disk store answers from
    its hints without reading every lease (ipam/store.py)."""
    return store.held_by(container_id, ifname)


def _describe(owner: Owner | None) -> str:
    if owner is None:
        return "another attachment"
    cid, ifname = owner
    return f"container {cid} ({ifname})" if ifname else f"container {cid}"


def _static(store: Store, rs: RangeSet, idx: int, cid: str, ifname: str, addr: IPAddress) -> Allocation:
    rng = rs.range_for(addr)
    assert rng is not None
    if addr == rng.gateway:
        raise errors.invalid_config(f"requested ip {addr} is subnet's gateway")
    if not store.reserve(cid, ifname, addr, idx):
        raise CNIError(errors.INVALID_NETWORK_CONFIG,
                       f"requested IP address {addr} is not available in range set {rs}",
                       f"already allocated to {_describe(store.owner(addr))}")
    return Allocation(idx, rng, addr, True)


def _next_free(store: Store, rs: RangeSet, idx: int, cid: str, ifname: str) -> Allocation:
    for rng, addr in rs.candidates(store.last_reserved(idx)):
        if store.reserve(cid, ifname, addr, idx):
            return Allocation(idx, rng, addr, True)
    raise CNIError(errors.ADDRESS_EXHAUSTED,
                   f"failed to allocate for range {idx}: no IP addresses available in range set: {rs}")


def allocate(store: Store, range_sets: list[RangeSet], cid: str, ifname: str,
             requested: list[IPAddress]) -> list[Allocation]:
    """One address per range set; on any failure the addresses reserved here are released."""
    unplaced = list(requested)
    for addr in requested:
        if not any(rs.contains(addr) for rs in range_sets):
            raise errors.invalid_config(
                f"requested IP address {addr} is not in any range set",
                "; ".join(f"range set {i}: {rs}" for i, rs in enumerate(range_sets)))
    held = held_by(store, cid, ifname)
    done: list[Allocation] = []
    try:
        for idx, rs in enumerate(range_sets):
            want = next((a for a in unplaced if rs.contains(a)), None)
            if want is not None:
                unplaced.remove(want)
            mine = next((a for a in held if rs.contains(a)), None)
            if mine is not None:
                if want is not None and want != mine:
                    raise errors.invalid_config(
                        f"{cid} ({ifname}) already holds {mine} in range set {idx}, cannot also take {want}")
                rng = rs.range_for(mine)
                assert rng is not None
                done.append(Allocation(idx, rng, mine, False))
            elif want is not None:
                done.append(_static(store, rs, idx, cid, ifname, want))
            else:
                done.append(_next_free(store, rs, idx, cid, ifname))
        if unplaced:
            raise errors.invalid_config(
                "failed to allocate all requested IPs: " + " ".join(str(a) for a in unplaced),
                "at most one address per range set")
    except BaseException:
        for alloc in done:
            if alloc.new:
                store.release(alloc.address)
        raise
    return done


def release(store: Store, cid: str, ifname: str) -> list[IPAddress]:
    """Release every lease of (cid, ifname), legacy ID-only leases included."""
    gone = held_by(store, cid, ifname)
    for addr in gone:
        store.release(addr)
    return gone


def gc(store: Store, valid: set[Owner]) -> list[IPAddress]:
    """Release every lease whose attachment is not in `valid`."""
    valid_ids = {cid for cid, _ in valid}
    gone = []
    for addr, (cid, ifname) in store.leases().items():
        keep = (cid, ifname) in valid if ifname else cid in valid_ids
        if not keep:
            store.release(addr)
            gone.append(addr)
    return gone


def free_problem(store: Store, range_sets: list[RangeSet]) -> str | None:
    """The first range set with no free address, described, or None."""
    leases = list(store.leases())
    for idx, rs in enumerate(range_sets):
        used = sum(1 for a in leases if rs.contains(a) and all(a != r.gateway for r in rs.ranges))
        if rs.size() - used <= 0:
            return f"no free addresses in range set {idx}: {rs}"
    return None
