"""containerd 1.6 on a test node (tests/clients/node.py), offline: its CRI plugin and `ctr run --cni`.

containerd runs inside the node with its defaults where it has them (/var/lib/containerd, the
socket under /run/containerd: both the node's private directories); the config file names the
CRI's CNI plugin directory and net.d. The images are made here (image.py) and imported with
`ctr images import`: the busybox image and a "pause" image built from it (a shell that sleeps).

`ctr run --cni` has its CNI paths built in: /etc/cni/net.d and /opt/cni/bin (Debian's build adds
/usr/lib/cni behind it, which the node hides unless a plugin source lives there), so the node
mounts the plugin directory on /opt/cni/bin.

Parameters: the plugin directory (a PluginDir: the CRI's bin_dir and ctr's /opt/cni/bin) and the
conflist, installed into net.d as it is (or renamed to `network`). The CRI also runs its
`loopback` network, so that plugin must be in the directory (berth's with `make install ALIASES=1`).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from tests import harness
from tests.clients import cri, image
from tests.clients.node import Bind, NodeHost
from tests.clients.plugins import PluginDir, conflist_as

IMAGE = "localhost/berth-busybox:latest"
PAUSE_IMAGE = "localhost/berth-pause:latest"
SOCKET = "/run/containerd/containerd.sock"
CRI_NAMESPACE = "k8s.io"
CTR_NAMESPACE = "berth-test"
PAUSE = ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done"]
# snapshotters and exporters that cannot work or are not wanted here: less start-up time and noise
DISABLED_PLUGINS = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.overlayfs", "io.containerd.tracing.processor.v1.otlp"]


def config_toml(plugin_dir: str) -> str:
    q = json.dumps  # TOML basic strings read like JSON strings
    return f"""version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = {q(DISABLED_PLUGINS)}
[grpc]
  address = {q(SOCKET)}
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {q(PAUSE_IMAGE)}
  # runc cannot lower oom_score_adj without CAP_SYS_RESOURCE
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {q(plugin_dir)}
    conf_dir = "/etc/cni/net.d"
[plugins."io.containerd.internal.v1.opt"]
  path = "/var/lib/containerd-opt"
"""


class Containerd:
    """`with Containerd(...) as ctrd:` starts containerd in the node and imports the images (the busybox one
    serves `page` from /www); leaving the block removes every pod and task, stops containerd and
    everything the node ran."""

    def __init__(self, node: harness.Netns, work: Path, plugins: PluginDir, conflist: Path, *, page: str,
                 network: str | None = None) -> None:
        self.work = work
        self.plugins = plugins
        self.network, self.conflist_text = conflist_as(conflist, network)
        self.page = page
        work.mkdir(parents=True, exist_ok=True)
        self.config = work / "containerd.toml"
        self.config.write_text(config_toml(str(plugins.path)))
        self.log_path = work / "containerd.log"
        self.host = NodeHost(node, work / "node", [Bind(plugins.path, "/opt/cni/bin")], plugins.sources)
        self._daemon: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None
        self._ctr_runs: list[subprocess.Popen[str]] = []
        self.cri = cri.Cri(self._grpc)

    def __enter__(self) -> Containerd:
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
        (self.host.path("/etc/cni/net.d") / f"10-{self.network}.conflist").write_text(self.conflist_text)
        self._log = self.log_path.open("w")
        self._daemon = self.host.popen(["containerd", "--config", str(self.config)], stdout=self._log,
                                       stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while self.ctr("version", check=False).returncode != 0:
            if self._daemon.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"containerd did not start:\n{self.log()[-3000:]}")
            time.sleep(0.2)
        rootfs = image.rootfs_tar(self.page)
        archives = {"busybox": image.oci_archive(rootfs, IMAGE, ["/bin/sh"]),
                    "pause": image.oci_archive(rootfs, PAUSE_IMAGE, [], entrypoint=PAUSE)}
        for name, data in archives.items():
            path = self.host.path(f"/run/tmp/{name}.oci.tar")
            path.write_bytes(data)
            namespaces = [CRI_NAMESPACE] if name == "pause" else [CRI_NAMESPACE, CTR_NAMESPACE]
            for ns in namespaces:
                self.ctr("-n", ns, "images", "import", "--snapshotter", "native", f"/run/tmp/{name}.oci.tar")
            path.unlink()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ctr(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.host.run(["ctr", "--address", SOCKET, *args], check=check, timeout=timeout)

    # --- CRI ---------------------------------------------------------------------
    def _grpc(self, path: str, request: bytes) -> bytes:
        proc = self.host.run_binary(
            ["curl", "-sS", "--noproxy", "*", "--http2-prior-knowledge", "--unix-socket", SOCKET, "-m", "90",
             "-X", "POST", "-H", "content-type: application/grpc", "-H", "te: trailers",
             "--data-binary", "@-", "-D", "/dev/stderr", f"http://localhost{path}"],
            cri.frame(request), timeout=120)
        headers = proc.stderr.decode(errors="replace")
        status, message = cri.grpc_status(headers)
        if proc.returncode != 0 or status != 0:
            raise cri.CriError(f"{path}: grpc-status {status} {message} (curl rc {proc.returncode})\n{headers}")
        return cri.unframe(proc.stdout)

    def network_ready(self, timeout: float = 15) -> tuple[bool, str]:
        """The CRI's NetworkReady condition (true once it has loaded a network config), waited for."""
        deadline = time.monotonic() + timeout
        while True:
            ready, why = self.cri.conditions().get("NetworkReady", (False, "no NetworkReady condition"))
            if ready or time.monotonic() > deadline:
                return ready, why
            time.sleep(0.2)

    def run_pod(self, name: str, ports: Sequence[cri.PortMapping], command: Sequence[str],
                annotations: dict[str, str] | None = None) -> tuple[str, str]:
        """RunPodSandbox + CreateContainer + StartContainer, as kubelet does: (pod id, container id)."""
        pod = cri.PodConfig(name=name, namespace="berth-test", log_directory=f"/var/log/pods/{name}",
                            port_mappings=list(ports), cgroup_parent=self.host.cgroup_parent,
                            labels={"app": name}, annotations=dict(annotations or {}))
        self.host.path(pod.log_directory).mkdir(parents=True, exist_ok=True)
        pod_id = self.cri.run_pod_sandbox(pod)
        container = cri.ContainerConfig(name=name, image=IMAGE, command=list(command), log_path=f"{name}.log")
        container_id = self.cri.create_container(pod_id, container, pod)
        self.cri.start_container(container_id)
        return pod_id, container_id

    def remove_pod(self, pod_id: str) -> None:
        """StopPodSandbox, then RemovePodSandbox: kubelet's order (each one sends CNI DEL)."""
        self.cri.stop_pod_sandbox(pod_id)
        self.cri.remove_pod_sandbox(pod_id)

    def cri_exec(self, container_id: str, script: str) -> str:
        _, out, _ = self.cri.exec_sync(container_id, ["sh", "-c", script], timeout=15)
        return out

    # --- ctr run --cni -------------------------------------------------------------
    def ctr_run(self, name: str, command: Sequence[str]) -> subprocess.Popen[str]:
        """`ctr run --rm --cni` in the background (it sends DEL when the task exits); waits until it runs."""
        proc = self.host.popen(
            ["ctr", "--address", SOCKET, "-n", CTR_NAMESPACE, "run", "--rm", "--cni", "--snapshotter", "native",
             "--cgroup", f"{self.host.cgroup_parent}/{name}", IMAGE, name, *command],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._ctr_runs.append(proc)
        deadline = time.monotonic() + 30
        while not self.ctr_running(name):
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read() if proc.stdout and proc.poll() is not None else ""
                raise AssertionError(f"ctr run {name} did not start: {out}")
            time.sleep(0.2)
        return proc

    def ctr_running(self, name: str) -> bool:
        tasks = self.ctr("-n", CTR_NAMESPACE, "task", "ls", check=False).stdout.splitlines()
        return any(line.split()[:1] == [name] and "RUNNING" in line for line in tasks)

    def ctr_exec(self, name: str, script: str) -> str:
        exec_id = f"x{time.monotonic_ns()}"
        proc = self.ctr("-n", CTR_NAMESPACE, "task", "exec", "--exec-id", exec_id, name, "sh", "-c", script,
                        check=False, timeout=30)
        return proc.stdout

    def ctr_stop(self, name: str, proc: subprocess.Popen[str]) -> str:
        """Kill the task; `ctr run` then tears the network down and exits. Its output."""
        self.ctr("-n", CTR_NAMESPACE, "task", "kill", "-s", "KILL", name)
        out, _ = proc.communicate(timeout=60)
        return out or ""

    # --- teardown -------------------------------------------------------------------
    def close(self) -> None:
        try:
            if self._daemon is not None and self._daemon.poll() is None:
                self._remove_everything()
        finally:
            for proc in self._ctr_runs:
                if proc.poll() is None:
                    proc.kill()
                proc.communicate()
            if self._daemon is not None and self._daemon.poll() is None:
                self._daemon.terminate()
                try:
                    self._daemon.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._daemon.kill()
                    self._daemon.wait()
            if self._log is not None:
                self._log.close()
            self.host.close()

    def _remove_everything(self) -> None:
        try:
            for pod_id in self.cri.list_pod_sandboxes():
                self.remove_pod(pod_id)
        except cri.CriError:
            pass
        for task in self.ctr("-n", CTR_NAMESPACE, "task", "ls", "-q", check=False).stdout.split():
            self.ctr("-n", CTR_NAMESPACE, "task", "kill", "-s", "KILL", task, check=False)
            self.ctr("-n", CTR_NAMESPACE, "task", "rm", "-f", task, check=False)
        for container in self.ctr("-n", CTR_NAMESPACE, "containers", "ls", "-q", check=False).stdout.split():
            self.ctr("-n", CTR_NAMESPACE, "containers", "rm", container, check=False)

    def netns_files(self) -> list[str]:
        netns = self.host.path("/run/netns")
        return sorted(p.name for p in netns.iterdir()) if netns.is_dir() else []
