"""cni.skel as a runtime sees it: env + stdin in, one JSON object + exit code out."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pytest

from cni import errors, skel
from cni.errors import CNIError
from cni.skel import CmdArgs, PluginFuncs
from cni.spec import SUPPORTED_VERSIONS

BASE_ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "ctr-1",
    "CNI_NETNS": "/run/netns/x",
    "CNI_IFNAME": "eth0",
    "CNI_PATH": "/opt/cni/bin",
}

# A result in the current (1.1.0) shape, as every handler returns it.
RESULT: dict[str, Any] = {
    "cniVersion": "1.1.0",
    "interfaces": [
        {"name": "cni0", "mac": "0a:58:0a:01:00:01"},
        {"name": "veth1", "mac": "0a:58:0a:01:00:02"},
        {"name": "eth0", "mac": "0a:58:0a:01:00:05", "sandbox": "/run/netns/x"},
    ],
    "ips": [
        {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 2},
        {"address": "fd00:1::5/64", "gateway": "fd00:1::1", "interface": 2},
    ],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "::/0"}],
    "dns": {"nameservers": ["10.1.0.1"], "domain": "cluster.local", "search": ["a.b"], "options": ["ndots:5"]},
}


class Outcome:
    def __init__(self, rc: int, out: str, err: str) -> None:
        self.rc, self.out, self.err = rc, out, err

    @property
    def json(self) -> Any:
        lines = self.out.splitlines()
        assert len(lines) == 1, f"expected one line on stdout, got {self.out!r}"
        return json.loads(lines[0])

    def error(self, code: int) -> dict[str, Any]:
        """Assert a well-formed CNI error with `code`; return its JSON."""
        assert self.rc == 1, (self.rc, self.out, self.err)
        body = self.json
        assert set(body) <= {"cniVersion", "code", "msg", "details"}
        assert body["code"] == code, body
        assert isinstance(body["msg"], str) and body["msg"]
        assert "Traceback" not in self.out and "Traceback" not in self.err
        assert self.err.startswith(f"fake: error {code}: "), self.err
        assert self.err.count("\n") == 1
        return dict(body)


def config(**fields: Any) -> bytes:
    conf: dict[str, Any] = {"cniVersion": "1.0.0", "name": "net1", "type": "fake"}
    conf.update(fields)
    return json.dumps({k: v for k, v in conf.items() if v is not None}).encode()


def fake(result: dict[str, Any] | None = None, raises: BaseException | None = None,
         known_args: frozenset[str] = frozenset({"K8S_POD_NAME"})) -> tuple[PluginFuncs, list[CmdArgs]]:
    calls: list[CmdArgs] = []

    def handler(args: CmdArgs) -> dict[str, Any] | None:
        calls.append(args)
        if raises is not None:
            raise raises
        return result if args.command == "ADD" else None

    funcs = PluginFuncs(name="fake", add=handler, delete=handler, check=handler, gc=handler, status=handler,
                        known_args=known_args)
    return funcs, calls


def call(funcs: PluginFuncs | None = None, stdin: bytes | None = None, drop: tuple[str, ...] = (),
         **env: str) -> Outcome:
    environ = {k: v for k, v in {**BASE_ENV, **env}.items() if k not in drop}
    out, err = io.StringIO(), io.StringIO()
    rc = skel.run(funcs or fake(RESULT)[0], environ, io.BytesIO(config() if stdin is None else stdin), out, err)
    return Outcome(rc, out.getvalue(), err.getvalue())


# --- environment ---------------------------------------------------------------------------------


def test_missing_env_reported_together() -> None:
    funcs, calls = fake(RESULT)
    body = call(funcs, drop=("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH")).error(errors.INVALID_ENV)
    for var in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"):
        assert var in body["msg"]
    assert not calls


@pytest.mark.parametrize("command,needed", [
    ("DEL", {"CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"}),
    ("CHECK", {"CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"}),
    ("GC", {"CNI_PATH"}),
])
def test_required_env_per_verb(command: str, needed: set[str]) -> None:
    body = call(stdin=config(cniVersion="1.1.0"), CNI_COMMAND=command,
                drop=tuple(BASE_ENV.keys() - {"CNI_COMMAND"})).error(errors.INVALID_ENV)
    named = {v for v in BASE_ENV if v in body["msg"]}
    assert named == needed


def test_del_without_netns_is_fine() -> None:
    funcs, calls = fake()
    assert call(funcs, CNI_COMMAND="DEL", drop=("CNI_NETNS",)).rc == 0
    assert calls and calls[0].netns == ""


def test_status_needs_no_env() -> None:
    funcs, calls = fake()
    res = call(funcs, stdin=config(cniVersion="1.1.0"), CNI_COMMAND="STATUS",
               drop=tuple(BASE_ENV.keys() - {"CNI_COMMAND"}))
    assert (res.rc, res.out) == (0, "")
    assert calls[0].command == "STATUS"


@pytest.mark.parametrize("command", ["FOO", "add", "VERSIONS", "ADD\n", "\0"])
def test_unknown_command(command: str) -> None:
    call(CNI_COMMAND=command).error(errors.INVALID_ENV)


@pytest.mark.parametrize("cid", ["../etc", "a/b", "-lead", ".x", "a b", "ünï", "a\0b", "x" * 201, "abc\n", " "])
def test_invalid_container_id(cid: str) -> None:
    funcs, calls = fake(RESULT)
    call(funcs, CNI_CONTAINERID=cid).error(errors.INVALID_ENV)
    assert not calls


def test_empty_container_id_is_missing() -> None:
    body = call(CNI_CONTAINERID="").error(errors.INVALID_ENV)
    assert "CNI_CONTAINERID" in body["msg"]


@pytest.mark.parametrize("cid", ["a", "x" * 200, "k8s_pod-1.2_x", "default-0123abcd"])
def test_valid_container_id(cid: str) -> None:
    assert call(CNI_CONTAINERID=cid).rc == 0


@pytest.mark.parametrize("ifname", ["x" * 16, ".", "..", "a/b", "a:b", "a b", "a\tb", "\n", "eth0\n", "a\0b",
                                    "é" * 8])
def test_invalid_ifname(ifname: str) -> None:
    funcs, calls = fake(RESULT)
    call(funcs, CNI_IFNAME=ifname).error(errors.INVALID_ENV)
    assert not calls


@pytest.mark.parametrize("ifname", ["x" * 15, "eth0", "net1.100", "é" * 7])
def test_valid_ifname(ifname: str) -> None:
    assert call(CNI_IFNAME=ifname).rc == 0


@pytest.mark.parametrize("netns", ["run/netns/x", "x", "./x", "/run/\0x"])
def test_netns_not_absolute(netns: str) -> None:
    call(CNI_NETNS=netns).error(errors.INVALID_NETNS)


@pytest.mark.parametrize("raw", ["novalue", "=v", "a=b;;c", "K8S_POD_NAME", "bad key=1", "a=b;=c"])
def test_cni_args_bad_pairs(raw: str) -> None:
    call(CNI_ARGS=raw).error(errors.INVALID_ENV)


def test_cni_args_unknown_key_fails() -> None:
    body = call(CNI_ARGS="K8S_POD_NAME=p;FOO=1").error(errors.INVALID_ENV)
    assert "FOO" in body["msg"]


@pytest.mark.parametrize("flag", ["1", "true", "TRUE", "True"])
def test_cni_args_ignore_unknown(flag: str) -> None:
    funcs, calls = fake(RESULT)
    assert call(funcs, CNI_ARGS=f"IgnoreUnknown={flag};FOO=1;K8S_POD_NAME=p=q").rc == 0
    assert calls[0].args["K8S_POD_NAME"] == "p=q"
    assert calls[0].raw_args.startswith("IgnoreUnknown")


@pytest.mark.parametrize("flag", ["0", "false", ""])
def test_cni_args_ignore_unknown_off(flag: str) -> None:
    call(CNI_ARGS=f"IgnoreUnknown={flag};FOO=1").error(errors.INVALID_ENV)


def test_cni_args_ignore_unknown_garbage() -> None:
    call(CNI_ARGS="IgnoreUnknown=maybe").error(errors.INVALID_ENV)


def test_cmdargs_fields() -> None:
    funcs, calls = fake(RESULT)
    call(funcs, CNI_PATH="/a:/b::/c", CNI_ARGS="K8S_POD_NAME=p")
    args = calls[0]
    assert args.path == ["/a", "/b", "/c"]
    assert (args.command, args.container_id, args.netns, args.ifname) == ("ADD", "ctr-1", "/run/netns/x", "eth0")
    assert args.network == "net1" and args.version == "1.0.0" and args.config["type"] == "fake"
    assert args.stdin == config() and args.environ["CNI_PATH"] == "/a:/b::/c"


# --- stdin ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"{", b"{'a': 1}", b"\xff\xfe{}", b'{"name": "\xc3"}', b"{}\0",
                                  b"\0", b"[" * 100_000, b'{"a": ' * 50_000])
def test_malformed_stdin(data: bytes) -> None:
    funcs, calls = fake(RESULT)
    call(funcs, stdin=data).error(errors.DECODE_FAILURE)
    assert not calls


@pytest.mark.parametrize("data", [b"[]", b"1", b'"x"', b"null", b"true"])
def test_non_object_config(data: bytes) -> None:
    call(stdin=data).error(errors.DECODE_FAILURE)


def test_stdin_too_large() -> None:
    big = config(pad="x" * (skel.MAX_STDIN_BYTES + 1))
    call(stdin=big).error(errors.DECODE_FAILURE)


def test_stdin_at_limit_is_read() -> None:
    base = config(pad="")
    data = config(pad="x" * (skel.MAX_STDIN_BYTES - len(base)))
    assert len(data) == skel.MAX_STDIN_BYTES
    assert call(stdin=data).rc == 0


@pytest.mark.parametrize("name", [None, "", 5, ["n"], {"a": 1}, "../etc", "a/b", "a b", "-x", "n\n", "ñ",
                                  "x" * 129])
def test_bad_network_name(name: Any) -> None:
    conf = json.loads(config())
    if name is None:
        del conf["name"]
    else:
        conf["name"] = name
    call(stdin=json.dumps(conf).encode()).error(errors.INVALID_NETWORK_CONFIG)


def test_type_must_be_string() -> None:
    call(stdin=config(type=7)).error(errors.INVALID_NETWORK_CONFIG)


def test_missing_version_is_0_1_0() -> None:
    conf = json.loads(config())
    del conf["cniVersion"]
    body = call(stdin=json.dumps(conf).encode()).error(errors.INCOMPATIBLE_VERSION)
    assert body["msg"] == "incompatible CNI versions"
    assert "0.1.0" in body["details"]


@pytest.mark.parametrize("version", ["9.9.9", "0.2.0", "1.0", "", 1, None, ["1.0.0"], "1.0.0 "])
def test_unknown_version(version: Any) -> None:
    body = call(stdin=json.dumps({"cniVersion": version, "name": "n", "type": "t"}).encode()).error(
        errors.INCOMPATIBLE_VERSION)
    assert body["cniVersion"] == "1.1.0"  # not parseable as ours: report in the current version


@pytest.mark.parametrize("command,version", [
    ("CHECK", "0.3.0"), ("CHECK", "0.3.1"), ("GC", "1.0.0"), ("STATUS", "1.0.0"), ("GC", "0.4.0"),
])
def test_verb_too_new_for_version(command: str, version: str) -> None:
    funcs, calls = fake()
    body = call(funcs, stdin=config(cniVersion=version), CNI_COMMAND=command).error(errors.INCOMPATIBLE_VERSION)
    assert body["cniVersion"] == version
    assert not calls


@pytest.mark.parametrize("command,version", [("CHECK", "0.4.0"), ("CHECK", "1.0.0"), ("GC", "1.1.0"),
                                             ("STATUS", "1.1.0")])
def test_verb_allowed(command: str, version: str) -> None:
    funcs, calls = fake()
    res = call(funcs, stdin=config(cniVersion=version), CNI_COMMAND=command)
    assert (res.rc, res.out) == (0, "")
    assert calls[0].command == command


# --- handler outcomes ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_error_json_uses_config_version(version: str) -> None:
    funcs, _ = fake(raises=CNIError(errors.TRY_AGAIN_LATER, "busy", "lock"))
    stdin = config(cniVersion=version)
    body = call(funcs, stdin=stdin, CNI_COMMAND="DEL").error(errors.TRY_AGAIN_LATER)
    assert body == {"cniVersion": version, "code": 11, "msg": "busy", "details": "lock"}


def test_handler_cnierror_passes_through() -> None:
    funcs, _ = fake(raises=CNIError(123, "port taken", "by ctr-2"))
    res = call(funcs)
    body = res.error(123)
    assert body == {"cniVersion": "1.0.0", "code": 123, "msg": "port taken", "details": "by ctr-2"}
    assert res.err == "fake: error 123: port taken (by ctr-2)\n"


def test_cnierror_without_details() -> None:
    funcs, _ = fake(raises=CNIError(7, "bad"))
    assert "details" not in call(funcs).error(7)


@pytest.mark.parametrize("exc", [KeyError("x"), ValueError("boom"), ZeroDivisionError(), RecursionError(),
                                 OSError(13, "denied")])
def test_handler_crash_is_999_without_traceback(exc: Exception) -> None:
    funcs, _ = fake(raises=exc)
    body = call(funcs).error(errors.INTERNAL)
    assert type(exc).__name__ in body["msg"]


def test_handler_crash_traceback_only_with_debug() -> None:
    funcs, _ = fake(raises=ValueError("boom"))
    res = call(funcs, BERTH_DEBUG="1")
    assert res.rc == 1 and res.json["code"] == errors.INTERNAL
    assert "Traceback" in res.err and "Traceback" not in res.out


def test_unimplemented_verb() -> None:
    funcs = PluginFuncs(name="fake", add=lambda a: RESULT)
    call(funcs, CNI_COMMAND="DEL").error(errors.NOT_IMPLEMENTED)


def test_del_check_print_nothing() -> None:
    for command in ("DEL", "CHECK"):
        funcs, _ = fake(RESULT)
        res = call(funcs, CNI_COMMAND=command)
        assert (res.rc, res.out, res.err) == (0, "", "")


@pytest.mark.parametrize("bad", [["x"], "x", 5])
def test_handler_returning_non_object(bad: Any) -> None:
    funcs, _ = fake(bad)
    res = call(funcs)
    assert res.rc == 1 and isinstance(res.json["code"], int)


# --- results in every version --------------------------------------------------------------------


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_add_result_in_config_version(version: str) -> None:
    funcs, _ = fake(RESULT)
    res = call(funcs, stdin=config(cniVersion=version))
    assert res.rc == 0 and res.err == ""
    out = res.json
    assert out["cniVersion"] == version
    old = version.startswith("0.")
    assert [ip.get("version") for ip in out["ips"]] == (["4", "6"] if old else [None, None])
    assert [ip["address"] for ip in out["ips"]] == ["10.1.0.5/24", "fd00:1::5/64"]
    assert [ip["gateway"] for ip in out["ips"]] == ["10.1.0.1", "fd00:1::1"]
    assert out["interfaces"] == RESULT["interfaces"]
    assert out["routes"] == RESULT["routes"] and out["dns"] == RESULT["dns"]
    assert RESULT["ips"][0] == {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 2}  # not mutated


# --- VERSION and about ---------------------------------------------------------------------------


def test_version_output() -> None:
    funcs, calls = fake()
    res = call(funcs, stdin=b"garbage", drop=tuple(BASE_ENV.keys() - {"CNI_COMMAND"}), CNI_COMMAND="VERSION")
    assert res.rc == 0 and res.err == ""
    assert res.json == {"cniVersion": "1.1.0", "supportedVersions": list(SUPPORTED_VERSIONS)}
    assert not calls


@pytest.mark.parametrize("env", [{}, {"CNI_COMMAND": ""}])
def test_about_without_command(env: dict[str, str]) -> None:
    funcs, calls = fake()
    out, err = io.StringIO(), io.StringIO()
    rc = skel.run(funcs, env, io.BytesIO(b""), out, err)
    assert rc == 0 and out.getvalue() == ""
    assert "fake" in err.getvalue() and "1.1.0" in err.getvalue() and "0.3.0" in err.getvalue()
    assert not calls


def test_log_file(tmp_path: Any) -> None:
    log = tmp_path / "log"
    call(BERTH_LOG_FILE=str(log))
    funcs, _ = fake(raises=CNIError(11, "busy"))
    call(funcs, BERTH_LOG_FILE=str(log))
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["outcome"] for line in lines] == ["ok", "error 11"]
    assert lines[0]["network"] == "net1" and lines[0]["verb"] == "ADD"


def test_cmdargs_and_pluginfuncs_api() -> None:
    handler: Callable[[CmdArgs], None] = lambda a: None  # noqa: E731
    funcs = PluginFuncs(name="p", delete=handler)
    assert funcs.handler("DEL") is handler and funcs.handler("ADD") is None and funcs.handler("X") is None
    assert funcs.known_args == frozenset()
    args = CmdArgs(command="ADD", container_id="c", netns="", ifname="eth0", args={}, raw_args="", path=[],
                   stdin=b"", config={"name": "n"}, version="1.0.0")
    assert args.network == "n" and dict(args.environ) == {}


# --- the multi-call entry point (a real process: what a runtime execs) -----------------------------

_PROBE = """
import sys
import cni.main
rc = cni.main.main(sys.argv[1:])
heavy = sorted(m for m in ("json", "re", "typing", "dataclasses", "inspect", "subprocess", "ipaddress")
               if m in sys.modules)
sys.stderr.write("HEAVY=" + ",".join(heavy) + "\\n")
sys.exit(rc)
"""


def _entry(argv0: str, env: dict[str, str], stdin: bytes = b"") -> tuple[int, str, str]:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _PROBE, argv0], input=stdin, env={**env, "PYTHONSAFEPATH": "1"},
                          capture_output=True, timeout=30, check=False)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def test_entry_version_is_light() -> None:
    rc, out, err = _entry("/opt/cni/bin/bridge", {"CNI_COMMAND": "VERSION"})
    assert rc == 0 and json.loads(out) == {"cniVersion": "1.1.0", "supportedVersions": list(SUPPORTED_VERSIONS)}
    assert "HEAVY=\n" in err  # VERSION imports none of the costly modules


def test_entry_about() -> None:
    rc, out, err = _entry("berth-portmap", {})
    assert rc == 0 and out == "" and "berth-portmap" in err


def test_entry_unloadable_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    import cni.main

    monkeypatch.setitem(cni.main.PLUGINS, "berth-bridge", "no_such_module_xyz:FUNCS")
    funcs = None
    try:
        funcs = cni.main.plugin_funcs("berth-bridge")
    except ImportError as exc:
        funcs = cni.main._unloadable("berth-bridge", str(exc))
    assert funcs is not None
    out, err = io.StringIO(), io.StringIO()
    rc = skel.run(funcs, {**BASE_ENV}, io.BytesIO(config()), out, err)
    body = json.loads(out.getvalue())
    assert rc == 1 and body["code"] == errors.INTERNAL and "cannot load plugin berth-bridge" in body["msg"]
    assert "no_such_module_xyz" in body["details"]


def test_one_interface_name_rule_in_bytes_for_every_name() -> None:
    """CNI_IFNAME, a bridge name and a portmap -i condition follow one rule:
    15 bytes as the kernel counts them (a 15-character name of 2-byte letters is too long)."""
    from cni import bridge_conf, skel
    from portmap import conf as pmconf

    wide = "é" * 8  # 8 characters, 16 bytes
    assert skel.ifname_problem("eth0") is None and skel.ifname_problem("é" * 7) is None
    assert skel.ifname_problem(wide) is not None
    with pytest.raises(CNIError):
        skel.validate_ifname(wide)
    base = {"cniVersion": "1.0.0", "name": "n", "type": "berth-bridge"}
    with pytest.raises(CNIError):
        bridge_conf.parse({**base, "bridge": wide}, {})
    with pytest.raises(CNIError):
        pmconf.parse_conditions({"conditionsV4": ["-i", wide]}, "conditionsV4", 4)
    assert pmconf.parse_conditions({"conditionsV4": ["-i", "br.10"]}, "conditionsV4", 4)
