"""podman 4.3 (CNI backend) runs a container with `-p` on conf/87-berth-podman.conflist through berth."""

from __future__ import annotations

import json
from pathlib import Path

from tests.clients import common

CONFLIST = "87-berth-podman.conflist"
CYCLES = 2  # a second run/rm cycle catches leaked leases, rules and veths


def test_podman_publish_port_through_berth(tmp_path: Path) -> None:
    common.need_root()
    script = common.need_realclient("podman-cni-smoke.sh")
    common.need_commands("podman", "crun", "conmon", "busybox", "curl", "nft")
    common.need_cgroups()
    state_dir, data_dir = tmp_path / "state", tmp_path / "ipam"
    conf = common.with_data_dir(common.load_conf(CONFLIST), data_dir)
    conflist = tmp_path / CONFLIST
    conflist.write_text(json.dumps(conf))

    run = common.run_smoke(script, common.berth_plugin_dirs(tmp_path, state_dir), tmp_path / "work", state_dir,
                           ["--conflist", str(conflist), "--cycles", str(CYCLES), "--host-port", "18080"])

    common.assert_clean_run(run)
    for cycle in range(1, CYCLES + 1):
        for check in ("pod-ip-assigned", "hostport-via-127.0.0.1", "hostport-from-client-ns",
                      "pod-outbound-is-masqueraded", "hairpin-pod-to-own-hostport", "no-veth-left-on-bridge",
                      "hostport-closed-after-rm"):
            assert run.checks.get(f"c{cycle}-{check}") is True, f"c{cycle}-{check} not run:\n{run.output[-4000:]}"
    assert run.checks.get("every-ADD-has-a-successful-DEL") is True

    calls = run.calls()
    adds = [c for c in calls if c["command"] == "ADD"]
    plugins = {c["plugin"] for c in adds}
    berth = {"berth-bridge", "berth-host-local", "berth-portmap"}
    assert {"berth-bridge", "berth-portmap"} <= plugins <= berth, f"podman must call berth only: {plugins}"
    portmap_add = next(c for c in adds if c["plugin"] == "berth-portmap")
    mappings = portmap_add["stdin"]["runtimeConfig"]["portMappings"]
    assert mappings and mappings[0]["hostPort"] == 18080  # podman sends lower-case keys
    assert portmap_add["stdin"]["cniVersion"] == "0.4.0"
    assert "CNI-DN-" in common.berth_table_block(run.ruleset("1-after-add")), "no DNAT chain while the pod ran"
    common.assert_nothing_left(run, [f"{c}-after-del" for c in range(1, CYCLES + 1)], state_dir, data_dir,
                               conf["name"])
