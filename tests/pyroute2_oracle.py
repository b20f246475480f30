"""pyroute2's rtnetlink message classes, the oracle the unit tests hold cni.rtnl's
own encoder and decoders to (the product no longer loads them on a plugin call)."""

from __future__ import annotations

from typing import Any

from cni import rtnl


class Messages:
    def __init__(self) -> None:
        rtnl.lazy_pyroute2()
        from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
        from pyroute2.netlink.rtnl.rtmsg import rtmsg

        self.link = ifinfmsg
        self.addr = ifaddrmsg
        self.route = rtmsg


_messages: Messages | None = None


def messages() -> Messages:
    global _messages
    if _messages is None:
        _messages = Messages()
    return _messages


def new(kind: str, fields: dict[str, Any], attrs: list[Any]) -> Any:
    """A pyroute2 message of `kind` ("link", "addr", "route") with header fields and NLAs."""
    msg = getattr(messages(), kind)()
    for key, value in fields.items():
        msg[key] = value
    msg["attrs"] = attrs
    return msg


def body(kind: str, fields: dict[str, Any], attrs: list[Any]) -> bytes:
    """What pyroute2 encodes after the nlmsghdr."""
    msg = new(kind, fields, attrs)
    msg.encode()
    return bytes(msg.data[rtnl.HEADER.size:])
