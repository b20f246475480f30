"""The real libcni (Debian's 1.1.2, what containerd, go-cni, nerdctl and cnitool link) drives berth.

tests/clients/libcni/ holds a cnitool-compatible driver built against the Go
library (libcni_driver.build_driver). It runs inside the node namespace on every
example in conf/ (name and subnets per test, leases in the test's dataDir, its
result cache in the test's dir) and a user's story is checked: the published
port from outside and from the node's 127.0.0.1, CHECK, DEL twice, nothing left.
Every plugin call goes through a recording wrapper, so the tests also assert
what libcni hands each plugin (runtimeConfig, prevResult from its cache, DEL in
reverse) and compare berth's own runner (`berth add|check|del`) with the
library on the same lists, call for call.
"""

from __future__ import annotations

import itertools
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import harness
from tests.clients import common
from tests.clients import libcni_driver as lc
from tests.clients.libcni_driver import Client, Plugins

HOST_PORT = 18080
POD_PORT = 8080
MAPPING = {"hostPort": HOST_PORT, "containerPort": POD_PORT, "protocol": "tcp"}
CAP_ARGS = json.dumps({"portMappings": [MAPPING]})
CONFLISTS = sorted(p.name for p in common.CONF_DIR.glob("*.conflist"))
LOOPBACK_CONF = "99-loopback.conf"
BASE = "10-berth-containerd.conflist"  # the list the version and failure tests vary


@pytest.fixture(scope="session")
def driver() -> Path:
    return lc.build_driver()


@dataclass
class World:
    """One node, one pod, both clients with their own caches, and the plugins behind the recorder."""

    topo: harness.Topology
    tmp: Path
    bin_dir: Path
    libcni: Client
    berth: Client
    tag: str
    plugins: Plugins | None = None
    netconf: Path | None = None

    @property
    def node(self) -> harness.Node:
        return self.topo.node

    @property
    def data_dir(self) -> Path:
        return self.tmp / "ipam"

    def load(self, filename: str, version: str | None = None,
             plugins: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """An example from conf/ made this test's own; written to NETCONFPATH with its plugins wrapped."""
        conf = lc.adjust(common.load_conf(filename), self.tag, self.data_dir, version)
        if plugins is not None:
            conf["plugins"] = plugins
        self.netconf = self.tmp / "net.d"
        lc.write_netconf(self.netconf, filename, conf)
        if self.plugins is None:
            self.plugins = Plugins(self.tmp, self.bin_dir, lc.plugin_types(conf) | {lc.FAIL_TYPE})
        return conf

    def env(self, **extra: str) -> dict[str, str]:
        assert self.netconf is not None and self.plugins is not None
        env = {"NETCONFPATH": str(self.netconf), "CNI_PATH": self.plugins.cni_path, "CAP_ARGS": CAP_ARGS}
        env.update(extra)
        return env

    def calls(self) -> list[lc.Call]:
        assert self.plugins is not None
        return self.plugins.take_calls()


@pytest.fixture
def world(topo: harness.Topology, tmp_path: Path, driver: Path) -> Iterator[World]:
    berth = Path(topo.node.bin_dir) / "berth"
    yield World(topo, tmp_path, topo.node.bin_dir, Client("libcni", driver, tmp_path / "libcni-cache"),
                Client("berth", berth, tmp_path / "berth-cache"), tag=secrets.token_hex(2))


def _host_veths(node: harness.Node, bridge: str) -> list[str]:
    return [link for link in node.links() if link not in ("lo", "o-node", bridge)]


def _pod_ips(result: dict[str, Any]) -> list[str]:
    return [ip["address"].split("/")[0] for ip in result.get("ips", [])]


def _assert_nothing_left(w: World, conf: dict[str, Any], client: Client, pod: harness.Netns) -> None:
    node = w.node
    bridge = next((str(p["bridge"]) for p in conf.get("plugins", [conf]) if "bridge" in p), "")
    assert not _host_veths(node, bridge), f"veth left in the node: {_host_veths(node, bridge)}"
    assert not common.nft_leftovers(node.nft_text()), node.nft_text()
    assert not common.journal_files(node.state_dir), common.journal_files(node.state_dir)
    assert not common.lease_files(w.data_dir), common.lease_files(w.data_dir)
    assert not client.cache_file(conf["name"], pod.path).exists(), "cached result left after DEL"
    assert [link for link in pod.links() if link != "lo"] == [], pod.links()


# --- every example in conf/ through the real library -------------------------------------------
@pytest.mark.parametrize("filename", CONFLISTS)
def test_conflist_through_libcni(world: World, filename: str) -> None:
    w, node, outside = world, world.node, world.topo.outside
    conf = w.load(filename)
    name, version = conf["name"], conf["cniVersion"]
    order = [p["type"] for p in conf["plugins"]]
    pod = w.topo.container("p")

    result = w.libcni.run(node, "add", name, pod.path, w.env()).ok()
    assert result["cniVersion"] == version
    ips = _pod_ips(result)
    v6 = [ip for ip in ips if ":" in ip]
    assert ips and all(ip.startswith(("10.203.", "fd00:203:")) for ip in ips), result
    assert [a.split("/")[0] for a in pod.addresses("eth0") if not a.startswith("fe80")] == ips
    assert bool(v6) == ("dualstack" in filename), result
    adds = w.calls()
    assert lc.call_summary(adds) == [(t, "ADD", 0) for t in order]
    bridge_add, portmap_add, *others = adds  # a list may chain firewall, tuning, bandwidth after portmap
    assert "runtimeConfig" not in bridge_add.stdin, "libcni injects only declared capabilities"
    assert portmap_add.stdin["runtimeConfig"] == {"portMappings": [MAPPING]}
    assert all("runtimeConfig" not in c.stdin for c in others), "no capability of theirs in CAP_ARGS"
    for before, after in itertools.pairwise(adds):
        assert after.stdin["prevResult"] == json.loads(before.stdout), "chained ADD: previous result"
    assert all(c.stdin["name"] == name and c.stdin["cniVersion"] == version for c in adds)
    assert all(c.env["CNI_CONTAINERID"] == lc.container_id(pod.path) and c.env["CNI_NETNS"] == pod.path
               and c.env["CNI_IFNAME"] == "eth0" for c in adds)
    cached = w.libcni.cache_entry(name, pod.path)
    assert cached["result"] == result and cached["capabilityArgs"] == {"portMappings": [MAPPING]}
    assert w.netconf is not None and cached["config"] == (w.netconf / filename).read_text(), "the list's bytes"
    # what the "nothing left" checks below look for must exist first
    assert common.journal_files(node.state_dir), "ADD wrote no journal under BERTH_STATE_DIR"
    assert common.lease_files(w.data_dir), "ADD reserved no address in the test's dataDir"
    assert common.nft_leftovers(node.nft_text()), "no per-attachment chain in table inet berth"
    assert _host_veths(node, common.bridge_name(conf)), "no host-side veth"

    if v6:  # the pod's v6 addresses are still tentative (DAD) when ADD returns; see test_runner.py
        harness.wait_for(lambda: "tentative" not in pod.ip("-6", "addr", "show", "dev", "eth0").stdout, timeout=5)
    families = [("4", w.topo.NODE_V4, w.topo.OUTSIDE_V4)] + ([("6", w.topo.NODE_V6, w.topo.OUTSIDE_V6)] if v6 else [])
    for family, node_ip, outside_ip in families:
        with pod.server(POD_PORT, family=family, banner="pod"):
            got = outside.connect(node_ip, HOST_PORT)
            assert got == f"pod {outside_ip}", f"published port from outside (v{family}): {got}"
            if family == "4":
                assert (node.connect("127.0.0.1", HOST_PORT) or "").startswith("pod "), "node's 127.0.0.1"

    assert w.libcni.run(node, "check", name, pod.path, w.env()).rc == 0
    checks = w.calls()
    assert lc.call_summary(checks) == [(t, "CHECK", 0) for t in order]
    assert all(c.stdin["prevResult"] == result for c in checks), "CHECK gets the cached result"

    w.libcni.run(node, "del", name, pod.path, w.env()).ok()
    dels = w.calls()
    assert lc.call_summary(dels) == [(t, "DEL", 0) for t in reversed(order)], "DEL runs the list in reverse"
    assert all(c.stdin["prevResult"] == result for c in dels), "DEL gets the cached result"
    portmap_del = next(c for c in dels if c.plugin == portmap_add.plugin)
    assert portmap_del.stdin["runtimeConfig"] == {"portMappings": [MAPPING]}
    w.libcni.run(node, "del", name, pod.path, w.env()).ok()  # the cache is gone: DEL without prevResult
    again = w.calls()
    assert lc.call_summary(again) == [(t, "DEL", 0) for t in reversed(order)]
    assert all("prevResult" not in c.stdin for c in again)
    _assert_nothing_left(w, conf, w.libcni, pod)
    assert outside.connect(w.topo.NODE_V4, HOST_PORT, timeout=1) is None, "published port still open after DEL"


def test_loopback_conf_through_libcni(world: World) -> None:
    """A single-plugin .conf (the CRI loopback network): libcni upconverts it to a one-plugin list."""
    w = world
    conf = w.load(LOOPBACK_CONF)
    pod = w.topo.container("lo")
    pod.ip("link", "set", "lo", "down")
    result = w.libcni.run(w.node, "add", conf["name"], pod.path, w.env()).ok()
    assert result["cniVersion"] == conf["cniVersion"] and "127.0.0.1/8" in [ip["address"] for ip in result["ips"]]
    assert "UP" in pod.ip_json("link", "show", "lo")[0]["flags"]
    cached = w.libcni.cache_entry(conf["name"], pod.path)
    assert json.loads(cached["config"]) == {"cniVersion": conf["cniVersion"], "name": conf["name"], "plugins": [conf]}
    w.libcni.run(w.node, "del", conf["name"], pod.path, w.env()).ok()
    assert lc.call_summary(w.calls()) == [("loopback", "ADD", 0), ("loopback", "DEL", 0)]
    assert not w.libcni.cache_file(conf["name"], pod.path).exists()


# --- versions: the library converts and replays results -----------------------------------------
@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_list_versions_through_libcni(world: World, version: str) -> None:
    w, node = world, world.node
    conf = w.load(BASE, version=version)
    name = conf["name"]
    pod = w.topo.container("p")
    result = w.libcni.run(node, "add", name, pod.path, w.env()).ok()
    assert result["cniVersion"] == version
    # before 1.0.0 results carry ips[].version; 1.0.0 dropped it
    assert [ip.get("version") for ip in result["ips"]] == (["4"] if version != "1.0.0" else [None])
    bridge_add, portmap_add = w.calls()
    assert bridge_add.stdin["cniVersion"] == version and json.loads(bridge_add.stdout)["cniVersion"] == version
    assert portmap_add.stdin["prevResult"]["cniVersion"] == version
    assert w.libcni.cache_entry(name, pod.path)["result"] == result
    with pod.server(POD_PORT, banner="pod"):
        got = w.topo.outside.connect(w.topo.NODE_V4, HOST_PORT)
        assert got == f"pod {w.topo.OUTSIDE_V4}", f"published port at {version}: {got}"

    check = w.libcni.run(node, "check", name, pod.path, w.env())
    if version == "0.3.1":  # CHECK came with 0.4.0: libcni refuses before calling any plugin
        assert check.rc == 1
        assert check.stderr.strip() == 'configuration version "0.3.1" does not support the CHECK command'
        assert w.calls() == []
    else:
        assert check.rc == 0, check.stderr
        assert [c.stdin["prevResult"] for c in w.calls()] == [result, result]

    w.libcni.run(node, "del", name, pod.path, w.env()).ok()
    dels = w.calls()
    assert lc.call_summary(dels) == [("berth-portmap", "DEL", 0), ("berth-bridge", "DEL", 0)]
    # prevResult on DEL came with 0.4.0
    assert [c.stdin.get("prevResult") for c in dels] == ([None, None] if version == "0.3.1" else [result, result])
    w.libcni.run(node, "del", name, pod.path, w.env()).ok()
    _assert_nothing_left(w, conf, w.libcni, pod)


def test_cached_result_converted_when_the_list_is_upgraded(world: World) -> None:
    """ADD at 0.4.0, then the operator bumps the list to 1.0.0: CHECK and DEL get the cached 0.4.0 result
    converted to 1.0.0, by libcni and by berth's runner alike."""
    w, node = world, world.node
    pod = w.topo.container("p")
    received: dict[str, list[dict[str, Any]]] = {}
    for client in (w.libcni, w.berth):
        conf = w.load(BASE, version="0.4.0")
        added = client.run(node, "add", conf["name"], pod.path, w.env()).ok()
        assert added["cniVersion"] == "0.4.0" and [ip["version"] for ip in added["ips"]] == ["4"]
        w.calls()
        w.load(BASE, version="1.0.0")
        assert client.run(node, "check", conf["name"], pod.path, w.env()).rc == 0
        client.run(node, "del", conf["name"], pod.path, w.env()).ok()
        calls = w.calls()
        assert lc.call_summary(calls) == [("berth-bridge", "CHECK", 0), ("berth-portmap", "CHECK", 0),
                                          ("berth-portmap", "DEL", 0), ("berth-bridge", "DEL", 0)], client.name
        for call in calls:
            prev = call.stdin["prevResult"]
            assert call.stdin["cniVersion"] == "1.0.0" and prev["cniVersion"] == "1.0.0", (client.name, prev)
            assert [ip["address"] for ip in prev["ips"]] == [ip["address"] for ip in added["ips"]]
            assert all("version" not in ip for ip in prev["ips"]), (client.name, prev)
        _assert_nothing_left(w, conf, client, pod)
        received[client.name] = lc.comparable_calls(calls)
        lc.reset_allocator(w.data_dir)
    assert received["berth"] == received["libcni"]


# --- the limitation of libcni < 1.2: no 1.1.0 results ---------------------------------------------
def test_libcni_1_1_cannot_parse_a_1_1_0_result(world: World, driver: Path) -> None:
    """What docs/clients.md tells users: at cniVersion 1.1.0 libcni 1.1.x aborts after the first plugin
    (its ADD succeeded, the library cannot read the result), caches nothing and leaves the attachment for
    the caller's DEL; cniVersion 1.0.0 (with cniVersions for newer clients) works; berth's runner reads 1.1.0."""
    w, node = world, world.node
    assert "libcni 1.1." in lc.driver_version(driver), "this test describes libcni 1.1.x"
    conf = w.load(BASE, version="1.1.0")
    name = conf["name"]
    pod = w.topo.container("p")
    add = w.libcni.run(node, "add", name, pod.path, w.env())
    assert add.rc == 1 and add.stdout == ""
    assert add.stderr.strip() == 'plugin type="berth-bridge" failed (add): unsupported CNI result version "1.1.0"'
    assert lc.call_summary(w.calls()) == [("berth-bridge", "ADD", 0)], "the bridge succeeded; portmap never ran"
    assert not w.libcni.cache_file(name, pod.path).exists()
    assert pod.addresses("eth0"), "the bridge's half of the attachment stays until DEL"
    w.libcni.run(node, "del", name, pod.path, w.env()).ok()
    dels = w.calls()
    assert lc.call_summary(dels) == [("berth-portmap", "DEL", 0), ("berth-bridge", "DEL", 0)]
    assert all("prevResult" not in c.stdin for c in dels)
    _assert_nothing_left(w, conf, w.libcni, pod)

    # the fix for libcni < 1.2: cniVersion 1.0.0; cniVersions lets libcni >= 1.2 pick 1.1.0
    lc.reset_allocator(w.data_dir)
    text = json.loads((w.netconf / BASE).read_text()) if w.netconf else {}
    text.update(cniVersion="1.0.0", cniVersions=["1.0.0", "1.1.0"])
    lc.write_netconf(w.tmp / "net.d", BASE, text)
    assert w.libcni.run(node, "add", name, pod.path, w.env()).ok()["cniVersion"] == "1.0.0"
    assert {c.stdin["cniVersion"] for c in w.calls()} == {"1.0.0"}
    w.libcni.run(node, "del", name, pod.path, w.env()).ok()
    _assert_nothing_left(w, conf, w.libcni, pod)
    lc.reset_allocator(w.data_dir)
    # berth's runner implements spec 1.1.0 and picks it from cniVersions, as libcni >= 1.2 does
    assert w.berth.run(node, "add", name, pod.path, w.env()).ok()["cniVersion"] == "1.1.0"
    w.berth.run(node, "del", name, pod.path, w.env()).ok()
    _assert_nothing_left(w, conf, w.berth, pod)


# --- a failing plugin: no rollback in libcni, the caller's DEL cleans up -----------------------------
FAIL = {"type": lc.FAIL_TYPE}


@pytest.mark.parametrize("position", [1, 2], ids=["after-bridge", "after-portmap"])
def test_failing_plugin_then_del(world: World, position: int) -> None:
    w, node, outside = world, world.node, world.topo.outside
    base = lc.adjust(common.load_conf(BASE), w.tag, w.data_dir)["plugins"]
    plugins = [*base[:position], FAIL, *base[position:]]
    order = [p["type"] for p in plugins]
    pod = w.topo.container("p")
    seen: dict[str, list[list[dict[str, Any]]]] = {}
    for client in (w.libcni, w.berth):
        conf = w.load(BASE, plugins=plugins)
        name = conf["name"]
        add = client.run(node, "add", name, pod.path, w.env())
        assert add.rc == 1, f"{client.name}: {add.stdout}{add.stderr}"
        assert f"{lc.FAIL_MSG}; {lc.FAIL_DETAILS}" in client.error(add), add
        adds = w.calls()
        # neither client rolls back: no DEL until the caller sends one
        assert lc.call_summary(adds) == [(t, "ADD", 0) for t in order[:position]] + [(lc.FAIL_TYPE, "ADD", 1)]
        assert not client.cache_file(name, pod.path).exists(), f"{client.name} cached a failed ADD"
        assert pod.addresses("eth0"), "what the failed ADD left: the pod keeps its address until DEL"
        if position == 2:
            with pod.server(POD_PORT, banner="pod"):
                assert outside.connect(w.topo.NODE_V4, HOST_PORT) == f"pod {w.topo.OUTSIDE_V4}", \
                    "portmap's rules stay after the failed ADD, until DEL"
        client.run(node, "del", name, pod.path, w.env()).ok()
        dels = w.calls()
        assert lc.call_summary(dels) == [(t, "DEL", 0) for t in reversed(order)]
        assert all("prevResult" not in c.stdin for c in dels), "nothing was cached, so no prevResult"
        client.run(node, "del", name, pod.path, w.env()).ok()
        w.calls()
        _assert_nothing_left(w, conf, client, pod)
        assert outside.connect(w.topo.NODE_V4, HOST_PORT, timeout=1) is None
        seen[client.name] = [lc.comparable_calls(adds), lc.comparable_calls(dels)]
        lc.reset_allocator(w.data_dir)
    assert seen["berth"] == seen["libcni"]


# --- berth's runner against the library, same lists, call for call ------------------------------------
@dataclass
class Cycle:
    outcomes: list[tuple[str, int, Any]]
    calls: list[list[dict[str, Any]]]
    cache: dict[str, Any] | None


def _cycle(w: World, client: Client, conf: dict[str, Any], pod: harness.Netns) -> Cycle:
    name, outcomes, calls = conf["name"], [], []
    cache = None
    for verb in ("add", "check", "del", "del"):
        out = client.run(w.node, verb, name, pod.path, w.env())
        outcomes.append((verb, out.rc, lc.normalise(out.json) if out.rc == 0 else None))
        calls.append(lc.comparable_calls(w.calls()))
        if verb == "add":
            assert out.rc == 0, f"{client.name} add: {out.stdout}{out.stderr}"
            cache = lc.normalise(client.cache_entry(name, pod.path))
    _assert_nothing_left(w, conf, client, pod)
    return Cycle(outcomes, calls, cache)


COMPARE = [(f, None) for f in [*CONFLISTS, LOOPBACK_CONF]] + [(BASE, "0.3.1")]


@pytest.mark.parametrize(("filename", "version"), COMPARE,
                         ids=[f + (f"@{v}" if v else "") for f, v in COMPARE])
def test_runner_matches_libcni(world: World, filename: str, version: str | None) -> None:
    """ADD, CHECK, DEL, DEL through each client on one pod: printed results, the cache entry, and
    every plugin's stdin and CNI_* environment must be the same."""
    w = world
    conf = w.load(filename, version=version)
    pod = w.topo.container("p")
    lib = _cycle(w, w.libcni, conf, pod)
    lc.reset_allocator(w.data_dir)
    mine = _cycle(w, w.berth, conf, pod)

    assert all(lib.calls[i] for i in (0, 2, 3)), f"the recorder saw no ADD or DEL: {lib.calls}"
    assert mine.outcomes == lib.outcomes
    for verb, got, want in zip(("add", "check", "del", "del"), mine.calls, lib.calls, strict=True):
        assert got == want, f"plugins received different {verb.upper()} calls from berth's runner"
    assert mine.cache is not None and lib.cache is not None
    # berth's entry also records the netns (libcni >= 1.2 does too, for GC; 1.1 ignores the key)
    assert mine.cache.pop("netns") == pod.path
    assert mine.cache == lib.cache


# --- what each client says when something is wrong ----------------------------------------------
QUOTES = "berth's runner quotes with Python's repr ('x', ['a', 'b']) where libcni uses Go's %q (\"x\", [a b])"


@dataclass
class ErrorCase:
    verb: str
    network: str  # "list" for this test's list
    plugins: list[dict[str, Any]]
    version: str | None = None
    env: dict[str, str] | None = None


ERROR_CASES = {
    "unknown-network": ErrorCase("add", "nosuchnet", [FAIL]),
    "plugin-error-add": ErrorCase("add", "list", [FAIL]),
    "plugin-error-check": ErrorCase("check", "list", [FAIL], env={"CNI_ARGS": "FAIL=CHECK"}),
    "plugin-error-del": ErrorCase("del", "list", [FAIL], env={"CNI_ARGS": "FAIL=DEL"}),
    "check-before-0.4.0": ErrorCase("check", "list", [FAIL], version="0.3.1"),
    "invalid-cni-args": ErrorCase("add", "list", [FAIL], env={"CNI_ARGS": "K"}),
    "plugin-not-found-add": ErrorCase("add", "list", [{"type": "nosuch"}]),
    "plugin-not-found-del": ErrorCase("del", "list", [{"type": "nosuch"}]),
    "ifname-too-long": ErrorCase("add", "list", [FAIL], env={"CNI_IFNAME": "x" * 16}),
    "ifname-empty": ErrorCase("add", "list", [FAIL], env={"CNI_IFNAME": ""}),
}
ERROR_XFAIL = {
    "plugin-error-add": QUOTES + ": plugin type='test-fail-add' failed (add)",
    "plugin-error-check": "berth's runner prefixes a plugin's CHECK error with \"plugin type='test-fail-add' "
                          "failed (check): \"; libcni's CheckNetworkList returns the plugin's error as it is",
    "plugin-error-del": "berth's runner says 'failed (del)' where libcni says 'failed (delete)', and " + QUOTES,
    "check-before-0.4.0": QUOTES + ": configuration version '0.3.1'",
    "invalid-cni-args": QUOTES + ": invalid CNI_ARGS pair 'K'",
    "plugin-not-found-add": "berth's runner does not prefix a missing plugin with 'plugin type=\"nosuch\" failed "
                            "(add): ', and " + QUOTES,
    "plugin-not-found-del": "berth's runner does not prefix a missing plugin with 'plugin type=\"nosuch\" failed "
                            "(delete): ', and " + QUOTES,
    "ifname-too-long": "berth's runner: 'interface name is too long; max 15 bytes', libcni: 'plugin "
                       "type=... failed (add): interface name is too long; interface name should be less than "
                       "16 characters'",
    "ifname-empty": "berth's runner takes an empty CNI_IFNAME for eth0 and runs the ADD; cnitool passes it to "
                    "libcni, which refuses: 'interface name is empty'",
}


@pytest.mark.parametrize("case", [
    pytest.param(k, marks=pytest.mark.xfail(reason=ERROR_XFAIL[k], strict=True,
                                                       raises=AssertionError)) if k in ERROR_XFAIL else k
    for k in ERROR_CASES])
def test_runner_errors_match_libcni(world: World, case: str) -> None:
    """Both exit 1; berth's message (msg; details, as libcni joins them) must read as libcni's."""
    w, spec = world, ERROR_CASES[case]
    conf = w.load(BASE, version=spec.version, plugins=spec.plugins)
    network = conf["name"] if spec.network == "list" else spec.network
    pod = w.topo.container("p")
    said = {}
    for client in (w.libcni, w.berth):
        out = client.run(w.node, spec.verb, network, pod.path, w.env(**(spec.env or {})))
        assert out.rc in (0, 1), f"{client.name}: {out.stdout}{out.stderr}"
        said[client.name] = client.error(out) if out.rc else "(succeeded)"
        w.calls()
    assert said["libcni"] != "(succeeded)"
    assert said["berth"] == said["libcni"]
