"""libcni's result cache, byte-compatible so `berth`, cnitool, containerd and CRI-O
can read each other's entries.

One file per attachment: <cacheDir>/results/<network>-<containerID>-<ifname>,
holding {"kind": "cniCacheV1", "containerId", "config" (base64 of the list's
bytes, as Go encodes []byte), "ifName", "networkName", "netns", "cniArgs",
"capabilityArgs", "result"}; empty optional fields are omitted (Go's omitempty).
The cache directory is libcni's /var/lib/cni, or BERTH_CACHE_DIR.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cni import errors
from cni.errors import CNIError
from cni.files import atomic_write

DEFAULT_CACHE_DIR = "/var/lib/cni"
KIND = "cniCacheV1"


def cache_dir(environ: Mapping[str, str]) -> str:
    return environ.get("BERTH_CACHE_DIR") or DEFAULT_CACHE_DIR


@dataclass
class Attachment:
    container_id: str
    network: str
    ifname: str
    config: bytes = b""
    netns: str = ""
    cni_args: list[list[str]] = field(default_factory=list)
    capability_args: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None


def path_for(root: str, network: str, container_id: str, ifname: str) -> str:
    if not network or not container_id or not ifname:
        raise errors.invalid_env(
            "cache file path requires network name, container ID, and interface name",
            f"network={network!r} containerID={container_id!r} ifname={ifname!r}",
        )
    return os.path.join(root, "results", f"{network}-{container_id}-{ifname}")


def encode(att: Attachment) -> bytes:
    out: dict[str, Any] = {
        "kind": KIND,
        "containerId": att.container_id,
        "config": base64.b64encode(att.config).decode("ascii"),
        "ifName": att.ifname,
        "networkName": att.network,
    }
    if att.netns:
        out["netns"] = att.netns
    if att.cni_args:
        out["cniArgs"] = att.cni_args
    if att.capability_args:
        out["capabilityArgs"] = att.capability_args
    if att.result:
        out["result"] = att.result
    return json.dumps(out, separators=(",", ":")).encode()


def decode(data: bytes) -> Attachment | None:
    """The entry, or None when it is not a cniCacheV1 entry (legacy or foreign)."""
    try:
        raw = json.loads(data)
    except ValueError:
        return None
    if not isinstance(raw, dict) or raw.get("kind") != KIND:
        return None
    try:
        config = base64.b64decode(raw.get("config") or "", validate=True)
    except ValueError:
        config = b""
    result = raw.get("result")
    args = raw.get("cniArgs") or []
    caps = raw.get("capabilityArgs") or {}
    return Attachment(
        container_id=str(raw.get("containerId", "")),
        network=str(raw.get("networkName", "")),
        ifname=str(raw.get("ifName", "")),
        config=config,
        netns=str(raw.get("netns", "")),
        cni_args=[[str(k), str(v)] for k, v in args] if isinstance(args, list) else [],
        capability_args=caps if isinstance(caps, dict) else {},
        result=result if isinstance(result, dict) else None,
    )


def write(root: str, att: Attachment) -> None:
    path = path_for(root, att.network, att.container_id, att.ifname)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        atomic_write(path, encode(att), 0o600)
    except OSError as exc:
        raise CNIError(errors.IO_FAILURE, f"failed to set network {att.network!r} cached result", str(exc)) from None


def read(root: str, network: str, container_id: str, ifname: str) -> Attachment | None:
    """The cached entry; None when there is none. A legacy entry (a bare result) is
    wrapped so its result is still usable, as libcni's getLegacyCachedResult does."""
    path = path_for(root, network, container_id, ifname)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    att = decode(data)
    if att is not None:
        return att
    try:
        legacy = json.loads(data)
    except ValueError:
        raise CNIError(errors.DECODE_FAILURE, f"failed to read cached network {network!r} result") from None
    if not isinstance(legacy, dict):
        raise CNIError(errors.DECODE_FAILURE, f"failed to read cached network {network!r} result")
    return Attachment(container_id=container_id, network=network, ifname=ifname, result=legacy)


def remove(root: str, network: str, container_id: str, ifname: str) -> None:
    try:
        os.unlink(path_for(root, network, container_id, ifname))
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise CNIError(errors.IO_FAILURE, f"failed to remove cached result of {network!r}", str(exc)) from None


def attachments(root: str, network: str | None = None) -> list[Attachment]:
    """Every cniCacheV1 entry (of `network` when given), in file-name order (libcni GetCachedAttachments)."""
    directory = os.path.join(root, "results")
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    out = []
    for name in names:
        if ".tmp." in name:  # another writer's atomic_write in progress
            continue
        try:
            with open(os.path.join(directory, name), "rb") as f:
                att = decode(f.read())
        except OSError:
            continue
        if att is None or not att.ifname or not att.network:
            continue
        if network is None or att.network == network:
            out.append(att)
    return out
