"""podman 4 with its CNI backend, rootful, on a test node (tests/clients/node.py), offline.

The node's /etc/containers is the driver's own: containers.conf names the plugin directory and
network config dir, storage.conf puts images (vfs) under the node's private /var. podman reads it
without any environment: the `podman container cleanup` that conmon starts when a container exits
gets neither the caller's environment nor its containers.conf, and would otherwise look for plugins
in podman's built-in directories.

Parameters: the plugin directory (a PluginDir: the only one podman is given) and the network: a
conflist installed into net.d as it is (or renamed to `network`), or a network `network` that
podman creates itself (`podman network create`: its own conflist, naming the reference plugin types).
"""

from __future__ import annotations

import json
import resource
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests import harness
from tests.clients import image
from tests.clients.node import Bind, NodeHost
from tests.clients.plugins import PluginDir, conflist_as

IMAGE = "localhost/berth-busybox:latest"
# inside 10.202.0.0/16 like conf/'s examples, clear of them (tests/unit/test_conf_examples.py)
DEFAULT_SUBNET = "10.202.88.0/24"
SUBNET_POOL = "10.202.128.0/17"
# podman asks for these limits by default, which needs CAP_SYS_RESOURCE when above the hard limit
NOFILE, NPROC = 1048576, 32768


def _toml(value: Any) -> str:
    return json.dumps(value)  # TOML basic strings and arrays of them read like JSON


def containers_conf(plugin_dir: str) -> str:
    nofile = min(NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    nproc_hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nproc = NPROC if nproc_hard == resource.RLIM_INFINITY else min(NPROC, nproc_hard)
    return "\n".join([
        "[containers]",
        f"default_ulimits = {_toml([f'nofile={nofile}:{nofile}', f'nproc={nproc}:{nproc}'])}",
        "[network]",
        'network_backend = "cni"',
        f"cni_plugin_dirs = {_toml([plugin_dir])}",
        'network_config_dir = "/etc/cni/net.d"',
        'default_network = "berth-test-default"',
        f"default_subnet = {_toml(DEFAULT_SUBNET)}",
        f'default_subnet_pools = [{{"base" = {_toml(SUBNET_POOL)}, "size" = 24}}]',
        "[engine]",
        'cgroup_manager = "cgroupfs"',
        'events_logger = "file"',
        'runtime = "crun"',
        "",
    ])


STORAGE_CONF = """[storage]
driver = "vfs"
graphroot = "/var/lib/containers/storage"
runroot = "/run/containers/storage"
"""


class Podman:
    """`with Podman(...) as pm:` starts the node and imports the image (serving `page` from /www);
    leaving the block removes every container and everything the node ran."""

    def __init__(self, node: harness.Netns, work: Path, plugins: PluginDir, *, page: str,
                 conflist: Path | None = None, network: str | None = None,
                 subnet: str | None = None) -> None:
        self.work = work
        self.plugins = plugins
        self.page = page
        self.conflist_text = ""
        if conflist:
            self.network, self.conflist_text = conflist_as(conflist, network)
        else:
            self.network = network or "berth-podman-test"
        self.subnet = subnet
        etc = work / "etc-containers"
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "containers.conf").write_text(containers_conf(str(plugins.path)))
        (etc / "storage.conf").write_text(STORAGE_CONF)
        (etc / "policy.json").write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        (etc / "registries.conf").write_text("unqualified-search-registries = []\n")  # never a registry
        self.host = NodeHost(node, work / "node", [Bind(etc, "/etc/containers")], plugins.sources)

    def __enter__(self) -> Podman:
        self.host.start()
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _setup(self) -> None:
        tar = self.host.path("/run/tmp/rootfs.tar")
        tar.write_bytes(image.rootfs_tar(self.page))
        self.podman("import", "--change", 'CMD ["/bin/sh"]', "/run/tmp/rootfs.tar", IMAGE)
        tar.unlink()
        if self.conflist_text:
            (self.host.path("/etc/cni/net.d") / f"{self.network}.conflist").write_text(self.conflist_text)
        else:
            # without a subnet podman takes the next free one from SUBNET_POOL
            self.podman("network", "create", *(["--subnet", self.subnet] if self.subnet else []), self.network)

    def podman(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.host.run(["podman", *args], check=check, timeout=timeout)

    def loaded_conflist(self) -> str:
        """The network's conflist as podman loads it (the given one, or podman's own)."""
        return (self.host.path("/etc/cni/net.d") / f"{self.network}.conflist").read_text()

    def run(self, name: str, publish: Sequence[str], command: Sequence[str]) -> str:
        """`podman run -d` on the network; the container's id."""
        args = ["run", "-d", "--name", name, "--network", self.network, "--cgroup-parent", self.host.cgroup_parent]
        for port in publish:
            args += ["-p", port]
        return self.podman(*args, IMAGE, *command).stdout.strip()

    def inspect(self, name: str) -> dict[str, Any]:
        out = json.loads(self.podman("inspect", name).stdout)
        assert isinstance(out, list) and out, out
        return dict(out[0])

    def ip(self, name: str) -> str:
        return str(self.inspect(name)["NetworkSettings"]["Networks"][self.network]["IPAddress"])

    def exec(self, name: str, script: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self.podman("exec", name, "sh", "-c", script, check=False, timeout=timeout)

    def rm(self, name: str) -> None:
        self.podman("rm", "-f", "-t", "0", name)

    def netns_files(self) -> list[str]:
        """The pod network namespaces podman keeps under the node's /run/netns."""
        netns = self.host.path("/run/netns")
        return sorted(p.name for p in netns.iterdir()) if netns.is_dir() else []

    def close(self) -> None:
        try:
            if self.host.started:
                self.podman("rm", "-a", "-f", "-t", "0", check=False)
                self.podman("pod", "rm", "-a", "-f", "-t", "0", check=False)
        finally:
            self.host.close()
