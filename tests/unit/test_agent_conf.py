"""The agent's deployment files say what the agent needs (conf/agent/)."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from cni.agent_path import DEFAULT_SOCKET

AGENT_CONF = Path(__file__).resolve().parents[2] / "conf" / "agent"


def test_systemd_unit_runs_the_agent_on_the_default_socket() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((AGENT_CONF / "berth-agent.service").read_text())
    service = unit["Service"]
    assert service["ExecStart"].split()[1:] == ["agent", "--socket", DEFAULT_SOCKET]
    assert service["RuntimeDirectoryMode"] == "0700" and service["KillMode"] == "process"
    assert "PrivateTmp" not in service and "ProtectSystem" not in service  # same mounts as the runtime's plugins
    assert not list(AGENT_CONF.glob("*.socket"))  # not socket-activated: see the unit's comment


def test_daemonset_shares_the_nodes_namespaces_and_paths() -> None:
    yaml = pytest.importorskip("yaml")
    ds = yaml.safe_load((AGENT_CONF / "berth-agent-daemonset.yaml").read_text())
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["hostPID"] is True
    container = spec["containers"][0]
    assert container["command"][1:] == ["agent", "--socket", DEFAULT_SOCKET]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"]}
    for path in ("/run/berth", "/var/lib/cni", "/run/netns", "/opt/cni/bin"):
        assert paths[mounts[path]] == path  # the same path inside as on the node
