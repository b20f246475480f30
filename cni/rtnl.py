"""A synchronous rtnetlink socket: pyroute2's message classes over a plain socket.

pyroute2 0.9's IPRoute runs every request through an asyncio event loop and
builds one per handle (~7 ms each), and its NetNS forks a helper process to get
a socket inside another namespace (~7 ms more). A plugin call makes ~15 small
requests in two namespaces, so that machinery cost more than the kernel work
itself. Here a request is: encode with pyroute2's message class, send on an
AF_NETLINK socket, read until the ACK/DONE, decode with pyroute2 again. A
socket for another namespace is opened after a setns() of this thread and
keeps that namespace for its life.

pyroute2's package __init__ eagerly imports NDB, IPDB, asyncio, ethtool, ...
(~160 ms on this machine); `messages()` loads only the message modules, with
the package pre-registered so its __init__ runs only if something else asks for
a name from it (see `lazy_pyroute2`).
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12  # the kernel filters dumps by the request's fields (index, family, table)

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLMSG_ERROR = 2
NLMSG_DONE = 3

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26

HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
RECV_BYTES = 1 << 20
REPLY_TIMEOUT_SECONDS = 30.0  # the kernel answers at once; a stuck reply must not hang a pod's ADD forever


class RtnlError(OSError):
    """The kernel refused a request (errno in .errno)."""


class DumpInterrupted(Exception):
    """The dumped table changed while it was read (NLM_F_DUMP_INTR): ask again."""


def lazy_pyroute2() -> None:
    """Make `pyroute2.x.y` importable without running pyroute2/__init__.py.

    The package module is registered with its real __path__; a later
    `from pyroute2 import NAME` (not a submodule) runs the real __init__ into
    that same module on first use, so other code sees the normal package.
    """
    import sys

    if "pyroute2" in sys.modules:
        return
    import importlib
    import importlib.util
    import types

    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return
    module = types.ModuleType("pyroute2")
    module.__spec__ = spec
    module.__path__ = list(spec.submodule_search_locations)
    module.__file__ = spec.origin
    loader = spec.loader
    loaded = False

    def full(name: str) -> Any:
        nonlocal loaded
        if name.startswith("__"):
            raise AttributeError(name)
        try:  # `from pyroute2 import config` asks for a submodule first
            return importlib.import_module(f"pyroute2.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"pyroute2.{name}":
                raise
        if loaded:
            raise AttributeError(name)
        loaded = True
        loader.exec_module(module)
        return getattr(module, name)

    module.__getattr__ = full  # type: ignore[method-assign]
    sys.modules["pyroute2"] = module


class Messages:
    """pyroute2's rtnetlink message classes, imported once per process."""

    def __init__(self) -> None:
        lazy_pyroute2()
        from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
        from pyroute2.netlink.rtnl.rtmsg import rtmsg

        self.link = ifinfmsg
        self.addr = ifaddrmsg
        self.route = rtmsg
        self.by_type = {RTM_NEWLINK: ifinfmsg, RTM_NEWADDR: ifaddrmsg, RTM_NEWROUTE: rtmsg}


_messages: Messages | None = None


def messages() -> Messages:
    global _messages
    if _messages is None:
        _messages = Messages()
    return _messages


def new(kind: str, fields: dict[str, Any], attrs: list[Any]) -> Any:
    """A message of `kind` ("link", "addr", "route") with header fields and NLAs
    in pyroute2's form: [name, value], [name, {"attrs": [...]}], or a tuple (name, value, nla-flags)."""
    msg = getattr(messages(), kind)()
    for key, value in fields.items():
        msg[key] = value
    msg["attrs"] = attrs
    return msg


class RtnlSocket:
    """One NETLINK_ROUTE socket in the namespace it was opened in."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self.seq = 0
        try:
            self.sock.settimeout(REPLY_TIMEOUT_SECONDS)
            self.sock.bind((0, 0))
            for option in (NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK):
                try:
                    self.sock.setsockopt(SOL_NETLINK, option, 1)
                except OSError:  # an old kernel: filtering is then done by the callers
                    pass
        except BaseException:
            self.sock.close()
            raise

    def close(self) -> None:
        self.sock.close()

    def request(self, msg: Any, msg_type: int, flags: int = 0) -> list[Any]:
        """Send `msg`, return the decoded replies; RtnlError on a kernel error.

        Requests that change something ask for an ACK, so an error can never go
        unnoticed; a dump ends with NLMSG_DONE; a plain GET with its one reply.
        """
        self.seq = self.seq + 1 if self.seq < 0x7FFFFFFF else 1
        seq = self.seq
        dump = flags & NLM_F_DUMP == NLM_F_DUMP
        if not dump and msg_type not in (RTM_GETLINK, RTM_GETADDR, RTM_GETROUTE):
            flags |= NLM_F_ACK
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = flags | NLM_F_REQUEST
        msg["header"]["sequence_number"] = seq
        msg["header"]["pid"] = 0
        msg.encode()
        self.sock.send(msg.data)
        replies: list[Any] = []
        interrupted = False
        while True:
            buf = self.sock.recv(RECV_BYTES)
            offset = 0
            while offset + HEADER.size <= len(buf):
                length, kind, mflags, mseq, _pid = HEADER.unpack_from(buf, offset)
                if length < HEADER.size:
                    break
                chunk = buf[offset:offset + length]
                offset += (length + 3) & ~3
                if mseq != seq:
                    continue  # a late answer to an earlier request (never expected)
                if mflags & NLM_F_DUMP_INTR:
                    interrupted = True
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", chunk, HEADER.size)
                    if code:
                        raise RtnlError(-code, os.strerror(-code))
                    return replies  # the ACK: always the last message
                if kind == NLMSG_DONE:
                    if interrupted:
                        raise DumpInterrupted()
                    return replies
                cls = messages().by_type.get(kind)
                if cls is not None:
                    reply = cls(chunk)
                    reply.decode()
                    replies.append(reply)
                if not dump and not mflags & NLM_F_MULTI and not flags & NLM_F_ACK:
                    return replies
