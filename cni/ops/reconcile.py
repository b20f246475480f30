"""`berth reconcile [--dry-run] [--json]`: put back what the journals say exists.

After someone flushed the ruleset, deleted a chain or a map element, this
re-creates berth's static layout, each attachment's CNI-DN-<hash> chain and
verdict-map elements (portmap), the per-subnet ipMasq rules and each
attachment's ipmasq-<subnet> elements and bridges-set member (bridge ipMasq;
a CNI-<hash> chain for attachments made before those) — all in ONE libnftables
transaction, under the node-wide ports lock portmap's ADD/DEL hold, so it never
races a plugin call. It never removes anything and never takes a port another
attachment holds (its port file decides). Attachments whose ADD did not finish,
or whose host veth is gone (a container that died without a DEL), are skipped
and named: DEL/GC are the tools for those.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from cni.ops import view as ops_state
from cni.ops.view import Attachment, Missing, PortView, Table
from portmap import layout
from portmap.layout import Mapping


@dataclass
class Plan:
    fixes: list[tuple[str, Missing]] = field(default_factory=list)  # (whose, what)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def commands(self) -> list[layout.Cmd]:
        out: list[layout.Cmd] = []
        for _whose, missing in self.fixes:
            out += missing.commands
        return out

    def conntrack(self) -> list[Mapping]:
        return [m for _whose, missing in self.fixes for m in missing.conntrack]

    def to_json(self) -> dict[str, Any]:
        return {"fixes": [{"attachment": w, "what": m.what} for w, m in self.fixes],
                "skipped": [{"attachment": w, "why": why} for w, why in self.skipped]}


def vanished_veths(attachments: list[Attachment]) -> set[tuple[str, str, str]]:
    """Attachments whose journal names a host veth that no longer exists here."""
    wanted = [(a, str(a.bridge.get("hostVeth") or "")) for a in attachments if a.bridge]
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


def plan(root: str, attachments: list[Attachment], table: Table, gone: set[tuple[str, str, str]]) -> Plan:
    """What to re-create, as data (pure: tests drive it with a fake table)."""
    result = Plan()
    live = [a for a in attachments if (a.portmap is not None or a.masq is not None)]
    _plan_isolation(root, table, result)
    usable = []
    for att in live:
        if not att.complete():
            result.skipped.append((att.describe(), "its ADD did not complete (DEL it, or let GC do it)"))
        elif att.key in gone:
            result.skipped.append((att.describe(), f"host veth {att.bridge and att.bridge.get('hostVeth')} "
                                                   "is gone (the container died without a DEL: run GC)"))
        else:
            usable.append(att)
    if not usable:
        return result
    static = ops_state.static_problems(table)
    if static:
        result.fixes.append(("node", Missing("static layout: " + "; ".join(static),
                                             layout.base_layout(legacy_maps=ops_state.legacy_maps(table)))))
    snat = [a for a in usable if a.portmap is not None and a.mappings and ops_state.portmap_options(a.portmap)["snat"]]
    marks = ops_state.mark_problems(table)
    if snat and marks:
        bit = _mark_bit(snat)
        result.fixes.append(("node", Missing("hairpin/localhost marks: " + "; ".join(marks)
                                             + f" (markMasqBit {bit})", layout.mark_layout(bit))))
    _plan_ipmasq(usable, table, result)
    view = PortView(root, attachments)
    for att in usable:
        owned = view.owned(att)
        for m in att.mappings:
            if m not in owned:
                owner = view.claim_owner(m)
                who = f"{owner[1]}/{owner[2]} on {owner[0]}" if owner else "another journal"
                result.skipped.append((att.describe(), f"port {ops_state.format_mapping(m)} is held by {who}"))
        for missing in ops_state.portmap_missing(att, table, owned) + ops_state.masq_missing(att, table, False):
            result.fixes.append((att.describe(), missing))
    return result


def _plan_ipmasq(attachments: list[Attachment], table: Table, result: Plan) -> None:
    """The per-subnet ipMasq rules the usable attachments need, once per subnet."""
    for missing in ops_state.ipmasq_rules_missing(table, attachments):
        result.fixes.append(("node", missing))


def _plan_isolation(root: str, table: Table, result: Plan) -> None:
    """Set elements of isolated bridges (`isolate`) that a flush took away."""
    from portmap import isolation

    missing = []
    commands: list[layout.Cmd] = []
    for bridge, mode in sorted(isolation.journaled(root).items()):
        wanted = isolation.elements(bridge, mode)
        gone = [name for name, elems in wanted.items() for e in elems if e not in table.elements.get(name, [])]
        if gone:
            missing.append(f"bridge {bridge} missing from set(s) {', '.join(sorted(set(gone)))}")
            commands += [layout.add_elements(name, elems) for name, elems in wanted.items()]
    if missing:
        static = ([] if not ops_state.static_problems(table)
                  else layout.base_layout(legacy_maps=ops_state.legacy_maps(table)))
        result.fixes.append(("node", Missing("isolation: " + "; ".join(missing), static + commands)))


def _mark_bit(attachments: list[Attachment]) -> int:
    """markMasqBit as journaled (portmap may not record it yet: default 13)."""
    for att in attachments:
        bit = (att.portmap or {}).get("markMasqBit")
        if isinstance(bit, int) and not isinstance(bit, bool) and 0 <= bit <= 31:
            return bit
    return layout.DEFAULT_MASQ_BIT


def reconcile(root: str, dry_run: bool) -> tuple[Plan, str | None, list[str]]:
    """Plan and (unless dry_run) apply in one transaction: (plan, error, warnings)."""
    import os

    from cni.errors import CNIError
    from portmap import conntrack, nft, ports

    if not os.path.isdir(root):
        return Plan(), None, []  # no berth state on this node: do not create any
    with ports.locked(root):
        attachments = ops_state.load_attachments(root)
        table = ops_state.snapshot()
        result = plan(root, attachments, table, vanished_veths(attachments))
        if dry_run or not result.fixes:
            return result, None, []
        try:
            nft.apply(result.commands())
        except CNIError as exc:
            return result, f"{exc.msg}: {exc.details}", []
    # restored UDP/SCTP ports: stale flows would keep their old translation
    flows = result.conntrack()
    return result, None, conntrack.flush(flows) if conntrack.needs_flush(flows) else []


def render(result: Plan, dry_run: bool, error: str | None, warnings: list[str]) -> str:
    verb = "would fix" if dry_run else "fixed"
    lines = []
    for whose, missing in result.fixes:
        lines.append(f"{verb}: {whose}: {missing.what}")
    for whose, why in result.skipped:
        lines.append(f"skipped: {whose}: {why}")
    if error:
        lines.append(f"error: nothing was changed: {error}")
    elif not result.fixes:
        lines.append("nothing to fix")
    elif not dry_run:
        lines.append(f"{len(result.fixes)} fix(es) applied in one nftables transaction")
    lines += [f"warning: {w}" for w in warnings]
    return "\n".join(lines) + "\n"


def main(command: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"berth {command}",
        description="Re-create missing nftables chains and elements (portmap DNAT, bridge masquerade) "
                    "from the journals, in one transaction, and say what was fixed.",
        epilog="Only adds; never removes and never takes a port another attachment holds. Skips ADDs that "
               "did not finish and attachments whose host veth is gone. Exit status: 0 done (or nothing to "
               "do), 1 the transaction failed (nothing changed). Reads BERTH_STATE_DIR "
               "(default /var/lib/cni/berth).",
    )
    parser.add_argument("--dry-run", action="store_true", help="report what is missing, change nothing")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    from cni import state
    from cni.errors import CNIError

    try:
        result, error, warnings = reconcile(state.state_root(), args.dry_run)
    except CNIError as exc:
        sys.stderr.write(f"berth {command}: {exc.msg}" + (f": {exc.details}" if exc.details else "") + "\n")
        return 1
    applied = not args.dry_run and bool(result.fixes) and error is None
    if args.json:
        sys.stdout.write(json.dumps({"dryRun": args.dry_run, "applied": applied, "error": error,
                                     "warnings": warnings, **result.to_json()}, indent=1) + "\n")
    else:
        sys.stdout.write(render(result, args.dry_run, error, warnings))
    return 1 if error is not None else 0
