"""Container images made here, without a registry: busybox-static as the whole root filesystem.

rootfs_tar() is what `podman import` takes; oci_archive() wraps it as a one-layer OCI image layout
archive, what `ctr images import` takes.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import struct
import subprocess
import tarfile
from pathlib import Path
from typing import Any

BUSYBOX = Path("/bin/busybox")
PT_INTERP = 3
MTIME = 1_700_000_000  # fixed, so the same content gives the same digests


def _is_static(path: Path) -> bool:
    """No program interpreter: the image has no libc for a dynamic busybox to load."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return all(struct.unpack_from("<I", data, phoff + i * phentsize)[0] != PT_INTERP for i in range(phnum))


def rootfs_tar(page: str) -> bytes:
    """/bin/busybox with a link per applet, /www/index.html holding `page`, root in /etc/passwd."""
    if not _is_static(BUSYBOX):
        raise AssertionError(f"{BUSYBOX} is not statically linked: apt-get install busybox-static")
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:

        def add(name: str, kind: bytes = tarfile.DIRTYPE, data: bytes = b"", mode: int = 0o755,
                link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime, info.linkname = kind, mode, MTIME, link
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        for d in ("bin", "etc", "www", "tmp", "proc", "sys", "dev", "root"):
            add(d, mode=0o1777 if d == "tmp" else 0o755)
        add("bin/busybox", tarfile.REGTYPE, BUSYBOX.read_bytes())
        for applet in applets:
            if applet != "busybox":
                add(f"bin/{applet}", tarfile.SYMTYPE, link="busybox", mode=0o777)
        add("www/index.html", tarfile.REGTYPE, page.encode() + b"\n", 0o644)
        add("etc/passwd", tarfile.REGTYPE, b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
        add("etc/group", tarfile.REGTYPE, b"root:x:0:\n", 0o644)
    return buf.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def oci_archive(layer: bytes, name: str, cmd: list[str], entrypoint: list[str] | None = None) -> bytes:
    """An OCI image layout (oci-layout, index.json, blobs) in a tar; `name` is the containerd image name."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    image_config: dict[str, Any] = {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"}
    if entrypoint:
        image_config["Entrypoint"] = entrypoint
    config = json.dumps({"architecture": arch, "os": "linux", "config": image_config,
                         "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _digest(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": _digest(layer),
                    "size": len(layer)}],
    }).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": _digest(manifest),
        "size": len(manifest), "annotations": {"io.containerd.image.name": name},
    }]}).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": index}
        files.update({f"blobs/sha256/{_digest(b)[7:]}": b for b in (layer, config, manifest)})
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mtime, info.mode = len(data), MTIME, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
