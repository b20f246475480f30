"""Range parsing, validation and clamping (no files touched)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from cni import errors
from cni.errors import CNIError
from ipam.config import load, parse_resolv_conf
from ipam.ranges import parse_range, parse_range_sets

A = ipaddress.ip_address


def code_of(fn: Any, *a: Any) -> CNIError:
    with pytest.raises(CNIError) as info:
        fn(*a)
    return info.value


def test_v4_defaults_skip_network_gateway_broadcast() -> None:
    r = parse_range({"subnet": "10.88.0.0/24"}, "r")
    assert (str(r.start), str(r.end), str(r.gateway)) == ("10.88.0.1", "10.88.0.254", "10.88.0.1")
    assert r.size() == 253  # .1 is the gateway


def test_v6_defaults_end_at_last_address() -> None:
    r = parse_range({"subnet": "fd00:1::/64"}, "r")
    assert (str(r.start), str(r.end), str(r.gateway)) == ("fd00:1::1", "fd00:1::ffff:ffff:ffff:ffff", "fd00:1::1")


def test_end_at_broadcast_and_start_at_network_are_clamped() -> None:
    r = parse_range({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.0", "rangeEnd": "10.0.0.255"}, "r")
    assert (str(r.start), str(r.end)) == ("10.0.0.1", "10.0.0.254")


def test_explicit_window_and_gateway() -> None:
    r = parse_range({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.100", "rangeEnd": "10.0.0.110",
                     "gateway": "10.0.0.254"}, "r")
    assert r.size() == 11 and str(r) == "10.0.0.100-10.0.0.110"


@pytest.mark.parametrize("subnet", ["10.0.0.0/31", "10.0.0.1/32", "fd00::/127", "fd00::/128"])
def test_too_small_subnets(subnet: str) -> None:
    err = code_of(parse_range, {"subnet": subnet}, "r")
    assert err.code == errors.INVALID_NETWORK_CONFIG and "too small" in err.msg


def test_slash30_has_one_address_besides_gateway() -> None:
    r = parse_range({"subnet": "10.0.0.0/30"}, "r")
    assert r.size() == 1 and [str(a) for _, a in _all(r)] == ["10.0.0.2"]


def test_slash126_v6() -> None:
    r = parse_range({"subnet": "fd00::/126"}, "r")
    assert [str(a) for _, a in _all(r)] == ["fd00::2", "fd00::3"]


def _all(r: Any) -> list[Any]:
    from ipam.ranges import RangeSet

    return list(RangeSet((r,)).candidates(None))


@pytest.mark.parametrize(("raw", "needle"), [
    ({"subnet": "10.0.0.0/33"}, "invalid"),
    ({"subnet": "banana"}, "invalid"),
    ({"subnet": "10.0.0.0"}, "missing prefix"),
    ({"subnet": "10.0.0.5/24"}, "host bits"),
    ({"subnet": "::ffff:10.0.0.0/120"}, "IPv4-mapped"),
    ({"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.1"}, "rangeStart 10.0.1.1 not in network"),
    ({"subnet": "10.0.0.0/24", "rangeEnd": "10.0.1.1"}, "rangeEnd 10.0.1.1 not in network"),
    ({"subnet": "10.0.0.0/24", "gateway": "10.0.1.1"}, "gateway 10.0.1.1 not in network"),
    ({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.5"}, "after rangeEnd"),
    ({"subnet": "10.0.0.0/24", "rangeStart": "fd00::1"}, "not in network"),
    ({"subnet": 10}, "must be a string"),
    ({"subnet": ["10.0.0.0/24"]}, "must be a string"),
    ({"subnet": "10.0.0.0/24", "rangeEnd": 99999999999999999999999}, "must be a string"),
    ({"subnet": "1" * 10000}, "invalid"),
    ({"rangeStart": "10.0.0.1"}, "missing subnet"),
    ("10.0.0.0/24", "must be an object"),
])
def test_bad_ranges(raw: Any, needle: str) -> None:
    err = code_of(parse_range, raw, "r")
    assert err.code == errors.INVALID_NETWORK_CONFIG
    assert needle in err.msg


def test_range_sets_overlap_and_families() -> None:
    err = code_of(parse_range_sets, {"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.0.0/25"}]]})
    assert "overlaps" in err.msg
    err = code_of(parse_range_sets, {"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.128/25"}]]})
    assert "range set 0 overlaps with range set 1" in err.msg
    err = code_of(parse_range_sets, {"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]})
    assert "mixed address families" in err.msg
    for bad in ({"ranges": "x"}, {"ranges": [[]]}, {"ranges": [{}]}, {}, {"ranges": []}):
        assert code_of(parse_range_sets, bad).code == errors.INVALID_NETWORK_CONFIG


def test_disjoint_windows_of_one_subnet_in_one_set() -> None:
    sets = parse_range_sets({"ranges": [[
        {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.19"},
        {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.20", "rangeEnd": "10.0.0.29"}]]})
    assert str(sets[0]) == "10.0.0.10-10.0.0.19,10.0.0.20-10.0.0.29"


def test_legacy_form_comes_first() -> None:
    sets = parse_range_sets({"subnet": "10.1.0.0/16", "gateway": "10.1.0.254",
                             "ranges": [[{"subnet": "fd00::/64"}]]})
    assert [str(s.ranges[0].subnet) for s in sets] == ["10.1.0.0/16", "fd00::/64"]
    assert str(sets[0].ranges[0].gateway) == "10.1.0.254"


def test_round_robin_order_wraps_and_skips_gateway() -> None:
    rs = parse_range_sets({"ranges": [[{"subnet": "10.0.0.0/29", "gateway": "10.0.0.3"}]]})[0]
    assert [str(a) for _, a in rs.candidates(None)] == ["10.0.0.1", "10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
    assert [str(a) for _, a in rs.candidates(A("10.0.0.4"))] == [
        "10.0.0.5", "10.0.0.6", "10.0.0.1", "10.0.0.2", "10.0.0.4"]
    # a last-reserved address outside the set restarts at the beginning
    assert next(str(a) for _, a in rs.candidates(A("192.0.2.1"))) == "10.0.0.1"


def test_round_robin_across_ranges() -> None:
    rs = parse_range_sets({"ranges": [[
        {"subnet": "10.0.0.0/30"}, {"subnet": "10.0.1.0/30"}]]})[0]
    assert [str(a) for _, a in rs.candidates(A("10.0.0.2"))] == ["10.0.1.2", "10.0.0.2"]


def test_huge_v6_range_is_lazy() -> None:
    rs = parse_range_sets({"ranges": [[{"subnet": "fd00::/8"}]]})[0]
    it = rs.candidates(None)
    assert str(next(it)[1]) == "fd00::2"
    assert rs.size() == 2**120 - 2


def test_load_full_config(tmp_path: Any) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# c\nnameserver 1.1.1.1\nnameserver fd00::53\ndomain example\n"
                      "search a.example b.example\noptions ndots:2 edns0\n; x\nbogus\n")
    conf = load({"name": "n", "ipam": {"subnet": "10.0.0.0/24", "dataDir": "/d", "resolvConf": str(resolv),
                                       "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}, {"dst": "192.168.0.0/16"}]},
                 "args": {"cni": {"ips": ["10.0.0.7"]}}, "runtimeConfig": {"ips": ["10.0.0.7/24", "10.0.0.8"]}},
                "IgnoreUnknown=1;IP=10.0.0.9")
    assert conf.data_dir == "/d"
    assert conf.dns == {"nameservers": ["1.1.1.1", "fd00::53"], "domain": "example",
                        "search": ["a.example", "b.example"], "options": ["ndots:2", "edns0"]}
    assert conf.routes == [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}, {"dst": "192.168.0.0/16"}]
    assert [str(a) for a in conf.requested] == ["10.0.0.9", "10.0.0.7", "10.0.0.8"]


@pytest.mark.parametrize("config", [
    {"name": "n"},
    {"name": "n", "ipam": []},
    {"name": "n", "ipam": {"subnet": "10.0.0.0/24", "dataDir": 5}},
    {"name": "n", "ipam": {"subnet": "10.0.0.0/24", "routes": {"dst": "x"}}},
    {"name": "n", "ipam": {"subnet": "10.0.0.0/24", "routes": [{"dst": "nope"}]}},
    {"name": "n", "ipam": {"subnet": "10.0.0.0/24", "routes": [{"dst": "0.0.0.0/0", "gw": "fd00::1"}]}},
    {"name": "n", "ipam": {"subnet": "10.0.0.0/24", "routes": [{"dst": "0.0.0.0/0", "mtu": -1}]}},
    {"name": "n", "ipam": {"subnet": "10.0.0.0/24", "resolvConf": "/nonexistent/resolv.conf"}},
    {"name": "n", "ipam": {"subnet": "10.0.0.0/24"}, "runtimeConfig": {"ips": "10.0.0.5"}},
    {"name": "n", "ipam": {"subnet": "10.0.0.0/24"}, "args": {"cni": {"ips": [5]}}},
    {"name": "../../etc", "ipam": {"subnet": "10.0.0.0/24"}},
    {"name": "a/b", "ipam": {"subnet": "10.0.0.0/24"}},
])
def test_load_rejects(config: dict[str, Any]) -> None:
    assert code_of(load, config).code == errors.INVALID_NETWORK_CONFIG


def test_bad_cni_args_ip_is_env_error() -> None:
    err = code_of(load, {"name": "n", "ipam": {"subnet": "10.0.0.0/24"}}, "IP=10.0.0.300")
    assert err.code == errors.INVALID_ENV


def test_resolv_conf_parser_empty(tmp_path: Any) -> None:
    p = tmp_path / "r"
    p.write_text("")
    assert parse_resolv_conf(str(p)) == {}
