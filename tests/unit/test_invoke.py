"""Delegation: finding plugins on CNI_PATH, exec'ing them, and in-process calls for our own."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from cni import errors, invoke
from cni.errors import CNIError
from cni.skel import CmdArgs, PluginFuncs

CONF = {"cniVersion": "0.3.1", "name": "net1", "type": "outer", "ipam": {"type": "fake-ipam"}}
OLD_RESULT = {"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.1.0.5/24", "gateway": "10.1.0.1"}],
              "routes": [{"dst": "0.0.0.0/0"}], "dns": {"nameservers": ["10.1.0.1"]}}


def make_args(path: list[str], **env: str) -> CmdArgs:
    environ = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
               "CNI_PATH": os.pathsep.join(path), **env}
    return CmdArgs(command="ADD", container_id="c1", netns="/run/netns/x", ifname="eth0", args={}, raw_args="",
                   path=path, stdin=json.dumps(CONF).encode(), config=dict(CONF), version="0.3.1", environ=environ)


def script(directory: Path, name: str, body: str, mode: int = 0o755) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(mode)
    return path


def raises(code: int, fn: Any, *a: Any) -> CNIError:
    with pytest.raises(CNIError) as info:
        fn(*a)
    assert info.value.code == code, info.value
    return info.value


# --- find_plugin ---------------------------------------------------------------------------------


def test_find_plugin_first_match(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    script(a, "p", "exit 0", mode=0o644)  # not executable: skipped
    want = script(b, "p", "exit 0")
    script(tmp_path, "p", "exit 0")
    assert invoke.find_plugin("p", [str(a), str(b), str(tmp_path)]) == str(want)


def test_find_plugin_not_found_lists_path(tmp_path: Path) -> None:
    (tmp_path / "dir-not-file").mkdir()
    err = raises(errors.INVALID_NETWORK_CONFIG, invoke.find_plugin, "dir-not-file", [str(tmp_path), "/nonexistent"])
    assert "dir-not-file" in err.msg and str(tmp_path) in err.msg and "/nonexistent" in err.msg
    raises(errors.INVALID_NETWORK_CONFIG, invoke.find_plugin, "p", [])


@pytest.mark.parametrize("bad", ["../bin/sh", "/bin/sh", "a/b", "", ".", "..", "p\0", 5, None])
def test_find_plugin_rejects_paths(bad: Any, tmp_path: Path) -> None:
    raises(errors.INVALID_NETWORK_CONFIG, invoke.find_plugin, bad, ["/usr/bin", str(tmp_path)])


# --- exec ----------------------------------------------------------------------------------------


def test_exec_result_parsed_and_converted(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    script(tmp_path, "fake-ipam", f"cat > {seen}.stdin; echo \"$CNI_COMMAND $CNI_IFNAME $PWD\" > {seen}.env\n"
                                  f"echo '{json.dumps(OLD_RESULT)}'")
    result = invoke.delegate("fake-ipam", "ADD", make_args([str(tmp_path)]), stdin=b'{"x": 1}')
    assert result is not None and result["cniVersion"] == "1.1.0"
    assert result["ips"] == [{"address": "10.1.0.5/24", "gateway": "10.1.0.1"}]
    assert result["dns"] == OLD_RESULT["dns"] and result["routes"] == OLD_RESULT["routes"]
    assert Path(f"{seen}.stdin").read_bytes() == b'{"x": 1}'
    assert Path(f"{seen}.env").read_text() == "ADD eth0 /\n"  # cwd is /, not the caller's


def test_exec_default_stdin_and_del(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    script(tmp_path, "fake-ipam", f"cat > {seen}; echo \"$CNI_COMMAND\" >> {seen}")
    args = make_args([str(tmp_path)])
    assert invoke.delegate("fake-ipam", "DEL", args) is None
    assert seen.read_bytes() == args.stdin + b"DEL\n"


def test_exec_error_json_reraised(tmp_path: Path) -> None:
    body = {"cniVersion": "0.3.1", "code": 101, "msg": "no free addresses", "details": "range 10.1.0.0/24"}
    script(tmp_path, "fake-ipam", f"echo '{json.dumps(body)}'; echo noise >&2; exit 1")
    err = raises(101, invoke.delegate, "fake-ipam", "ADD", make_args([str(tmp_path)]))
    assert (err.msg, err.details) == ("no free addresses", "range 10.1.0.0/24")


@pytest.mark.parametrize("out", ["garbage", "", '{"code": "7", "msg": "x"}', '{"code": 0}', '[1]',
                                 '{"code": true}'])
def test_exec_failure_without_error_json_is_999(tmp_path: Path, out: str) -> None:
    script(tmp_path, "fake-ipam", f"printf '%s' '{out}'; echo on-stderr >&2; exit 3")
    err = raises(errors.INTERNAL, invoke.delegate, "fake-ipam", "ADD", make_args([str(tmp_path)]))
    assert (out or "on-stderr") in err.details


@pytest.mark.parametrize("out", ["garbage", "[]", '"x"', "{" * 5000])
def test_exec_garbage_result_is_a_decode_failure(tmp_path: Path, out: str) -> None:
    script(tmp_path, "fake-ipam", f"printf '%s' '{out}'")
    raises(errors.DECODE_FAILURE, invoke.delegate, "fake-ipam", "ADD", make_args([str(tmp_path)]))


def test_exec_unknown_result_version(tmp_path: Path) -> None:
    script(tmp_path, "fake-ipam", "echo '{\"cniVersion\": \"0.2.0\", \"ip4\": {}}'")
    raises(errors.INCOMPATIBLE_VERSION, invoke.delegate, "fake-ipam", "ADD", make_args([str(tmp_path)]))


def test_exec_not_executable_format(tmp_path: Path) -> None:
    bad = tmp_path / "fake-ipam"
    bad.write_bytes(b"\x7fELF-not-really")
    bad.chmod(0o755)
    raises(errors.IO_FAILURE, invoke.delegate, "fake-ipam", "ADD", make_args([str(tmp_path)]))


def test_exec_timeout_kills_the_whole_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(invoke, "EXEC_TIMEOUT_SECONDS", 0.5)
    # the forked sleep keeps stdout open: only killing the group ends the wait
    script(tmp_path, "fake-ipam", "sleep 30 & sleep 30; echo late")
    started = time.monotonic()
    raises(errors.TRY_AGAIN_LATER, invoke.delegate, "fake-ipam", "ADD", make_args([str(tmp_path)]))
    assert time.monotonic() - started < 5


# --- in-process ----------------------------------------------------------------------------------


def own(monkeypatch: pytest.MonkeyPatch, resolver: Any, self_path: str | None = None) -> None:
    """Register berth's own plugins as the entry point does, undone after the test."""
    monkeypatch.setattr(invoke, "_resolver", None)
    monkeypatch.setattr(invoke, "_self_path", None)
    invoke.register_own(resolver, self_path)


def test_without_registration_nothing_runs_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """invoke knows berth's own plugins only from its entry point: unregistered, it execs."""
    monkeypatch.setattr(invoke, "_resolver", None)
    script(tmp_path, "berth-host-local", "echo '{\"cniVersion\": \"1.1.0\", \"ips\": []}'")
    assert invoke.delegate("berth-host-local", "ADD", make_args([str(tmp_path)])) == {"cniVersion": "1.1.0", "ips": []}


def test_own_plugin_runs_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[CmdArgs] = []

    def add(args: CmdArgs) -> dict[str, Any]:
        calls.append(args)
        return {"cniVersion": "1.1.0", "ips": [{"address": "10.1.0.7/24"}]}

    fake = PluginFuncs(name="berth-host-local", add=add, delete=add)
    own(monkeypatch, lambda name: fake if name == "berth-host-local" else None)
    args = make_args([str(tmp_path)])  # nothing on CNI_PATH: an exec would fail
    result = invoke.delegate("berth-host-local", "ADD", args, stdin=json.dumps({**CONF, "name": "inner"}).encode())
    assert result == {"cniVersion": "1.1.0", "ips": [{"address": "10.1.0.7/24"}]}
    assert calls[0].command == "ADD" and calls[0].network == "inner" and calls[0].version == "0.3.1"
    assert invoke.delegate("berth-host-local", "DEL", args) is None
    assert calls[1].command == "DEL" and args.environ["CNI_COMMAND"] == "ADD"  # caller's env untouched


def test_own_plugin_errors_keep_their_code(monkeypatch: pytest.MonkeyPatch) -> None:
    def add(args: CmdArgs) -> None:
        raise CNIError(errors.ADDRESS_EXHAUSTED, "full")

    own(monkeypatch, lambda name: PluginFuncs(name=name, add=add))
    raises(errors.ADDRESS_EXHAUSTED, invoke.delegate, "berth-host-local", "ADD", make_args(["/nonexistent"]))


def test_self_link_on_path_runs_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = script(tmp_path, "berth", "echo should-not-exec; exit 1")
    (tmp_path / "host-local").symlink_to(target)
    fake = PluginFuncs(name="berth-host-local", add=lambda a: {"cniVersion": "1.1.0", "ips": []})
    own(monkeypatch, lambda name: fake if name == "host-local" else None, str(target))
    assert invoke.delegate("host-local", "ADD", make_args([str(tmp_path)])) == {"cniVersion": "1.1.0", "ips": []}


@pytest.mark.parametrize("ipam_type", ["berth", "berth-bridge", "berth-portmap", "bridge", "portmap", "my-ipam"])
def test_berths_own_non_ipam_names_are_no_ipam_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   ipam_type: str) -> None:
    """The CLI, the bridge or portmap as IPAM (by name, or a link on CNI_PATH to this
    executable): error 7, never an exec of the CLI nor a bridge calling itself."""
    target = script(tmp_path, "berth", "echo usage: berth COMMAND >&2; exit 2")
    for name in ("bridge", "portmap", "my-ipam", "berth-bridge", "berth-portmap"):
        (tmp_path / name).symlink_to(target)
    from cni import main

    own(monkeypatch, main.plugin_funcs, str(target))
    err = raises(errors.INVALID_NETWORK_CONFIG, invoke.delegate, ipam_type, "ADD", make_args([str(tmp_path)]))
    assert "invalid IPAM type" in err.msg


def test_bridge_config_refuses_berths_non_ipam_names() -> None:
    from cni import bridge_conf

    for ipam_type in ("berth", "berth-bridge", "berth-portmap"):
        config = {"cniVersion": "1.0.0", "name": "n", "type": "berth-bridge", "ipam": {"type": ipam_type}}
        raises(errors.INVALID_NETWORK_CONFIG, bridge_conf.parse, config, {})
