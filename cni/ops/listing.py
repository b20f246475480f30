"""`berth list`: every attachment on this node, from the journals.

For each journal (BERTH_STATE_DIR, default /var/lib/cni/berth): network,
container ID, interface, netns, addresses, published ports, who serves their
[::1] side (PROXY: a proxy process's pid, or the agent), age, and whether its
nftables objects (DNAT chain + verdict-map elements, masquerade elements and
their subnet's rule) are present in `table inet berth` and its proxy holds
its ports. The table is listed once; the rest
are lookups in that listing. Nothing is changed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from cni.ops import view as ops_view
from cni.records import Attachment
from portmap import diff
from portmap.diff import Ownership, Table


def rules_status(att: Attachment, table: Table, view: Ownership,
                 present: frozenset[int] | None = frozenset()) -> tuple[str, list[str]]:
    """("ok" | "missing" | "partial" | "n/a" | "incomplete", what is missing);
    `present`: the cookies of the sockets bound on ::1 (the proxies')."""
    if att.portmap is None and att.masq is None:
        return "n/a", []
    if not att.complete():
        return "incomplete", ["the ADD did not complete"]
    missing = [m.what for m in diff.portmap_missing(att, table, view.owned(att))]
    missing += [m.what for m in diff.masq_missing(att, table)]
    missing += [m.what for m in diff.proxy_missing(att, present)]
    foreign = [diff.format_mapping(m) for m in att.mappings if m not in view.owned(att)]
    if foreign:
        missing.append("held by another attachment: " + ", ".join(foreign))
    if not missing:
        return "ok", []
    present_anything = diff.dnat_chain(att) in table.chains or diff.masq_present(att, table)
    return ("partial" if present_anything else "missing"), missing


def entries(root: str, table: Table, now: float | None = None,
            probe: Callable[[dict[str, list[tuple[int, int]]]], frozenset[int] | None] | None = None,
            ) -> list[dict[str, Any]]:
    """`probe`: the cookies bound on ::1 on the given ports (proxyctl.present)."""
    attachments = ops_view.load_attachments(root)
    view = Ownership(root, attachments)
    present = probe(diff.proxied_ports(attachments)) if probe is not None else frozenset()
    out = []
    for att in attachments:
        status, missing = rules_status(att, table, view, present)
        out.append({
            "network": att.network, "containerID": att.container_id, "ifname": att.ifname,
            "netns": att.netns, "addresses": att.cidrs or att.addresses,
            "ports": [diff.format_mapping(m) for m in att.mappings],
            "proxy": ops_view.proxy_json(att, present),
            "created": att.created, "age": ops_view.age(att.created, now),
            "rules": status, "missing": missing, "journal": att.path,
        })
    return out


def render(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no attachments\n"
    header = ("NETWORK", "CONTAINER", "IFNAME", "NETNS", "ADDRESSES", "PORTS", "PROXY", "AGE", "RULES")
    table = [header] + [(
        r["network"], r["containerID"][:24], r["ifname"], r["netns"] or "-",
        ",".join(r["addresses"]) or "-", ",".join(r["ports"]) or "-", ops_view.proxy_cell(r.get("proxy")),
        r["age"], r["rules"],
    ) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]
    for r in rows:
        for what in r["missing"]:
            lines.append(f"  {r['containerID'][:24]}/{r['ifname']}: {what}")
    return "\n".join(lines) + "\n"


def main(command: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"berth {command}",
        description="List every attachment recorded on this node and whether its nftables rules are present.",
        epilog="PROXY: who answers on [::1]:hostPort (pid N: berth proxy N; agent: the agent's proxy "
               "service; -: none). RULES: ok = chains, elements and proxy present; missing/partial = run "
               "'berth reconcile'; incomplete = an ADD that never finished (its DEL cleans it); n/a = nothing "
               "in nftables. State is read from BERTH_STATE_DIR (default /var/lib/cni/berth). Exit status 0, or 1 when "
               "the journals cannot be read.",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    args = parser.parse_args(argv)
    from cni import state
    from cni.errors import CNIError

    try:
        table = diff.snapshot()
    except CNIError as exc:
        sys.stderr.write(f"berth {command}: {exc.msg}: {exc.details}\n")
        table = Table(False)
    from portmap import proxyctl

    try:
        rows = entries(state.state_root(), table, time.time(), proxyctl.present)
    except CNIError as exc:
        sys.stderr.write(f"berth {command}: {exc.msg}: {exc.details}\n")
        return 1
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
    else:
        sys.stdout.write(render(rows))
        if rows and not table.exists:
            sys.stdout.write("note: table inet berth is not there (flushed, or this is not root in the node's "
                             "network namespace)\n")
    return 0
