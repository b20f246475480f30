"""Percentiles and ruleset counting: plain functions over plain data."""

from __future__ import annotations

import json
import math
import subprocess
from typing import Any


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile (p99 of fewer than 100 samples is the maximum)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(seconds: list[float]) -> dict[str, Any]:
    """p50/p99/mean in milliseconds, and the sample count."""
    ms = [s * 1000 for s in seconds]
    p50, p99 = percentile(ms, 50), percentile(ms, 99)
    return {
        "n": len(ms),
        "p50_ms": None if p50 is None else round(p50, 2),
        "p99_ms": None if p99 is None else round(p99, 2),
        "mean_ms": round(sum(ms) / len(ms), 2) if ms else None,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 2)


def count_ruleset(ruleset: dict[str, Any]) -> dict[str, int]:
    """Rules, chains and set/map elements in an `nft -j list ...` answer."""
    counts = {"rules": 0, "chains": 0, "elements": 0}
    for obj in ruleset.get("nftables", []):
        if "rule" in obj:
            counts["rules"] += 1
        elif "chain" in obj:
            counts["chains"] += 1
        else:
            for kind in ("set", "map"):
                if kind in obj:
                    counts["elements"] += len(obj[kind].get("elem", []) or [])
    return counts


def snapshot_rules() -> dict[str, int]:
    """Counted in the calling thread's netns (run it from a node pool thread)."""
    out: dict[str, int] = {}
    proc = subprocess.run(["nft", "-j", "list", "ruleset"], capture_output=True, text=True, check=False)
    try:
        total = count_ruleset(json.loads(proc.stdout or "{}"))
    except ValueError:
        total = {"rules": -1, "chains": -1, "elements": -1}
    out.update({f"nft_{k}": v for k, v in total.items()})
    proc = subprocess.run(["nft", "-j", "list", "table", "inet", "berth"], capture_output=True, text=True,
                          check=False)
    berth = count_ruleset(json.loads(proc.stdout)) if proc.returncode == 0 and proc.stdout else {}
    out.update({f"berth_{k}": v for k, v in berth.items()} or {"berth_rules": 0, "berth_chains": 0,
                                                               "berth_elements": 0})
    lines = 0
    for tool in ("iptables-save", "ip6tables-save"):
        proc = subprocess.run([tool], capture_output=True, text=True, check=False)
        lines += sum(1 for line in proc.stdout.splitlines() if line.startswith("-A "))
    out["iptables_rules"] = lines
    return out


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(before) | set(after))}
