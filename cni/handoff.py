"""At exit, hand the process's netfilter sockets to a child that closes them.

Closing the last reference to a NETLINK_NETFILTER socket makes the kernel first
flush nf_tables' pending destroy work: an RCU grace period (milliseconds)
whenever a commit deleted anything shortly before, this process's own (every
DEL) or any other's on the host, since that work list is global. A plugin that
exits holding such a socket keeps its runtime waiting for it. Instead, a child
forked at the very end keeps those sockets and nothing else (no stdio, no
files: no pipe stays open and no lock stays held), and its exit pays the wait
that nobody waits for; the plugin's exit returns at once. The child is an
orphan reaped by init (or the nearest subreaper) like any other, and lives for
that grace period only.
"""

# no __future__ import: the agent's thin client passes through here
import _socket
import os

NETLINK_NETFILTER = 12


def netfilter_fds() -> list[int]:
    """This process's open NETLINK_NETFILTER sockets (libnftables', conntrack's, berth's own)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return []
    found = []
    for name in names:
        try:
            sock = _socket.socket(fileno=int(name))
        except (OSError, ValueError):  # not a socket, or the listing's own fd, gone by now
            continue
        try:
            if sock.family == _socket.AF_NETLINK and sock.proto == NETLINK_NETFILTER:
                found.append(int(name))
        finally:
            sock.detach()
    return found


def hand_off() -> None:
    """Call last, with the output flushed: the caller must exit right after, as it
    no longer has any descriptor but the netfilter sockets. Nothing happens without them."""
    keep = sorted(netfilter_fds())
    if not keep:
        return
    # everything else is closed here, before the fork: the child never holds the
    # runtime's pipes or a lock, not even until it is first scheduled
    low = 0
    for fd in keep:
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)
    try:
        pid = os.fork()
    except OSError:
        return  # no child: the exit closes the sockets itself, and waits
    if pid == 0:
        os._exit(0)
