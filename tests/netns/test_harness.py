"""The harness itself: namespaces are made, linked, reachable, and go away."""

from tests import harness


def test_topology_links_node_and_outside(topo: harness.Topology) -> None:
    with topo.outside.server(8080, banner="out"):
        answer = topo.node.connect(topo.OUTSIDE_V4, 8080)
    assert answer == f"out {topo.NODE_V4}"


def test_version_runs_inside_node(node: harness.Node) -> None:
    res = node.plugin("berth-bridge", "VERSION", "{}")
    assert res.ok()["supportedVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def test_destroy_removes_namespaces(tmp_path, bin_dir) -> None:
    topology = harness.Topology(tmp_path / "t", bin_dir).build()
    topology.container("x")
    names = [topology.node.name, topology.outside.name, topology.node.children[0].name]
    topology.destroy()
    assert not any(harness.Netns(n).exists() for n in names)
