"""Reliability: hostile input against the real plugins.

The property tests run the real berth-bridge / berth-host-local / berth-portmap
verbs in-process (skel.run) in a forked child that first unshares a fresh,
empty network namespace: a hostile input that happens to be valid does its
kernel work there and nowhere else, nothing kernel-related is faked. Every
answer must be one CNI JSON object (error code != 999, no traceback); on an
error the child's namespace holds nothing of the attachment, and no file
appears outside the test's own directory. A small set of cases (10 MB input,
traversal names, port and hostIP garbage) execs the plugin executables in a
node namespace and checks the node's links and nft table are unchanged.
Quick: ~200 examples in all; BERTH_LONG=1: >= 10,000 in all (3 x 3,400).
"""

from __future__ import annotations

import copy
import io
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portmap import layout
from tests import harness

LONG = os.environ.get("BERTH_LONG") == "1"
EXAMPLES = 3_400 if LONG else 70  # per property test: >= 10,000 in all when long
PROFILE = settings(max_examples=EXAMPLES, deadline=None, derandomize=not LONG,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
PLUGINS = ("berth-bridge", "berth-host-local", "berth-portmap")
VERBS = ("ADD", "DEL", "CHECK", "GC")
FITTING = {1, 2, 3, 4, 5, 6, 7, 8, 11, 50, 101, 102, 103, 104, 105, 106}
STATIC_CHAINS = {cmd["add"]["chain"]["name"] for cmd in layout.base_layout() if "chain" in cmd.get("add", {})}
COUNT = {"inputs": 0}

TRAVERSAL = ["..", "../..", "../../../../../../tmp/berth-evil", "/etc/passwd", "a/../../b", "./x", "x/..",
             "..\\..\\x", "%2e%2e%2f", "\0", "a\0b", "/", "//", "~", "$HOME", "-rf"]
hostile_text = st.one_of(
    st.sampled_from([*TRAVERSAL, "", " ", "ü" * 20, "😀" * 5, "\udcff", "x" * 300, "eth0", "a" * 5000]),
    st.text(max_size=30),
    st.text(alphabet="./\\\0-_: ab\n", min_size=1, max_size=20),
)
numbers = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from(
    [-1, 0, 65535, 65536, 70000, 2**31, 2**63, -(2**63), 1e308, float("inf"), float("nan"), 0.5, True, False]))
scalars = st.one_of(st.none(), numbers, hostile_text, st.booleans())
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(hostile_text, scalars, max_size=3))
ports = st.one_of(st.integers(min_value=-70000, max_value=140000), hostile_text, st.just(None), st.floats())
host_ips = st.one_of(hostile_text, st.sampled_from(
    ["300.1.1.1", "1.2.3.4/24", "::ffff:1.2.3.4", "fe80::1%eth0", "0", "1.2.3", "::", "0.0.0.0", "10.0.0.1 "]))

# dotted paths into the base config a hostile value may replace
FIELDS = ["name", "cniVersion", "type", "bridge", "mtu", "ipMasq", "isGateway", "vlan", "hairpinMode",
          "ipam", "ipam.type", "ipam.dataDir", "ipam.ranges", "ipam.ranges.0", "ipam.ranges.0.0.subnet",
          "ipam.ranges.0.0.rangeStart", "ipam.routes", "ipam.routes.0.dst", "runtimeConfig",
          "runtimeConfig.portMappings", "runtimeConfig.portMappings.0", "runtimeConfig.portMappings.0.hostPort",
          "runtimeConfig.portMappings.0.containerPort", "runtimeConfig.portMappings.0.hostIP",
          "runtimeConfig.portMappings.0.protocol", "prevResult", "prevResult.ips", "prevResult.ips.0.address",
          "prevResult.interfaces", "markMasqBit", "conditionsV4", "cni.dev/valid-attachments",
          "cni.dev/valid-attachments.0.containerID", "externalSetMarkChain", "conflictPolicy"]


def base_config(plugin: str, data_dir: str) -> dict[str, Any]:
    prev = {"cniVersion": "1.1.0", "interfaces": [{"name": "bh0"}, {"name": "eth0", "sandbox": "/x"}],
            "ips": [{"address": "10.66.0.5/24", "interface": 1}]}
    return {
        "cniVersion": "1.1.0", "name": "hostile", "type": plugin, "bridge": "bh0", "isGateway": True,
        "ipMasq": True,
        "ipam": {"type": "berth-host-local", "dataDir": data_dir, "ranges": [[{"subnet": "10.66.0.0/24"}]],
                 "routes": [{"dst": "0.0.0.0/0"}]},
        "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]},
        "prevResult": prev, "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}],
    }


def put(config: dict[str, Any], path: str, value: Any) -> None:
    """Replace the value at a dotted path (list indexes as numbers) if it exists."""
    parts = [p.replace("\x01", ".") for p in path.replace("cni.dev/", "cni\x01dev/").split(".")]
    cur: Any = config
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(cur, list):
            if not part.isdigit() or int(part) >= len(cur):
                return  # an earlier edit changed the shape: nothing to replace
            if last:
                cur[int(part)] = value
            else:
                cur = cur[int(part)]
        elif isinstance(cur, dict):
            if last:
                cur[part] = value
            else:
                cur = cur.get(part)
        else:
            return


# --- the isolated in-process runner ----------------------------------------------

CONTAINER = "@container"  # CNI_NETNS placeholder: the container namespace run_isolated makes


class ContainerNetns:
    """A grandchild in a fresh netns of its own, the container's: it holds the
    namespace until released, then reports the links left in it."""

    def __init__(self) -> None:
        ready_r, ready_w = os.pipe()
        self.release_r, self.release_w = os.pipe()
        self.report_r, report_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                for fd in (ready_r, self.release_w, self.report_r):
                    os.close(fd)  # else our own write end keeps the release read from ever ending
                if harness._libc.unshare(CLONE_NEWNET) != 0:
                    os._exit(3)
                os.write(ready_w, b"x")
                os.read(self.release_r, 1)
                os.write(report_w, json.dumps(sorted(n for _i, n in socket.if_nameindex())).encode())
            finally:
                os._exit(0)
        for fd in (ready_w, self.release_r, report_w):
            os.close(fd)
        ok = os.read(ready_r, 1) == b"x"
        os.close(ready_r)
        assert ok, "the container namespace could not be made"

    @property
    def path(self) -> str:
        return f"/proc/{self.pid}/ns/net"

    def release(self) -> list[str]:
        os.close(self.release_w)
        with os.fdopen(self.report_r, "rb") as fh:
            links: list[str] = json.loads(fh.read() or b"[]")
        os.waitpid(self.pid, 0)
        return links


def run_isolated(plugin: str, environ: dict[str, str], data: bytes, cwd: str) -> dict[str, Any]:
    """skel.run of the real plugin in a forked child inside a fresh netns (the
    node's), with a container namespace of its own when CNI_NETNS asks for it."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            os.close(r)
            if harness._libc.unshare(CLONE_NEWNET | CLONE_NEWNS) != 0:
                os._exit(3)
            # a hostile config may drop dataDir and fall back to the real default
            # (/var/lib/cni/networks): give the child a private, empty /var/lib
            if harness._libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0 or \
                    harness._libc.mount(b"tmpfs", b"/var/lib", b"tmpfs", 0, b"mode=0755") != 0:
                os._exit(4)
            os.chdir(cwd)
            container = ContainerNetns() if environ.get("CNI_NETNS") == CONTAINER else None
            if container is not None:
                environ = {**environ, "CNI_NETNS": container.path}
            from cni import invoke, main, skel
            from portmap import nft

            nft.forget_context()  # never reuse a context opened in another netns
            nft.set_backend(None)
            invoke.register_own(main.plugin_funcs, str(Path(environ["CNI_PATH"].split(":")[0]) / "berth"))
            out, err = io.StringIO(), io.StringIO()
            rc = skel.run(main.load_funcs(plugin), environ, io.BytesIO(data), out, err)
            table = nft.list_table()
            chains = sorted({o["chain"]["name"] for o in table or [] if "chain" in o} - STATIC_CHAINS)
            elems = sorted(o[k]["name"] for o in table or [] for k in ("map",) if k in o and o[k].get("elem"))
            links = sorted(name for _i, name in socket.if_nameindex())
            container_links = container.release() if container is not None else []
            payload = {"rc": rc, "out": out.getvalue(), "err": err.getvalue(), "links": links,
                       "container_links": container_links, "chains": chains, "elems": elems}
        except BaseException as exc:
            payload = {"rc": -1, "out": "", "err": f"child crashed: {type(exc).__name__}: {exc}", "links": [],
                       "container_links": [], "chains": [], "elems": []}
        with os.fdopen(w, "wb") as fh:
            fh.write(json.dumps(payload).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        raw = fh.read()
    os.waitpid(pid, 0)
    assert raw, "child died without an answer"
    result: dict[str, Any] = json.loads(raw)
    return result


WATCHED = ["/tmp", "/var/lib/cni", "/var/lib/cni/networks", "/run", "/etc", "/", str(harness.ROOT), "/var/lib", "/root"]


def snapshot() -> dict[str, list[str]]:
    out = {}
    for d in WATCHED:
        try:
            out[d] = sorted(os.listdir(d))
        except OSError:
            out[d] = []
    return out


def check_answer(res: dict[str, Any], plugin: str, bridge: str = "bh0") -> None:
    COUNT["inputs"] += 1
    assert res["rc"] in (0, 1), res
    assert "Traceback" not in res["out"] + res["err"], res
    lines = [line for line in res["out"].splitlines() if line.strip()]
    if res["rc"] == 0:
        assert len(lines) <= 1
        if lines:
            assert isinstance(json.loads(lines[0]), dict)
        return
    assert len(lines) == 1, res
    answer = json.loads(lines[0])
    assert isinstance(answer.get("code"), int) and isinstance(answer.get("msg"), str), answer
    assert answer["code"] in FITTING, f"{plugin}: unfitting code {answer}"
    # a failed call changes nothing in its namespace (the bridge itself may stay, as upstream's)
    assert set(res["links"]) <= {"lo", bridge}, res
    assert set(res["container_links"]) <= {"lo"}, res
    assert res["chains"] == [] and res["elems"] == [], res


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory, bin_dir: Path,
            request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("hostile")
    for sub in ("state", "data", "cwd"):
        (root / sub).mkdir()
    import nftables  # noqa: F401 - warm imports, shared by the forked children
    import pyroute2  # noqa: F401

    before = snapshot()
    yield {"root": root, "bin": bin_dir}
    after = snapshot()
    changed = {d: sorted(set(after[d]) ^ set(before[d])) for d in WATCHED if after[d] != before[d]}
    # other sessions may create their own pytest/bt- entries meanwhile; ours would be named here
    suspicious = {d: [n for n in names if "evil" in n or n in ("hostile", "berth-evil")]
                  for d, names in changed.items()}
    assert not any(suspicious.values()), f"files appeared outside the test dir: {suspicious}"
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"[rel hostile] {COUNT['inputs']} hostile inputs tried in-process, 0 leftovers")


def env_for(sandbox: dict[str, Any], command: str, **over: str) -> dict[str, str]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": CONTAINER,
           "CNI_IFNAME": "eth0", "CNI_ARGS": "", "CNI_PATH": str(sandbox["bin"]),
           "BERTH_STATE_DIR": str(sandbox["root"] / "state"), "BERTH_AGENT_SOCKET": "/nonexistent/berth.sock",
           "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    env.update(over)
    return env


def _outside_files(root: Path) -> list[str]:
    """Files under the sandbox root but outside its state/data/cwd dirs."""
    return [str(p) for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] not in
            ("state", "data", "cwd")]


@PROFILE
@given(plugin=st.sampled_from(PLUGINS), verb=st.sampled_from(VERBS),
       edits=st.lists(st.tuples(st.sampled_from(FIELDS), values), min_size=1, max_size=3))
def test_hostile_config_fields(sandbox: dict[str, Any], plugin: str, verb: str,
                               edits: list[tuple[str, Any]]) -> None:
    config = base_config(plugin, str(sandbox["root"] / "data"))
    for path, value in edits:
        put(config, path, copy.deepcopy(value))
    try:
        data = json.dumps(config).encode("utf-8", "surrogatepass")
    except (ValueError, UnicodeEncodeError):
        data = json.dumps(config, ensure_ascii=True, allow_nan=True).encode()
    res = run_isolated(plugin, env_for(sandbox, verb), data, str(sandbox["root"] / "cwd"))
    check_answer(res, plugin)
    assert _outside_files(sandbox["root"]) == []


@PROFILE
@given(plugin=st.sampled_from(PLUGINS), verb=st.sampled_from(VERBS), cid=hostile_text, ifname=hostile_text,
       name=hostile_text, data_dir=hostile_text, cni_args=hostile_text)
def test_hostile_names_and_paths(sandbox: dict[str, Any], plugin: str, verb: str, cid: str, ifname: str,
                                 name: str, data_dir: str, cni_args: str) -> None:
    """Traversal in container ID, ifname, network name and dataDir never escapes."""
    config = base_config(plugin, str(sandbox["root"] / "data" / data_dir) if data_dir[:1] != "/" else data_dir)
    config["name"] = name
    env = env_for(sandbox, verb, CNI_CONTAINERID=cid, CNI_IFNAME=ifname, CNI_ARGS=cni_args)
    if any("\0" in v for v in env.values()):
        env = {k: v.replace("\0", "") for k, v in env.items()}  # the kernel cannot carry NUL in env
    env = {k: v.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for k, v in env.items()}
    data = json.dumps(config).encode("utf-8", "surrogatepass")
    res = run_isolated(plugin, env, data, str(sandbox["root"] / "cwd"))
    check_answer(res, plugin)
    assert _outside_files(sandbox["root"]) == []
    assert not Path("/tmp/berth-evil").exists()


@PROFILE
@given(host_port=ports, container_port=ports, host_ip=host_ips, protocol=st.one_of(hostile_text, scalars),
       width=st.one_of(st.just(1), numbers))
def test_hostile_port_mappings(sandbox: dict[str, Any], host_port: Any, container_port: Any, host_ip: Any,
                               protocol: Any, width: Any) -> None:
    """Negative, >65535, non-integer ports and hostIP garbage: code 7 (or a clean success)."""
    config = base_config("berth-portmap", str(sandbox["root"] / "data"))
    config["runtimeConfig"]["portMappings"] = [{"hostPort": host_port, "containerPort": container_port,
                                                "hostIP": host_ip, "protocol": protocol, "range": width}]
    data = json.dumps(config).encode("utf-8", "surrogatepass")
    res = run_isolated("berth-portmap", env_for(sandbox, "ADD"), data, str(sandbox["root"] / "cwd"))
    check_answer(res, "berth-portmap")
    if res["rc"] == 1:
        assert json.loads(res["out"])["code"] in (2, 7), res["out"]


# --- exec'd cases: the real executables in a node namespace ----------------------

def _node_state(node: harness.Node) -> tuple[list[str], str]:
    return node.links(), node.nft_text()


EXEC_CASES: list[tuple[str, str, dict[str, str], Any, set[int]]] = [
    ("berth-bridge", "ADD", {"CNI_CONTAINERID": "../../etc/passwd"}, None, {4}),
    ("berth-bridge", "ADD", {"CNI_IFNAME": "../../x"}, None, {4}),
    ("berth-bridge", "ADD", {}, {"name": "../../../tmp/berth-evil"}, {7}),
    ("berth-host-local", "ADD", {}, {"name": "../../../tmp/berth-evil"}, {7}),
    ("berth-host-local", "ADD", {}, {"ipam": {"type": "berth-host-local", "dataDir": 5,
                                              "ranges": [[{"subnet": "10.66.0.0/24"}]]}}, {7}),
    ("berth-portmap", "ADD", {}, {"runtimeConfig": {"portMappings": [{"hostPort": -1, "containerPort": 80}]}}, {7}),
    ("berth-portmap", "ADD", {}, {"runtimeConfig": {"portMappings": [{"hostPort": 65536, "containerPort": 80}]}},
     {7}),
    ("berth-portmap", "ADD", {}, {"runtimeConfig": {"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "hostIP": "1.2.3.4; drop"}]}}, {7}),
    ("berth-portmap", "DEL", {"CNI_CONTAINERID": "a" * 5000}, None, {4}),
    ("berth-bridge", "ADD", {}, {"mtu": 2**64}, {7}),
    ("berth-bridge", "CHECK", {}, {"cniVersion": "ü" * 100}, {1}),
    # berth's own non-IPAM executables as the IPAM type: never an exec of the CLI
    *(("berth-bridge", verb, {}, {"ipam": {"type": name, "ranges": [[{"subnet": "10.66.0.0/24"}]]}}, {7})
      for name in ("berth", "berth-bridge", "berth-portmap") for verb in ("ADD", "CHECK")),
]


@pytest.mark.parametrize("case", range(len(EXEC_CASES)))
def test_exec_hostile_cases(topo: harness.Topology, case: int) -> None:
    node = topo.node
    plugin, verb, env, patch, codes = EXEC_CASES[case]
    config = base_config(plugin, str(node.data_dir))
    if patch:
        config.update(patch)
    before = _node_state(node)
    full_env = {"CNI_CONTAINERID": "c1", **env}
    res = node.plugin(plugin, verb, config, container_id=full_env.pop("CNI_CONTAINERID"),
                      netns=node.container().path, ifname=full_env.pop("CNI_IFNAME", "eth0"), env=full_env)
    assert res.rc == 1 and "Traceback" not in res.stdout + res.stderr, res
    assert res.json["code"] in codes, res.stdout
    assert _node_state(node) == before
    assert not Path("/tmp/berth-evil").exists()
    assert [p for p in node.state_dir.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("plugin", PLUGINS)
def test_exec_ten_megabytes(topo: harness.Topology, plugin: str) -> None:
    node = topo.node
    before = _node_state(node)
    big = {"cniVersion": "1.1.0", "name": "big", "type": plugin, "pad": "x" * (10 * 1024 * 1024)}
    for data in (json.dumps(big).encode(), b"{" * (10 * 1024 * 1024), os.urandom(10 * 1024 * 1024)):
        res = node.plugin(plugin, "ADD", data, container_id="c1", netns=node.container().path, timeout=60)
        assert res.rc == 1 and "Traceback" not in res.stderr, res.stderr[-500:]
        assert res.json["code"] in (6, 7), res.stdout[:500]
    assert _node_state(node) == before


def test_the_nodes_own_namespace_is_never_taken_for_the_containers(topo: harness.Topology) -> None:
    """ADD and CHECK answer 8; DEL never deletes the node's own interface of that name."""
    node = topo.node
    node.ip("link", "add", "eth9", "type", "veth", "peer", "name", "eth9p")  # the node's own interface
    conf = harness.bridge_conf("ownns", "10.66.0.0/24")
    conf["ipam"]["dataDir"] = str(node.data_dir)
    before = _node_state(node)
    for netns in ("/proc/self/ns/net", "/proc/thread-self/ns/net", node.path):
        for ifname in ("eth0", "eth9"):
            res = node.plugin("berth-bridge", "ADD", conf, container_id="own1", netns=netns, ifname=ifname)
            assert res.rc == 1 and res.json["code"] == 8, res
            assert "own network namespace" in res.json["msg"], res
            check = node.plugin("berth-bridge", "CHECK", {**conf, "prevResult": {"cniVersion": "1.0.0"}},
                                container_id="own1", netns=netns, ifname=ifname)
            assert check.rc == 1 and check.json["code"] == 8, check
            node.plugin("berth-bridge", "DEL", conf, container_id="own1", netns=netns, ifname=ifname).ok()
            assert _node_state(node) == before
    assert [p for p in node.state_dir.rglob("*.json")] == []
    assert list((node.data_dir / "ownns").glob("10.*")) == []  # no lease either
    # a real container's ADD and DEL still work next to it
    netns = node.container()
    node.plugin("berth-bridge", "ADD", conf, container_id="own2", netns=netns.path).ok()
    node.plugin("berth-bridge", "DEL", conf, container_id="own2", netns=netns.path).ok()
    assert "eth9" in node.links()


def test_a_state_dir_berth_cannot_use_is_code_5_naming_it(topo: harness.Topology, tmp_path: Path) -> None:
    node = topo.node
    plain = tmp_path / "plain-file"
    plain.write_text("")
    conf = harness.bridge_conf("badstate", "10.67.0.0/24")
    conf["ipam"]["dataDir"] = str(node.data_dir)
    pm = {"cniVersion": "1.0.0", "name": "badstate", "type": "berth-portmap",
          "runtimeConfig": {"portMappings": [{"hostPort": 18090, "containerPort": 80}]},
          "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.67.0.5/24"}]}}
    before = _node_state(node)
    netns = node.container()
    for root in (str(plain), "/proc", str(plain / "below")):
        env = {"BERTH_STATE_DIR": root}
        for plugin, verb, config in (("berth-bridge", "ADD", conf), ("berth-portmap", "ADD", pm),
                                     ("berth-portmap", "DEL", pm), ("berth-bridge", "DEL", conf)):
            res = node.plugin(plugin, verb, config, container_id="bs1", netns=netns.path, env=env)
            assert res.rc == 1 and res.json["code"] == 5, (root, plugin, verb, res)
            assert root in res.json["msg"] and "Traceback" not in res.stderr, res
        assert netns.links() == ["lo"] and _node_state(node) == before
    assert plain.read_text() == "" and list((node.data_dir / "badstate").glob("10.*")) == []
