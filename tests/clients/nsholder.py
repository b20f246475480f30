"""Holds a node's private mount namespace open: exec'd by tests/clients/node.py with the system python.

usage: nsholder.py NETNS_PATH OPS_JSON

Joins the network namespace NETNS_PATH, unshares the mount namespace (every mount below is a slave
of the host's: nothing made here propagates back), mounts a sysfs of that network namespace on /sys
with the host's cgroup hierarchies on it again (what `ip netns exec` hides), then applies OPS_JSON,
a list of ["bind", SRC, DST], ["tmpfs", DST, MODE] or ["mkdir", PATH] in order. Prints "ready" and stays
until its stdin closes; runtimes and their commands join it with setns(2).
"""

import ctypes
import json
import os
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 1024, 2048, 4096, 16384
MS_SLAVE, MS_RELATIME = 1 << 19, 1 << 21
MNT_DETACH = 2
# generic mount options as /proc/self/mounts prints them; everything else is the filesystem's own
FLAGS = {"ro": MS_RDONLY, "rw": 0, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
         "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}

libc = ctypes.CDLL(None, use_errno=True)


def check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    check(libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                     ctypes.c_ulong(flags), data.encode() if data else None), f"mount {fstype or source} {target}")


def split_options(options: str) -> tuple[int, str]:
    flags, data = 0, []
    for opt in options.split(","):
        if opt in FLAGS:
            flags |= FLAGS[opt]
        else:
            data.append(opt)
    return flags, ",".join(data)


def cgroup_mounts() -> list[tuple[str, str, str]]:
    """(fstype, mountpoint, options) of the host's cgroup tree, parents first."""
    out = []
    with open("/proc/self/mounts") as fh:
        for line in fh:
            _, mountpoint, fstype, options = line.split()[:4]
            if mountpoint == "/sys/fs/cgroup" or mountpoint.startswith("/sys/fs/cgroup/"):
                out.append((fstype, mountpoint, options))
    return out


def remount_sys() -> None:
    cgroups = cgroup_mounts()
    check(libc.umount2(b"/sys", MNT_DETACH), "umount /sys")
    mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    pure_v2 = any(fstype == "cgroup2" and mp == "/sys/fs/cgroup" for fstype, mp, _ in cgroups)
    for fstype, mountpoint, options in cgroups:
        # a hybrid host's cgroup2 "unified" mount stays away: crun then sees plain v1
        if fstype == "cgroup2" and not pure_v2:
            continue
        os.makedirs(mountpoint, exist_ok=True)
        flags, data = split_options(options)
        mount(fstype, mountpoint, fstype, flags, data or None)


def main() -> int:
    netns, ops = sys.argv[1], json.loads(sys.argv[2])
    fd = os.open(netns, os.O_RDONLY)
    check(libc.setns(fd, CLONE_NEWNET), f"setns {netns}")
    os.close(fd)
    check(libc.unshare(CLONE_NEWNS), "unshare")
    mount("none", "/", None, MS_REC | MS_SLAVE)
    remount_sys()
    for op in ops:
        if op[0] == "bind":
            mount(op[1], op[2], None, MS_BIND | MS_REC)
        elif op[0] == "tmpfs":
            mount("tmpfs", op[1], "tmpfs", MS_NOSUID | MS_NODEV, f"mode={op[2]}")
        elif op[0] == "mkdir":
            os.makedirs(op[1], exist_ok=True)
        else:
            raise ValueError(f"unknown op {op}")
    print("ready", flush=True)
    sys.stdin.read()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except OSError as exc:
        print(f"nsholder: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
