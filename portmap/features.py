"""Which of the nf_tables features berth's layout uses does this kernel lack?

Each probe is one construct of portmap/layout.py in a scratch table
(`inet berth-probe`) that the same transaction creates and deletes: the kernel
checks every object as it would in berth's table, and nothing ever becomes
visible. Probes run only where an answer is worth a few milliseconds: STATUS,
and after a transaction the kernel refused (so the error names the missing
feature instead of the kernel's bare EINVAL or EOPNOTSUPP).
"""

from __future__ import annotations

from collections.abc import Callable

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from typing import Any

    Cmd = dict[str, Any]

PROBE_TABLE = "berth-probe"
MINIMUM_KERNEL = "5.10"



def _obj(kind: str, **fields: Any) -> Cmd:
    return {kind: {"family": "inet", "table": PROBE_TABLE, **fields}}


def _chain(name: str, kind: str = "", hook: str = "", prio: int = 0) -> Cmd:
    fields: dict[str, Any] = {"name": name}
    if kind:
        fields.update(type=kind, hook=hook, prio=prio, policy="accept")
    return {"add": _obj("chain", **fields)}


def _rule(chain: str, *expr: Any) -> Cmd:
    return {"add": _obj("rule", chain=chain, expr=list(expr))}


def _map(name: str, key: Any, data: str, interval: bool = False) -> Cmd:
    fields: dict[str, Any] = {"name": name, "type": key, "map": data}
    if interval:
        fields["flags"] = ["interval"]
    return {"add": _obj("map", **fields)}


def _payload(protocol: str, field: str) -> Cmd:
    return {"payload": {"protocol": protocol, "field": field}}


def _meta(key: str) -> Cmd:
    return {"meta": {"key": key}}


def _match(left: Any, right: Any, op: str = "==") -> Cmd:
    return {"match": {"op": op, "left": left, "right": right}}


NAT = _chain("nat", "nat", "prerouting", -100)
POST = _chain("post", "nat", "postrouting", 100)
FWD = _chain("fwd", "filter", "forward", 0)
TARGET = _chain("target")
DPORT, SPORT = _payload("th", "dport"), _payload("th", "sport")

# (feature, what provides it, the commands after `add table`)
PROBES: tuple[tuple[str, str, list[Cmd]], ...] = (
    ("nat chains in the inet family", "Linux 5.2, nft_chain_nat", [NAT, POST]),
    ("the fib expression (fib daddr type local)", "nft_fib_inet",
     [NAT, _rule("nat", _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local"))]),
    ("verdict maps keyed on l4proto . port", "nf_tables",
     [NAT, TARGET, _map("m", ["inet_proto", "inet_service"], "verdict"),
      _rule("nat", {"vmap": {"key": {"concat": [_meta("l4proto"), DPORT]}, "data": "@m"}})]),
    ("concatenated interval maps (daddr . port ranges)", "Linux 5.6, nft_set_pipapo",
     [NAT, TARGET, _map("m", ["ipv4_addr", "inet_service"], "verdict", interval=True),
      _rule("nat", _match(_meta("l4proto"), "tcp"),
            {"vmap": {"key": {"concat": [_payload("ip", "daddr"), DPORT]}, "data": "@m"}})]),
    ("concatenated interval maps of two ports (dport . sport ranges)", "Linux 5.6, nft_set_pipapo",
     [NAT, TARGET, _map("m", ["inet_service", "inet_service"], "verdict", interval=True),
      _rule("nat", _match(_meta("l4proto"), "tcp"), {"vmap": {"key": {"concat": [DPORT, SPORT]}, "data": "@m"}})]),
    ("dnat with a port map", "nft_nat",
     [NAT, _rule("nat", _match(_meta("nfproto"), "ipv4"), _match(_meta("l4proto"), "tcp"),
                 {"dnat": {"family": "ip", "addr": {"map": {"key": DPORT, "data": {"set": [
                     [1, {"concat": ["192.0.2.1", 2]}]]}}}}})]),
    ("masquerade of addresses looked up in a set", "nft_masq",
     [POST, {"add": _obj("set", name="s", type="ipv4_addr")},
      _rule("post", _match(_payload("ip", "saddr"), "@s"), {"masquerade": None})]),
    ("conntrack status matches (ct status dnat)", "nft_ct",
     [FWD, _rule("fwd", _match({"ct": {"key": "status"}}, "dnat", "in"), {"accept": None})]),
    ("sets of interface-name pairs (iifname . oifname)", "nf_tables",
     [FWD, {"add": _obj("set", name="s", type=["ifname", "ifname"])},
      _rule("fwd", _match({"concat": [_meta("iifname"), _meta("oifname")]}, "@s"), {"accept": None})]),
)


def probe_commands(commands: list[Cmd]) -> list[Cmd]:
    table = {"family": "inet", "name": PROBE_TABLE}
    return [{"add": {"table": table}}, *commands, {"delete": {"table": table}}]


def missing(run: Callable[[list[Cmd]], str | None]) -> tuple[str, str, str] | None:
    """The first feature the kernel refuses, as (feature, what provides it, the
    kernel's answer); None when every probe passes. `run` applies one
    transaction and returns its error text (None on success)."""
    for feature, provider, commands in PROBES:
        error = run(probe_commands(commands))
        if error is not None:
            return feature, provider, error
    return None


def describe(found: tuple[str, str, str]) -> tuple[str, str]:
    """(message, details) for a CNI error naming the missing feature."""
    feature, provider, error = found
    return (f"this kernel's nf_tables lacks {feature}, which berth needs",
            f"provided by {provider}; berth needs Linux {MINIMUM_KERNEL} or newer with nf_tables "
            f"(see the README's Kernels section); the kernel answered: {error.strip()[:500]}")
