"""A plugin's exit hands its netfilter sockets to a child (cni/handoff.py): what its
runtime sees is that the plugin's pipes close and its locks are free when it exits."""

from __future__ import annotations

import _socket
import fcntl
import os
import subprocess
import sys
from pathlib import Path

from cni import handoff
from tests import harness

# a plugin's end: output written, a lock held, netfilter and rtnetlink sockets open
_PLUGIN = """
import _socket, fcntl, os, sys
from cni import handoff
lock = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(lock, fcntl.LOCK_EX)
nf = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW, handoff.NETLINK_NETFILTER)
rt = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW, 0)
print(nf.fileno(), flush=True)
sys.stderr.write("done\\n")
handoff.hand_off()
os._exit(3)
"""


def test_finds_netfilter_sockets_only(tmp_path: Path) -> None:
    nf = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW, handoff.NETLINK_NETFILTER)
    rt = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW, 0)
    udp = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    with open(tmp_path / "f", "w") as f:
        found = handoff.netfilter_fds()
        assert nf.fileno() in found
        assert not {rt.fileno(), udp.fileno(), f.fileno(), 0, 1, 2} & set(found)
    fd = nf.fileno()
    for s in (nf, rt, udp):
        s.close()
    assert fd not in handoff.netfilter_fds()


def test_exit_leaves_no_pipe_and_no_lock_behind(tmp_path: Path) -> None:
    lock = tmp_path / "journal.lock"
    proc = subprocess.run([sys.executable, "-c", _PLUGIN, str(lock)], capture_output=True, text=True, timeout=30,
                          cwd=harness.ROOT, check=False)
    # run() returned: stdout and stderr reached EOF, so no child kept the runtime's pipes
    assert proc.returncode == 3 and proc.stderr == "done\n" and proc.stdout.strip().isdigit()
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the plugin's lock went with the plugin
    finally:
        os.close(fd)


def test_without_netfilter_sockets_nothing_is_forked(tmp_path: Path) -> None:
    """VERSION, the agent's thin client: no child, stdio untouched."""
    code = ("import os, sys; from cni import handoff; pid = os.getpid(); handoff.hand_off();"
            "print('still here', flush=True); os._exit(0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                          cwd=harness.ROOT, check=False)
    assert proc.stdout == "still here\n"
