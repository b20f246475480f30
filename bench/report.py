"""The Markdown table (one column per mode, plus each berth mode / reference ratio)."""

from __future__ import annotations

from typing import Any

from bench.stats import ratio

REF = "ref"
EMPTY = "@empty"  # "<mode>@empty": that mode's empty node, sampled in the same rounds as a level's


def growth(fig: dict[str, Any], m: str) -> tuple[str, Any]:
    """(how it was measured, chain ADD p50 at the highest level / on an empty node): against
    the empty baseline node sampled in the same rounds when there is one, else level 0."""
    levels = sorted(fig.get("levels", {}), key=int)
    if not levels:
        return "", None
    hi = levels[-1]
    top = _get(fig, "levels", hi, m, "add", "p50_ms")
    base = _get(fig, "levels", hi, m + EMPTY, "add", "p50_ms")
    if base is not None:
        return f"ADD p50 @ {hi} / ADD p50 on an empty node (same rounds)", ratio(top, base)
    if len(levels) > 1:
        return f"ADD p50 @ {hi} / ADD p50 @ 0", ratio(top, _get(fig, "levels", "0", m, "add", "p50_ms"))
    return "", None


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return str(v)


def rows(fig: dict[str, Any], modes: list[str]) -> list[tuple[str, dict[str, Any], bool]]:
    """(label, value per mode, whether a ratio to the reference means something)."""
    out: list[tuple[str, dict[str, Any], bool]] = []

    def row(label: str, fn: Any, with_ratio: bool = True) -> None:
        out.append((label, {m: fn(m) for m in modes}, with_ratio))

    levels = sorted(fig.get("levels", {}), key=int)
    for level in levels:
        lv = fig["levels"][level]
        for verb in ("add", "del"):
            for p in ("p50_ms", "p99_ms"):
                row(f"chain {verb.upper()} {p[:3]} ms @ {level} existing",
                    lambda m, lv=lv, verb=verb, p=p: _get(lv, m, verb, p))
        for key, label in (("bridge_add", "bridge ADD (incl. IPAM)"), ("portmap_add", "portmap ADD"),
                           ("ipam_add", "IPAM ADD, exec'd alone"), ("bridge_del", "bridge DEL"),
                           ("portmap_del", "portmap DEL"), ("ipam_del", "IPAM DEL, exec'd alone")):
            row(f"{label} p50 ms @ {level}", lambda m, lv=lv, key=key: _get(lv, m, key, "p50_ms"))
        if any(m + EMPTY in lv for m in modes):
            for verb in ("add", "del"):
                row(f"chain {verb.upper()} p50 ms, empty node in the same rounds as @ {level}",
                    lambda m, lv=lv, verb=verb: _get(lv, m + EMPTY, verb, "p50_ms"))
            for key, label in (("bridge_add", "bridge ADD (incl. IPAM)"), ("portmap_add", "portmap ADD")):
                row(f"{label} p50 ms, empty node in the same rounds as @ {level}",
                    lambda m, lv=lv, key=key: _get(lv, m + EMPTY, key, "p50_ms"))
    label = next((growth(fig, m)[0] for m in modes if growth(fig, m)[0]), "")
    if label:
        row(label, lambda m: growth(fig, m)[1], False)
    su = fig.get("startup", {})
    row("VERSION exec p50 ms", lambda m: _get(su, m, "p50_ms"))
    out.append(("`/usr/bin/python3 -c pass` p50 ms", {modes[0]: _get(su, "python3 -c pass", "p50_ms")}, False))
    share = fig.get("startup_share", {})
    row("start-up share of chain ADD @ 0 (execs x VERSION / ADD)", lambda m: _get(share, m, "share"), False)
    for key in ("burst_small", "burst"):
        b = fig.get(key, {})
        if key != "burst" and not b:
            continue
        n = next((v.get("adds") for v in b.values() if isinstance(v, dict)), None) or 32
        row(f"{n} concurrent ADDs: wall s", lambda m, b=b: _get(b, m, "wall_s"))
        row(f"{n} concurrent ADDs: errors", lambda m, b=b: _get(b, m, "errors"), False)
        row(f"{n} concurrent ADDs: duplicate addresses", lambda m, b=b: _get(b, m, "duplicate_addresses"), False)
        row(f"{n} concurrent DELs: wall s", lambda m, b=b: _get(b, m, "del_wall_s"))
        row(f"{n} concurrent DELs: errors", lambda m, b=b: _get(b, m, "del_errors"), False)
    c = fig.get("conn_rate", {})
    many = next((v.get("mappings_many") for v in c.values() if isinstance(v, dict)), None)
    row("new TCP conn/s to a hostPort, 1 mapping", lambda m: _get(c, m, "per_second_1"))
    row(f"new TCP conn/s, {many} mappings (worse of first/last added)", lambda m: _get(c, m, "per_second_many"))
    row(f"conn/s {many} mappings / conn/s 1 mapping",
        lambda m: ratio(_get(c, m, "per_second_many"), _get(c, m, "per_second_1")), False)
    rules = fig.get("rules_per_attachment", {}).get("0", {})
    row("per attachment: nft rules (whole node ruleset)", lambda m: _get(rules, m, "nft_rules"), False)
    row("per attachment: nft chains", lambda m: _get(rules, m, "nft_chains"), False)
    row("per attachment: nft set/map elements", lambda m: _get(rules, m, "nft_elements"), False)
    row("per attachment: iptables-save rules (-A lines)", lambda m: _get(rules, m, "iptables_rules"), False)
    row("errors (all phases)", lambda m: _get(fig, "errors_total", m), False)
    return out


def markdown(fig: dict[str, Any], modes: list[str], labels: dict[str, str]) -> str:
    berths = [m for m in modes if m != REF]
    header = ["figure", *(labels.get(m, m) for m in modes)]
    if REF in modes:
        header += [f"{labels.get(m, m)} / reference" for m in berths]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, values, with_ratio in rows(fig, modes):
        cells = [label, *(_fmt(values.get(m)) for m in modes)]
        if REF in modes:
            cells += [_fmt(ratio(values.get(m), values.get(REF))) if with_ratio else "" for m in berths]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _verdict(value: Any, bound: float, how: str) -> str:
    if value is None:
        return "not measured"
    met = value <= bound if how == "le" else value >= bound
    return ("met" if met else "missed") + f" ({_fmt(value)})"


def goals_agent(fig: dict[str, Any]) -> str:
    """Issue #10's goal figures (the node agent, and standalone at scale): reported, never enforced."""
    lv = fig.get("levels", {})
    levels = sorted(lv, key=int)
    hi = levels[-1] if levels else "0"

    def p50(level: str, m: str, verb: str) -> Any:
        return _get(lv, level, m, verb, "p50_ms")

    agent, standalone = "berth-agent", "berth"
    lines = ["Goals (the agent path):", ""]
    if agent in lv.get("0", {}):
        checks = [
            ("berth-agent chain ADD p50 <= 0.5x reference (@ 0)", ratio(p50("0", agent, "add"), p50("0", REF, "add")),
             0.5, "le"),
            ("berth-agent chain DEL p50 <= 0.3x reference (@ 0)", ratio(p50("0", agent, "del"), p50("0", REF, "del")),
             0.3, "le"),
            (f"berth-agent {growth(fig, agent)[0] or 'ADD growth'} <= 1.1x", growth(fig, agent)[1], 1.1, "le"),
            ("thin plugin exec (VERSION) <= 2x `python3 -c pass`",
             ratio(_get(fig, "startup", agent, "p50_ms"), _get(fig, "startup", "python3 -c pass", "p50_ms")), 2.0,
             "le"),
        ]
        lines += [f"- {label}: {_verdict(value, bound, how)}" for label, value, bound, how in checks]
    big = [level for level in levels if int(level) >= 200 and standalone in lv[level]]
    for level in big:
        lines.append(f"- berth (standalone) chain ADD p50 < reference @ {level}: "
                     + _verdict(ratio(p50(level, standalone, "add"), p50(level, REF, "add")), 1.0, "le"))
    if not big:
        lines.append("- berth (standalone) faster than the reference from 200 up: not measured (`--levels 0,200`)")
    if int(hi) < 1000:
        lines.append(f"- (agent growth measured up to {hi} existing attachments; `--full` goes to 1,000)")
    return "\n".join(lines) + "\n"


def goals(fig: dict[str, Any], mode: str) -> str:
    """Issue #7's goal figures for one berth mode: reported, never enforced."""
    lv = fig.get("levels", {})
    levels = sorted(lv, key=int)
    hi = levels[-1] if levels else "0"

    def p50(level: str, m: str, verb: str) -> Any:
        return _get(lv, level, m, verb, "p50_ms")

    c = fig.get("conn_rate", {})
    checks = [
        ("chain ADD p50 <= 0.5x reference (@ 0)", ratio(p50("0", mode, "add"), p50("0", REF, "add")), 0.5, "le"),
        ("chain DEL p50 <= 0.5x reference (@ 0)", ratio(p50("0", mode, "del"), p50("0", REF, "del")), 0.5, "le"),
        (f"{growth(fig, mode)[0] or 'ADD growth'} <= 1.1x", growth(fig, mode)[1], 1.1, "le"),
        ("conn/s with ~1,000 mappings >= 0.95x with 1",
         ratio(_get(c, mode, "per_second_many"), _get(c, mode, "per_second_1")), 0.95, "ge"),
        ("32 concurrent ADDs: 0 errors", _get(fig, "burst", mode, "errors"), 0, "le"),
    ]
    lines = [f"Goals for {mode}:", ""]
    lines += [f"- {label}: {_verdict(value, bound, how)}" for label, value, bound, how in checks]
    if hi == "0" or int(hi) < 1000:
        lines.append(f"- (growth measured up to {hi} existing attachments; `--full` goes to 1,000)")
    return "\n".join(lines) + "\n"


def goals_standalone(fig: dict[str, Any], mode: str = "berth") -> str:
    """The cold path's goal figures (plugins exec'd with no agent): reported, never enforced."""
    lv = fig.get("levels", {})

    def p50(level: str, m: str, verb: str) -> Any:
        return _get(lv, level, m, verb, "p50_ms")

    bursts = [fig[k] for k in ("burst_small", "burst") if fig.get(k)] or [{}]
    checks = [
        ("chain ADD p50 <= 0.8x reference (@ 0)", ratio(p50("0", mode, "add"), p50("0", REF, "add")), 0.8, "le"),
        ("chain ADD p50 <= 0.5x reference (@ 100)", ratio(p50("100", mode, "add"), p50("100", REF, "add")), 0.5, "le"),
        ("chain DEL p50 <= 0.5x reference (@ 0)", ratio(p50("0", mode, "del"), p50("0", REF, "del")), 0.5, "le"),
    ]
    for burst in bursts:
        checks.append((f"{_get(burst, mode, 'adds') or 'N'} concurrent ADDs: wall <= 1.0x reference",
                       ratio(_get(burst, mode, "wall_s"), _get(burst, REF, "wall_s")), 1.0, "le"))
    checks += [
        ("concurrent ADDs: 0 errors, 0 duplicate addresses",
         sum((_get(b, mode, "errors") or 0) + (_get(b, mode, "duplicate_addresses") or 0) for b in bursts)
         if any(mode in b for b in bursts) else None, 0, "le"),
        ("VERSION exec <= 1.1x `python3 -c pass`",
         ratio(_get(fig, "startup", mode, "p50_ms"), _get(fig, "startup", "python3 -c pass", "p50_ms")), 1.1, "le"),
    ]
    lines = [f"Goals for {mode} standalone (the cold path):", ""]
    lines += [f"- {label}: {_verdict(value, bound, how)}" for label, value, bound, how in checks]
    return "\n".join(lines) + "\n"


COLD_PHASES = ("interpreter", "imports", "libnftables", "work", "exit", "total")


def coldpath(fig: dict[str, Any]) -> str:
    """The cold-path breakdown: median ms per phase of each standalone exec."""
    data = fig.get("coldpath") or {}
    if not data:
        return ""
    lines = ["Standalone exec, where the time goes (median ms per phase; cni/phases.py):", "",
             "| mode | exec | " + " | ".join(COLD_PHASES) + " |", "|" + "---|" * (len(COLD_PHASES) + 2)]
    for mode, calls in data.items():
        for call_, phases in calls.items():
            cells = [_fmt(phases.get(p)) if p in phases else "" for p in COLD_PHASES]
            lines.append(f"| {mode} | {call_} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
