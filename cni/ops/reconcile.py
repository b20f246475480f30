"""`berth reconcile [--dry-run] [--json]`: put back what the journals say exists (portmap/reconcile.py).

After someone flushed the ruleset, deleted a chain or a map element, this
re-creates berth's static layout, each attachment's CNI-DN-<hash> chain and
verdict-map elements (portmap), the per-subnet ipMasq rules and each
attachment's ipmasq-<subnet> elements and bridges-set member (bridge ipMasq;
a CNI-<hash> chain for attachments made before those) — all in ONE libnftables
transaction, under the node-wide ports lock portmap's ADD/DEL hold, so it never
races a plugin call. It never removes anything and never takes a port another
attachment holds (its port file decides). Attachments whose ADD did not finish,
or whose host veth is gone (a container that died without a DEL), are skipped
and named: DEL/GC are the tools for those. A [::1] proxy that no longer serves
its ports is started again.
"""

from __future__ import annotations

import argparse
import json
import sys

from portmap.reconcile import Plan, reconcile


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
        nft_fixes = [m for _whose, m in result.fixes if not m.proxy]
        if nft_fixes:
            lines.append(f"{len(nft_fixes)} fix(es) applied in one nftables transaction")
        if result.proxies:
            lines.append(f"{len(result.proxies)} [::1] prox{'y' if len(result.proxies) == 1 else 'ies'} "
                         "started again")
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
