"""berth-bridge: attach a container to a Linux bridge through a veth pair.

Behaves like upstream's plugins/main/bridge (same config fields, same result
shape, same gateway/forceAddress rules); kernel work goes through cni.netlink,
masquerade through portmap.masq, addresses through the IPAM plugin.

ADD keeps an undo stack (the Go `success` flag): the journal section is written
first with the intent, then IPAM, bridge, veth, addresses, routes, gateway,
sysctls, masquerade, isolation; any failure unwinds everything done so far. Test-only hooks:
BERTH_TEST_FAIL_AFTER=<step> raises after the step and BERTH_TEST_KILL_AFTER=<step>
SIGKILLs the process after it, with <step> one of:
    journal, ipam, bridge, veth, addresses, routes, gateway, sysctls, masq, isolation

DEL works from the journal when the runtime gives no netns (it deletes the host
veth by its recorded name) and like upstream when there is no journal. GC tears
down journaled attachments not listed as valid, except an unfinished ADD that
is younger than ADDING_GRACE_SECONDS (it may still be running).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import time
from collections.abc import Callable, Iterator
from types import ModuleType

from cni import errors, meta, netlink, netns, sysctl
from cni.bridge_conf import BridgeConf, parse
from cni.errors import CNIError
from cni.invoke import delegate
from cni.records import Attachment, BridgeRecord
from cni.skel import CmdArgs, PluginFuncs
from cni.spec import CURRENT_VERSION, Result, prev_result, valid_attachments
from cni.state import Journal, journals, remove_empty_journals, state_root, strict_node

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from typing import Any

SECTION = "bridge"
ADDING_GRACE_SECONDS = 300.0
STEPS = ("journal", "ipam", "bridge", "veth", "addresses", "routes", "gateway", "sysctls", "masq", "isolation")


SIGKILL = 9  # the test hook's kill; `signal` would import enum for every exec


def _step_done(step: str, environ: Any) -> None:
    if environ.get("BERTH_TEST_KILL_AFTER") == step:
        os.kill(os.getpid(), SIGKILL)
    if environ.get("BERTH_TEST_FAIL_AFTER") == step:
        raise CNIError(errors.INTERNAL, f"test failure injected after step {step!r}")


@contextlib.contextmanager
def _kernel_errors(action: str) -> Iterator[None]:
    """meta.kernel_errors, plus what only the bridge meets: a link of its name that is
    no bridge or already exists, and file errors."""
    with meta.kernel_errors(action):
        try:
            yield
        except netlink.NotABridge as exc:
            raise CNIError(errors.LINK_CONFLICT, f"{action}: {exc}") from None
        except netlink.AlreadyExists as exc:
            raise CNIError(errors.LINK_CONFLICT, f"{action}: {exc.what} (already exists)") from None
        except OSError as exc:
            raise CNIError(errors.IO_FAILURE, f"{action}: {exc}") from None


def _masq() -> ModuleType:
    from portmap import masq  # lazy: a bridge without ipMasq never loads nft code

    return masq


def _journal(args: CmdArgs) -> Journal:
    return Journal(state_root(args.environ), args.network, args.container_id, args.ifname)


# --- addresses and gateways (pure) ---------------------------------------------

def _gateway_for(ip: dict[str, Any], conf: BridgeConf) -> str | None:
    """The gateway of one IPAM address: IPAM's, else the subnet's first host when isGateway."""
    if ip.get("gateway"):
        return str(ip["gateway"])
    if conf.is_gateway:
        return str(ipaddress.ip_interface(ip["address"]).network.network_address + 1)
    return None


def plan_l3(result: Result, conf: BridgeConf) -> tuple[list[str], list[tuple[str, str | None]]]:
    """Fill gateways and default routes into `result` (as upstream's calcGateways).

    Returns the bridge gateway addresses (CIDR, subnet prefix) and the container
    routes to install as (dst, gw) with family gateways filled in.
    """
    bridge_gws: list[str] = []
    family_gw: dict[int, str] = {}
    have_default: set[int] = set()
    routes = result.setdefault("routes", []) or []
    result["routes"] = routes
    for ip in result.get("ips", []):
        iface = ipaddress.ip_interface(ip["address"])
        ip["interface"] = 2
        gw = _gateway_for(ip, conf)
        if gw:
            ip["gateway"] = gw
            family_gw.setdefault(iface.version, gw)
        if conf.is_default_gateway and iface.version not in have_default:
            default = "0.0.0.0/0" if iface.version == 4 else "::/0"
            if not any(r.get("dst") == default and r.get("gw") for r in routes):
                routes.append({"dst": default, "gw": gw})
            have_default.add(iface.version)
        if conf.is_gateway and gw:
            cidr = f"{gw}/{iface.network.prefixlen}"
            if cidr not in bridge_gws:
                bridge_gws.append(cidr)
    families = {ipaddress.ip_interface(ip["address"]).version for ip in result.get("ips", [])}
    install: list[tuple[str, str | None]] = []
    for route in routes:
        dst = ipaddress.ip_network(route["dst"], strict=False)
        if dst.version not in families:
            continue  # no address of that family: the kernel could not use the route
        entry = (str(dst), route.get("gw") or family_gw.get(dst.version))
        if entry not in install:
            install.append(entry)
    return bridge_gws, install


def _ensure_gateway(node: netlink.Handle, bridge: netlink.Link, cidr: str, force: bool, nodad: bool) -> None:
    """Upstream's ensureAddr: one v4 address per bridge, v6 ones unless they overlap."""
    want = ipaddress.ip_interface(cidr)
    for have_s in netlink.addresses(node, bridge.index, want.version):  # one family: not O(veths)
        have = ipaddress.ip_interface(have_s)
        if have.version != want.version or (have.version == 6 and have.ip.is_link_local):
            continue
        if have == want:
            return
        if want.version == 4 or have.ip in want.network or want.ip in have.network:
            if not force:
                raise CNIError(
                    errors.INVALID_NETWORK_CONFIG,
                    f"{bridge.name!r} already has an IP address different from {cidr}", f"has {have_s}",
                )
            netlink.delete_address(node, bridge.index, have_s)
    netlink.add_address(node, bridge.index, cidr, nodad)


# --- ADD -----------------------------------------------------------------------

def cmd_add(args: CmdArgs) -> Result:
    conf = parse(args.config, args.args)
    journal = _journal(args)
    # handles outlive the undo stack, so rollback can still use them
    with contextlib.ExitStack() as handles, contextlib.ExitStack() as undo:
        result = _add(args, conf, journal, undo, handles)
        undo.pop_all()  # success: keep everything
    return result


def _add(
    args: CmdArgs, conf: BridgeConf, journal: Journal, undo: contextlib.ExitStack, handles: contextlib.ExitStack,
) -> Result:
    env = args.environ
    host_name = netlink.random_veth_name()
    record: dict[str, Any] = {
        "state": "adding", "bridge": conf.bridge, "hostVeth": host_name, "netns": args.netns,
        "ifname": args.ifname, "ipamType": conf.ipam_type,
    }
    if conf.ip_masq:
        # intent before any nft change, in the first journal write (no second one after
        # IPAM): no addresses yet, so after a crash masq.teardown finds the map elements
        # by the tag recorded here (an older berth's {}: by its tag and chain name)
        record["masq"] = _masq().intent(args.network, args.container_id, args.ifname)
    if conf.isolate:
        record["isolate"] = conf.isolate  # journaled first: a racing DEL counts this attachment
    with _kernel_errors("ADD"):
        netns.check_container(args.netns)
    previous = journal.section(SECTION) or {}
    if previous.get("state") == "added":
        # a second ADD must not get to IPAM: its rollback would release the first one's address
        raise CNIError(errors.LINK_CONFLICT, f"{args.container_id}/{args.ifname} is already attached to "
                       f"network {args.network}", "DEL it first")
    stale_veth = str(previous.get("hostVeth") or "")  # left by an ADD that was killed midway
    journal.put(SECTION, record)
    undo.callback(_quietly(lambda: journal.drop(SECTION)))
    _step_done("journal", env)

    result: Result = {"cniVersion": CURRENT_VERSION, "interfaces": [], "ips": [], "routes": [], "dns": {}}
    if conf.layer3:
        ipam_result = delegate(conf.ipam_type, "ADD", args)
        undo.callback(_quietly(lambda: delegate(conf.ipam_type, "DEL", args)))
        if not ipam_result or not ipam_result.get("ips"):
            raise CNIError(errors.INVALID_NETWORK_CONFIG, "IPAM plugin returned missing IP config")
        result["ips"] = ipam_result.get("ips", [])
        result["routes"] = ipam_result.get("routes", []) or []
        result["dns"] = ipam_result.get("dns", {}) or {}
        record["ips"] = [ip["address"] for ip in result["ips"]]
        _step_done("ipam", env)
    bridge_gws, routes = plan_l3(result, conf) if conf.layer3 else ([], [])

    with _kernel_errors("ADD"):
        node = handles.enter_context(netlink.open_node())
        cont = handles.enter_context(netlink.open_netns(args.netns))
        if stale_veth:
            link = netlink.link_by_name(node, stale_veth)
            if link is not None and link.kind == "veth":
                netlink.delete_link(node, stale_veth)
        # the plugin runs in the node netns: no tentative (DAD) link-local on a fresh
        # bridge, so IPv6 through it works as soon as ADD returns
        bridge = netlink.ensure_bridge(node, conf.bridge, conf.mtu, bool(conf.vlan), conf.promisc, before_up=lambda:
                                       sysctl.write("net", "ipv6", "conf", conf.bridge, "accept_dad", value="0"))
        _step_done("bridge", env)

        host, ct = netlink.create_veth(node, cont, args.netns, host_name, args.ifname, conf.mtu, conf.mac)
        undo.callback(_quietly(lambda: netlink.delete_link(node, host.name)))
        if host.name != host_name:
            record["hostVeth"] = host.name
            journal.put(SECTION, record)
        # A bridge port hands every frame to the bridge, so the port's own IPv6 (a
        # link-local address, DAD, MLD, its routes) serves nothing; setting it up on
        # each carrier change is RTNL-held kernel work that grows with the ports.
        sysctl.write("net", "ipv6", "conf", host.name, "disable_ipv6", value="1")
        netlink.attach_port(node, host, bridge, conf.hairpin, conf.vlan, conf.preserve_default_vlan,
                            conf.port_isolation)
        if not conf.enable_dad and any(":" in ip["address"] for ip in result["ips"]):
            with netns.entered(args.netns):  # before up: no tentative link-local, v6 works when ADD returns
                sysctl.write("net", "ipv6", "conf", args.ifname, "accept_dad", value="0")
        if not conf.disable_container_interface:
            netlink.set_up(cont, ct.index, args.ifname)
        _step_done("veth", env)

        nodad = not conf.enable_dad
        for ip in result["ips"]:
            netlink.add_address(cont, ct.index, ip["address"], nodad)
        _step_done("addresses", env)
        for dst, gw in routes:
            netlink.add_route(cont, ct.index, dst, gw)
        _step_done("routes", env)

        for cidr in bridge_gws:
            _ensure_gateway(node, bridge, cidr, conf.force_address, nodad=True)
        _step_done("gateway", env)

        families = {ipaddress.ip_interface(ip["address"]).version for ip in result["ips"]}
        if 4 in families:
            sysctl.ensure(*sysctl.IPV4_FORWARD, value="1")
        if 6 in families:
            sysctl.ensure(*sysctl.IPV6_FORWARD, value="1")
        _step_done("sysctls", env)

        masq_data: dict[str, Any] | None = None
        if conf.ip_masq:
            masq = _masq()
            masq_data = masq.setup(args.network, args.container_id, args.ifname, conf.bridge,
                                   [ip["address"] for ip in result["ips"]], env)
            undo.callback(_quietly(lambda: masq.teardown(masq_data, args.network, args.container_id,
                                                         args.ifname, env)))
        _step_done("masq", env)

        if conf.isolate:
            from portmap import isolation

            isolation.setup(conf.bridge, conf.isolate, env)
            undo.callback(_quietly(lambda: isolation.release(args.network, args.container_id, args.ifname,
                                                             conf.bridge, conf.isolate, env)))
        elif not conf.ip_masq and strict_node(state_root(env)):
            # a strict network keeps every berth bridge out, this one too (ipMasq adds its own)
            from portmap import isolation

            isolation.enlist(conf.bridge, env)
        _step_done("isolation", env)

        # the bridge takes the lowest port MAC: read it after attaching, as upstream does
        bridge = netlink.link_by_name(node, conf.bridge) or bridge
        ct = netlink.link_by_name(cont, args.ifname) or ct
    result["interfaces"] = [
        {"name": bridge.name, "mac": bridge.mac},
        {"name": host.name, "mac": host.mac},
        {"name": args.ifname, "mac": ct.mac, "sandbox": args.netns},
    ]
    record.update({
        "state": "added", "hostVeth": host.name, "mac": ct.mac,
        "ips": [ip["address"] for ip in result["ips"]], "masq": masq_data,
    })
    journal.put(SECTION, record)
    return result


def _quietly(fn: Callable[[], Any]) -> Callable[[], None]:
    """An undo step that never masks the error that triggered the rollback."""
    def run() -> None:
        with contextlib.suppress(Exception):
            fn()
    return run


# --- DEL -----------------------------------------------------------------------

def cmd_del(args: CmdArgs) -> None:
    try:
        conf = parse(args.config, args.args)
    except CNIError:
        conf = None  # a config we cannot parse must not leave addresses leased forever
    journal = _journal(args)
    try:
        record = journal.section(SECTION) or {}
    except CNIError:
        record = {}  # clean up what the config tells us; never wedge the pod's removal
    problems: list[CNIError] = []
    env = args.environ

    masq_data = record.get("masq")
    if (conf and conf.ip_masq) or masq_data is not None:
        try:
            _masq().teardown(masq_data, args.network, args.container_id, args.ifname, env)
        except Exception as exc:
            problems.append(_as_cni(exc, errors.NFTABLES_FAILURE, "masquerade"))

    try:
        _del_interfaces(args, record)
    except Exception as exc:
        problems.append(_as_cni(exc, errors.NETLINK_FAILURE, "interface"))

    ipam_type = conf.ipam_type if conf else str(record.get("ipamType") or "")
    if ipam_type:
        try:
            delegate(ipam_type, "DEL", args)
        except CNIError as exc:
            problems.append(CNIError(exc.code, f"IPAM {ipam_type}: {exc.msg}", exc.details))

    if len(problems) == 1:
        raise problems[0]  # keep the journal: a retried DEL still knows what to clean
    if problems:
        raise CNIError(problems[0].code, "DEL did not finish", "; ".join(p.msg for p in problems))
    _release_isolation(args, conf, record)
    journal.drop(SECTION)  # an unreadable journal goes too: what it could tell was derived above


def _release_isolation(args: CmdArgs, conf: BridgeConf | None, record: dict[str, Any]) -> None:
    """The last attachment on an isolated bridge takes it out of the isolation sets."""
    mode = str(record.get("isolate") or (conf.isolate if conf else ""))
    bridge = str(record.get("bridge") or (conf.bridge if conf else ""))
    if not mode or not bridge:
        return
    from portmap import isolation

    try:
        isolation.release(args.network, args.container_id, args.ifname, bridge, mode, args.environ)
    except Exception as exc:
        raise _as_cni(exc, errors.NFTABLES_FAILURE, "isolation") from None


def _as_cni(exc: Exception, code: int, what: str) -> CNIError:
    if isinstance(exc, CNIError):
        return CNIError(exc.code, f"{what}: {exc.msg}", exc.details)
    return CNIError(code, f"{what}: {exc}")


def _del_interfaces(args: CmdArgs, record: dict[str, Any]) -> None:
    """Delete the container interface (its host end goes with it).

    Without a usable CNI_NETNS the journal's host veth name is used instead: a
    netns path from the journal could by now name someone else's namespace
    (/proc/<pid>/ns/net after pid reuse), the veth name cannot.
    """
    if args.netns:
        try:
            netlink.delete_container_link(args.netns, args.ifname)
            return
        except (netns.NetnsNotFound, netns.NotANetns):
            pass
    _delete_host_veth(str(record.get("hostVeth") or ""))


def _delete_host_veth(name: str) -> None:
    """Delete the journaled host end (only if it still is a veth: names get reused)."""
    if not name:
        return
    with netlink.open_node() as node:
        link = netlink.link_by_name(node, name)
        if link is not None and link.kind == "veth":
            netlink.delete_link(node, name)


# --- CHECK ---------------------------------------------------------------------

def cmd_check(args: CmdArgs) -> None:
    conf = parse(args.config, args.args)
    prev = prev_result(args.config)
    if prev is None:
        raise errors.invalid_config("required prevResult missing")
    with _kernel_errors("CHECK"):
        netns.check_container(args.netns)
    if conf.layer3:
        delegate(conf.ipam_type, "CHECK", args)
    problems: list[str] = []
    with _kernel_errors("CHECK"), netlink.open_node() as node, netlink.open_netns(args.netns) as cont:
        problems += _check_links(args, conf, prev, node, cont)
    record = _journal(args).section(SECTION) or {}
    if conf.ip_masq and record.get("masq") is not None:
        att = Attachment(args.network, args.container_id, args.ifname, bridge=BridgeRecord.from_json(record))
        problems += _masq().check(att)
    elif conf.ip_masq and record:
        problems.append("journal records no masquerade for this attachment")
    if conf.isolate:
        from portmap import isolation

        problems += isolation.check(conf.bridge, conf.isolate)
    if problems:
        raise CNIError(errors.CHECK_FAILED, "CHECK failed: " + problems[0], "; ".join(problems))


def _check_links(
    args: CmdArgs, conf: BridgeConf, prev: Result, node: netlink.Handle, cont: netlink.Handle,
) -> list[str]:
    problems: list[str] = []
    ct = netlink.link_by_name(cont, args.ifname)
    if ct is None:
        return [f"container interface {args.ifname} not found in {args.netns}"]
    bridge = netlink.link_by_name(node, conf.bridge)
    if bridge is None or bridge.kind != "bridge":
        problems.append(f"bridge {conf.bridge} not found")
    want = [i for i in prev.get("interfaces", []) if i.get("name") == args.ifname and i.get("sandbox")]
    if want and want[0].get("mac") and want[0]["mac"].lower() != ct.mac:
        problems.append(f"{args.ifname} has MAC {ct.mac}, expected {want[0]['mac']}")
    host = netlink.link_by_index(node, ct.peer_index)
    if host is None or host.kind != "veth":
        problems.append(f"host end of {args.ifname} not found")
    elif bridge is not None and host.master != bridge.index:
        problems.append(f"host veth {host.name} is not attached to bridge {conf.bridge}")
    have_addrs = {str(ipaddress.ip_interface(a)) for a in netlink.addresses(cont, ct.index)}
    for ip in prev.get("ips", []):
        if str(ipaddress.ip_interface(ip["address"])) not in have_addrs:
            problems.append(f"address {ip['address']} missing on {args.ifname}")
    have_routes = {(str(ipaddress.ip_network(r.dst, strict=False)), _norm_ip(r.gw))
                   for r in netlink.routes(cont, ct.index)}
    have_dsts = {dst for dst, _ in have_routes}
    for route in prev.get("routes", []):
        dst = str(ipaddress.ip_network(route["dst"], strict=False))
        gw = _norm_ip(route.get("gw"))
        present = (dst, gw) in have_routes if gw else dst in have_dsts
        if not present:
            problems.append(f"route {dst} via {gw or 'link'} missing in {args.netns}")
    return problems


def _norm_ip(value: str | None) -> str | None:
    return str(ipaddress.ip_address(value)) if value else None


# --- STATUS and GC -------------------------------------------------------------

def cmd_status(args: CmdArgs) -> None:
    conf = parse(args.config, args.args)
    if os.geteuid() != 0:
        raise CNIError(errors.PLUGIN_NOT_AVAILABLE, "berth-bridge needs root (CAP_NET_ADMIN) to create links")
    try:
        with netlink.open_node() as node:
            link = netlink.link_by_name(node, conf.bridge)
    except netlink.NetlinkFailure as exc:
        raise CNIError(errors.PLUGIN_NOT_AVAILABLE, f"netlink unusable: {exc}") from None
    if link is not None and link.kind != "bridge":
        raise CNIError(errors.PLUGIN_NOT_AVAILABLE, f"{conf.bridge!r} exists but is not a bridge")
    if conf.ip_masq:
        import importlib.util

        if importlib.util.find_spec("nftables") is None:
            raise CNIError(errors.PLUGIN_NOT_AVAILABLE, "ipMasq needs libnftables, which is not available")
        from portmap import nft

        problem = nft.unsupported()
        if problem is not None:
            raise CNIError(errors.PLUGIN_NOT_AVAILABLE, *problem)
    if conf.layer3:
        try:
            delegate(conf.ipam_type, "STATUS", args)
        except CNIError as exc:
            if exc.code in (errors.PLUGIN_NOT_AVAILABLE, errors.LIMITED_CONNECTIVITY):
                raise
            raise CNIError(errors.PLUGIN_NOT_AVAILABLE, f"IPAM {conf.ipam_type}: {exc.msg}", exc.details) from None


def cmd_gc(args: CmdArgs) -> None:
    conf = parse(args.config, args.args)
    valid = valid_attachments(args.config)
    problems: list[str] = []
    root = state_root(args.environ)
    spared: list[dict[str, str]] = []
    isolated = {conf.bridge} if conf.isolate else set()  # also clears what a lost journal left
    for _path, data in journals(root, args.network):
        record = data.get(SECTION)
        cid, ifname = str(data.get("containerID", "")), str(data.get("ifname", ""))
        if not isinstance(record, dict) or (cid, ifname) in valid or not cid or not ifname:
            continue
        if record.get("state") == "adding" and _age(data) < ADDING_GRACE_SECONDS:
            # an ADD may be running right now; the runtime cannot have listed it yet
            spared.append({"containerID": cid, "ifname": ifname})
            continue
        if record.get("isolate") and record.get("bridge"):
            isolated.add(str(record["bridge"]))
        try:
            _gc_one(args, Journal(root, args.network, cid, ifname), record, cid, ifname)
        except Exception as exc:
            problems.append(f"{cid}/{ifname}: {exc}")
    if isolated:
        from portmap import isolation

        for bridge in sorted(isolated):
            try:  # "strict" re-counts both sets: whatever the gone attachments were
                isolation.release(args.network, "", "", bridge, isolation.STRICT, args.environ)
            except Exception as exc:
                problems.append(f"isolation of {bridge}: {exc}")
    try:
        remove_empty_journals(root, args.network)  # a power loss's leftovers: no DEL will come for them
    except (OSError, CNIError) as exc:
        problems.append(f"empty journals: {exc}")
    if conf.layer3:
        try:
            delegate(conf.ipam_type, "GC", args, stdin=_ipam_gc_stdin(args.config, spared))
        except CNIError as exc:
            problems.append(f"IPAM {conf.ipam_type}: {exc.msg}")
    if problems:
        raise CNIError(errors.NETLINK_FAILURE, "GC did not finish", "; ".join(problems))


def _ipam_gc_stdin(config: dict[str, Any], spared: list[dict[str, str]]) -> bytes | None:
    """IPAM's GC must spare the leases of the ADDs spared above (else the next ADD
    gets an address an in-flight ADD is about to use); None: the config as is."""
    if not spared:
        return None
    from cni import jsonc

    key = "cni.dev/valid-attachments" if "cni.dev/valid-attachments" in config else "cni.dev/attachments"
    widened = dict(config)
    widened[key] = [*config.get(key, []), *spared]
    return jsonc.dumps(widened).encode()


def _age(data: dict[str, Any]) -> float:
    created = data.get("created")
    return time.time() - created if isinstance(created, (int, float)) else float("inf")


def _gc_one(args: CmdArgs, journal: Journal, record: dict[str, Any], cid: str, ifname: str) -> None:
    if record.get("masq") is not None:
        _masq().teardown(record["masq"], args.network, cid, ifname, args.environ)
    _delete_host_veth(str(record.get("hostVeth") or ""))
    journal.drop(SECTION)


FUNCS = PluginFuncs(
    name="berth-bridge", add=cmd_add, delete=cmd_del, check=cmd_check, gc=cmd_gc, status=cmd_status,
    known_args=frozenset({"IP", "MAC", "K8S_POD_NAME", "K8S_POD_NAMESPACE", "K8S_POD_INFRA_CONTAINER_ID",
                          "K8S_POD_UID"}),
)
