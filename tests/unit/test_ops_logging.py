"""The per-call log line: env BERTH_LOG_FILE, else the config's "berthLogFile"."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

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
