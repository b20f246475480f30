"""portmap/features.py: the kernel-feature probes, without a kernel."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cni.errors import CNIError
from portmap import features, layout, nft


def test_every_probe_creates_and_deletes_its_scratch_table_in_one_transaction() -> None:
    for feature, _provider, commands in features.PROBES:
        cmds = features.probe_commands(commands)
        assert cmds[0] == {"add": {"table": {"family": "inet", "name": "berth-probe"}}}, feature
        assert cmds[-1] == {"delete": {"table": {"family": "inet", "name": "berth-probe"}}}, feature
        # nothing of berth's own table is touched by a probe
        assert f'"table": "{layout.TABLE}"' not in json.dumps(cmds), feature


def test_the_probes_cover_the_constructs_of_the_layout() -> None:
    """Each kind of lookup the static layout uses appears in some probe."""
    probes = json.dumps([c for _f, _p, c in features.PROBES])
    base = json.dumps(layout.base_layout() + layout.ipmasq_subnet_setup("10.88.0.0/24"))
    for construct in ('"fib"', '"vmap"', '"masquerade"', '"ct"', '"interval"', '"iifname"'):
        assert construct in base and construct in probes, construct
    firewall = json.dumps(layout.firewall_layout())
    assert '["ipv4_addr", "ifname"]' in firewall and '["ipv4_addr", "ifname"]' in probes


def test_missing_names_the_first_refused_feature() -> None:
    seen: list[str] = []

    def run(cmds: list[dict[str, Any]]) -> str | None:
        text = json.dumps(cmds)
        seen.append(text)
        return "Error: Could not process rule: Operation not supported" if '"sport"' in text else None

    found = features.missing(run)
    assert found is not None and "two ports" in found[0] and "pipapo" in found[1]
    msg, details = features.describe(found)
    assert "lacks" in msg and "Operation not supported" in details and features.MINIMUM_KERNEL in details
    assert features.missing(lambda _cmds: None) is None


class _Refusing(nft.NFT):
    """The kernel binding, with a kernel that refuses two-port interval maps."""

    def try_apply(self, commands: list[dict[str, Any]]) -> str | None:
        if '"sport"' in json.dumps(commands):
            return "internal:0:0-0: Error: Could not process rule: Operation not supported"
        return None if any("delete" in c for c in commands) else "Error: Invalid argument"


def test_a_refused_transaction_names_the_missing_feature() -> None:
    nft.set_backend(_Refusing())
    try:
        with pytest.raises(CNIError) as info:
            nft.apply(layout.base_layout())
        assert info.value.code == 104 and "two ports" in info.value.msg
        assert nft.unsupported() is not None
    finally:
        nft.set_backend(None)


def test_the_adapter_and_the_builders_name_the_same_table() -> None:
    assert (nft.FAMILY, nft.TABLE) == (layout.FAMILY, layout.TABLE)
