"""berth-bridge config parsing and gateway/route planning, without a kernel."""

from __future__ import annotations

from typing import Any

import pytest

from cni.bridge import plan_l3
from cni.bridge_conf import parse
from cni.errors import CNIError


def _conf(**extra: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"cniVersion": "1.0.0", "name": "n", "type": "berth-bridge",
                         "ipam": {"type": "berth-host-local"}}
    c.update(extra)
    return c


def test_defaults_match_upstream() -> None:
    conf = parse(_conf())
    assert conf.bridge == "cni0" and conf.preserve_default_vlan and not conf.is_gateway and conf.layer3
    assert parse(_conf(isDefaultGateway=True)).is_gateway
    assert not parse(_conf(ipam={})).layer3
    assert not parse({"name": "n"}).layer3


@pytest.mark.parametrize(("extra", "code"), [
    ({"mtu": "1500"}, 7), ({"mtu": 67}, 7), ({"mtu": 70000}, 7), ({"mtu": True}, 7),
    ({"isGateway": "true"}, 7), ({"vlan": 4095}, 7), ({"vlan": -1}, 7), ({"bridge": "a/b"}, 7),
    ({"bridge": "x" * 16}, 7), ({"bridge": 3}, 7), ({"ipam": []}, 7), ({"ipam": {"type": 1}}, 7),
    ({"hairpinMode": True, "promiscMode": True}, 7), ({"vlanTrunk": [{"id": 3}]}, 2), ({"vlanTrunk": "x"}, 7),
    ({"macspoofchk": True}, 2), ({"vlan": 10, "isGateway": True}, 2), ({"ipMasqBackend": "ebpf"}, 7),
    ({"ipam": {}, "ipMasq": True}, 7), ({"disableContainerInterface": True}, 7),
    ({"runtimeConfig": {"mac": "01:00:00:00:00:01"}}, 7), ({"args": {"cni": {"mac": "nope"}}}, 7),
])
def test_bad_config_codes(extra: dict[str, Any], code: int) -> None:
    with pytest.raises(CNIError) as err:
        parse(_conf(**extra))
    assert err.value.code == code


def test_accepts_every_upstream_field() -> None:
    conf = parse(_conf(bridge="br0", isGateway=True, isDefaultGateway=True, forceAddress=True, ipMasq=True,
                       ipMasqBackend="nftables", mtu=1450, hairpinMode=True, promiscMode=False, vlan=0,
                       vlanTrunk=[], preserveDefaultVlan=False, enabledad=True, macspoofchk=False,
                       portIsolation=True))
    assert (conf.bridge, conf.mtu, conf.hairpin, conf.enable_dad, conf.port_isolation) == ("br0", 1450, True,
                                                                                            True, True)


def test_mac_precedence() -> None:
    both = _conf(runtimeConfig={"mac": "0A:00:00:00:00:01"}, args={"cni": {"mac": "0a:00:00:00:00:02"}})
    assert parse(both, {"MAC": "0a:00:00:00:00:03"}).mac == "0a:00:00:00:00:01"
    assert parse(_conf(args={"cni": {"mac": "0a:00:00:00:00:02"}})).mac == "0a:00:00:00:00:02"
    assert parse(_conf(), {"MAC": "0a:00:00:00:00:03"}).mac == "0a:00:00:00:00:03"
    with pytest.raises(CNIError):
        parse(_conf(), {"MAC": "0a:00:00:00:00"})


def test_plan_fills_gateways_and_default_routes() -> None:
    result: dict[str, Any] = {"ips": [{"address": "10.1.0.5/24"}, {"address": "fd00::5/64", "gateway": "fd00::9"}],
                              "routes": [{"dst": "192.168.0.0/16"}]}
    gws, routes = plan_l3(result, parse(_conf(isDefaultGateway=True)))
    assert gws == ["10.1.0.1/24", "fd00::9/64"]
    assert [ip["interface"] for ip in result["ips"]] == [2, 2]
    assert result["ips"][0]["gateway"] == "10.1.0.1"
    assert routes == [("192.168.0.0/16", "10.1.0.1"), ("0.0.0.0/0", "10.1.0.1"), ("::/0", "fd00::9")]
    assert {"dst": "0.0.0.0/0", "gw": "10.1.0.1"} in result["routes"]


def test_plan_keeps_ipam_default_route_and_skips_foreign_family() -> None:
    result: dict[str, Any] = {"ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1"}],
                              "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.254"}, {"dst": "::/0"}]}
    _gws, routes = plan_l3(result, parse(_conf(isDefaultGateway=True)))
    assert routes == [("0.0.0.0/0", "10.1.0.254")]
    assert len(result["routes"]) == 2


def test_plan_without_gateway_mode() -> None:
    result: dict[str, Any] = {"ips": [{"address": "10.1.0.5/24"}], "routes": [{"dst": "0.0.0.0/0"}]}
    gws, routes = plan_l3(result, parse(_conf()))
    assert gws == [] and routes == [("0.0.0.0/0", None)] and "gateway" not in result["ips"][0]
