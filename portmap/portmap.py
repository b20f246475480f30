"""berth-portmap: hostPort -> container DNAT on nftables (chained after a bridge).

ADD is one libnftables transaction (base layout + the attachment's CNI-DN chain
+ its verdict-map elements) under the node-wide ports lock, recorded in the
journal section "portmap" before it commits; DEL, CHECK and GC work from that
journal (a DEL that finds no journal derives the chain name and removes what
jumps to it). Test-only hooks, as cni/bridge.py's: BERTH_TEST_KILL_AFTER=<step>
SIGKILLs the process and BERTH_TEST_FAIL_AFTER=<step> raises after <step>, one of
    portmap-journal (intent written), portmap-nft (transaction committed),
    portmap-proxy ([::1] proxy up and journaled, not yet told to serve)
"""

from __future__ import annotations

import os
import sys

from cni import addrs, ctx, errors, records, state, sysctl
from cni.errors import CNIError
from cni.records import Attachment, PortMapping, PortmapRecord, ProxyRecord
from cni.skel import CmdArgs, PluginFuncs
from cni.spec import Result, prev_result, valid_attachments
from portmap import conntrack, generation, layout, listeners, nft, ports, proxyctl
from portmap.conf import Conf

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from typing import Any

SECTION = "portmap"
STEPS = ("portmap-journal", "portmap-nft", "portmap-proxy")


SIGKILL = 9  # the test hook's kill; `signal` would import enum for every exec


def _step_done(step: str, environ: Any) -> None:
    if environ.get("BERTH_TEST_KILL_AFTER") == step:
        os.kill(os.getpid(), SIGKILL)
    if environ.get("BERTH_TEST_FAIL_AFTER") == step:
        raise CNIError(errors.INTERNAL, f"test failure injected after step {step!r}")


# --- prevResult ------------------------------------------------------------------

def container_addresses(result: Result, ifname: str) -> list[str]:
    """Addresses of the sandbox interface (upstream: ips whose interface has a sandbox)."""
    interfaces = result.get("interfaces") or []
    ips = result.get("ips") or []
    out: list[str] = []
    for ip in ips:
        index = ip.get("interface")
        if index is None:
            continue
        if 0 <= index < len(interfaces) and interfaces[index].get("sandbox") and \
                interfaces[index].get("name") in (ifname, None, ""):
            out.append(addrs.interface_address(ip["address"]))
    if not out and not any(ip.get("interface") is not None for ip in ips):
        out = [addrs.interface_address(ip["address"]) for ip in ips]
    return list(dict.fromkeys(out))


def host_veth(result: Result) -> str | None:
    """The node-side end of the container's link when prevResult shows one besides
    the bridge (a bridge plugin lists bridge, host veth, container interface)."""
    bridge = host_bridge(result)
    for iface in result.get("interfaces") or []:
        name = iface.get("name")
        if not iface.get("sandbox") and isinstance(name, str) and name and name != bridge and "/" not in name:
            return name
    return None


def host_bridge(result: Result) -> str | None:
    """The node-side interface traffic to the container leaves by: the bridge
    plugin lists the bridge first among the interfaces without a sandbox."""
    for iface in result.get("interfaces") or []:
        name = iface.get("name")
        if not iface.get("sandbox") and isinstance(name, str) and name and "/" not in name and name not in (".", ".."):
            return name
    return None


def enable_route_localnet(bridge: str) -> bool:
    """127.0.0.1:hostPort from the node needs 127/8 to cross into the bridge; the
    guard chain (layout.GUARD_CHAIN) keeps CVE-2020-8558 closed."""
    try:
        sysctl.ensure("net", "ipv4", "conf", bridge, "route_localnet", value="1")
        return True
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as exc:
        raise CNIError(errors.IO_FAILURE, f"cannot set route_localnet on {bridge}", str(exc)) from None


# --- verbs -------------------------------------------------------------------------

def _journal(args: CmdArgs, container_id: str | None = None, ifname: str | None = None) -> state.Journal:
    return state.Journal(state.state_root(args.environ), args.network, container_id or args.container_id,
                         ifname or args.ifname)


def _warn(problems: list[str]) -> None:
    for problem in problems:
        sys.stderr.write(f"berth-portmap: {problem}\n")


def cmd_add(args: CmdArgs) -> Result:
    conf = Conf(args.config)
    prev = prev_result(args.config)
    if prev is None:
        raise errors.invalid_config("berth-portmap must be called as a chained plugin (no prevResult)")
    if not conf.mappings:
        return prev
    addresses = container_addresses(prev, args.ifname)
    if not addresses:
        raise errors.invalid_config("prevResult has no addresses for the container interface")
    root = state.state_root(args.environ)
    me = ports.Owner(args.network, args.container_id, args.ifname)
    journal = _journal(args)
    chain = layout.dnat_chain_name(args.network, args.container_id, args.ifname)
    note = layout.comment(args.network, args.container_id, args.ifname)
    bridge = host_bridge(prev)

    nft.prepare()  # outside the node-wide lock
    with ports.locked(root):
        prior = journal.section(SECTION)
        _refuse_shared_chain(root, me, chain, note, prior)
        takeovers = ports.check(root, me, conf.mappings, conf.last_wins)
        wanted = proxyctl.listeners(conf.mappings, addresses) if conf.userland_proxy and proxyctl.loopback_v6() \
            else []
        warnings = [] if conf.allow_host_listeners else \
            listeners.check(conf.mappings, _versions(addresses), bool(wanted), _proxy_cookies(root, prior, takeovers))
        # after every refusal: a refused ADD changes nothing
        if conf.snat and bridge and any(addrs.version(a) == 4 for a in addresses):
            enable_route_localnet(bridge)
        record: dict[str, Any] = {"chain": chain, "addresses": addresses, "bridge": bridge, "state": "adding",
                  "mappings": [m.to_json() for m in conf.mappings], "snat": conf.snat,
                  # what `berth reconcile` needs to rebuild the mark chains as this ADD did
                  "markMasqBit": conf.mark_bit, "masqAll": conf.masq_all,
                  "externalSetMarkChain": conf.external_setmark, "boot": ports.boot_id(),
                  # what proves this owner gone to a later ADD wanting its ports (ports.vanished)
                  "hostVeth": host_veth(prev), "netns": args.netns,
                  # where the elements go (layout.map_name): DEL/CHECK of a journal
                  # an older berth wrote look in the interval maps instead
                  "layout": layout.PORTMAP_LAYOUT}
        journal.put(SECTION, record)
        try:
            _step_done("portmap-journal", args.environ)
        except CNIError:
            _restore_journal(journal, prior)
            raise
        variant = generation.portmap_variant(conf.mark_bit, conf.external_setmark)
        intact, before = generation.layout_known(root, variant)
        # the static layout only when the ruleset changed behind berth's back (generation.py)
        cmds = [] if intact else (layout.base_layout(conf.external_setmark, nft.existing(layout.LEGACY_RANGE_MAPS))
                                  + layout.mark_layout(conf.mark_bit))
        # a re-ADD of this attachment: drop its old elements first
        if prior:
            old = [PortMapping.from_json(m) for m in prior.get("mappings") or []]
            cmds += _delete_owned(root, me, str(prior.get("chain") or chain), old, prior, keep=conf.mappings)
        for t in takeovers:  # last-wins or stale owners: remove their element
            cmds += [layout.add_chain(t.claim.chain),
                     layout.add_elements(t.claim.map_name, [layout.verdict_elem(t.claim.key, t.claim.chain)]),
                     layout.delete_elements(t.claim.map_name, [t.claim.key])]
        ours = layout.attachment_add(chain, conf.mappings, addresses, snat=conf.snat, masq_all=conf.masq_all,
                                     external_setmark=conf.external_setmark, note=note,
                                     conditions=conf.conditions)
        dead = dead_owners(root, takeovers)
        cleanup = [c for owner, (_why, theirs) in dead.items()
                   for c in _dead_owner_commands(root, chain, owner, theirs)]
        try:
            try:
                nft.apply(cmds + cleanup + ours)
            except CNIError:
                if not cleanup:
                    raise
                dead = {}  # the dead owners' leftovers must not cost this ADD: only the ports it takes
                nft.apply(cmds + ours)
        except CNIError:
            _restore_journal(journal, prior)
            raise
        generation.note_commit(root, before, True, variant)
        started: proxyctl.Started | None = None
        key = (args.network, args.container_id, args.ifname)

        def journal_proxy(proxy: ProxyRecord | None) -> None:
            if proxy is None:
                record.pop("proxy", None)
            else:
                record["proxy"] = proxy.to_json()
            journal.put(SECTION, record)

        try:
            _step_done("portmap-nft", args.environ)
            if prior:
                ports.release(root, me, [PortMapping.from_json(m) for m in prior.get("mappings") or []])
                # a re-ADD: the old proxy gives its ports up before the new one binds them
                proxyctl.stop(PortmapRecord.from_json(prior).proxy, key, root)
            _forget_dead(root, dead)
            for t in takeovers:
                if t.live:
                    warnings += _shrink_proxy(root, t.claim.owner, conf.mappings)
            if wanted:
                started = proxyctl.start(root, key, wanted, journal_proxy)
                warnings += [f"[::1] not proxied: {why}" for why in started.failed]
                _step_done("portmap-proxy", args.environ)
                started.commit()
            ports.write(root, me, chain, conf.mappings)
            record["state"] = "done"
            journal.put(SECTION, record)
        except Exception:
            if started is not None:
                started.abort()
                with ctx.suppress(Exception):
                    proxyctl.stop(started.record, key, root)
            _undo_add(root, me, chain, conf.mappings, journal)
            raise
    _warn(warnings)
    for t in takeovers:
        if t.live:
            _warn([f"took host ports from {t.claim.owner.describe()} (conflictPolicy last-wins)"])
    for owner, (why, _record) in dead.items():
        _warn([f"took host ports from {owner.describe()}: {why}; removed its other port mappings and its chain"])
    if conntrack.needs_flush(conf.mappings):
        _warn(conntrack.flush(conf.mappings, _versions(addresses)))
    return prev


def dead_owners(root: str, takeovers: list[ports.Takeover]) -> dict[ports.Owner, tuple[str, dict[str, Any]]]:
    """Owners of taken ports that are proven gone (ports.vanished): why, and their portmap record."""
    out: dict[ports.Owner, tuple[str, dict[str, Any]]] = {}
    for t in takeovers:
        owner = t.claim.owner
        if not t.dead or owner in out:
            continue
        try:
            record = state.Journal(root, owner.network, owner.container_id, owner.ifname).section(SECTION)
        except CNIError:
            continue
        if record is not None:
            out[owner] = (t.dead, record)
    return out


def _dead_owner_commands(root: str, chain: str, owner: ports.Owner, record: dict[str, Any]) -> list[layout.Cmd]:
    """A dead owner's leftovers, in the transaction that takes its ports: the
    elements of every mapping it still owns, then its chain (unless shared)."""
    their_chain = str(record.get("chain") or layout.dnat_chain_name(owner.network, owner.container_id, owner.ifname))
    mappings = [PortMapping.from_json(m) for m in record.get("mappings") or []]
    cmds = _delete_owned(root, owner, their_chain, mappings, record)
    if their_chain != chain and not chain_owners(root, owner, their_chain):
        cmds += [layout.add_chain(their_chain), layout.flush_chain(their_chain), layout.delete_chain(their_chain)]
    return cmds


def _forget_dead(root: str, dead: dict[ports.Owner, tuple[str, dict[str, Any]]]) -> None:
    """After the commit that removed their leftovers: their proxy, port files and
    journal's portmap section go too (their bridge part waits for their DEL or GC)."""
    for owner, (_why, record) in dead.items():
        with ctx.suppress(CNIError):
            proxyctl.stop(PortmapRecord.from_json(record).proxy, owner, root)
        ports.release(root, owner, [PortMapping.from_json(m) for m in record.get("mappings") or []])
        with ctx.suppress(CNIError):
            state.Journal(root, owner.network, owner.container_id, owner.ifname).drop(SECTION)


def _proxy_cookies(root: str, prior: dict[str, Any] | None, takeovers: list[ports.Takeover]) -> frozenset[int]:
    """The sockets of berth's own proxies on ports this ADD may take (its re-ADD's,
    the taken owners'): no host service."""
    sections = [prior] if prior else []
    for t in takeovers:
        owner = t.claim.owner
        with ctx.suppress(CNIError):
            sections.append(state.Journal(root, owner.network, owner.container_id, owner.ifname).section(SECTION)
                            or {})
    out: set[int] = set()
    for section in sections:
        proxy = PortmapRecord.from_json(section).proxy
        out.update(c for li in (proxy.listeners if proxy else ()) for c in li.cookies)
    return frozenset(out)


def _shrink_proxy(root: str, owner: ports.Owner, taken: list[PortMapping]) -> list[str]:
    """A live owner that lost ports (last-wins) stops proxying them: its proxy is
    stopped, and its record keeps the listeners it still owns, unbound, for
    `berth reconcile` to start again."""
    journal = state.Journal(root, owner.network, owner.container_id, owner.ifname)
    stopped: list[str] = []

    def change(section: dict[str, Any]) -> dict[str, Any] | None:
        proxy = PortmapRecord.from_json(section).proxy
        if proxy is None:
            return None
        keep = [li for li in proxy.listeners if not any(
            m.protocol == li.protocol and m.host_lo <= li.host_hi and li.host_lo <= m.host_hi and
            m.host_ip in ("", "::1") for m in taken)]
        if len(keep) == len(proxy.listeners):
            return None
        proxyctl.stop(proxy, owner, root)
        stopped.append(f"stopped the [::1] proxy of {owner.describe()} (berth reconcile restarts it for the "
                       "ports it keeps)")
        rest = {k: v for k, v in section.items() if k != "proxy"}
        if keep:
            rest["proxy"] = proxy._replace(listeners=tuple(li._replace(cookies=()) for li in keep), pid=0).to_json()
        return rest

    with ctx.suppress(CNIError):
        journal.update(SECTION, change)
    return stopped


def chain_owners(root: str, me: ports.Owner, chain: str) -> list[str]:
    """Other attachments whose journal records `chain` (its name hashes network +
    containerID, as upstream's does: ("ab", "c1") and ("a", "bc1") share it)."""
    return [owner.describe() for owner, data in ports.name_sharers(root, me)
            if isinstance(data.get(SECTION), dict) and data[SECTION].get("chain") == chain]


def foreign_rules(objects: list[dict[str, Any]] | None, chain: str, note: str) -> list[str]:
    """Comments of rules in `chain` that another attachment wrote (its journal may be lost)."""
    return sorted(c for c in nft.rule_comments(objects, chain) if c != note)


def _refuse_shared_chain(root: str, me: ports.Owner, chain: str, note: str, prior: dict[str, Any] | None) -> None:
    """Two attachments must never share a DNAT chain: the second ADD would replace
    the first one's rules, and each DEL would remove the other's."""
    if prior and prior.get("chain") == chain:
        return  # a re-ADD of this attachment
    owners = chain_owners(root, me, chain)
    if not owners and nft.chain_exists(chain) is True:
        owners = [f"the attachment of its rules ({c})" for c in foreign_rules(nft.list_table(), chain, note)]
    if owners:
        raise CNIError(errors.LINK_CONFLICT, f"nftables chain {chain} already belongs to {owners[0]}",
                       "the chain is named, as upstream's portmap names it, by a hash of network name + "
                       "container ID, which are the same string joined for both attachments: "
                       "use another network name or container ID")


def _versions(addresses: list[str]) -> tuple[int, ...]:
    return tuple(sorted({addrs.version(a) for a in addresses})) or (4, 6)


def _restore_journal(journal: state.Journal, prior: dict[str, Any] | None) -> None:
    if prior:
        journal.put(SECTION, prior)
    else:
        journal.drop(SECTION)


def _undo_add(root: str, me: ports.Owner, chain: str, mappings: list[PortMapping], journal: state.Journal) -> None:
    try:
        nft.apply(layout.portmap_del(chain, layout.elements_by_map(chain, mappings)))
    finally:
        ports.release(root, me, mappings)
        journal.drop(SECTION)


def _delete_owned(root: str, me: ports.Owner, chain: str, mappings: list[PortMapping], record: dict[str, Any],
                  keep: list[PortMapping] | None = None) -> list[layout.Cmd]:
    """add-then-delete of the elements of `mappings` (made by the ADD that wrote
    `record`) that are still ours. A kept mapping whose element already sits in
    the map this ADD uses is left alone (the ADD re-adds it, a no-op)."""
    same_layout = records.schema(record) == layout.PORTMAP_LAYOUT and record.get("state") == "done"
    owned = [m for m in mappings if not (keep and m in keep and same_layout) and ports.owns_all(root, me, m)]
    cmds: list[layout.Cmd] = []
    for name, elems in recorded_elements(chain, owned, record).items():
        cmds += [layout.add_elements(name, elems), layout.delete_elements(name, [e[0] for e in elems])]
    return cmds


def recorded_elements(chain: str, mappings: list[PortMapping], record: dict[str, Any]) -> dict[str, list[Any]]:
    """The verdict-map elements of `mappings` where the ADD that wrote `record`
    put them (PortMapping.map_name: where depends on the journal's layout).
    An ADD that did not finish may have been a re-ADD of an older journal's
    attachment, interrupted on either side of its commit: then look where every
    layout puts them (add-then-delete tolerates the absent ones)."""
    out = layout.elements_by_map(chain, mappings, records.schema(record))
    if record.get("state") != "done":
        for version in records.PORTMAP_SCHEMAS:
            for name, elems in layout.elements_by_map(chain, mappings, version).items():
                have = out.setdefault(name, [])
                have += [e for e in elems if e not in have]
    # an older layout's interval maps only where they still exist: the DEL's
    # add-then-delete would create them, and the next ADD would then look them
    # up, which kernels that refuse their key (6.12) answer with EOPNOTSUPP
    gone = [name for name in out if name in layout.LEGACY_RANGE_MAPS and nft.set_exists(name) is False]
    return {name: elems for name, elems in out.items() if name not in gone}


def remove_attachment(root: str, journal: state.Journal) -> None:
    """DEL/GC of one attachment from its journal; idempotent."""
    me = ports.Owner(journal.network, journal.container_id, journal.ifname)
    nft.prepare()  # outside the node-wide lock
    with ports.locked(root):
        record = journal.section(SECTION)
        if record is None:
            return
        chain = str(record.get("chain") or layout.dnat_chain_name(me.network, me.container_id, me.ifname))
        mappings = [PortMapping.from_json(m) for m in record.get("mappings") or []]
        owned = [m for m in mappings if ports.owns_all(root, me, m)]
        if record.get("state") != "done":
            # a half-done ADD may have committed its elements without writing the
            # port files: unclaimed ports are ours to remove too
            owned += [m for m in mappings if m not in owned and ports.unclaimed(root, m)]
        # no table (flushed, or a reboot): nothing of ours is in it, and DEL must not create it
        if nft.table_exists() is not False:
            intact, before = generation.layout_known(root)
            keep = bool(chain_owners(root, me, chain))  # shared since before berth refused that: the other's too
            try:
                nft.apply(layout.portmap_del(chain, recorded_elements(chain, owned, record), keep_chain=keep))
            except CNIError:
                strict = [m for m in owned if ports.owns_all(root, me, m)]
                if strict == owned:
                    raise
                nft.apply(layout.portmap_del(chain, recorded_elements(chain, strict, record), keep_chain=keep))
                before = None  # two commits: the next ADD re-asserts
            generation.note_commit(root, before, intact)
        # before the section goes: a proxy that cannot be stopped keeps it, for the next DEL
        proxyctl.stop(PortmapRecord.from_json(record).proxy, me, root)
        ports.release(root, me, mappings)
        journal.drop(SECTION)
    if conntrack.needs_flush(mappings):
        _warn(conntrack.flush(mappings, _versions([str(a) for a in record.get("addresses") or []])))


def cmd_del(args: CmdArgs) -> None:
    journal = _journal(args)
    root = state.state_root(args.environ)
    if os.path.exists(journal.path) and journal.section(SECTION) is not None:
        remove_attachment(root, journal)
    elif _asks_for_mappings(args.config):
        # no journal (lost, or another BERTH_STATE_DIR): clean what the names tell
        remove_derived(root, ports.Owner(args.network, args.container_id, args.ifname))
    return None


def _asks_for_mappings(config: dict[str, Any]) -> bool:
    """Did the runtime's DEL name port mappings? Without any, the ADD made nothing
    (so no table listing for the common pod without published ports)."""
    runtime = config.get("runtimeConfig")
    return bool(runtime.get("portMappings")) if isinstance(runtime, dict) else False


def remove_derived(root: str, me: ports.Owner) -> None:
    """DEL without a journal: the chain CNI-DN-<hash> (derived, as upstream does),
    the hostport*/hostports* elements whose verdict jumps to it, a proxy process
    that names this attachment, and the port files that name this attachment."""
    from portmap import masq

    chain = layout.dnat_chain_name(me.network, me.container_id, me.ifname)
    note = layout.comment(me.network, me.container_id, me.ifname)
    with ports.locked(root):
        objects = nft.list_table()
        # the derived name may be another attachment's chain: then nothing in it is ours
        if not chain_owners(root, me, chain) and not foreign_rules(objects, chain, note):
            found = masq.jumping_to(chain, layout.HOSTPORT_MAPS, objects)
            if found is not None:
                nft.apply(layout.portmap_del(chain, found))
        proxyctl.stop_unjournaled(me, root)
        ports.release_owner(root, me)


def cmd_check(args: CmdArgs) -> None:
    conf = Conf(args.config)
    if prev_result(args.config) is None:
        raise errors.invalid_config("berth-portmap must be called as a chained plugin (no prevResult)")
    record = _journal(args).section(SECTION)
    if record is None:
        if conf.mappings:
            raise CNIError(errors.CHECK_FAILED, "no portmap journal for this attachment")
        return None
    root = state.state_root(args.environ)
    att = Attachment(args.network, args.container_id, args.ifname, portmap=PortmapRecord.from_json(record))
    problems = check_attachment(root, att)
    if problems:
        raise CNIError(errors.CHECK_FAILED, "port mappings are incomplete", "; ".join(problems))
    return None


def check_attachment(root: str, att: Attachment) -> list[str]:
    """What of the attachment's published ports is missing: what `berth explain`
    reports for it (portmap/diff.py), the static layout and the marks included."""
    from portmap import diff

    record = att.portmap
    if record is None:
        return []
    table = diff.snapshot()
    problems = [] if record.done else ["the ADD did not complete"]
    problems += diff.static_problems(table)
    if record.snat and record.mappings:
        problems += diff.mark_problems(table, record.mark_bit if record.mark_bit is not None
                                       else layout.DEFAULT_MASQ_BIT)
    owned = diff.Ownership(root, state.attachments(root)).owned(att)
    problems += [m.what for m in diff.portmap_missing(att, table, owned)]
    taken = [diff.format_mapping(m) for m in record.mappings if m not in owned]
    if taken:
        problems.append("held by another attachment: " + ", ".join(taken))
    problems += [m.what for m in diff.proxy_missing(att, proxyctl.present(diff.proxied_ports([att])))]
    return problems


def cmd_gc(args: CmdArgs) -> None:
    valid = valid_attachments(args.config)
    root = state.state_root(args.environ)
    if os.path.isdir(ports.ports_dir(root)):
        with ports.locked(root):  # no writer is midway: every temporary is a killed one's
            ports.remove_temporaries(root)
    problems = []
    for _path, data in list(state.journals(root, args.network)):
        if not isinstance(data.get(SECTION), dict):
            continue
        cid, ifname = str(data.get("containerID", "")), str(data.get("ifname", ""))
        if (cid, ifname) in valid or not cid or not ifname:
            continue
        try:
            remove_attachment(root, state.Journal(root, args.network, cid, ifname))
        except CNIError as exc:
            problems.append(f"{cid}/{ifname}: {exc.msg} {exc.details}")
    if problems:
        raise CNIError(errors.NFTABLES_FAILURE, "GC left some attachments behind", "; ".join(problems)[:2000])
    return None


def cmd_status(args: CmdArgs) -> None:
    Conf(args.config)
    problem = nft.unsupported()
    if problem is not None:
        raise CNIError(errors.PLUGIN_NOT_AVAILABLE, *problem)
    return None


FUNCS = PluginFuncs(
    name="berth-portmap", add=cmd_add, delete=cmd_del, check=cmd_check, gc=cmd_gc, status=cmd_status,
    known_args=frozenset(),
)
