"""Reliability: hostile input against the real plugins.

The property tests run the real berth-bridge / berth-host-local / berth-portmap
verbs in-process (skel.run) in a forked child that first unshares a fresh,
empty network namespace (the node's) and makes the container's namespace in a
grandchild: a hostile input that happens to be valid does its kernel work
there and nowhere else, nothing kernel-related is faked. Every answer must be
one CNI JSON object (error code != 999, no traceback, within HANG_SECONDS); on
an error both namespaces hold nothing of the attachment, and no file appears
outside the test's own directory. The shapes: traversal and separators in
every name, namespaces that are not the container's (the node's own, other
namespace types, files), a FIFO, symlink, directory, socket, device or /proc
in every path option, and pairs of attachments whose derived names meet (the
older journal name, the DNAT chain name). A small set of cases (10 MB input,
traversal names, port and hostIP garbage, berth's CLI as IPAM) execs the
plugin executables in a node namespace and checks the node's links and nft
table are unchanged. Quick: ~300 examples in all; BERTH_LONG=1: >= 17,000.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import select
import shutil
import socket
import stat
import tempfile
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
# eight plugin calls an example: fewer of them (the name shapes are few, too)
PAIRS = settings(PROFILE, max_examples=600 if LONG else 25)
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
# the separators of the names berth derives from (network, containerID, ifname)
SEPARATED = ["a-b", "b-c", "a-b-c", "a:b", "-", ":", "ab", "bc1", "c1-eth0", "a.b_c-d"]
hostile_text = st.one_of(
    st.sampled_from([*TRAVERSAL, *SEPARATED, "", " ", "ü" * 20, "😀" * 5, "\udcff", "x" * 300, "eth0", "a" * 5000]),
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


# CNI_NETNS values that are not the container's: ours (several spellings), other
# namespace types, files that are no namespace; never one that could be the host's
NOT_THE_CONTAINER = ["/proc/self/ns/net", "/proc/thread-self/ns/net", "@self",
                     "/proc/self/ns/mnt", "/proc/self/ns/uts", "/dev/null", "/nonexistent/netns", "relative/netns",
                     "@special/fifo", "@special/dir", "@special/file", "@special/symlink", "@special/socket"]
SPECIAL_KINDS = ("fifo", "symlink", "dangling", "dir", "socket", "file")


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


SELF_NETNS = "@self"  # CNI_NETNS placeholder: the child's own (the node's) namespace, by its pid
HANG_SECONDS = 120  # a call that has not answered by then is hung (a FIFO opened blocking, say)


def isolated(body: Any, cwd: str) -> Any:
    """body() in a forked child inside a fresh netns (the node's) with a private,
    empty /var/lib; its JSON-able return value, or the child's crash as an error."""
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
            from portmap import nft

            nft.forget_context()  # never reuse a context opened in another netns
            nft.set_backend(None)
            payload = body()
        except BaseException as exc:
            payload = {"rc": -1, "out": "", "err": f"child crashed: {type(exc).__name__}: {exc}", "links": [],
                       "container_links": [], "chains": [], "elems": []}
        with os.fdopen(w, "wb") as fh:
            fh.write(json.dumps(payload).encode())
        os._exit(0)
    os.close(w)
    ready, _, _ = select.select([r], [], [], HANG_SECONDS)
    if not ready:
        os.kill(pid, 9)
    with os.fdopen(r, "rb") as fh:
        raw = fh.read()
    os.waitpid(pid, 0)
    assert ready, f"the call hung for {HANG_SECONDS} s"
    assert raw, "child died without an answer"
    return json.loads(raw)


def call_plugin(plugin: str, environ: dict[str, str], data: bytes) -> dict[str, Any]:
    """In the isolated child: skel.run of the real plugin; its answer and what the node's namespace holds."""
    from cni import invoke, main, skel
    from portmap import nft

    invoke.register_own(main.plugin_funcs, str(Path(environ["CNI_PATH"].split(":")[0]) / "berth"))
    if environ.get("CNI_NETNS") == SELF_NETNS:
        environ = {**environ, "CNI_NETNS": f"/proc/{os.getpid()}/ns/net"}
    out, err = io.StringIO(), io.StringIO()
    rc = skel.run(main.load_funcs(plugin), environ, io.BytesIO(data), out, err)
    table = nft.list_table()
    chains = sorted({o["chain"]["name"] for o in table or [] if "chain" in o} - STATIC_CHAINS)
    elems = sorted(o[k]["name"] for o in table or [] for k in ("map",) if k in o and o[k].get("elem"))
    links = sorted(name for _i, name in socket.if_nameindex())
    return {"rc": rc, "out": out.getvalue(), "err": err.getvalue(), "links": links, "chains": chains,
            "elems": elems}


def run_isolated(plugin: str, environ: dict[str, str], data: bytes, cwd: str) -> dict[str, Any]:
    """One call in isolation, with a container namespace of its own when CNI_NETNS asks for it."""
    def body() -> dict[str, Any]:
        container = ContainerNetns() if environ.get("CNI_NETNS") == CONTAINER else None
        env = {**environ, "CNI_NETNS": container.path} if container is not None else environ
        res = call_plugin(plugin, env, data)
        res["container_links"] = container.release() if container is not None else []
        return res

    result: dict[str, Any] = isolated(body, cwd)
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
    with special_files(root / "special") as listener:
        yield {"root": root, "bin": bin_dir, "listener": listener}
    after = snapshot()
    changed = {d: sorted(set(after[d]) ^ set(before[d])) for d in WATCHED if after[d] != before[d]}
    # other sessions may create their own pytest/bt- entries meanwhile; ours would be named here
    suspicious = {d: [n for n in names if "evil" in n or n in ("hostile", "berth-evil")]
                  for d, names in changed.items()}
    assert not any(suspicious.values()), f"files appeared outside the test dir: {suspicious}"
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"[rel hostile] {COUNT['inputs']} hostile inputs tried in-process, 0 leftovers")


@contextlib.contextmanager
def special_files(base: Path) -> Iterator[socket.socket]:
    """One file of each kind (SPECIAL_KINDS) under `base`, for every path option to meet."""
    base.mkdir()
    (base / "target").write_text("")
    os.mkfifo(base / "fifo")
    (base / "symlink").symlink_to(base / "target")
    (base / "dangling").symlink_to(base / "nowhere")
    (base / "dir").mkdir()
    (base / "file").write_text("")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(base / "socket"))
    try:
        yield listener
    finally:
        listener.close()


def special(sandbox: dict[str, Any], value: str) -> str:
    """Resolve "@special/<kind>" to the sandbox's file of that kind."""
    return str(sandbox["root"] / "special" / value.split("/", 1)[1]) if value.startswith("@special/") else value


def reset_specials(sandbox: dict[str, Any]) -> None:
    base = sandbox["root"] / "special"
    (base / "file").write_text("")
    shutil.rmtree(base / "dir")
    (base / "dir").mkdir()


def specials_untouched(sandbox: dict[str, Any], used_as_dir: bool, used_as_log: bool = False) -> None:
    """Nothing written through a symlink or into a FIFO; the plain file only as a log (a regular file)."""
    base = sandbox["root"] / "special"
    assert (base / "target").read_text() == ""
    assert used_as_log or (base / "file").read_text() == ""
    assert not (base / "nowhere").exists() and stat.S_ISFIFO(os.lstat(base / "fifo").st_mode)
    assert (base / "symlink").is_symlink() and (base / "dangling").is_symlink()
    if not used_as_dir:
        assert list((base / "dir").iterdir()) == []


def env_for(sandbox: dict[str, Any], command: str, **over: str) -> dict[str, str]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": CONTAINER,
           "CNI_IFNAME": "eth0", "CNI_ARGS": "", "CNI_PATH": str(sandbox["bin"]),
           "BERTH_STATE_DIR": str(sandbox["root"] / "state"), "BERTH_AGENT_SOCKET": "/nonexistent/berth.sock",
           "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    env.update(over)
    return env


def contained_data_dir(sandbox: dict[str, Any], data_dir: str) -> str:
    """dataDir is the operator's to choose and any path is valid, so its hostile
    spellings are kept inside the sandbox: absolute ones re-rooted below it,
    relative ones below a base deeper than any traversal they can spell (a
    relative dataDir resolves against the plugin's working directory)."""
    if data_dir in ("", "/etc/passwd"):  # the default (a private /var/lib); a file nothing can be made below
        return data_dir
    base = str(sandbox["root"] / "data" / Path(*[f"d{i}" for i in range(16)]))
    return base + data_dir if data_dir.startswith("/") else base + "/" + data_dir


def _outside_files(root: Path) -> list[str]:
    """Files under the sandbox root but outside its state/data/cwd dirs."""
    return [str(p) for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] not in
            ("state", "data", "cwd", "special")]


@PROFILE
@given(plugin=st.sampled_from(PLUGINS), verb=st.sampled_from(VERBS),
       edits=st.lists(st.tuples(st.sampled_from(FIELDS), values), min_size=1, max_size=3))
def test_hostile_config_fields(sandbox: dict[str, Any], plugin: str, verb: str,
                               edits: list[tuple[str, Any]]) -> None:
    config = base_config(plugin, str(sandbox["root"] / "data"))
    for path, value in edits:
        put(config, path, copy.deepcopy(value))
    ipam = config.get("ipam")
    if isinstance(ipam, dict) and isinstance(ipam.get("dataDir"), str):
        ipam["dataDir"] = contained_data_dir(sandbox, ipam["dataDir"])
    try:
        data = json.dumps(config).encode("utf-8", "surrogatepass")
    except (ValueError, UnicodeEncodeError):
        data = json.dumps(config, ensure_ascii=True, allow_nan=True).encode()
    res = run_isolated(plugin, env_for(sandbox, verb), data, str(sandbox["root"] / "cwd"))
    check_answer(res, plugin)
    assert _outside_files(sandbox["root"]) == []


@PROFILE
@given(plugin=st.sampled_from(PLUGINS), verb=st.sampled_from(VERBS), cid=hostile_text, ifname=hostile_text,
       name=hostile_text, data_dir=hostile_text, cni_args=hostile_text,
       netns=st.sampled_from([CONTAINER] * 4 + NOT_THE_CONTAINER))
def test_hostile_names_and_paths(sandbox: dict[str, Any], plugin: str, verb: str, cid: str, ifname: str,
                                 name: str, data_dir: str, cni_args: str, netns: str) -> None:
    """Traversal in container ID, ifname, network name and dataDir never escapes;
    a namespace that is not the container's never gets the container's interface."""
    config = base_config(plugin, contained_data_dir(sandbox, data_dir))
    config["name"] = name
    env = env_for(sandbox, verb, CNI_CONTAINERID=cid, CNI_IFNAME=ifname, CNI_ARGS=cni_args,
                  CNI_NETNS=special(sandbox, netns))
    if any("\0" in v for v in env.values()):
        env = {k: v.replace("\0", "") for k, v in env.items()}  # the kernel cannot carry NUL in env
    env = {k: v.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for k, v in env.items()}
    data = json.dumps(config).encode("utf-8", "surrogatepass")
    res = run_isolated(plugin, env, data, str(sandbox["root"] / "cwd"))
    check_answer(res, plugin)
    if plugin == "berth-bridge" and verb == "ADD" and netns != CONTAINER:
        assert res["rc"] == 1 and json.loads(res["out"])["code"] in (4, 7, 8), res
    if env["CNI_IFNAME"] not in ("lo", "bh0") and not env["CNI_IFNAME"].startswith("veth"):
        assert env["CNI_IFNAME"] not in res["links"], res  # never the container's interface in the node's
    assert _outside_files(sandbox["root"]) == []
    assert not Path("/tmp/berth-evil").exists()
    specials_untouched(sandbox, used_as_dir=False)


PATH_OPTIONS = ("BERTH_STATE_DIR", "BERTH_LOG_FILE", "berthLogFile", "ipam.dataDir", "CNI_NETNS")


@PROFILE
@given(plugin=st.sampled_from(PLUGINS), verb=st.sampled_from(VERBS),
       paths=st.dictionaries(st.sampled_from(PATH_OPTIONS),
                             st.sampled_from([f"@special/{k}" for k in SPECIAL_KINDS]
                                             + ["/dev/null", "/proc", "/proc/self/ns/net", SELF_NETNS]),
                             min_size=1, max_size=3),
       version=st.sampled_from(["1.1.0", "9.9.9"]))
def test_special_files_in_every_path_option(sandbox: dict[str, Any], plugin: str, verb: str,
                                            paths: dict[str, str], version: str) -> None:
    """A FIFO, symlink, dangling symlink, directory, socket, plain file, device or
    /proc as any path berth takes: one CNI answer at once (never hung, never 999),
    nothing of the attachment left on failure, none of those files written."""
    reset_specials(sandbox)  # what an earlier example wrote where it may
    config = base_config(plugin, str(sandbox["root"] / "data"))
    config["cniVersion"] = version
    env = env_for(sandbox, verb)
    for option, value in paths.items():
        where = special(sandbox, value)
        if option == "berthLogFile":
            config[option] = where
        elif option == "ipam.dataDir":
            config["ipam"]["dataDir"] = where
        else:
            env[option] = where
    res = run_isolated(plugin, env, json.dumps(config).encode(), str(sandbox["root"] / "cwd"))
    check_answer(res, plugin)
    if plugin == "berth-bridge" and verb in ("ADD", "CHECK") and "CNI_NETNS" in paths:
        assert res["rc"] == 1 and "eth0" not in res["links"], res  # never the node's own namespace
    dirs = {paths.get(k) for k in ("BERTH_STATE_DIR", "ipam.dataDir")}
    logs = {paths.get(k) for k in ("BERTH_LOG_FILE", "berthLogFile")}
    specials_untouched(sandbox, used_as_dir="@special/dir" in dirs, used_as_log="@special/file" in logs)
    assert _outside_files(sandbox["root"]) == []


def readings(stem: str, cut: int, other: int, by_network: bool) -> tuple[tuple[str, str, str], ...]:
    """Two attachments (network, containerID, ifname) whose derived names meet:
    the older journal name `stem`.json read at two of its dashes, or network +
    containerID joining to the same string."""
    if by_network:  # "a-b-c1" -> ("ab", "c1") and ("a", "bc1"): one DNAT chain name
        joined = stem.replace("-", "")
        return ("pair" + joined[:2], joined[2:], "eth0"), ("pair" + joined[:1], joined[1:], "eth0")
    dashes = [i for i, c in enumerate(stem) if c == "-"]
    a, b = dashes[cut % len(dashes)], dashes[other % len(dashes)]
    return ("pair", stem[:a], stem[a + 1:]), ("pair", stem[:b], stem[b + 1:])


@PAIRS
@given(stem=st.lists(st.sampled_from(["a", "b", "c1", "x"]), min_size=3, max_size=4).map("-".join),
       cut=st.integers(0, 3), other=st.integers(0, 3), by_network=st.booleans())
def test_attachments_whose_names_meet(sandbox: dict[str, Any], stem: str, cut: int, other: int,
                                      by_network: bool) -> None:
    """("a", "b-c") / ("a-b", "c") share the older journal name, ("ab", "c1") /
    ("a", "bc1") the DNAT chain name: both ADD (the second portmap is refused only
    for a shared chain, with 103), and the second's DEL leaves the first whole."""
    first, second = readings(stem, cut, other, by_network)
    if first != second:
        problems = isolated(lambda: pair_in_one_node(sandbox, first, second), str(sandbox["root"] / "cwd"))
        assert problems == [], problems


def pair_in_one_node(sandbox: dict[str, Any], *pair: tuple[str, str, str]) -> list[str]:
    """In the isolated child: bridge + portmap ADD of both, DEL of the second, then
    the first must be as it was (journal, host veth, DNAT chain, masquerade); DEL it."""
    from portmap import diff, nft

    problems: list[str] = []
    fresh = Path(tempfile.mkdtemp(dir=sandbox["root"] / "state"))  # examples share nothing on disk either
    calls = [attach(sandbox, fresh, n, *names) for n, names in enumerate(pair)]
    (first_names, (env1, br1, pm1, confs1)), (second_names, (env2, _br2, pm2, confs2)) = zip(pair, calls, strict=True)
    chain = layout.dnat_chain_name(*first_names)
    shared = chain == layout.dnat_chain_name(*second_names)
    for name, res in (("first bridge", br1), ("first portmap", pm1), ("second bridge", _br2)):
        if res["rc"]:
            problems.append(f"{name} ADD failed: {res['out']}")
    refused = pm2["rc"] == 1 and json.loads(pm2["out"] or "{}").get("code") == 103
    if (pm2["rc"] and not (shared and refused)) or (shared and pm2["rc"] == 0):
        problems.append(f"second portmap ADD (chain shared: {shared}): {pm2['out']}")
    if problems:
        return problems
    before = journal_of(Path(env1["BERTH_STATE_DIR"]), first_names)
    for plugin, conf in zip(("berth-portmap", "berth-bridge"), confs2, strict=True):
        res = call_plugin(plugin, {**env2, "CNI_COMMAND": "DEL"}, json.dumps(conf).encode())
        if res["rc"]:
            problems.append(f"second {plugin} DEL failed: {res['out']}")
    if journal_of(Path(env1["BERTH_STATE_DIR"]), first_names) != before:
        problems.append("the second's DEL changed the first's journal")
    host = json.loads(br1["out"])["interfaces"][1]["name"]
    if host not in [n for _i, n in socket.if_nameindex()]:
        problems.append(f"the first's host veth {host} went")
    table = diff.Table.from_objects(nft.list_table())
    chains, elements = table.chains, table.elements
    if chain not in chains:
        problems.append(f"the first's DNAT chain {chain} went")
    address = json.loads(br1["out"])["ips"][0]["address"].split("/")[0]
    if address not in [e[0] for name, elems in elements.items() if layout.is_ipmasq_map(name) for e in elems]:
        problems.append(f"the first's masquerade element {address} went")
    for plugin, conf in zip(("berth-portmap", "berth-bridge"), confs1, strict=True):
        call_plugin(plugin, {**env1, "CNI_COMMAND": "DEL"}, json.dumps(conf).encode())
    return problems


def attach(sandbox: dict[str, Any], fresh: Path, n: int, network: str, cid: str,
           ifname: str) -> tuple[dict[str, str], dict[str, Any], dict[str, Any], tuple[dict[str, Any], ...]]:
    """bridge (ipMasq) + portmap ADD of one attachment into a container namespace of its own."""
    container = ContainerNetns()  # held until the child exits
    bridge = {**base_config("berth-bridge", str(fresh / "data")), "name": network, "bridge": f"bh{n}"}
    bridge["ipam"]["ranges"] = [[{"subnet": f"10.{70 + n}.0.0/24"}]]
    env = env_for(sandbox, "ADD", CNI_CONTAINERID=cid, CNI_IFNAME=ifname, CNI_NETNS=container.path,
                  BERTH_STATE_DIR=str(fresh / "state"))
    br = call_plugin("berth-bridge", env, json.dumps(bridge).encode())
    pm_conf = {"cniVersion": "1.1.0", "name": network, "type": "berth-portmap",
               "runtimeConfig": {"portMappings": [{"hostPort": 18100 + n, "containerPort": 80}]},
               "prevResult": json.loads(br["out"]) if br["rc"] == 0 else {}}
    pm = call_plugin("berth-portmap", env, json.dumps(pm_conf).encode()) if br["rc"] == 0 else br
    return env, br, pm, (pm_conf, bridge)


def journal_of(root: Path, attachment: tuple[str, str, str]) -> dict[str, Any]:
    from cni import state

    network, cid, ifname = attachment
    try:
        return state.Journal(str(root), network, cid, ifname).load()
    except Exception as exc:
        return {"unreadable": str(exc)}


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
