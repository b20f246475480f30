"""Isolation between berth networks (bridge `isolate`), in berth's nft table.

Docker keeps bridge networks apart with DOCKER-ISOLATION-STAGE-1/2 (two rules
per network); berth keeps the rules constant and puts the networks in sets,
so isolating the 100th network costs the same element adds as the 2nd:

    isolated       bridges of `isolate: true` and `isolate: "strict"` networks
    strict         bridges of `isolate: "strict"` networks
    isolated-self  `br . br` for every isolated bridge (traffic staying on it)

The forward chain sends packets leaving through a berth bridge (the set
`bridges`) to CNI-ISOLATION (layout.isolation_rules): replies and DNAT'ed
traffic pass, nothing passes between two isolated bridges, and nothing
between a strict bridge and any berth bridge, in either direction.

So a strict network needs every berth bridge in `bridges`, not only those of
ipMasq and isolated networks, which put theirs there in their own
transactions. The first strict ADD of a node writes the marker
<state>/.isolate-strict, then adds the bridge of every journal; from then on
a bridge ADD without ipMasq or isolate that finds the marker adds its own
(enlist). A bridge ADD writes its journal before it looks for the marker and
the strict ADD writes the marker before it reads the journals, so every
bridge is seen by one of the two. The marker goes when the last strict
attachment of the node does. Elements of `bridges` stay when their bridge's
last attachment goes, as the bridge does.

Membership is per bridge, shared by every network on that bridge. ADD adds the
elements (one transaction, idempotent); DEL and GC remove them once no journal
of any network still records an isolated attachment on the bridge. Counting and
changing happen under the node-wide nft lock, and ADD journals its intent before
taking it, so a DEL racing an ADD can only leave the bridge isolated, never open.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from collections.abc import Mapping as MappingT

from cni import state
from portmap import layout

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from typing import Any

    Cmd = layout.Cmd

ISOLATED = "isolated"  # isolate: true
STRICT = "strict"  # isolate: "strict"
MODES = (ISOLATED, STRICT)
ALL_SETS = (layout.ISOLATED_SET, layout.SELF_SET, layout.STRICT_SET)  # never `bridges`: ipMasq needs it too

Key = tuple[str, str, str]  # network, containerID, ifname


# --- pure builders --------------------------------------------------------------

def elements(bridge: str, mode: str) -> dict[str, list[Any]]:
    """The set elements an isolated bridge needs (set name -> elements)."""
    out: dict[str, list[Any]] = {
        layout.BRIDGES_SET: [bridge],  # the forward chain's gate to CNI-ISOLATION
        layout.ISOLATED_SET: [bridge],
        layout.SELF_SET: [{"concat": [bridge, bridge]}],
    }
    if mode == STRICT:
        out[layout.STRICT_SET] = [bridge]
    return out


def add_commands(bridge: str, mode: str, legacy_maps: tuple[str, ...] = (),
                 others: tuple[str, ...] = ()) -> list[Cmd]:
    """ADD's transaction: the static layout (it holds the sets and CNI-ISOLATION)
    plus element adds; its size does not depend on how many networks exist,
    except for the first strict ADD of a node, which adds every journaled
    bridge (`others`) to `bridges`."""
    cmds = layout.base_layout(legacy_maps=legacy_maps)
    for name, elems in elements(bridge, mode).items():
        cmds.append(layout.add_elements(name, elems))
    extra = sorted(set(others) - {bridge})
    if extra:
        cmds.append(layout.add_elements(layout.BRIDGES_SET, extra))
    return cmds


def enlist_commands(bridge: str, table_ready: bool, legacy_maps: tuple[str, ...] = ()) -> list[Cmd]:
    """A bridge of a network with neither ipMasq nor isolate joins `bridges` while
    a strict network exists (the static layout first when the set is missing)."""
    cmds = [] if table_ready else layout.base_layout(legacy_maps=legacy_maps)
    return [*cmds, layout.add_elements(layout.BRIDGES_SET, [bridge])]


def remove_commands(bridge: str, sets: tuple[str, ...]) -> list[Cmd]:
    """Drop the bridge from `sets`, absence-tolerant (add then delete in one
    transaction); only the table and the sets are asserted, not the chains."""
    if not sets:
        return []
    wanted = elements(bridge, STRICT)
    cmds: list[Cmd] = [layout.add_table()]
    cmds += [c for c in layout.add_sets() if c["add"]["set"]["name"] in sets]
    for name in sets:
        cmds += [layout.add_elements(name, wanted[name]), layout.delete_elements(name, wanted[name])]
    return cmds


def sets_to_drop(releasing: str, in_use: set[str]) -> tuple[str, ...]:
    """Which sets lose the bridge when an attachment in mode `releasing` goes and
    the bridge's other isolated attachments have the modes `in_use`."""
    if not in_use:
        return ALL_SETS
    if releasing == STRICT and STRICT not in in_use:
        return (layout.STRICT_SET,)  # still isolated for the others, no longer strict
    return ()


# --- who still needs the bridge isolated -------------------------------------------

def _records(root: str, network: str) -> Iterator[tuple[Key, dict[str, Any]]]:
    """Bridge journal sections, this network's first (the usual answer is there)."""
    try:
        others = sorted(n for n in os.listdir(root) if n != network)
    except OSError:
        others = []
    for net in ([network] if network else []) + others:  # journals(root, "") would read all
        for _path, data in state.journals(root, net):
            record = data.get("bridge")
            if isinstance(record, dict):
                yield (str(data.get("network", net)), str(data.get("containerID", "")),
                       str(data.get("ifname", ""))), record


def modes_in_use(root: str, network: str, bridge: str, exclude: Key | None = None,
                 enough: Callable[[set[str]], bool] | None = None) -> set[str]:
    """Isolation modes journaled on `bridge` by attachments other than `exclude`
    (an unfinished ADD counts: it may be about to use the bridge). Stops reading
    as soon as `enough(found)` says the answer cannot change."""
    found: set[str] = set()
    for key, record in _records(root, network):
        if key == exclude or record.get("bridge") != bridge:
            continue
        mode = record.get("isolate")
        if mode in MODES:
            found.add(str(mode))
            if STRICT in found or (enough is not None and enough(found)):
                break
    return found


# --- applying ---------------------------------------------------------------------

def mark_strict(root: str) -> bool:
    """Write the marker; True when this call made it."""
    try:
        fd = os.open(state.strict_marker(root), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return False
    except OSError as exc:
        raise state.unusable(root, exc) from None
    os.close(fd)
    return True


def setup(bridge: str, mode: str, environ: MappingT[str, str] | None = None) -> None:
    """Put the bridge in the sets (one transaction, idempotent)."""
    from portmap import nft, ports  # nft work only for isolated networks

    root = state.state_root(environ)
    with ports.locked(root):
        others = tuple(journaled_bridges(root)) if mode == STRICT and mark_strict(root) else ()
        nft.apply(add_commands(bridge, mode, nft.existing(layout.LEGACY_RANGE_MAPS), others))


def enlist(bridge: str, environ: MappingT[str, str] | None = None) -> None:
    """The bridge of a network with neither ipMasq nor isolate, on a node with a
    strict network: into `bridges` (one transaction, idempotent)."""
    from portmap import nft, ports

    nft.prepare()  # loaded outside the lock below
    root = state.state_root(environ)
    with ports.locked(root):
        ready = nft.set_exists(layout.BRIDGES_SET) is True
        nft.apply(enlist_commands(bridge, ready, () if ready else nft.existing(layout.LEGACY_RANGE_MAPS)))


def release(network: str, container_id: str, ifname: str, bridge: str, mode: str,
            environ: MappingT[str, str] | None = None) -> tuple[str, ...]:
    """The attachment (network, container_id, ifname) is going: take the bridge
    out of the sets nobody else needs. Idempotent; returns the sets changed."""
    from portmap import nft, ports

    root = state.state_root(environ)
    with ports.locked(root):
        # releasing `isolated`: any other isolated attachment keeps every set as is
        in_use = modes_in_use(root, network, bridge, (network, container_id, ifname),
                              enough=lambda found: mode != STRICT and bool(found))
        drop = sets_to_drop(mode, in_use)
        if nft.table_exists() is not False:  # no table: nothing to take out (and none to create)
            nft.apply(remove_commands(bridge, drop))
        if layout.STRICT_SET in drop and state.strict_node(root) and not _strict_elsewhere(root, (network, container_id,
                                                                                             ifname)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(state.strict_marker(root))  # the node's last strict attachment: bridge ADDs need no nft again
    return drop


def check(bridge: str, mode: str) -> list[str]:
    """What is missing of the bridge's isolation (empty when all is there): the
    static layout that holds the sets and CNI-ISOLATION, and the bridge's elements."""
    from portmap import diff

    table = diff.snapshot()
    return diff.static_problems(table) + [m.what for m in diff.isolation_missing(bridge, mode, table)]


def _strict_elsewhere(root: str, exclude: Key) -> bool:
    return any(record.get("isolate") == STRICT for key, record in _records(root, "") if key != exclude)


def journaled_bridges(root: str) -> set[str]:
    """Every bridge a journal of any network names."""
    return {str(record["bridge"]) for _key, record in _records(root, "")
            if isinstance(record.get("bridge"), str) and record["bridge"]}


def journaled(root: str) -> dict[str, str]:
    """Bridge -> mode (strict wins) of every journaled isolated attachment: what
    `berth reconcile` must put back after someone flushed the ruleset."""
    out: dict[str, str] = {}
    for _key, record in _records(root, ""):
        mode, bridge = record.get("isolate"), record.get("bridge")
        if mode in MODES and isinstance(bridge, str) and bridge and out.get(bridge) != STRICT:
            out[bridge] = str(mode)
    return out
