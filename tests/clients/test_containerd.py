"""containerd 1.6: the CRI plugin (kubelet's path) and `ctr run --cni` drive berth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.clients import common

HOST_PORT = 18081


def _prepare(tmp_path: Path, name: str) -> tuple[Path, Path, Path]:
    common.need_root()
    common.need_commands("containerd", "ctr", "runc", "busybox", "curl", "nft")
    common.need_cgroups()
    state_dir, data_dir = tmp_path / "state", tmp_path / "ipam"
    conflist = tmp_path / name
    conflist.write_text(json.dumps(common.with_data_dir(common.load_conf(name), data_dir)))
    return conflist, state_dir, data_dir


def test_cri_pod_with_host_ports(tmp_path: Path) -> None:
    script = common.need_realclient("ctr-cni-smoke.sh")
    conflist, state_dir, data_dir = _prepare(tmp_path, "10-berth-containerd.conflist")
    run = common.run_smoke(script, common.berth_plugin_dirs(tmp_path, state_dir), tmp_path / "work", state_dir,
                           ["--mode", "cri", "--conflist", str(conflist), "--host-port", str(HOST_PORT)])
    if "could not install container-runtime-interface-api" in run.output:
        pytest.skip("CRI client stubs (PyPI container-runtime-interface-api) unavailable offline")
    common.assert_clean_run(run)
    for check in ("cri-pod-ip-assigned", "cri-hostport-via-127.0.0.1", "cri-hostport-from-client-ns",
                  "cri-pod-outbound-is-masqueraded", "cri-hairpin-pod-to-own-hostport", "cri-no-veth-left-on-bridge",
                  "cri-hostport-closed-after-remove", "every-ADD-has-a-successful-DEL"):
        assert run.checks.get(check) is True, f"{check} not run:\n{run.output[-4000:]}"

    calls = [c for c in run.calls() if c["command"] != "VERSION"]
    portmap_add = next(c for c in calls if c["plugin"] == "berth-portmap" and c["command"] == "ADD")
    mappings = portmap_add["stdin"]["runtimeConfig"]["portMappings"]
    tcp = next(m for m in mappings if m["Protocol"].lower() == "tcp")  # CRI: capitalised keys
    assert tcp["HostPort"] == HOST_PORT and tcp["ContainerPort"] == 8080 and tcp["HostIP"] == ""
    pod = portmap_add["env"]["CNI_CONTAINERID"]
    dels = [c for c in calls if c["plugin"] == "berth-bridge" and c["command"] == "DEL"
            and c["env"].get("CNI_CONTAINERID") == pod]
    # StopPodSandbox and RemovePodSandbox each send DEL; the second has no netns any more
    assert len(dels) >= 2 and all(c["rc"] == 0 for c in dels), dels
    assert any(not c["env"].get("CNI_NETNS") for c in dels)
    assert "CNI-DN-" in common.berth_table_block(run.ruleset("cri-after-add"))
    common.assert_nothing_left(run, ["cri-after-del"], state_dir, data_dir, "berth-containerd")


def test_ctr_run_cni(tmp_path: Path) -> None:
    """`ctr run --cni` cannot publish ports; it proves address, egress masquerade and DEL without netns."""
    script = common.need_realclient("ctr-cni-smoke.sh")
    conflist, state_dir, data_dir = _prepare(tmp_path, "20-berth-ctr.conflist")
    run = common.run_smoke(script, common.berth_plugin_dirs(tmp_path, state_dir), tmp_path / "work", state_dir,
                           ["--mode", "ctr", "--conflist", str(conflist)])
    common.assert_clean_run(run)
    for check in ("ctr-task-running", "ctr-pod-ip-assigned", "ctr-http-to-pod-ip", "ctr-pod-outbound-is-masqueraded",
                  "ctr-no-veth-left-on-bridge", "every-ADD-has-a-successful-DEL"):
        assert run.checks.get(check) is True, f"{check} not run:\n{run.output[-4000:]}"
    dels = [c for c in run.calls() if c["plugin"] == "berth-bridge" and c["command"] == "DEL"]
    assert dels and all(c["rc"] == 0 and not c["env"].get("CNI_NETNS") for c in dels), dels
    common.assert_nothing_left(run, ["ctr-after-del"], state_dir, data_dir, "berth-ctr")
