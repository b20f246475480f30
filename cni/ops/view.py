"""What `berth list`, `explain` and `reconcile` read: the attachments the
journals describe (cni/records.py), and how they are shown. What of them is
missing in berth's table is portmap/diff.py's to say."""

from __future__ import annotations

import time
from typing import Any

from cni import errors
from cni.records import Attachment
from portmap import diff, layout


def load_attachments(root: str) -> list[Attachment]:
    from cni import state

    try:
        return state.attachments(root)
    except OSError as exc:  # e.g. not root: the state dir is 0700
        raise errors.CNIError(errors.IO_FAILURE, f"cannot read the journals under {root}", str(exc)) from None


def age(created: float | None, now: float | None = None) -> str:
    if created is None:
        return "?"
    seconds = max(0, int((now if now is not None else time.time()) - created))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def masq_description(att: Attachment, table: diff.Table) -> str:
    """How explain names the attachment's masquerade, with what its counters say."""
    record = att.masq
    if record is not None and record.per_subnet:
        subnets = list(record.subnets)
        packets, _ = table.counters(layout.IPMASQ_CHAIN, {layout.ipmasq_note(s) for s in subnets})
        return (f"ipMasq rule{'s' if len(subnets) != 1 else ''} for {', '.join(subnets)} in {layout.IPMASQ_CHAIN} "
                f"({packets} packet{'s' if packets != 1 else ''} masqueraded, all of the subnet's containers)")
    chain = diff.masq_chain(att)
    packets, _ = table.counters(chain)
    return f"ipMasq chain {chain} ({packets} packet{'s' if packets != 1 else ''} masqueraded)"


def proxy_json(att: Attachment, present: frozenset[int] | None) -> dict[str, Any] | None:
    """The attachment's [::1] proxy as `berth list --json` shows it."""
    from cni.records import PROXY_PROCESS

    proxy = att.portmap.proxy if att.portmap is not None else None
    if proxy is None:
        return None
    serving = None if present is None else all(li.cookies and set(li.cookies) <= present for li in proxy.listeners)
    return {"mode": proxy.mode, "pid": proxy.pid if proxy.mode == PROXY_PROCESS else None,
            "listeners": [li.describe() for li in proxy.listeners], "serving": serving}


def proxy_cell(proxy: dict[str, Any] | None) -> str:
    if not proxy:
        return "-"
    who = f"pid {proxy['pid']}" if proxy.get("pid") else str(proxy.get("mode"))
    return who + ("" if proxy.get("serving") is not False else " (down)")
