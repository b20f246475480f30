"""Configuration, names, numbers and nft data of berth-loopback, -tuning, -firewall and -bandwidth (no kernel)."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from cni import bandwidth, firewall, main, records, tc, tuning
from cni.errors import CNIError
from portmap import diff, layout, nft

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def code_of(fn: Any, *args: Any) -> int:
    with pytest.raises(CNIError) as err:
        fn(*args)
    return err.value.code


# --- registry and install names ---------------------------------------------------

def test_every_plugin_and_alias_dispatches() -> None:
    for name in ("berth-loopback", "berth-tuning", "berth-firewall", "berth-bandwidth"):
        funcs = main.plugin_funcs(name)
        assert funcs is not None and funcs.name == name
        assert all(funcs.handler(v) for v in ("ADD", "DEL", "CHECK", "GC", "STATUS")), name
    for alias, name in (("loopback", "berth-loopback"), ("tuning", "berth-tuning"), ("firewall", "berth-firewall"),
                        ("bandwidth", "berth-bandwidth")):
        assert main.canonical_name(alias) == name


def test_makefile_links_are_the_dispatch_tables() -> None:
    """`make bundle` and `make install ALIASES=1` link exactly the names cni/main.py dispatches."""
    text = (ROOT / "Makefile").read_text()
    links = next(line for line in text.splitlines() if line.startswith("BUNDLE_LINKS :="))
    aliases = next(line for line in text.splitlines() if line.startswith("ALIAS_LINKS :="))
    assert set(links.split(":=")[1].split()) == set(main.PLUGINS)
    assert set(aliases.split(":=")[1].split()) == set(main.ALIASES)


# --- tuning ----------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "parts"), [
    ("net.core.somaxconn", ("net", "core", "somaxconn")),
    ("net.ipv4.conf.IFNAME.arp_filter", ("net", "ipv4", "conf", "eth0.100", "arp_filter")),
    ("net/ipv4/conf/eth0.100/arp_filter", ("net", "ipv4", "conf", "eth0.100", "arp_filter")),
    ("net/ipv6/conf/IFNAME/disable_ipv6", ("net", "ipv6", "conf", "eth0.100", "disable_ipv6")),
])
def test_sysctl_names_by_parts(key: str, parts: tuple[str, ...]) -> None:
    assert tuning.sysctl_parts(key, "eth0.100") == parts


@pytest.mark.parametrize("key", [
    "kernel.hostname", "net", "vm.swappiness", "net..core", "net.core.", ".net.core.x", "net/../kernel/hostname",
    "net/core/../../kernel/x", "net.core.somaxconn\n", "net.co re.x", "net/./core/x", "net.core.\0x", "net//core",
    "/proc/sys/net/core/somaxconn", "Net.core.somaxconn", "",
])
def test_sysctl_keys_outside_net_or_with_path_tricks_are_refused(key: str) -> None:
    assert code_of(tuning.sysctl_parts, key, "eth0") == 7


def conf(**extra: Any) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "t", "type": "berth-tuning", **extra}


def test_tuning_values_and_precedence() -> None:
    """conf < CNI_ARGS MAC < runtimeConfig.mac < args.cni, as upstream reads them."""
    c = conf(mac="02:00:00:00:00:01", mtu=1400, promisc=True, allmulti=False, txQLen=500,
             sysctl={"net.core.somaxconn": "500"})
    parsed = tuning.parse(c, {}, "eth0")
    assert (parsed.mac, parsed.mtu, parsed.promisc, parsed.allmulti, parsed.txqlen) == \
        ("02:00:00:00:00:01", 1400, True, False, 500)
    assert tuning.parse(c, {"MAC": "02:00:00:00:00:02"}, "eth0").mac == "02:00:00:00:00:02"
    c["runtimeConfig"] = {"mac": "02-00-00-00-00-0A"}
    assert tuning.parse(c, {"MAC": "02:00:00:00:00:02"}, "eth0").mac == "02:00:00:00:00:0a"
    c["args"] = {"cni": {"mac": "02:00:00:00:00:04", "mtu": 9000, "promisc": False, "txQLen": 0,
                         "sysctl": {"net.core.somaxconn": "600", "net.ipv4.conf.IFNAME.arp_filter": "1"}}}
    parsed = tuning.parse(c, {"MAC": "02:00:00:00:00:02"}, "eth1")
    assert (parsed.mac, parsed.mtu, parsed.promisc, parsed.txqlen) == ("02:00:00:00:00:04", 9000, False, 0)
    assert [(s.key, s.parts, s.value) for s in parsed.sysctls] == [
        ("net.core.somaxconn", ("net", "core", "somaxconn"), "600"),
        ("net.ipv4.conf.IFNAME.arp_filter", ("net", "ipv4", "conf", "eth1", "arp_filter"), "1")]
    assert not tuning.parse(conf(), {}, "eth0").changes_link


@pytest.mark.parametrize("extra", [
    {"mac": "01:00:5e:00:00:01"}, {"mac": "zz:00:00:00:00:01"}, {"mac": "02:00:00:00:01"}, {"mac": 5},
    {"mtu": 67}, {"mtu": 65536}, {"mtu": "1500"}, {"mtu": True}, {"promisc": "yes"}, {"allmulti": 1},
    {"txQLen": -1}, {"txQLen": 2**32}, {"txQLen": 1.5}, {"sysctl": {"net.core.somaxconn": 500}},
    {"sysctl": ["net.core.somaxconn"]}, {"sysctl": {"kernel.hostname": "x"}}, {"sysctl": {"net.core.x": "a\0b"}},
    {"runtimeConfig": "x"}, {"runtimeConfig": {"mac": "nope"}}, {"args": {"cni": []}}, {"args": []},
    {"args": {"cni": {"mtu": -5}}}, {"dataDir": 7},
])
def test_tuning_refuses_bad_values(extra: dict[str, Any]) -> None:
    assert code_of(tuning.parse, conf(**extra), {}, "eth0") == 7


def test_duplicate_sysctl_keys_are_refused() -> None:
    raw = b'{"cniVersion": "1.0.0", "name": "t", "type": "tuning", "sysctl": {"net.core.somaxconn": "1", ' \
          b'"net.core.somaxconn": "2"}}'
    assert code_of(tuning.parse, json.loads(raw), {}, "eth0", raw) == 7
    fine = b'{"sysctl": {"net.core.somaxconn": "1"}, "x": {"a": 1, "a": 2}}'
    assert tuning.parse(dict(conf(), **json.loads(fine)), {}, "eth0", fine).sysctls


def test_the_allowlist_is_upstreams(tmp_path: Path) -> None:
    allow = tmp_path / "allowlist.conf"
    allow.write_text("^net\\.core\\.[a-z]+$\n\n  net\\.ipv4\\.conf\\.IFNAME\\.  \n")
    env = {"BERTH_TUNING_ALLOWLIST": str(allow)}
    ok = conf(sysctl={"net.core.somaxconn": "5", "net.ipv4.conf.IFNAME.arp_filter": "1"})
    assert len(tuning.parse(ok, {}, "eth0", b"", env).sysctls) == 2
    assert code_of(tuning.parse, conf(sysctl={"net.ipv4.ip_forward": "1"}), {}, "eth0", b"", env) == 7
    allow.write_text("(\n")
    assert code_of(tuning.parse, ok, {}, "eth0", b"", env) == 7
    env["BERTH_TUNING_ALLOWLIST"] = str(tmp_path / "none")  # no file: no restriction, as upstream
    assert tuning.parse(conf(sysctl={"net.ipv4.ip_forward": "1"}), {}, "eth0", b"", env).sysctls


def test_tuning_record_reads_anything() -> None:
    rec = records.TuningRecord("done", "/run/netns/x", "eth0", records.LinkAttrs(mac="02:00:00:00:00:01", mtu=1500,
                                                                                  promisc=False, txqlen=1000),
                               ((("net", "core", "somaxconn"), "4096"),))
    assert records.TuningRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec
    junk = records.TuningRecord.from_json({"original": {"mtu": "x", "promisc": 1, "mac": 3}, "sysctls": [1, {"n": 2}]})
    assert junk.original == records.LinkAttrs() and junk.sysctls == ()


# --- bandwidth ------------------------------------------------------------------------------

def test_ifb_names_are_upstreams() -> None:
    """The name Debian's bandwidth plugin gave network refnet, container c1 (seen in the parity test)."""
    assert bandwidth.ifb_name("refnet", "c1") == "bwp2f9aafb03deb"
    assert bandwidth.ifb_name("refnet", "c1", "net1") != bandwidth.ifb_name("refnet", "c1")
    assert len(bandwidth.ifb_name("n" * 100, "c" * 200, "x" * 15)) == 15


def test_tbf_numbers_are_upstreams() -> None:
    """8 Mbit/s with a 800 kbit burst: what tc shows for the reference's qdisc, rate 8Mbit burst 100000b lat 25ms."""
    tick = tc.tick_in_usec()
    rate, buffer, limit = tc.tbf_parameters(8_000_000, 800_000)
    assert rate == 1_000_000 and limit == 125_000
    assert buffer == int(100_000 * tick)
    assert tc.tbf_parameters(2**40, 2**35)[0] == 2**37  # beyond 32 bits: RATE64
    assert tc.tbf_parameters(8, 2**34)[1] == tc.MAX_U32  # a buffer beyond 32 bits is clamped


def test_bandwidth_from_the_config_or_the_capability() -> None:
    top = {"ingressRate": 800, "ingressBurst": 80, "runtimeConfig": {"bandwidth": {"egressRate": 9, "egressBurst": 9}}}
    assert bandwidth.parse(top) == bandwidth.Limits(800, 80, 0, 0)
    cap = {"runtimeConfig": {"bandwidth": {"egressRate": 1600, "egressBurst": 160}}}
    limits = bandwidth.parse(cap)
    assert limits == bandwidth.Limits(0, 0, 1600, 160) and limits.egress and not limits.ingress
    assert bandwidth.parse({}) == bandwidth.Limits()
    cri = {"runtimeConfig": {"bandwidth": {"IngressRate": 16_000_000, "IngressBurst": 4294967295,
                                           "EgressRate": 8_000_000, "EgressBurst": 4294967295}}}
    assert bandwidth.parse(cri) == bandwidth.Limits(16_000_000, 4294967295, 8_000_000, 4294967295)
    assert bandwidth.parse({"runtimeConfig": {"bandwidth": {"unshapedSubnets": []}}}) == bandwidth.Limits()


@pytest.mark.parametrize(("entry", "code"), [
    ({"ingressRate": 1000}, 7), ({"egressBurst": 1000}, 7), ({"ingressRate": -1, "ingressBurst": 8}, 7),
    ({"ingressRate": 1.5, "ingressBurst": 8}, 7), ({"ingressRate": True, "ingressBurst": 8}, 7),
    ({"ingressRate": "8M", "ingressBurst": 8}, 7), ({"ingressRate": 2**64, "ingressBurst": 8}, 7),
    ({"egressRate": 8000, "egressBurst": 8 * 0xFFFFFFFF}, 7), ({"ingressRate": 4, "ingressBurst": 800}, 7),
    ({"ingressRate": 800, "ingressBurst": 4}, 7), ({"shapedSubnets": ["10.0.0.0/8"]}, 2),
    ({"unshapedSubnets": ["10.0.0.0/8"], "ingressRate": 800, "ingressBurst": 80}, 2),
])
def test_bandwidth_refuses_bad_limits(entry: dict[str, Any], code: int) -> None:
    assert code_of(bandwidth.parse, entry) == code
    assert code_of(bandwidth.parse, {"runtimeConfig": {"bandwidth": entry}}) == code


# --- tc messages, read back by pyroute2 as an oracle ------------------------------------------

def capture(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bytes]]:
    sent: list[tuple[int, bytes]] = []
    monkeypatch.setattr(tc.netlink, "send_raw",
                        lambda _h, _what, body, msg_type, flags=0: sent.append((msg_type, body)) or [])
    return sent


def decoded(msg_type: int, body: bytes) -> Any:
    from pyroute2.netlink.rtnl.tcmsg import tcmsg

    msg = tcmsg(struct.pack("=IHHII", 16 + len(body), msg_type, 0, 0, 0) + body)
    msg.decode()
    return msg


def test_tc_messages_decode_as_pyroute2_reads_them(monkeypatch: pytest.MonkeyPatch) -> None:
    sent = capture(monkeypatch)
    tc.add_tbf(None, 4, 1_000_000, 1_562_500, 125_000, "v")  # type: ignore[arg-type]
    tc.add_ingress(None, 4, "v")  # type: ignore[arg-type]
    tc.add_redirect(None, 4, 9, "v")  # type: ignore[arg-type]
    tbf, ingress, redirect = (decoded(t, b) for t, b in sent)
    assert (tbf["index"], tbf["handle"], tbf["parent"], tbf.get_attr("TCA_KIND")) == (4, 0x10000, tc.TC_H_ROOT, "tbf")
    parms = tbf.get_attr("TCA_OPTIONS").get_attr("TCA_TBF_PARMS")
    assert (parms["rate"], parms["buffer"], parms["limit"], parms["mtu"]) == (1_000_000, 1_562_500, 125_000, 0)
    assert (ingress["handle"], ingress["parent"], ingress.get_attr("TCA_KIND")) == (0xFFFF0000, 0xFFFFFFF1,
                                                                                     "ingress")
    assert redirect.get_attr("TCA_KIND") == "u32" and redirect["parent"] == 0xFFFF0000
    assert redirect["info"] == (1 << 16) | socket.htons(0x0003)
    options = redirect.get_attr("TCA_OPTIONS")
    assert options.get_attr("TCA_U32_CLASSID") == 0x10001
    action = options.get_attr("TCA_U32_ACT").get_attrs("TCA_ACT_PRIO_1")[0]
    assert action.get_attr("TCA_ACT_KIND") == "mirred"
    mirred = action.get_attr("TCA_ACT_OPTIONS").get_attr("TCA_MIRRED_PARMS")
    assert (mirred["ifindex"], mirred["eaction"], mirred["action"]) == (9, 1, 4)  # egress redirect, stolen


# --- firewall ----------------------------------------------------------------------------------

PREV = {"cniVersion": "1.1.0", "interfaces": [{"name": "cni0", "mac": "02:00:00:00:00:01"},
                                              {"name": "veth1", "mac": "02:00:00:00:00:02"},
                                              {"name": "eth0", "sandbox": "/run/netns/x"}],
        "ips": [{"address": "10.88.0.5/24", "interface": 2}, {"address": "fd00::5/64", "interface": 2}]}


def test_firewall_config() -> None:
    for backend in ("", "iptables", "firewalld", "nftables", None):
        assert firewall.parse({"backend": backend}).backend == (backend or "")
    assert firewall.parse({"ingressPolicy": "same-bridge", "iptablesAdminChainName": "MINE",
                           "firewalldZone": "trusted"}).ingress_policy == "same-bridge"
    for bad in ({"backend": "pf"}, {"backend": 1}, {"ingressPolicy": "closed"}, {"firewalldZone": []},
                {"iptablesAdminChainName": "x" * 29}):
        assert code_of(firewall.parse, bad) == 7


def test_firewall_record_from_prev_result() -> None:
    rec = firewall.expected(firewall.parse({"ingressPolicy": "same-bridge"}), PREV)
    assert (rec.interface, rec.addresses, rec.same_bridge) == ("cni0", ("10.88.0.5", "fd00::5"), "cni0")
    open_policy = firewall.expected(firewall.parse({}), PREV)
    assert open_policy.same_bridge == ""
    sandboxed = {"interfaces": [{"name": "eth0", "sandbox": "/x"}], "ips": PREV["ips"]}
    assert code_of(firewall.expected, firewall.parse({}), sandboxed) == 7
    assert firewall.expected(firewall.parse({}), {"interfaces": [], "ips": []}).addresses == ()
    evil = {"interfaces": [{"name": "../../x"}], "ips": PREV["ips"]}
    assert code_of(firewall.expected, firewall.parse({}), evil) == 7


def test_firewall_elements_and_what_check_misses() -> None:
    rec = records.FirewallRecord("done", "cni0", ("10.88.0.5", "fd00::5"), "cni0")
    fake = nft.Fake()
    fake.apply(layout.firewall_add(layout.firewall_elements(list(rec.addresses), "cni0"), layout=True))
    fake.apply(layout.firewall_add(layout.same_bridge_elements("cni0"), layout=False))
    table = diff.Table.from_objects(fake.list_table())
    assert diff.firewall_missing(rec, table) == []
    assert table.elements[layout.FIREWALL_V4_SET] == [{"concat": ["10.88.0.5", "cni0"]}]
    assert table.elements[layout.SAME_BRIDGE_SELF_SET] == [{"concat": ["cni0", "cni0"]}]
    fake.apply(layout.firewall_del({layout.FIREWALL_V6_SET: [{"concat": ["fd00::5", "cni0"]}]}))
    fake.apply([layout.flush_chain(layout.SAME_BRIDGE_CHAIN)])
    missing = [m.what for m in diff.firewall_missing(rec, diff.Table.from_objects(fake.list_table()))]
    assert missing == [f"chain {layout.SAME_BRIDGE_CHAIN} lacks 2 of its 2 rules",
                       "set firewall-v6 element fd00::5 . cni0 is missing"]
    assert diff.firewall_missing(rec, diff.Table.from_objects(None))[0].what == "table inet berth is missing"


def test_firewall_rules_are_constant_and_apart_from_the_static_layout() -> None:
    """The base layout never flushes the firewall's chains, and no rule names a container."""
    static = {c.get("flush", {}).get("chain", {}).get("name") for c in layout.base_layout()}
    assert layout.FIREWALL_CHAIN not in static and layout.SAME_BRIDGE_CHAIN not in static
    text = json.dumps(layout.firewall_rules())
    assert "10.88" not in text and len(layout.firewall_rules()) == 7
