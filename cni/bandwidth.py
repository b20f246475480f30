"""berth-bandwidth: upstream's plugins/meta/bandwidth (its tbf form), shaping with tc over rtnetlink.

A chained plugin after one that made a veth pair (bridge, ptp): rates and bursts
in bits per second and bits, from the config's top level or the `bandwidth`
capability (runtimeConfig.bandwidth, what Kubernetes' bandwidth annotations
become). As upstream does it:

    into the container (ingressRate)  a tbf at the root of the host veth
    out of it (egressRate)            the host veth's ingress qdisc redirects every
                                      packet to an ifb device `bwp<hash>`, whose root tbf shapes it

The tbf gets upstream's numbers (rate/8 bytes per second, the burst as buffer,
a limit of 25 ms at the rate plus the burst; cni/tc.py), so CHECK compares them
exactly, and the ifb upstream's name (a hash of network and container ID, plus
the interface when that is not eth0). The journal section "bandwidth" records
the host veth and the ifb before anything is made; DEL removes the ifb (and the
host veth's qdiscs while it still exists), GC does the same for attachments no
longer listed. `unshapedSubnets`/`shapedSubnets` (upstream's later HTB form)
are not implemented: error 2 when given.
"""

from __future__ import annotations

from _sha512 import sha512  # builtin: hashlib would import OpenSSL on every exec

from cni import errors, netlink, netns, tc
from cni.errors import CNIError
from cni.meta import chained_result, gc_sections, journal, kernel_errors, quietly, section, step_done
from cni.records import BANDWIDTH, BandwidthRecord
from cni.skel import CmdArgs, PluginFuncs
from cni.spec import CURRENT_VERSION, Result, prev_result

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from typing import Any, NamedTuple
else:
    from cni.tuples import NamedTuple

FIELDS = ("ingressRate", "ingressBurst", "egressRate", "egressBurst")
SUBNET_FIELDS = ("unshapedSubnets", "shapedSubnets")
MAX_U64 = (1 << 64) - 1
MAX_BURST_BYTES = 0xFFFFFFFF  # upstream: "burst cannot be more than 4GB"
IFB_PREFIX = "bwp"
IFB_NAME_LENGTH = 15
DEFAULT_IFNAME = "eth0"


class Limits(NamedTuple):
    ingress_rate: int = 0
    ingress_burst: int = 0
    egress_rate: int = 0
    egress_burst: int = 0

    @property
    def ingress(self) -> bool:
        return self.ingress_rate > 0 and self.ingress_burst > 0

    @property
    def egress(self) -> bool:
        return self.egress_rate > 0 and self.egress_burst > 0


def _get(entry: dict[str, Any], field: str) -> Any:
    """A field as Go's encoding/json finds it: by its name, else by any spelling in another case
    (containerd's CRI sends the bandwidth capability as IngressRate, EgressBurst, ...)."""
    if field in entry:
        return entry[field]
    folded = field.lower()
    return next((value for key, value in entry.items() if isinstance(key, str) and key.lower() == folded), None)


def _bits(entry: dict[str, Any], field: str, where: str) -> int:
    value = _get(entry, field)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_U64:
        raise errors.invalid_config(f"{where}{field} must be a non-negative integer (bits)", repr(value)[:60])
    return value


def _pair(rate: int, burst: int, what: str) -> None:
    if burst and not rate:
        raise errors.invalid_config(f"if {what} burst is set, {what} rate must also be set")
    if rate and not burst:
        raise errors.invalid_config(f"if {what} rate is set, {what} burst must also be set")
    if burst // 8 >= MAX_BURST_BYTES:
        raise errors.invalid_config(f"{what} burst cannot be more than 4GB")
    if rate and rate < 8:
        raise errors.invalid_config(f"{what} rate must be at least 8 bits per second")
    if burst and burst < 8:
        raise errors.invalid_config(f"{what} burst must be at least 8 bits")


def parse(config: dict[str, Any]) -> Limits:
    """The limits: the config's top-level entry when it has any of its fields (as
    upstream's embedded struct), else runtimeConfig.bandwidth."""
    if any(_get(config, f) is not None for f in FIELDS + SUBNET_FIELDS):
        entry, where = config, ""
    else:
        runtime = config.get("runtimeConfig")
        if runtime is not None and not isinstance(runtime, dict):
            raise errors.invalid_config("runtimeConfig must be an object")
        entry = (runtime or {}).get("bandwidth") or {}
        where = "runtimeConfig.bandwidth."
        if not isinstance(entry, dict):
            raise errors.invalid_config("runtimeConfig.bandwidth must be an object")
    for field in SUBNET_FIELDS:
        value = _get(entry, field)
        if value not in (None, []):
            raise CNIError(errors.UNSUPPORTED_FIELD, f"{where}{field} is not implemented by berth-bandwidth",
                           "berth shapes all of the container's traffic (upstream's tbf form)")
    limits = Limits(*(_bits(entry, f, where) for f in FIELDS))
    _pair(limits.ingress_rate, limits.ingress_burst, "ingress")
    _pair(limits.egress_rate, limits.egress_burst, "egress")
    return limits


def ifb_name(network: str, container_id: str, ifname: str = DEFAULT_IFNAME) -> str:
    """upstream's getIfbDeviceName (a hash of network and container ID); a second
    interface of the container on the network adds its name, as portmap's chains do."""
    text = network + container_id + (f"/{ifname}" if ifname and ifname != DEFAULT_IFNAME else "")
    digest: str = sha512(text.encode()).hexdigest()
    return (IFB_PREFIX + digest)[:IFB_NAME_LENGTH]


def _host_veth(args: CmdArgs, prev: Result, node: netlink.Handle) -> netlink.Link:
    """The container interface's veth peer on the node, which prevResult must name (as upstream's getHostInterface)."""
    with netlink.open_netns(args.netns) as cont:
        link = netlink.link_by_name(cont, args.ifname)
    if link is None or link.kind != "veth" or link.peer_index <= 0:
        raise errors.invalid_config(f"container interface {args.ifname} has no veth peer")
    host = netlink.link_by_index(node, link.peer_index)
    if host is None:
        raise errors.invalid_config(f"the veth peer of {args.ifname} (#{link.peer_index}) is not in the node's "
                                    "network namespace")
    if not any(i.get("name") == host.name and not i.get("sandbox") for i in prev.get("interfaces") or []):
        raise errors.invalid_config(f"prevResult does not name {host.name}, the veth peer of {args.ifname}")
    return host


def _same_link(node: netlink.Handle, name: str, index: int) -> netlink.Link | None:
    """The link `name`, if it is still the one with ifindex `index` (names get reused)."""
    link = netlink.link_by_name(node, name) if name else None
    return link if link is not None and link.index == index else None


def _remove(node: netlink.Handle, record: BandwidthRecord) -> None:
    """Remove what the record names: the ifb (only if it is one), and the host veth's
    tbf and ingress qdisc while it is still the veth that was shaped."""
    ifb = netlink.link_by_name(node, record.ifb) if record.ifb else None
    if ifb is not None and ifb.kind == "ifb":
        netlink.delete_link(node, record.ifb)
    host = _same_link(node, record.host_veth, record.host_index) if record.host_index else None
    if host is None:
        return
    for qdisc in tc.qdiscs(node, host.index):
        ours = (record.ingress and qdisc.kind == "tbf" and qdisc.handle == tc.TBF_HANDLE) or \
            (record.ifb and qdisc.kind == "ingress" and qdisc.handle == tc.INGRESS_HANDLE)
        if ours:
            tc.delete_qdisc(node, host.index, qdisc, host.name)


def cmd_add(args: CmdArgs) -> Result:
    limits = parse(args.config)
    prev = prev_result(args.config)
    if not limits.ingress and not limits.egress:
        return prev if prev is not None else {"cniVersion": CURRENT_VERSION, "interfaces": [], "ips": [], "dns": {}}
    prev = chained_result(args, "berth-bandwidth")
    entry = journal(args)
    stale = section(entry, BANDWIDTH)
    with kernel_errors("ADD"), netlink.open_node() as node:
        netns.check_container(args.netns)
        host = _host_veth(args, prev, node)
        if stale:  # a killed or repeated ADD: start again from nothing
            _remove(node, BandwidthRecord.from_json(stale))
        record = BandwidthRecord("adding", host.name, host.index, ifb_name(args.network, args.container_id,
                                                                             args.ifname) if limits.egress else "",
                                 limits.ingress)
        entry.put(BANDWIDTH, record.to_json())
        try:
            step_done("bandwidth-journal", args.environ)
            if limits.ingress:
                tc.add_tbf(node, host.index, *tc.tbf_parameters(limits.ingress_rate, limits.ingress_burst), host.name)
                step_done("bandwidth-ingress", args.environ)
            if limits.egress:
                ifb = netlink.create_ifb(node, record.ifb, host.mtu)
                step_done("bandwidth-ifb", args.environ)
                tc.add_ingress(node, host.index, host.name)
                tc.add_redirect(node, host.index, ifb.index, host.name)
                step_done("bandwidth-redirect", args.environ)
                tc.add_tbf(node, ifb.index, *tc.tbf_parameters(limits.egress_rate, limits.egress_burst), ifb.name)
                step_done("bandwidth-egress", args.environ)
                prev.setdefault("interfaces", []).append({"name": ifb.name, "mac": ifb.mac})
        except BaseException:
            quietly(lambda: _remove(node, record))()
            quietly(lambda: entry.drop(BANDWIDTH))()
            raise
    entry.put(BANDWIDTH, record._replace(state="done").to_json())
    return prev


def cmd_del(args: CmdArgs) -> None:
    entry = journal(args)
    data = section(entry, BANDWIDTH)
    # without a journal (upstream's ADD, or a lost file) the ifb's name is derived, as upstream's DEL does
    record = BandwidthRecord.from_json(data) if data else \
        BandwidthRecord("", "", 0, ifb_name(args.network, args.container_id, args.ifname))
    with kernel_errors("DEL"), netlink.open_node() as node:
        _remove(node, record)
    entry.drop(BANDWIDTH)


def cmd_check(args: CmdArgs) -> None:
    limits = parse(args.config)
    prev = chained_result(args, "berth-bandwidth")
    problems: list[str] = []
    with kernel_errors("CHECK"), netlink.open_node() as node:
        netns.check_container(args.netns)
        host = _host_veth(args, prev, node)
        if limits.ingress:
            problems += _tbf_problems(tc.qdiscs(node, host.index), host.name,
                                      tc.tbf_parameters(limits.ingress_rate, limits.ingress_burst))
        if limits.egress:
            record = BandwidthRecord.from_json(section(journal(args), BANDWIDTH))
            name = record.ifb or ifb_name(args.network, args.container_id, args.ifname)
            ifb = netlink.link_by_name(node, name)
            if ifb is None or ifb.kind != "ifb":
                problems.append(f"ifb device {name} is missing")
            else:
                problems += _tbf_problems(tc.qdiscs(node, ifb.index), name,
                                          tc.tbf_parameters(limits.egress_rate, limits.egress_burst))
                if not any(q.kind == "ingress" for q in tc.qdiscs(node, host.index)):
                    problems.append(f"{host.name} has no ingress qdisc")
                elif ifb.index not in tc.redirects(node, host.index):
                    problems.append(f"{host.name} does not redirect its traffic to {name}")
    if problems:
        raise CNIError(errors.CHECK_FAILED, "CHECK failed: " + problems[0], "; ".join(problems))


def _tbf_problems(qdiscs: list[tc.Qdisc], device: str, want: tuple[int, int, int]) -> list[str]:
    tbf = [q for q in qdiscs if q.kind == "tbf" and q.handle == tc.TBF_HANDLE]
    if not tbf:
        return [f"{device} has no tbf qdisc"]
    rate, buffer, limit = want
    have = tbf[0]
    problems = []
    if have.rate != rate:
        problems.append(f"{device}'s tbf rate is {have.rate * 8} bit/s, configured {rate * 8}")
    if have.buffer != buffer:
        problems.append(f"{device}'s tbf buffer is {have.buffer}, expected {buffer}")
    if have.limit != limit:
        problems.append(f"{device}'s tbf limit is {have.limit} bytes, expected {limit}")
    return problems


def cmd_gc(args: CmdArgs) -> None:
    parse(args.config)

    def teardown(_entry: Any, data: dict[str, Any]) -> None:
        with kernel_errors("GC"), netlink.open_node() as node:
            _remove(node, BandwidthRecord.from_json(data))

    gc_sections(args, BANDWIDTH, teardown)


def cmd_status(args: CmdArgs) -> None:
    parse(args.config)


FUNCS = PluginFuncs(name="berth-bandwidth", add=cmd_add, delete=cmd_del, check=cmd_check, gc=cmd_gc,
                    status=cmd_status,
                    known_args=frozenset({"K8S_POD_NAME", "K8S_POD_NAMESPACE", "K8S_POD_INFRA_CONTAINER_ID",
                                          "K8S_POD_UID"}))
