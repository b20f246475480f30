"""Hostile input against the protocol core (skel + spec + journal) with a fake plugin.

Whatever arrives on stdin or in CNI_*, a runtime must get exactly one JSON
object on stdout (a result, or an error with an integer code and a string msg),
exit status 0 or 1, no traceback, no 999 (that would be a bug of ours), and no
file written outside the state directory. Quick by default; BERTH_LONG=1 runs
>= 10,000 examples per property (profiles in tests/unit/conftest.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st

from cni import skel
from cni.errors import CNIError
from cni.skel import CmdArgs, PluginFuncs
from cni.spec import SUPPORTED_VERSIONS, prev_result
from cni.state import Journal, legacy_readings, state_root

VERBS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
SPECIAL = ["", ".", "..", "../etc", "../../tmp/x", "/", "/etc/passwd", "a/b", "a\0b", "\0", "\n", "a\n", " a",
           "a:b", "x" * 16, "x" * 200, "x" * 201, "ü" * 8, "😀", "\udcff", "-a", "_a", "a" * 5000, "eth0", "c1",
           "IgnoreUnknown=1", "K8S_POD_NAME=p;IgnoreUnknown=true;X=1", "=", ";;", "a=b=c",
           # separators of the names berth derives: journals, chains, tags
           "a-b", "b-c", "a-b-c", "a:b", "-", ":", "a.b-c_d", "ab", "bc1", "c1-eth0"]

hostile_text = st.one_of(
    st.sampled_from(SPECIAL),
    st.text(max_size=40),
    st.text(alphabet="abc./-_\0\n :;=", min_size=1, max_size=30),
    st.text(min_size=190, max_size=300),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80), st.floats(),
    hostile_text,
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4),
    max_leaves=12,
)
addresses = st.sampled_from(["10.1.0.5/24", "fd00::5/64", "10.1.0.5", "300.1.1.1/24", "", "::/0"])
ip_entries = st.fixed_dictionaries(
    {"address": addresses | json_values},
    optional={"gateway": st.sampled_from(["10.1.0.1", "fd00::1", "x"]) | json_values,
              "interface": st.integers(min_value=-2, max_value=5) | json_values,
              "version": st.sampled_from(["4", "6", "5"]) | json_values},
)
results = st.fixed_dictionaries(
    {},
    optional={
        "cniVersion": st.sampled_from(SUPPORTED_VERSIONS) | json_values,
        "ips": st.lists(ip_entries, max_size=3) | json_values,
        "interfaces": st.lists(st.fixed_dictionaries({"name": hostile_text | json_values}), max_size=3) | json_values,
        "routes": st.lists(st.fixed_dictionaries({"dst": addresses | json_values}), max_size=3) | json_values,
        "dns": json_values,
    },
)
configs = st.fixed_dictionaries(
    {},
    optional={
        "cniVersion": st.sampled_from(SUPPORTED_VERSIONS) | json_values,
        "name": st.sampled_from(["net1", "a.b-c_d"]) | hostile_text | json_values,
        "type": st.just("fake") | json_values,
        "prevResult": results | json_values,
        "ipam": json_values,
        "runtimeConfig": json_values,
    },
).flatmap(lambda base: st.dictionaries(hostile_text, json_values, max_size=3).map(lambda extra: {**extra, **base}))

GOOD_ENV = {"CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
GOOD_CONF = {"cniVersion": "1.1.0", "name": "net1", "type": "fake"}
RESULT = {"cniVersion": "1.1.0", "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1"}]}


def make_funcs() -> PluginFuncs:
    """A plugin that uses what real ones use: prevResult and the journal."""

    def handler(args: CmdArgs) -> dict[str, Any] | None:
        prev_result(args.config)
        root = state_root(args.environ)
        if args.container_id and args.ifname:
            journal = Journal(root, args.network, args.container_id, args.ifname)
            real_root = os.path.realpath(root)
            assert os.path.realpath(journal.path).startswith(real_root + os.sep), journal.path
            if args.command == "ADD":
                journal.put("fake", {"ok": True})
            elif args.command == "DEL":
                journal.drop("fake")
        return RESULT if args.command == "ADD" else None

    return PluginFuncs(name="fake", add=handler, delete=handler, check=handler, gc=handler, status=handler,
                       known_args=frozenset({"K8S_POD_NAME", "IP"}))


FUNCS = make_funcs()


def drive(root: Path, environ: dict[str, str], stdin: bytes) -> None:
    state = root / "state"
    environ = {**environ, "BERTH_STATE_DIR": str(state)}
    out, err = io.StringIO(), io.StringIO()
    before = set(os.listdir(root))
    rc = skel.run(FUNCS, environ, io.BytesIO(stdin), out, err)
    stdout, stderr = out.getvalue(), err.getvalue()
    assert rc in (0, 1), rc
    assert "Traceback" not in stdout and "Traceback" not in stderr
    assert set(os.listdir(root)) <= before | {"state"}, "wrote outside the state dir"
    command = environ.get("CNI_COMMAND")
    if not command:
        assert rc == 0 and stdout == ""
        return
    if rc == 0 and (command not in ("ADD", "VERSION")):
        assert stdout == ""
        return
    lines = stdout.splitlines()
    assert len(lines) == 1 and stdout.endswith("\n"), stdout
    body = json.loads(lines[0])
    assert isinstance(body, dict)
    if rc == 1:
        assert type(body["code"]) is int and isinstance(body["msg"], str), body
        assert body["code"] != 999, body  # a crash of the core, not a verdict on the input
        assert body["cniVersion"] in SUPPORTED_VERSIONS
        assert set(body) <= {"cniVersion", "code", "msg", "details"}
        assert stderr.count("\n") == 1
    else:
        assert isinstance(body["cniVersion"], str)


def env_with(**changes: str | None) -> dict[str, str]:
    env = {**GOOD_ENV, "CNI_COMMAND": "ADD"}
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


maybe_text = st.none() | hostile_text


@given(command=st.sampled_from(VERBS) | hostile_text, cid=maybe_text, netns=maybe_text, ifname=maybe_text,
       path=maybe_text, cni_args=maybe_text)
def test_hostile_env(tmp_path: Path, command: str, cid: str | None, netns: str | None, ifname: str | None,
                     path: str | None, cni_args: str | None) -> None:
    env = env_with(CNI_COMMAND=command, CNI_CONTAINERID=cid, CNI_NETNS=netns, CNI_IFNAME=ifname,
                   CNI_PATH=path, CNI_ARGS=cni_args)
    drive(tmp_path, env, json.dumps(GOOD_CONF).encode())


@given(command=st.sampled_from(VERBS), config=configs)
def test_hostile_config(tmp_path: Path, command: str, config: dict[str, Any]) -> None:
    drive(tmp_path, env_with(CNI_COMMAND=command), json.dumps(config).encode())


@given(command=st.sampled_from(VERBS), data=st.binary(max_size=300) | st.sampled_from(
    [b"[" * 200_000, b'{"a":' * 100_000, b"\0" * 10, b"\xff", b'{"name": "n\xff"}', b"1" * 5000, b"1e999999",
     b'{"cniVersion": "1.1.0", "name": "net1", "cniVersion": 5}']))
def test_hostile_bytes(tmp_path: Path, command: str, data: bytes) -> None:
    drive(tmp_path, env_with(CNI_COMMAND=command), data)


@given(version=st.sampled_from(SUPPORTED_VERSIONS), prev=results, cid=hostile_text, name=hostile_text)
def test_hostile_chain(tmp_path: Path, version: str, prev: dict[str, Any], cid: str, name: str) -> None:
    conf = {**GOOD_CONF, "cniVersion": version, "name": name, "prevResult": prev}
    for command in ("ADD", "CHECK", "DEL"):
        drive(tmp_path, env_with(CNI_COMMAND=command, CNI_CONTAINERID=cid), json.dumps(conf).encode())


def test_valid_input_succeeds(tmp_path: Path) -> None:
    """The properties above hold for valid input too: success, and the journal lands in the state dir."""
    drive(tmp_path, env_with(), json.dumps(GOOD_CONF).encode())
    assert (tmp_path / "state" / "net1" / "c1:eth0.json").exists()


# --- names: one attachment, one journal -----------------------------------------------

# few letters and many separators, so that pairs whose older names collide come up often
_TAIL = st.lists(st.sampled_from(["a", "b", "c", "1", "-", "-", ".", "_"]), max_size=5).map("".join)
IDS = st.builds(str.__add__, st.sampled_from(["a", "b", "c1"]), _TAIL)
IFNAMES = st.builds(str.__add__, st.sampled_from(["a", "b", "c", "-", "eth0", "é"]), _TAIL).filter(
    lambda n: len(n.encode()) <= skel.MAX_IFNAME_LENGTH)
ATTACHMENTS = st.tuples(IDS, IFNAMES)


def _valid(cid: str, ifname: str) -> bool:
    try:
        skel.validate_container_id(cid)
        skel.validate_ifname(ifname)
    except CNIError:
        return False
    return True


@given(first=ATTACHMENTS, second=ATTACHMENTS | ATTACHMENTS.map(lambda a: _other_reading(*a)))
def test_journal_names_are_injective(first: tuple[str, str], second: tuple[str, str]) -> None:
    """Two attachments never share a journal: not by the new name, and a journal
    with the older name (<id>-<ifname>.json, shared by ("a", "b-c") and ("a-b", "c"))
    is only ever its own attachment's."""
    assume(_valid(*first) and _valid(*second))
    with tempfile.TemporaryDirectory() as root:
        a, b = Journal(root, "n", *first), Journal(root, "n", *second)
        assert (a.path == b.path) == (first == second)
        a.put("x", {"who": list(first)})
        old = os.path.join(root, "n", f"{first[0]}-{first[1]}.json")
        os.rename(a.path, old)
        owner, other = Journal(root, "n", *first), Journal(root, "n", *second)
        assert owner.path == old and owner.section("x") == {"who": list(first)}
        if first != second:
            assert other.path != old and other.section("x") is None


def _other_reading(cid: str, ifname: str) -> tuple[str, str]:
    """Another attachment with the same older journal name, when there is one."""
    readings = [r for r in legacy_readings(f"{cid}-{ifname}") if r != (cid, ifname)]
    return readings[0] if readings else (cid, ifname)


# --- special files wherever a path is an option -------------------------------------------

SPECIAL_KINDS = ("fifo", "symlink", "dangling", "dir", "socket", "file", "/dev/null", "/proc", "/proc/self/comm",
                 "missing/below")


@contextlib.contextmanager
def special_files() -> Iterator[dict[str, str]]:
    """One of each kind in a fresh directory (and a few of the system's, never written)."""
    with tempfile.TemporaryDirectory() as base:
        made = {kind: os.path.join(base, kind.replace("/", "-")) for kind in SPECIAL_KINDS[:6]}
        os.mkfifo(made["fifo"])
        with open(os.path.join(base, "target"), "w"):
            pass
        os.symlink(os.path.join(base, "target"), made["symlink"])
        os.symlink(os.path.join(base, "nowhere"), made["dangling"])
        os.mkdir(made["dir"])
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(made["socket"])
        with open(made["file"], "w"):
            pass
        made.update({kind: kind for kind in SPECIAL_KINDS[6:9]})
        made["missing/below"] = os.path.join(made["file"], "below")
        try:
            yield made
        finally:
            listener.close()


@contextlib.contextmanager
def no_hang(seconds: float = 20) -> Iterator[None]:
    def expired(_sig: int, _frame: object) -> None:
        raise TimeoutError("the call blocked")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@given(command=st.sampled_from(VERBS), log=st.sampled_from(SPECIAL_KINDS) | st.none(),
       conf_log=st.sampled_from(SPECIAL_KINDS) | st.none(), state=st.sampled_from(SPECIAL_KINDS) | st.none(),
       version=st.sampled_from(["1.1.0", "9.9.9"]))
def test_special_files_as_paths(command: str, log: str | None, conf_log: str | None, state: str | None,
                                version: str) -> None:
    """A FIFO, symlink, directory, socket, device or kernel file as BERTH_LOG_FILE,
    berthLogFile or BERTH_STATE_DIR: the call answers at once in CNI's format, never
    999, and writes none of them."""
    comm = Path("/proc/self/comm").read_text()
    with special_files() as made, tempfile.TemporaryDirectory() as scratch:
        env = {**env_with(CNI_COMMAND=command), "BERTH_STATE_DIR": made[state] if state else scratch}
        if log:
            env["BERTH_LOG_FILE"] = made[log]
        config: dict[str, Any] = {**GOOD_CONF, "cniVersion": version}
        if conf_log:
            config["berthLogFile"] = made[conf_log]
        out, err = io.StringIO(), io.StringIO()
        with no_hang():
            rc = skel.run(FUNCS, env, io.BytesIO(json.dumps(config).encode()), out, err)
        assert rc in (0, 1) and "Traceback" not in out.getvalue() + err.getvalue()
        if rc == 1:
            body = json.loads(out.getvalue())
            assert body["code"] != 999 and body["code"] in (1, 5), body
        base = os.path.dirname(made["fifo"])
        assert os.path.getsize(os.path.join(base, "target")) == 0  # a symlink is never followed to it
        assert not os.path.lexists(os.path.join(base, "nowhere"))
        assert stat.S_ISFIFO(os.lstat(made["fifo"]).st_mode)
        if state != "dir":
            assert os.listdir(made["dir"]) == []
    assert Path("/proc/self/comm").read_text() == comm
