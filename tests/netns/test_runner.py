"""`berth add|check|gc|status|del` inside a node namespace, driving real plugins.

The first variant runs Debian's reference plugins (bridge + host-local, chained
with tuning), so the runner's libcni behaviour is checked against plugins it
does not share code with; the second runs berth's own plugins once they exist.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests import harness

REFERENCE_PATH = harness.REFERENCE_DIR


def write_conflist(directory: Path, conf: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"10-{conf['name']}.conflist").write_text(json.dumps(conf))


def runner_env(tmp: Path, cni_path: str, **extra: str) -> dict[str, str]:
    return {"NETCONFPATH": str(tmp / "net.d"), "BERTH_CACHE_DIR": str(tmp / "cache"), "CNI_PATH": cni_path, **extra}


def cache_file(tmp: Path, network: str, container_id: str, ifname: str = "eth0") -> Path:
    return tmp / "cache" / "results" / f"{network}-{container_id}-{ifname}"


def cnitool_id(netns: str) -> str:
    from cni.runner.cnitool import container_id_for

    return container_id_for(netns)


def reference_list(data_dir: Path, version: str = "1.0.0") -> dict[str, Any]:
    return {
        "cniVersion": version, "name": "refnet",
        "plugins": [
            {"type": "bridge", "bridge": "bt0", "isGateway": True, "ipMasq": False,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.77.0.0/24"}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(data_dir)}},
            {"type": "tuning", "capabilities": {"mac": True}},
        ],
    }


def test_reference_plugins_add_check_gc_del(topo: harness.Topology, tmp_path: Path) -> None:
    node = topo.node
    ctr = topo.container("a")
    write_conflist(tmp_path / "net.d", reference_list(node.data_dir))
    env = runner_env(tmp_path, REFERENCE_PATH)
    cid = cnitool_id(ctr.path)

    added = node.berth("add", "refnet", ctr.path, env=dict(env, CAP_ARGS=json.dumps({"mac": "02:00:00:00:77:01"})))
    assert added.returncode == 0, added.stdout + added.stderr
    result = json.loads(added.stdout)
    address = result["ips"][0]["address"].split("/")[0]
    assert result["cniVersion"] == "1.0.0" and address.startswith("10.77.0.")
    # tuning got runtimeConfig.mac through its capability and applied it
    link = ctr.ip_json("link", "show", "eth0")[0]
    assert link["address"] == "02:00:00:00:77:01"
    assert (node.data_dir / "refnet" / address).read_text().startswith(cid)
    with ctr.server(8080, banner="ctr"):
        assert node.connect(address, 8080) == "ctr 10.77.0.1"

    entry = json.loads(cache_file(tmp_path, "refnet", cid).read_text())
    assert entry["kind"] == "cniCacheV1" and entry["result"] == result and entry["netns"] == ctr.path

    checked = node.berth("check", "refnet", ctr.path, env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert node.berth("gc", "refnet", ctr.path, env=env).returncode == 0  # 1.0.0: nothing to GC, cache kept
    assert node.berth("status", "refnet", ctr.path, env=env).returncode == 0
    assert cache_file(tmp_path, "refnet", cid).exists()

    # CHECK notices a broken attachment (the reference bridge checks the container's address)
    ctr.ip("addr", "flush", "dev", "eth0")
    broken = node.berth("check", "refnet", ctr.path, env=env)
    assert broken.returncode == 1 and json.loads(broken.stdout)["code"] > 0

    deleted = node.berth("del", "refnet", ctr.path, env=env)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert "eth0" not in ctr.links()
    assert not (node.data_dir / "refnet" / address).exists()
    assert not cache_file(tmp_path, "refnet", cid).exists()
    again = node.berth("del", "refnet", ctr.path, env=env)
    assert again.returncode == 0, again.stdout + again.stderr


def test_two_containers_and_explicit_ids(topo: harness.Topology, tmp_path: Path) -> None:
    node = topo.node
    a, b = topo.container("a"), topo.container("b")
    write_conflist(tmp_path / "net.d", reference_list(node.data_dir))
    env = runner_env(tmp_path, REFERENCE_PATH)
    ra = node.berth("add", "refnet", a.path, env=dict(env, CNI_CONTAINERID="ctr-a", CNI_IFNAME="net1"))
    rb = node.berth("add", "refnet", b.path, env=dict(env, CNI_CONTAINERID="ctr-b", CNI_IFNAME="net1"))
    assert ra.returncode == 0 and rb.returncode == 0, ra.stdout + rb.stdout
    ip_b = json.loads(rb.stdout)["ips"][0]["address"].split("/")[0]
    with b.server(9000, banner="b"):
        assert a.connect(ip_b, 9000) is not None
    assert cache_file(tmp_path, "refnet", "ctr-a", "net1").exists()
    for ns, cid in ((a, "ctr-a"), (b, "ctr-b")):
        res = node.berth("del", "refnet", ns.path, env=dict(env, CNI_CONTAINERID=cid, CNI_IFNAME="net1"))
        assert res.returncode == 0, res.stdout + res.stderr
        assert "net1" not in ns.links()
    assert not list((tmp_path / "cache" / "results").iterdir())


def test_runner_errors_are_cni_json(node: harness.Node, tmp_path: Path) -> None:
    write_conflist(tmp_path / "net.d", reference_list(node.data_dir))
    env = runner_env(tmp_path, REFERENCE_PATH)
    missing = node.berth("add", "nosuchnet", "/run/netns/none", env=env)
    assert missing.returncode == 1 and json.loads(missing.stdout)["code"] == 7
    gone = node.berth("add", "refnet", "/run/netns/bt-does-not-exist", env=env)
    assert gone.returncode == 1 and json.loads(gone.stdout)["code"] > 0
    assert not os.path.exists("/run/netns/bt-does-not-exist")
    assert not (tmp_path / "cache" / "results").exists()
    assert node.berth("--help").returncode == 0


@pytest.mark.skipif(not (harness.ROOT / "cni" / "bridge.py").exists(), reason="cni/bridge.py not written yet")
def test_berth_plugins_add_check_gc_status_del(topo: harness.Topology, tmp_path: Path) -> None:
    node = topo.node
    ctr = topo.container("a")
    plugin = harness.bridge_conf("berthnet", "10.78.0.0/24", version="1.1.0")
    plugin["ipam"]["dataDir"] = str(node.data_dir)
    del plugin["name"], plugin["cniVersion"]
    write_conflist(tmp_path / "net.d", {"cniVersion": "1.1.0", "name": "berthnet", "plugins": [plugin]})
    env = runner_env(tmp_path, node.cni_path)
    cid = cnitool_id(ctr.path)

    added = node.berth("add", "berthnet", ctr.path, env=env)
    assert added.returncode == 0, added.stdout + added.stderr
    address = json.loads(added.stdout)["ips"][0]["address"].split("/")[0]
    with ctr.server(8080, banner="ctr"):
        assert node.connect(address, 8080) == "ctr 10.78.0.1"
    for verb in ("check", "status", "gc"):
        res = node.berth(verb, "berthnet", ctr.path, env=env)
        assert res.returncode == 0, f"{verb}: {res.stdout} {res.stderr}"
    assert "eth0" in ctr.links(), "GC with the cached attachment valid must keep it"
    deleted = node.berth("del", "berthnet", ctr.path, env=env)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert "eth0" not in ctr.links()
    assert not cache_file(tmp_path, "berthnet", cid).exists()
    assert node.berth("del", "berthnet", ctr.path, env=env).returncode == 0


HAVE_BERTH_PLUGINS = all((harness.ROOT / p).exists() for p in ("cni/bridge.py", "ipam/hostlocal.py"))


@pytest.mark.skipif(not HAVE_BERTH_PLUGINS, reason="berth's bridge / host-local not written yet")
def test_upstream_conflist_unchanged_through_alias_links(topo: harness.Topology, tmp_path: Path) -> None:
    """ALIASES=1: an upstream conflist (type bridge, ipam host-local) runs berth, and the
    bridge plugin recognises the host-local link on CNI_PATH as itself (no second exec)."""
    node = topo.node
    ctr = topo.container("a")
    aliases = tmp_path / "aliases"
    aliases.mkdir()
    target = os.path.realpath(node.bin_dir / "berth")
    for name in ("bridge", "host-local", "portmap"):
        (aliases / name).symlink_to(target)
    conf = reference_list(node.data_dir, version="1.0.0")
    conf["plugins"] = conf["plugins"][:1]
    write_conflist(tmp_path / "net.d", conf)
    log = tmp_path / "calls.jsonl"
    env = runner_env(tmp_path, str(aliases), BERTH_LOG_FILE=str(log))
    added = node.berth("add", "refnet", ctr.path, env=env)
    assert added.returncode == 0, added.stdout + added.stderr
    address = json.loads(added.stdout)["ips"][0]["address"].split("/")[0]
    assert (node.data_dir / "refnet" / address).exists()
    plugins = [json.loads(line)["plugin"] for line in log.read_text().splitlines()]
    assert plugins == ["berth-bridge"], f"host-local was exec'd instead of run in-process: {plugins}"
    deleted = node.berth("del", "refnet", ctr.path, env=env)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert not (node.data_dir / "refnet" / address).exists()
