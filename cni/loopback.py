"""berth-loopback: the container namespace's `lo`, as upstream's plugins/main/loopback.

ADD brings `lo` up and returns it with its addresses (the first IPv4 and the
first IPv6 one, each checked to be a loopback address), or a chained call's
prevResult unchanged. CNI_IFNAME is ignored: this only ever concerns `lo`. DEL
takes `lo` down again; no netns, or one that is gone, is nothing to do. CHECK
wants `lo` up. Nothing is journaled: there is nothing to find again.
"""

from __future__ import annotations

import ipaddress

from cni import errors, netlink, netns
from cni.errors import CNIError
from cni.meta import kernel_errors
from cni.skel import CmdArgs, PluginFuncs
from cni.spec import CURRENT_VERSION, Result, prev_result

LOOPBACK = "lo"


def _first_loopback(addresses: list[str], version: int) -> str | None:
    first = None
    for cidr in addresses:
        iface = ipaddress.ip_interface(cidr)
        if iface.version != version:
            continue
        if not iface.ip.is_loopback:
            raise CNIError(errors.INVALID_NETWORK_CONFIG, f"loopback interface found with non-loopback address "
                           f"{str(iface.ip)!r}")
        first = first or str(iface)
    return first


def cmd_add(args: CmdArgs) -> Result:
    prev = prev_result(args.config)
    with kernel_errors("ADD"):
        netns.check_container(args.netns)
        with netlink.open_netns(args.netns) as cont:
            link = netlink.link_by_name(cont, LOOPBACK)
            if link is None:
                raise CNIError(errors.NETLINK_FAILURE, f"ADD: no {LOOPBACK} in {args.netns}")
            netlink.set_up(cont, link.index, LOOPBACK)
            have = netlink.addresses(cont, link.index)
    found = [a for a in (_first_loopback(have, 4), _first_loopback(have, 6)) if a]
    if prev is not None:
        return prev  # chained: pass the earlier result on, as upstream does
    return {"cniVersion": CURRENT_VERSION,
            "interfaces": [{"name": LOOPBACK, "mac": "00:00:00:00:00:00", "sandbox": args.netns}],
            "ips": [{"interface": 0, "address": a} for a in found], "dns": {}}


def cmd_del(args: CmdArgs) -> None:
    if not args.netns:
        return
    try:
        with kernel_errors("DEL"), netlink.open_netns(args.netns) as cont:
            link = netlink.link_by_name(cont, LOOPBACK)
            if link is not None and link.up:
                netlink.set_down(cont, link.index, LOOPBACK)
    except CNIError as exc:
        if exc.code != errors.INVALID_NETNS:
            raise  # a namespace that is gone (or no namespace at all) has no lo to take down


def cmd_check(args: CmdArgs) -> None:
    prev_result(args.config)  # a prevResult that does not decode is an error here too
    with kernel_errors("CHECK"):
        netns.check_container(args.netns)
        with netlink.open_netns(args.netns) as cont:
            link = netlink.link_by_name(cont, LOOPBACK)
    if link is None:
        raise CNIError(errors.CHECK_FAILED, f"CHECK failed: no {LOOPBACK} in {args.netns}")
    if not link.up:
        raise CNIError(errors.CHECK_FAILED, "CHECK failed: loopback interface is down")


def cmd_nothing(args: CmdArgs) -> None:
    """GC (nothing is kept) and STATUS (nothing can be unavailable)."""


FUNCS = PluginFuncs(name="berth-loopback", add=cmd_add, delete=cmd_del, check=cmd_check, gc=cmd_nothing,
                    status=cmd_nothing,
                    known_args=frozenset({"K8S_POD_NAME", "K8S_POD_NAMESPACE", "K8S_POD_INFRA_CONTAINER_ID",
                                          "K8S_POD_UID"}))
