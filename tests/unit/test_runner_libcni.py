"""The cnitool-compatible runner (`berth add|del|check|gc|status`), no root needed.

Plugins are fake executables that log their env and stdin and print a result,
so the tests see exactly what libcni semantics would hand each plugin.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from cni import cli
from cni.errors import CNIError
from cni.runner import cache, cnitool, conflist

FAKE_PLUGIN = r'''#!/usr/bin/python3
import json, os, sys
data = sys.stdin.read()
conf = json.loads(data) if data else {}
me = os.path.basename(sys.argv[0])
env = {k: v for k, v in os.environ.items() if k.startswith("CNI_")}
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({"plugin": me, "env": env, "conf": conf}) + "\n")
fail = os.environ.get("FAKE_FAIL", "")
if fail == me + ":" + env.get("CNI_COMMAND", ""):
    print(json.dumps({"cniVersion": conf.get("cniVersion"), "code": 107, "msg": "boom", "details": "on purpose"}))
    sys.exit(1)
if env.get("CNI_COMMAND") == "ADD":
    prev = conf.get("prevResult") or {"cniVersion": conf["cniVersion"], "interfaces": [], "ips": []}
    result = dict(prev, cniVersion=conf["cniVersion"])
    result["interfaces"] = list(prev.get("interfaces", [])) + [{"name": me}]
    if me == "fake-ipam":
        result["ips"] = [{"address": "10.9.0.5/24", "gateway": "10.9.0.1", "interface": 0}]
    print(json.dumps(result))
'''


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Any]:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    for name in ("fake-ipam", "fake-meta", "fake-ports"):
        exe = plugins / name
        exe.write_text(FAKE_PLUGIN)
        exe.chmod(0o755)
    netd = tmp_path / "net.d"
    netd.mkdir()
    log = tmp_path / "log.jsonl"
    env = {
        "PATH": "/usr/bin:/bin", "NETCONFPATH": str(netd), "CNI_PATH": f"/nonexistent:{plugins}",
        "BERTH_CACHE_DIR": str(tmp_path / "cache"), "FAKE_LOG": str(log),
    }
    return {"netd": netd, "env": env, "log": log, "cache": tmp_path / "cache"}


def write_list(netd: Path, name: str = "testnet", version: str = "1.1.0", fname: str = "10-test.conflist",
               **extra: Any) -> dict[str, Any]:
    conf = {
        "cniVersion": version, "name": name,
        "plugins": [
            {"type": "fake-ipam", "capabilities": {"ips": True, "mac": False}, "opt": 1},
            {"type": "fake-meta"},
            {"type": "fake-ports", "capabilities": {"portMappings": True}},
        ],
        **extra,
    }
    (netd / fname).write_text(json.dumps(conf))
    return conf


def run(world: dict[str, Any], *argv: str, **env: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = cnitool.main(argv[0], list(argv[1:]), dict(world["env"], **env), out, err)
    return rc, out.getvalue(), err.getvalue()


def calls(world: dict[str, Any]) -> list[dict[str, Any]]:
    if not world["log"].exists():
        return []
    lines = world["log"].read_text().splitlines()
    world["log"].unlink()
    return [json.loads(line) for line in lines]


# --- loading -------------------------------------------------------------------

def test_conflist_found_by_name_in_sorted_order(tmp_path: Path) -> None:
    write_list(tmp_path, name="a", fname="20-a.conflist")
    write_list(tmp_path, name="b", fname="10-b.conflist")
    (tmp_path / "05-a.conflist").write_text(json.dumps({"name": "a", "cniVersion": "0.4.0",
                                                         "plugins": [{"type": "x"}]}))
    assert conflist.load(str(tmp_path), "a").version == "0.4.0"  # 05- sorts first
    assert conflist.load(str(tmp_path), "b").name == "b"


def test_single_conf_is_wrapped_as_a_list(tmp_path: Path) -> None:
    (tmp_path / "10-one.conf").write_text(json.dumps({"cniVersion": "0.4.0", "name": "one", "type": "bridge"}))
    (tmp_path / "20-two.json").write_text(json.dumps({"cniVersion": "1.0.0", "name": "two", "type": "ptp"}))
    one = conflist.load(str(tmp_path), "one")
    assert one.plugins == [{"cniVersion": "0.4.0", "name": "one", "type": "bridge"}]
    assert json.loads(one.raw) == {"cniVersion": "0.4.0", "name": "one", "plugins": one.plugins}
    assert conflist.load(str(tmp_path), "two").plugins[0]["type"] == "ptp"


def test_conflist_wins_over_conf_of_the_same_name(tmp_path: Path) -> None:
    (tmp_path / "00-net.conf").write_text(json.dumps({"cniVersion": "0.4.0", "name": "net", "type": "one"}))
    write_list(tmp_path, name="net", fname="99-net.conflist")
    assert len(conflist.load(str(tmp_path), "net").plugins) == 3


@pytest.mark.parametrize("files,code,text", [
    ({}, 7, "no net configurations found"),
    ({"10-x.conflist": json.dumps({"name": "x", "cniVersion": "1.0.0", "plugins": [{"type": "a"}]})},
     7, 'no net configuration with name "wanted"'),
    ({"10-bad.conflist": "{not json"}, 6, "error parsing"),
    ({"10-bad.conflist": json.dumps({"name": "wanted", "plugins": []})}, 7, "no plugins"),
    ({"10-bad.conflist": json.dumps({"name": "wanted", "plugins": [{"name": "no type"}]})}, 7, "missing 'type'"),
    ({"10-bad.conflist": json.dumps({"name": "wanted", "plugins": [{"type": "a", "capabilities": {"x": 1}}]})},
     7, "capabilities"),
    ({"10-bad.conflist": json.dumps({"name": "wanted", "disableCheck": "maybe", "plugins": [{"type": "a"}]})},
     7, "disableCheck"),
])
def test_load_errors(tmp_path: Path, files: dict[str, str], code: int, text: str) -> None:
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    with pytest.raises(CNIError) as err:
        conflist.load(str(tmp_path), "wanted")
    assert err.value.code == code and text in err.value.msg


def test_missing_directory_is_no_configs(tmp_path: Path) -> None:
    with pytest.raises(CNIError, match="no net configurations found"):
        conflist.load(str(tmp_path / "nope"), "x")


def test_cni_versions_picks_the_highest_known() -> None:
    raw = json.dumps({"name": "n", "cniVersion": "0.4.0", "cniVersions": ["1.0.0", "9.9.9", "0.3.1"],
                      "plugins": [{"type": "a"}]}).encode()
    assert conflist.list_from_bytes(raw).version == "1.0.0"


def test_flags_accept_bool_and_string() -> None:
    raw = json.dumps({"name": "n", "cniVersion": "1.1.0", "disableCheck": "True", "disableGC": True,
                      "plugins": [{"type": "a"}]}).encode()
    netlist = conflist.list_from_bytes(raw)
    assert netlist.disable_check and netlist.disable_gc


# --- injection -----------------------------------------------------------------

def test_injection_name_version_prev_and_filtered_runtime_config(tmp_path: Path) -> None:
    write_list(tmp_path, name="n", version="1.0.0")
    netlist = conflist.load(str(tmp_path), "n")
    caps = {"ips": ["10.9.0.9/24"], "mac": "aa:bb:cc:dd:ee:ff", "portMappings": [{"hostPort": 80}]}
    prev = {"cniVersion": "1.0.0", "ips": []}
    first = conflist.plugin_config(netlist, netlist.plugins[0], None, caps)
    assert json.loads(first) == {
        "type": "fake-ipam", "capabilities": {"ips": True, "mac": False}, "opt": 1, "name": "n",
        "cniVersion": "1.0.0", "runtimeConfig": {"ips": ["10.9.0.9/24"]},  # mac declared false: not passed
    }
    assert b" " not in first and first.index(b'"capabilities"') < first.index(b'"cniVersion"')  # Go's Marshal
    second = json.loads(conflist.plugin_config(netlist, netlist.plugins[1], prev, caps))
    assert second["prevResult"] == prev and "runtimeConfig" not in second  # no capabilities, nothing passed
    third = json.loads(conflist.plugin_config(netlist, netlist.plugins[2], prev, caps))
    assert third["runtimeConfig"] == {"portMappings": [{"hostPort": 80}]}


def test_runtime_config_in_the_file_is_replaced_only_when_caps_match(tmp_path: Path) -> None:
    netlist = conflist.list_from_bytes(json.dumps({"name": "n", "cniVersion": "1.0.0", "plugins": [
        {"type": "a", "capabilities": {"bandwidth": True}, "runtimeConfig": {"keep": 1}}]}).encode())
    assert json.loads(conflist.plugin_config(netlist, netlist.plugins[0], None, {}))["runtimeConfig"] == {"keep": 1}
    got = json.loads(conflist.plugin_config(netlist, netlist.plugins[0], None, {"bandwidth": {"x": 1}}))
    assert got["runtimeConfig"] == {"bandwidth": {"x": 1}}


# --- cnitool's conventions --------------------------------------------------------

def test_container_id_is_cnitools_hash() -> None:
    netns = "/var/run/netns/testing"
    expected = "cnitool-" + hashlib.sha512(netns.encode()).digest()[:10].hex()
    assert cnitool.container_id_for(netns) == expected
    assert len(expected) == len("cnitool-") + 20


@pytest.mark.parametrize("raw", ["A", "A=", "=b", "A=b=c", "A=b;", "A=b;;C=d"])
def test_cni_args_rejects_what_cnitool_rejects(raw: str) -> None:
    with pytest.raises(CNIError) as err:
        cnitool.parse_cni_args(raw)
    assert err.value.code == 4


def test_cni_args_pairs() -> None:
    assert cnitool.parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=p") == [["IgnoreUnknown", "1"], ["K8S_POD_NAME", "p"]]


# --- cache format ---------------------------------------------------------------

def test_cache_entry_is_libcni_cniCacheV1(tmp_path: Path) -> None:
    att = cache.Attachment("cid", "net", "eth0", config=b'{"name":"net"}', netns="/run/netns/x",
                           cni_args=[["K", "V"]], capability_args={"ips": ["1.2.3.4/24"]},
                           result={"cniVersion": "1.0.0", "ips": []})
    cache.write(str(tmp_path), att)
    path = tmp_path / "results" / "net-cid-eth0"
    raw = json.loads(path.read_text())
    assert raw == {"kind": "cniCacheV1", "containerId": "cid", "config": base64.b64encode(b'{"name":"net"}').decode(),
                   "ifName": "eth0", "networkName": "net", "netns": "/run/netns/x", "cniArgs": [["K", "V"]],
                   "capabilityArgs": {"ips": ["1.2.3.4/24"]}, "result": {"cniVersion": "1.0.0", "ips": []}}
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "results").stat().st_mode & 0o777) == "0o700"
    assert cache.read(str(tmp_path), "net", "cid", "eth0") == att
    assert [a.container_id for a in cache.attachments(str(tmp_path), "net")] == ["cid"]
    assert cache.attachments(str(tmp_path), "other") == []


def test_cache_omits_empty_fields_and_reads_legacy(tmp_path: Path) -> None:
    cache.write(str(tmp_path), cache.Attachment("c", "n", "eth1", config=b"{}"))
    assert set(json.loads((tmp_path / "results" / "n-c-eth1").read_text())) == {
        "kind", "containerId", "config", "ifName", "networkName"}
    (tmp_path / "results" / "n-old-eth0").write_text(json.dumps({"cniVersion": "0.4.0", "ips": []}))
    legacy = cache.read(str(tmp_path), "n", "old", "eth0")
    assert legacy is not None and legacy.result == {"cniVersion": "0.4.0", "ips": []}
    (tmp_path / "results" / "n-c-eth1.tmp.123").write_bytes(cache.encode(cache.Attachment("c", "n", "eth1")))
    assert [a.container_id for a in cache.attachments(str(tmp_path))] == ["c"]  # no legacy, no half-written
    cache.remove(str(tmp_path), "n", "c", "eth1")
    cache.remove(str(tmp_path), "n", "c", "eth1")  # idempotent
    assert cache.read(str(tmp_path), "n", "c", "eth1") is None


# --- the verbs, end to end with fake plugins ---------------------------------------------

def test_add_chains_plugins_and_caches(world: dict[str, Any]) -> None:
    write_list(world["netd"])
    caps = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}], "mac": "x"}
    rc, out, err = run(world, "add", "testnet", "/run/netns/x", CAP_ARGS=json.dumps(caps),
                       CNI_ARGS="IgnoreUnknown=1", CNI_IFNAME="net1")
    assert rc == 0, err
    result = json.loads(out)
    assert [i["name"] for i in result["interfaces"]] == ["fake-ipam", "fake-meta", "fake-ports"]
    log = calls(world)
    cid = cnitool.container_id_for("/run/netns/x")
    assert [c["plugin"] for c in log] == ["fake-ipam", "fake-meta", "fake-ports"]
    for c in log:
        assert c["env"]["CNI_COMMAND"] == "ADD" and c["env"]["CNI_CONTAINERID"] == cid
        assert c["env"]["CNI_NETNS"] == "/run/netns/x" and c["env"]["CNI_IFNAME"] == "net1"
        assert c["env"]["CNI_ARGS"] == "IgnoreUnknown=1" and c["env"]["CNI_PATH"] == world["env"]["CNI_PATH"]
        assert c["conf"]["name"] == "testnet" and c["conf"]["cniVersion"] == "1.1.0"
    assert "prevResult" not in log[0]["conf"] and "runtimeConfig" not in log[0]["conf"]
    assert log[1]["conf"]["prevResult"]["ips"][0]["address"] == "10.9.0.5/24"
    assert log[2]["conf"]["runtimeConfig"] == {"portMappings": caps["portMappings"]}
    entry = cache.read(str(world["cache"]), "testnet", cid, "net1")
    assert entry is not None and entry.result == result and entry.capability_args == caps
    assert entry.cni_args == [["IgnoreUnknown", "1"]]
    assert json.loads(entry.config)["name"] == "testnet"


def test_check_and_del_use_the_cached_result_and_del_removes_it(world: dict[str, Any]) -> None:
    write_list(world["netd"])
    rc, out, _ = run(world, "add", "testnet", "/run/netns/x", CNI_CONTAINERID="abc")
    assert rc == 0
    cached = json.loads(out)
    calls(world)
    assert run(world, "check", "testnet", "/run/netns/x", CNI_CONTAINERID="abc")[0] == 0
    log = calls(world)
    assert [c["plugin"] for c in log] == ["fake-ipam", "fake-meta", "fake-ports"]
    assert all(c["conf"]["prevResult"] == cached and c["env"]["CNI_COMMAND"] == "CHECK" for c in log)
    assert run(world, "del", "testnet", "/run/netns/x", CNI_CONTAINERID="abc")[0] == 0
    log = calls(world)
    assert [c["plugin"] for c in log] == ["fake-ports", "fake-meta", "fake-ipam"]
    assert all(c["conf"]["prevResult"] == cached and c["env"]["CNI_CONTAINERID"] == "abc" for c in log)
    assert not (world["cache"] / "results" / "testnet-abc-eth0").exists()
    # a second DEL has no cached result: plugins still run, without prevResult
    assert run(world, "del", "testnet", "/run/netns/x", CNI_CONTAINERID="abc")[0] == 0
    assert all("prevResult" not in c["conf"] for c in calls(world))


def test_cached_result_is_converted_to_the_list_version(world: dict[str, Any]) -> None:
    write_list(world["netd"], version="0.4.0")
    cache.write(str(world["cache"]), cache.Attachment("c1", "testnet", "eth0", result={
        "cniVersion": "1.0.0", "ips": [{"address": "10.9.0.5/24"}]}))
    assert run(world, "del", "testnet", "/run/netns/x", CNI_CONTAINERID="c1")[0] == 0
    prev = calls(world)[0]["conf"]["prevResult"]
    assert prev["cniVersion"] == "0.4.0" and prev["ips"][0]["version"] == "4"


def test_disable_check_skips_plugins(world: dict[str, Any]) -> None:
    write_list(world["netd"], disableCheck=True)
    assert run(world, "check", "testnet", "/run/netns/x")[0] == 0
    assert calls(world) == []


def test_check_needs_0_4_0(world: dict[str, Any]) -> None:
    write_list(world["netd"], version="0.3.1")
    rc, out, _ = run(world, "check", "testnet", "/run/netns/x")
    assert rc == 1 and json.loads(out)["code"] == 1


def test_plugin_error_keeps_its_code_and_stops_the_chain(world: dict[str, Any]) -> None:
    write_list(world["netd"])
    rc, out, err = run(world, "add", "testnet", "/run/netns/x", FAKE_FAIL="fake-meta:ADD")
    assert rc == 1
    answer = json.loads(out)
    assert answer["code"] == 107 and answer["cniVersion"] == "1.1.0"
    assert "fake-meta" in answer["msg"] and "boom" in answer["msg"] and answer["details"] == "on purpose"
    assert "error 107" in err
    assert [c["plugin"] for c in calls(world)] == ["fake-ipam", "fake-meta"]
    assert not (world["cache"] / "results").exists()  # nothing cached for a failed ADD


def test_gc_passes_cached_attachments_as_valid(world: dict[str, Any]) -> None:
    write_list(world["netd"])
    for cid in ("c1", "c2"):
        assert run(world, "add", "testnet", f"/run/netns/{cid}", CNI_CONTAINERID=cid)[0] == 0
    cache.write(str(world["cache"]), cache.Attachment("other", "othernet", "eth0", result={}))
    calls(world)
    rc, _, err = run(world, "gc", "testnet", "/run/netns/whatever")
    assert rc == 0, err
    log = calls(world)
    assert [c["plugin"] for c in log] == ["fake-ipam", "fake-meta", "fake-ports"]
    for c in log:
        assert c["env"]["CNI_COMMAND"] == "GC" and c["env"]["CNI_CONTAINERID"] == "" and c["env"]["CNI_NETNS"] == ""
        assert c["conf"]["cni.dev/valid-attachments"] == [{"containerID": "c1", "ifname": "eth0"},
                                                         {"containerID": "c2", "ifname": "eth0"}]
    assert (world["cache"] / "results" / "testnet-c1-eth0").exists()


def test_gc_and_status_need_1_1_0(world: dict[str, Any]) -> None:
    write_list(world["netd"], version="1.0.0")
    assert run(world, "gc", "testnet")[0] == 0
    assert run(world, "status", "testnet")[0] == 0
    assert calls(world) == []


def test_status_stops_at_the_first_failure(world: dict[str, Any]) -> None:
    write_list(world["netd"])
    rc, out, _ = run(world, "status", "testnet", FAKE_FAIL="fake-ipam:STATUS")
    assert rc == 1 and json.loads(out)["code"] == 107
    assert [c["plugin"] for c in calls(world)] == ["fake-ipam"]
    assert run(world, "status", "testnet")[0] == 0
    assert all(c["env"]["CNI_COMMAND"] == "STATUS" for c in calls(world))


@pytest.mark.parametrize("argv,env,code", [
    (("add", "nonet", "/run/netns/x"), {}, 7),
    (("add", "testnet", "/run/netns/x"), {"CAP_ARGS": "[1]"}, 6),
    (("add", "testnet", "/run/netns/x"), {"CAP_ARGS": "{bad"}, 6),
    (("add", "testnet", "/run/netns/x"), {"CNI_ARGS": "broken"}, 4),
    (("add", "testnet", "/run/netns/x"), {"CNI_IFNAME": "x" * 16}, 4),
    (("add", "testnet", "/run/netns/x"), {"CNI_CONTAINERID": "bad id!"}, 4),
    (("add", "testnet", "/run/netns/x"), {"CNI_PATH": "/nonexistent"}, 7),
])
def test_bad_input_is_a_cni_error_and_changes_nothing(world: dict[str, Any], argv: tuple[str, ...],
                                                      env: dict[str, str], code: int) -> None:
    write_list(world["netd"])
    rc, out, _ = run(world, *argv, **env)
    assert rc == 1 and json.loads(out)["code"] == code
    assert calls(world) == [] and not (world["cache"] / "results").exists()


def test_relative_netns_is_made_absolute(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    write_list(world["netd"])
    monkeypatch.chdir("/run")
    assert run(world, "add", "testnet", "netns/../netns/x")[0] == 0
    env = calls(world)[0]["env"]
    assert env["CNI_NETNS"] == "/run/netns/x"
    assert env["CNI_CONTAINERID"] == cnitool.container_id_for("/run/netns/x")


# --- the berth command itself -------------------------------------------------------------

def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for name in ("add", "del", "check", "gc", "status"):
        assert f"  {name} " in text


@pytest.mark.parametrize("command", ["add", "del", "check", "gc", "status", "doctor"])
def test_subcommand_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    assert f"berth {command}" in capsys.readouterr().out


def test_unknown_command_and_no_args(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["frobnicate"]) == 2
    assert cli.main([]) == 2
    assert "usage: berth" in capsys.readouterr().err


def test_commands_table_names_importable_modules() -> None:
    import importlib

    for cmd in cli.COMMANDS.values():
        assert callable(importlib.import_module(cmd.module).main)


def test_runner_does_not_import_heavy_modules_for_help() -> None:
    import subprocess
    import sys

    code = ("import sys; from cni import cli; cli.usage(); "
            "print('pyroute2' in sys.modules, 'nftables' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__)))).stdout
    assert out.split() == ["False", "False"]


def test_plugin_without_error_json_is_999_with_status(world: dict[str, Any], tmp_path: Path) -> None:
    plugins = tmp_path / "plugins2"
    plugins.mkdir()
    crash = plugins / "fake-ipam"
    crash.write_text("#!/bin/sh\necho oops >&2\nexit 3\n")
    crash.chmod(0o755)
    write_list(world["netd"])
    rc, out, _ = run(world, "add", "testnet", "/run/netns/x", CNI_PATH=str(plugins))
    answer = json.loads(out)
    assert rc == 1 and answer["code"] == 999 and "exit status 3" in answer["details"]
