"""Result conversion between every pair of spec versions, and prevResult handling."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest

from cni import errors
from cni.errors import CNIError
from cni.spec import (
    CURRENT_VERSION,
    SUPPORTED_VERSIONS,
    convert_result,
    parse_version,
    prev_result,
    require_supported,
    validate_result,
    version_at_least,
)

CURRENT: dict[str, Any] = {
    "cniVersion": "1.1.0",
    "interfaces": [
        {"name": "cni0", "mac": "0a:58:0a:01:00:01"},
        {"name": "eth0", "mac": "0a:58:0a:01:00:05", "sandbox": "/run/netns/x"},
    ],
    "ips": [
        {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 1},
        {"address": "fd00:1::5/64", "gateway": "fd00:1::1", "interface": 1},
        {"address": "192.0.2.9/32"},
    ],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "::/0", "gw": "fd00:1::1"}, {"dst": "10.9.0.0/16"}],
    "dns": {"nameservers": ["10.1.0.1", "fd00:1::1"], "domain": "d", "search": ["s"], "options": ["o"]},
}
OLD = ("0.3.0", "0.3.1", "0.4.0")


def essentials(result: dict[str, Any]) -> dict[str, Any]:
    """What every version must carry: addresses, gateways, interfaces, routes, dns."""
    return {
        "ips": [(ip["address"], ip.get("gateway"), ip.get("interface")) for ip in result["ips"]],
        "interfaces": result["interfaces"],
        "routes": result["routes"],
        "dns": result["dns"],
    }


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_convert_from_current(version: str) -> None:
    out = convert_result(CURRENT, version)
    assert out["cniVersion"] == version
    assert essentials(out) == essentials(CURRENT)
    expected = ["4", "6", "4"] if version in OLD else [None, None, None]
    assert [ip.get("version") for ip in out["ips"]] == expected
    assert "version" not in CURRENT["ips"][0]  # input untouched


@pytest.mark.parametrize("src,dst", list(itertools.product(SUPPORTED_VERSIONS, repeat=2)))
def test_round_trip_every_pair(src: str, dst: str) -> None:
    start = convert_result(CURRENT, src)
    there = convert_result(start, dst)
    back = convert_result(there, src)
    assert there["cniVersion"] == dst and back["cniVersion"] == src
    assert essentials(there) == essentials(CURRENT)
    assert back == start


def test_1_1_only_fields_dropped_for_older() -> None:
    rich = copy.deepcopy(CURRENT)
    rich["interfaces"][1].update(mtu=1400, socketPath="/s", pciID="0000:00:01.0")
    rich["routes"][0].update(mtu=1400, advmss=1360, priority=10, table=100, scope=0)
    assert convert_result(rich, "1.1.0")["interfaces"][1]["mtu"] == 1400
    for version in ("1.0.0", *OLD):
        out = convert_result(rich, version)
        assert set(out["interfaces"][1]) == {"name", "mac", "sandbox"}
        assert set(out["routes"][0]) == {"dst", "gw"}


def test_missing_version_means_current() -> None:
    bare = {k: v for k, v in CURRENT.items() if k != "cniVersion"}
    assert convert_result(bare, "0.4.0")["ips"][1]["version"] == "6"


@pytest.mark.parametrize("bad,code", [
    ([], errors.DECODE_FAILURE),
    ("x", errors.DECODE_FAILURE),
    ({"cniVersion": "0.2.0", "ips": []}, errors.INCOMPATIBLE_VERSION),
    ({"cniVersion": ["1.0.0"]}, errors.DECODE_FAILURE),
    ({"cniVersion": "1.1.0", "ips": [{"address": "nope"}]}, errors.DECODE_FAILURE),
    ({"cniVersion": "1.1.0", "ips": [{"address": 5}]}, errors.DECODE_FAILURE),
])
def test_convert_bad(bad: Any, code: int) -> None:
    with pytest.raises(CNIError) as info:
        convert_result(bad, "0.3.1")
    assert info.value.code == code


def test_convert_to_unknown_version() -> None:
    with pytest.raises(CNIError) as info:
        convert_result(CURRENT, "9.9.9")
    assert info.value.code == errors.INCOMPATIBLE_VERSION


@pytest.mark.parametrize("older", (*OLD, "1.0.0"))
def test_prev_result_from_older_version(older: str) -> None:
    given = convert_result(CURRENT, older)
    got = prev_result({"cniVersion": older, "name": "n", "prevResult": given})
    assert got is not None
    assert got["cniVersion"] == CURRENT_VERSION
    assert all("version" not in ip for ip in got["ips"])
    assert essentials(got) == essentials(CURRENT)


def test_prev_result_without_version_takes_config_version() -> None:
    given = convert_result(CURRENT, "0.3.1")
    del given["cniVersion"]
    got = prev_result({"cniVersion": "0.3.1", "prevResult": given})
    assert got is not None and got["cniVersion"] == CURRENT_VERSION and "version" not in got["ips"][0]


def test_prev_result_absent() -> None:
    assert prev_result({"cniVersion": "1.0.0"}) is None
    assert prev_result({"cniVersion": "1.0.0", "prevResult": None}) is None


def test_prev_result_minimal() -> None:
    got = prev_result({"cniVersion": "1.0.0", "prevResult": {}})
    assert got == {"cniVersion": CURRENT_VERSION}


def test_prev_result_not_mutated() -> None:
    given = convert_result(CURRENT, "0.4.0")
    snapshot = copy.deepcopy(given)
    prev_result({"cniVersion": "0.4.0", "prevResult": given})
    assert given == snapshot


@pytest.mark.parametrize("bad", [
    [], "x", 5,
    {"ips": {}}, {"ips": "10.0.0.1/24"}, {"interfaces": {}}, {"routes": "x"}, {"dns": []},
    {"ips": [5]}, {"ips": [{}]}, {"ips": [{"address": None}]}, {"ips": [{"address": "10.0.0.1/33"}]},
    {"ips": [{"address": "10.0.0.1/24", "interface": "0"}]},
    {"ips": [{"address": "10.0.0.1/24", "interface": True}]},
    {"ips": [{"address": "10.0.0.1/24", "interface": -1}]},
    {"ips": [{"address": "10.0.0.1/24", "gateway": "x"}]},
    {"ips": [{"address": "10.0.0.1/24", "gateway": 5}]},
    {"interfaces": [{}]}, {"interfaces": ["eth0"]}, {"interfaces": [{"name": 1}]},
    {"routes": [{}]}, {"routes": [{"dst": "nope"}]}, {"routes": [{"dst": "0.0.0.0/0", "gw": "x"}]},
    {"routes": ["0.0.0.0/0"]},
])
def test_validate_rejects_malformed(bad: Any) -> None:
    with pytest.raises(CNIError) as info:
        prev_result({"cniVersion": "1.0.0", "prevResult": bad})
    assert info.value.code == errors.DECODE_FAILURE


def test_validate_accepts_nulls() -> None:
    ok = {"ips": None, "interfaces": None, "routes": None, "dns": None}
    assert validate_result(ok) is ok
    assert validate_result({"ips": [{"address": "10.0.0.1/24", "interface": 0, "gateway": None}]})


def test_versions() -> None:
    assert parse_version("1.10.0") == (1, 10, 0)
    assert version_at_least("1.1.0", "0.4.0") and not version_at_least("0.3.1", "0.4.0")
    for bad in ("1.0", "a.b.c", "1.0.0.0", "", "1.0.-1", "99999.0.0"):
        with pytest.raises(CNIError) as info:
            parse_version(bad)
        assert info.value.code == errors.INCOMPATIBLE_VERSION
    assert require_supported("0.4.0") == "0.4.0"
    for bad_version in ("0.1.0", None, 1.0, "1.1"):
        with pytest.raises(CNIError):
            require_supported(bad_version)
