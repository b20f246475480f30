"""cni.netlink / cni.rtnl without a kernel: errno translation, dump-race retries, reply framing,
netns checks, lazy pyroute2."""

from __future__ import annotations

import errno
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from cni import netlink, netns, rtnl


class FakeSocket:
    """Stands in for RtnlSocket.request: raises what it is told, counts calls."""

    def __init__(self, *outcomes: object) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    def request(self, msg: object, msg_type: int, flags: int = 0, raw: bool = False) -> list[object]:
        self.calls += 1
        outcome = self.outcomes.pop(0) if self.outcomes else []
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome  # type: ignore[return-value]

    def close(self) -> None:
        pass


def handle(*outcomes: object) -> netlink.Handle:
    return netlink.Handle(FakeSocket(*outcomes), None)  # type: ignore[arg-type]


def test_errno_translation() -> None:
    with pytest.raises(netlink.LinkNotFound):
        netlink.set_up(handle(rtnl.RtnlError(errno.ENODEV, "x")), 7, "eth0")
    with pytest.raises(netlink.AlreadyExists):
        netlink.set_up(handle(rtnl.RtnlError(errno.EEXIST, "x")), 7, "eth0")
    with pytest.raises(netlink.NetlinkFailure) as err:
        netlink.set_up(handle(rtnl.RtnlError(errno.EINVAL, "text that must not matter")), 7, "eth0")
    assert err.value.code == errno.EINVAL and "eth0" in str(err.value) and "must not matter" not in str(err.value)
    with pytest.raises(netlink.NetlinkFailure) as err:
        netlink.set_up(handle(TimeoutError()), 7, "eth0")
    assert err.value.code == errno.ETIMEDOUT and "no answer from the kernel" in str(err.value)
    assert netlink.link_by_name(handle(rtnl.RtnlError(errno.ENODEV, "x")), "gone") is None
    assert netlink.delete_link(handle(rtnl.RtnlError(errno.ENODEV, "x")), "gone") is False


def test_dump_interrupted_is_retried_a_bounded_number_of_times() -> None:
    h = handle(*[rtnl.DumpInterrupted()] * (netlink.DUMP_RETRIES - 1))
    assert netlink.addresses(h, 3) == []
    assert h.sock.calls == netlink.DUMP_RETRIES
    h = handle(*[rtnl.DumpInterrupted()] * netlink.DUMP_RETRIES)
    with pytest.raises(netlink.NetlinkFailure):
        netlink.addresses(h, 3)
    assert h.sock.calls == netlink.DUMP_RETRIES


def nlmsg(kind: int, seq: int, payload: bytes, flags: int = 0) -> bytes:
    body = rtnl.HEADER.pack(rtnl.HEADER.size + len(payload), kind, flags, seq, 0) + payload
    return body + b"\0" * (-len(body) % 4)


class ScriptedKernel:
    """A socket whose recv() hands out prepared datagrams; send() records."""

    def __init__(self, datagrams: list[bytes]) -> None:
        self.datagrams = datagrams
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def recv(self, _size: int) -> bytes:
        return self.datagrams.pop(0)


def scripted(datagrams: list[bytes]) -> rtnl.RtnlSocket:
    sock = rtnl.RtnlSocket.__new__(rtnl.RtnlSocket)
    sock.sock = ScriptedKernel(datagrams)  # type: ignore[assignment]
    sock.seq = 0
    return sock


def addr_reply(seq: int, index: int, flags: int = rtnl.NLM_F_MULTI) -> bytes:
    body = rtnl.encode("addr", {"family": 2, "prefixlen": 24, "index": index}, [["IFA_ADDRESS", "10.1.2.3"]])
    return nlmsg(rtnl.RTM_NEWADDR, seq, body, flags)


def test_reply_framing_multipart_dump_and_errors() -> None:
    done = nlmsg(rtnl.NLMSG_DONE, 1, struct.pack("=i", 0), rtnl.NLM_F_MULTI)
    # two datagrams, a stray answer to another sequence number in between
    sock = scripted([addr_reply(1, 4) + addr_reply(99, 5), addr_reply(1, 6) + done])
    replies = sock.request(rtnl.encode("addr", {}, []), rtnl.RTM_GETADDR, rtnl.NLM_F_DUMP)
    assert [rtnl.parse_addr(r)[1] for r in replies] == [4, 6]
    assert [rtnl.parse_addr(r)[3] for r in replies] == ["10.1.2.3"] * 2

    refused = nlmsg(rtnl.NLMSG_ERROR, 1, struct.pack("=i", -errno.EPERM) + b"\0" * 16)
    with pytest.raises(rtnl.RtnlError) as err:
        scripted([refused]).request(rtnl.encode("link", {"index": 3}, []), rtnl.RTM_NEWLINK)
    assert err.value.errno == errno.EPERM

    ack = nlmsg(rtnl.NLMSG_ERROR, 1, struct.pack("=i", 0) + b"\0" * 16)
    sock = scripted([ack])
    assert sock.request(rtnl.encode("link", {"index": 3}, []), rtnl.RTM_NEWLINK) == []
    sent_flags = struct.unpack_from("=H", sock.sock.sent[0], 6)[0]  # type: ignore[attr-defined]
    assert sent_flags & rtnl.NLM_F_ACK, "a change must ask for an ACK"

    intr = addr_reply(1, 4, rtnl.NLM_F_MULTI | rtnl.NLM_F_DUMP_INTR)
    with pytest.raises(rtnl.DumpInterrupted):
        scripted([intr + done]).request(rtnl.encode("addr", {}, []), rtnl.RTM_GETADDR, rtnl.NLM_F_DUMP)


def test_check_netns(tmp_path: Path) -> None:
    netns.check("/proc/self/ns/net")
    for own in ("/proc/self/ns/net", "/proc/thread-self/ns/net", f"/proc/{os.getpid()}/ns/net"):
        with pytest.raises(netns.OwnNetns):  # a namespace, but ours: never a container's
            netns.check_container(own)
    with pytest.raises(netns.NetnsNotFound):
        netns.check(str(tmp_path / "missing"))
    plain = tmp_path / "plain"
    plain.write_text("")
    with pytest.raises(netns.NotANetns):
        netns.check(str(plain))
    with pytest.raises(netns.NotANetns):
        netns.check(str(tmp_path))


def test_random_veth_name() -> None:
    names = {netlink.random_veth_name() for _ in range(50)}
    assert len(names) == 50 and all(re.fullmatch(r"veth[0-9a-f]{8}", n) for n in names)


def test_pyroute2_is_lazy_and_stays_whole() -> None:
    """Importing the plugin loads no pyroute2; after our slim load the full package still works."""
    code = (
        "import sys, cni.bridge\n"
        "assert not any(m.startswith('pyroute2') for m in sys.modules), 'eager pyroute2'\n"
        "from cni import rtnl\n"
        "rtnl.lazy_pyroute2()\n"
        "import pyroute2.netlink.rtnl.ifinfmsg\n"
        "assert 'pyroute2.ndb.main' not in sys.modules and 'asyncio' not in sys.modules\n"
        "from pyroute2 import IPRoute, NDB, Conntrack\n"
        "from pyroute2.iproute.linux import IPRoute as cls\n"
        "assert IPRoute is cls\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
