"""Every /proc/sys read and write berth makes.

A sysctl is named by its parts, ("net", "ipv4", "conf", bridge, "route_localnet"),
never by a dotted key: an interface name may hold dots (a bridge `br.10`), which
a dotted key would turn into path separators. /proc/sys/net shows the netns of
the thread that opens it: the node's for a plugin, a container's inside
cni.netns.entered().
"""

from __future__ import annotations

import os

ROOT = "/proc/sys"
IPV4_FORWARD = ("net", "ipv4", "ip_forward")
IPV6_FORWARD = ("net", "ipv6", "conf", "all", "forwarding")
BOOT_ID = ("kernel", "random", "boot_id")
CONNTRACK_COUNT = ("net", "netfilter", "nf_conntrack_count")


def path(*parts: str) -> str:
    for part in parts:
        if not part or part in (".", "..") or "/" in part or "\0" in part:
            raise ValueError(f"invalid sysctl name part {part!r}")
    return os.path.join(ROOT, *parts)


def read(*parts: str) -> str | None:
    """The value, stripped; None when the sysctl does not exist or cannot be read."""
    try:
        with open(path(*parts)) as fh:
            return fh.read().strip()
    except OSError:
        return None


def write(*parts: str, value: str) -> bool:
    """Write the sysctl; False when it does not exist (no IPv6 on this node, say)."""
    try:
        with open(path(*parts), "w") as fh:
            fh.write(value)
    except FileNotFoundError:
        return False
    return True


def ensure(*parts: str, value: str) -> bool:
    """Write the sysctl unless it already holds `value`; True when it was changed.
    A sysctl that does not exist is an error here (OSError): the caller needs it."""
    name = path(*parts)
    with open(name) as fh:
        if fh.read().strip() == value:
            return False
    with open(name, "w") as fh:
        fh.write(value)
    return True


_boot_id: str | None = None


def boot_id() -> str:
    """This boot's id ("" when unreadable); read once per process."""
    global _boot_id
    if _boot_id is None:
        _boot_id = read(*BOOT_ID) or ""
    return _boot_id
