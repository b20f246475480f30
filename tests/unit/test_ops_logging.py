"""The per-call log line: env BERTH_LOG_FILE, else the config's "berthLogFile"."""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cni import skel
from cni.errors import CNIError
from cni.skel import CmdArgs, PluginFuncs

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
       "CNI_PATH": "/opt/cni/bin"}


def run(conf: dict[str, Any], fail: bool = False, **env: str) -> tuple[int, str, str]:
    def add(args: CmdArgs) -> dict[str, Any]:
        if fail:
            raise CNIError(7, "bad bridge name", "details here")
        return {"cniVersion": "1.0.0", "ips": []}

    out, err = io.StringIO(), io.StringIO()
    rc = skel.run(PluginFuncs(name="berth-test", add=add), {**ENV, **env}, io.BytesIO(json.dumps(conf).encode()),
                  out, err)
    return rc, out.getvalue(), err.getvalue()


def conf(**extra: Any) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "net1", "type": "berth-test", **extra}


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_config_key_names_the_log_file(tmp_path: Path) -> None:
    log = tmp_path / "plugin.log"
    assert run(conf(berthLogFile=str(log)))[0] == 0
    rc, _out, err = run(conf(berthLogFile=str(log)), fail=True)
    assert rc == 1 and "bad bridge name" in err  # errors still reach stderr too
    got = lines(log)
    assert [g["outcome"] for g in got] == ["ok", "error 7"]
    assert got[0]["network"] == "net1" and got[0]["verb"] == "ADD" and got[0]["container"] == "c1"
    assert got[0]["plugin"] == "berth-test" and got[0]["ms"] >= 0 and "msg" not in got[0]
    assert got[1]["msg"] == "bad bridge name"


def test_env_wins_over_config(tmp_path: Path) -> None:
    env_log, conf_log = tmp_path / "env.log", tmp_path / "conf.log"
    run(conf(berthLogFile=str(conf_log)), BERTH_LOG_FILE=str(env_log))
    assert len(lines(env_log)) == 1 and not conf_log.exists()


def test_off_by_default_and_bad_values_ignored(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    for value in ("relative.log", 7, None, "", ["/x"]):
        assert run(conf(berthLogFile=value))[0] == 0
    assert run(conf())[0] == 0
    assert list(tmp_path.iterdir()) == []


def test_unwritable_log_never_fails_the_call(tmp_path: Path) -> None:
    assert run(conf(berthLogFile=str(tmp_path / "missing-dir" / "x.log")))[0] == 0


ROOT = Path(__file__).resolve().parents[2]


def exec_plugin(tmp_path: Path, config: dict[str, Any], **env: str) -> subprocess.CompletedProcess[bytes]:
    """berth-bridge as a process (a CHECK refused before any kernel work), as a runtime runs it."""
    full = {**ENV, "CNI_COMMAND": "CHECK", "BERTH_AGENT_SOCKET": "off", "BERTH_STATE_DIR": str(tmp_path / "state"),
            "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **env}
    return subprocess.run([sys.executable, "-m", "cni", "plugin", "berth-bridge"], input=json.dumps(config).encode(),
                          capture_output=True, env=full, timeout=30, check=False, cwd=str(tmp_path))


@pytest.mark.parametrize("where", ["env", "config"])
@pytest.mark.parametrize("version", ["1.0.0", "9.9.9"])
def test_a_fifo_as_log_file_never_blocks_the_call(tmp_path: Path, where: str, version: str) -> None:
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    config = {"cniVersion": version, "name": "net1", "type": "berth-bridge", "bridge": "bt0"}
    env: dict[str, str] = {}
    if where == "env":
        env["BERTH_LOG_FILE"] = str(fifo)
    else:
        config["berthLogFile"] = str(fifo)
    try:
        proc = exec_plugin(tmp_path, config, **env)
    finally:
        with contextlib.suppress(OSError):  # let a writer blocked in open() go (the old behaviour)
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr.decode(), proc
    assert json.loads(proc.stdout)["code"] in (1, 7), proc.stdout
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_symlinked_log_file_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    link = tmp_path / "berth.log"
    link.symlink_to(target)
    for env in ({"BERTH_LOG_FILE": str(link)}, {}):
        assert run(conf(berthLogFile=str(link)), **env)[0] == 0
    assert target.read_text() == "" and link.is_symlink()


def test_a_refused_config_does_not_create_its_log_file(tmp_path: Path) -> None:
    log = tmp_path / "refused.log"
    for bad in ({"cniVersion": "9.9.9"}, {"name": "../x"}, {"type": 5}):
        rc, out, _err = run({**conf(berthLogFile=str(log)), **bad})
        assert rc == 1 and json.loads(out)["code"] in (1, 7)
    assert not log.exists()
    env_log = tmp_path / "env.log"  # the runtime's own BERTH_LOG_FILE still logs a refused call
    assert run({**conf(), "cniVersion": "9.9.9"}, BERTH_LOG_FILE=str(env_log))[0] == 1
    assert [g["outcome"] for g in lines(env_log)] == ["error 1"]


def test_stdout_is_flushed_before_the_log_line(tmp_path: Path) -> None:
    log = tmp_path / "order.log"
    order: list[str] = []

    class Out(io.StringIO):
        def flush(self) -> None:
            order.append("flush:" + ("log" if log.exists() else "no log"))

    rc = skel.run(PluginFuncs(name="berth-test", add=lambda a: {"cniVersion": "1.0.0", "ips": []}),
                  {**ENV, "BERTH_LOG_FILE": str(log)}, io.BytesIO(json.dumps(conf()).encode()), Out(), io.StringIO())
    assert rc == 0 and order and order[0] == "flush:no log" and lines(log)


def test_a_kernel_interface_as_log_file_is_left_alone(tmp_path: Path) -> None:
    """/proc and /sys files look regular; writing a log line to one changes the kernel's state."""
    comm = Path("/proc/self/comm")
    before = comm.read_text()
    try:
        assert run(conf(), BERTH_LOG_FILE=str(comm))[0] == 0
        assert run(conf(berthLogFile=str(comm)))[0] == 0
        assert comm.read_text() == before
    finally:
        comm.write_text(before.strip())
