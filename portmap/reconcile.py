"""Put back what the journals say exists: berth's static layout, each
attachment's CNI-DN-<hash> chain and verdict-map elements, the per-subnet
ipMasq rules and elements, the bridges and isolation sets, the firewall
plugin's chains and elements (portmap/diff.py says what is missing), all in
ONE libnftables transaction under the node-wide ports lock portmap's ADD/DEL
hold, so it never races a plugin call. It only adds (and refills the chains it owns); it never takes a port another
attachment holds (its port file decides). Attachments whose ADD did not
finish, or whose host veth is gone, are skipped and named: DEL/GC are the
tools for those. A [::1] proxy that no longer serves is started again after
the transaction. `berth reconcile` renders it; `berth agent` runs it after a
flush.
"""

from __future__ import annotations

from cni import state
from cni.records import Attachment, PortMapping
from portmap import diff, layout, ports
from portmap.diff import Missing, Table

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from typing import Any


class Plan:
    """What to re-create: (whose, Missing) fixes, and (whose, why) attachments left alone."""

    __slots__ = ("fixes", "proxies", "skipped")

    def __init__(self) -> None:
        self.fixes: list[tuple[str, Missing]] = []
        self.skipped: list[tuple[str, str]] = []
        self.proxies: list[Attachment] = []  # whose [::1] proxy to start again (after the transaction)

    def commands(self) -> list[layout.Cmd]:
        out: list[layout.Cmd] = []
        for _whose, missing in self.fixes:
            out += missing.commands
        return out

    def conntrack(self) -> list[PortMapping]:
        return [m for _whose, missing in self.fixes for m in missing.conntrack]

    def to_json(self) -> dict[str, Any]:
        return {"fixes": [{"attachment": w, "what": m.what} for w, m in self.fixes],
                "skipped": [{"attachment": w, "why": why} for w, why in self.skipped]}


def vanished_veths(attachments: list[Attachment]) -> set[tuple[str, str, str]]:
    """Attachments whose journal names a host veth that no longer exists here."""
    wanted = [(a, a.bridge.host_veth) for a in attachments if a.bridge is not None]
    wanted = [(a, name) for a, name in wanted if name]
    if not wanted:
        return set()
    from cni import netlink

    gone = set()
    try:
        with netlink.open_node() as node:
            for att, name in wanted:
                if netlink.link_by_name(node, name) is None:
                    gone.add(att.key)
    except (netlink.NetlinkFailure, OSError):
        return set()  # cannot tell: treat all as alive (reconcile only adds)
    return gone


def plan(root: str, attachments: list[Attachment], table: Table, gone: set[tuple[str, str, str]],
         present: frozenset[int] | None = frozenset()) -> Plan:
    """What to re-create, as data (pure: tests drive it with a fake table and the
    cookies of the sockets on ::1, `present`)."""
    result = Plan()
    live = [a for a in attachments if (a.portmap is not None or a.masq is not None)]
    _plan_isolation(root, table, result)
    _plan_firewall(root, table, result)
    usable = []
    for att in live:
        if not att.complete():
            result.skipped.append((att.describe(), "its ADD did not complete (DEL it, or let GC do it)"))
        elif att.key in gone:
            veth = att.bridge.host_veth if att.bridge is not None else ""
            result.skipped.append((att.describe(), f"host veth {veth} is gone (the container died without a DEL: "
                                                   "run GC)"))
        else:
            usable.append(att)
    if not usable:
        return result
    static = diff.static_problems(table)
    if static:
        result.fixes.append(("node", Missing("static layout: " + "; ".join(static),
                                             layout.base_layout(legacy_maps=diff.legacy_maps(table)))))
    snat = [a for a in usable if a.portmap is not None and a.mappings and a.portmap.snat]
    bit = _mark_bit(snat)
    marks = diff.mark_problems(table, bit)
    if snat and marks:
        result.fixes.append(("node", Missing("hairpin/localhost marks: " + "; ".join(marks)
                                             + f" (markMasqBit {bit})", layout.mark_layout(bit))))
    _plan_ipmasq(usable, table, result)
    view = diff.Ownership(root, attachments)
    for att in usable:
        owned = view.owned(att)
        for m in att.mappings:
            if m not in owned:
                owner = view.claim_owner(m)
                who = f"{owner[1]}/{owner[2]} on {owner[0]}" if owner else "another journal"
                result.skipped.append((att.describe(), f"port {diff.format_mapping(m)} is held by {who}"))
        for missing in diff.portmap_missing(att, table, owned) + diff.masq_missing(att, table, False):
            result.fixes.append((att.describe(), missing))
        for missing in diff.proxy_missing(att, present):
            result.fixes.append((att.describe(), missing))
            result.proxies.append(att)
    return result


def _plan_ipmasq(attachments: list[Attachment], table: Table, result: Plan) -> None:
    """The per-subnet ipMasq rules the usable attachments need, once per subnet."""
    for missing in diff.ipmasq_rules_missing(table, attachments):
        result.fixes.append(("node", missing))


def _plan_isolation(root: str, table: Table, result: Plan) -> None:
    """Set elements of isolated bridges (`isolate`) that a flush took away."""
    from portmap import isolation

    missing = []
    commands: list[layout.Cmd] = []
    modes = isolation.journaled(root)
    for bridge, mode in sorted(modes.items()):
        gone = diff.isolation_missing(bridge, mode, table)
        if gone:
            missing.append("; ".join(m.what for m in gone))
            commands += [c for m in gone for c in m.commands]
    if isolation.STRICT in modes.values():
        gone = diff.strict_missing(isolation.journaled_bridges(root) - set(modes), table)
        if gone:
            missing.append("; ".join(m.what for m in gone))
            commands += [c for m in gone for c in m.commands]
    if missing:
        static = ([] if not diff.static_problems(table)
                  else layout.base_layout(legacy_maps=diff.legacy_maps(table)))
        result.fixes.append(("node", Missing("isolation: " + "; ".join(missing), static + commands)))


def _plan_firewall(root: str, table: Table, result: Plan) -> None:
    """The firewall plugin's chains and sets once, then each journaled attachment's elements."""
    from portmap import firewall

    records = firewall.journaled(root)
    static = diff.firewall_static_problems(table) if records else []
    if static:
        result.fixes.append(("node", Missing("firewall: " + "; ".join(static), layout.firewall_layout())))
    for (network, container_id, ifname), record in records:
        for missing in diff.firewall_missing(record, table, static=False):
            result.fixes.append((f"{container_id}/{ifname} on {network}", missing))


def _mark_bit(attachments: list[Attachment]) -> int:
    """markMasqBit as journaled (portmap may not record it yet: default 13)."""
    for att in attachments:
        if att.portmap is not None and att.portmap.mark_bit is not None:
            return att.portmap.mark_bit
    return layout.DEFAULT_MASQ_BIT


def reconcile(root: str, dry_run: bool) -> tuple[Plan, str | None, list[str]]:
    """Plan and (unless dry_run) apply in one transaction: (plan, error, warnings)."""
    import os

    from cni.errors import CNIError
    from portmap import conntrack, nft, proxyctl

    if not os.path.isdir(root):
        return Plan(), None, []  # no berth state on this node: do not create any
    warnings: list[str] = []
    with ports.locked(root):
        attachments = state.attachments(root)
        table = diff.snapshot()
        result = plan(root, attachments, table, vanished_veths(attachments),
                      proxyctl.present(diff.proxied_ports(attachments)))
        if not dry_run and any(a.bridge is not None and a.bridge.isolate == "strict" for a in attachments):
            from portmap import isolation

            isolation.mark_strict(root)  # the bridge ADDs to come keep enlisting their bridges
        if dry_run or not result.fixes:
            return result, None, []
        try:
            if result.commands():
                nft.apply(result.commands())
        except CNIError as exc:
            return result, f"{exc.msg}: {exc.details}", []
        for att in result.proxies:
            try:
                warnings += [f"{att.describe()}: [::1] not proxied: {why}" for why in proxyctl.restart(root, att)]
            except CNIError as exc:
                warnings.append(f"{att.describe()}: the [::1] proxy did not start: {exc.msg}")
    # restored UDP/SCTP ports: stale flows would keep their old translation
    flows = result.conntrack()
    return result, None, warnings + (conntrack.flush(flows) if conntrack.needs_flush(flows) else [])
