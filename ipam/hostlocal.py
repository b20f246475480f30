"""berth-host-local: the host-local IPAM plugin (upstream config, upstream store layout).

Handlers are thin: parse the config (ipam.config), hold the store lock for the
whole operation, and call the allocator. The module-level functions add/delete/
check/gc/status are also the in-process Python API (a store can be injected).
"""

from __future__ import annotations

from collections.abc import Callable

from cni import errors
from cni.errors import CNIError
from cni.skel import CmdArgs, PluginFuncs
from cni.spec import CURRENT_VERSION, Result, prev_result, valid_attachments
from ipam import allocator, config
from ipam.ranges import parse_ip
from ipam.store import DiskStore, Store

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from typing import Any

StoreFactory = Callable[[str, str], Store]  # (network, dataDir) -> Store


def disk_store(network: str, data_dir: str) -> Store:
    return DiskStore(data_dir, network)


def add(net_config: dict[str, Any], container_id: str, ifname: str, raw_args: str = "",
        store_factory: StoreFactory = disk_store) -> Result:
    conf = config.load(net_config, raw_args)
    store = store_factory(conf.network, conf.data_dir)
    with store.lock(create=True):
        allocs = allocator.allocate(store, conf.range_sets, container_id, ifname, conf.requested)
    result: Result = {"cniVersion": CURRENT_VERSION, "ips": [a.to_json() for a in allocs]}
    if conf.routes:
        result["routes"] = conf.routes
    result["dns"] = conf.dns
    return result


def delete(net_config: dict[str, Any], container_id: str, ifname: str,
           store_factory: StoreFactory = disk_store) -> None:
    store = store_factory(*config.location(net_config))
    with store.lock(create=False) as present:
        if present:
            allocator.release(store, container_id, ifname)


def check(net_config: dict[str, Any], container_id: str, ifname: str,
          store_factory: StoreFactory = disk_store) -> None:
    conf = config.load(net_config)
    store = store_factory(conf.network, conf.data_dir)
    with store.lock(create=False) as present:
        held = allocator.held_by(store, container_id, ifname) if present else []
    prev = prev_result(net_config)
    expected = []
    for ip in (prev or {}).get("ips") or []:
        addr = parse_ip(ip["address"], "prevResult address")
        if any(rs.contains(addr) for rs in conf.range_sets):
            expected.append(addr)
    missing = [str(a) for a in expected if a not in held]
    if missing:
        raise CNIError(errors.CHECK_FAILED,
                       f"{container_id} ({ifname}) holds no lease for {', '.join(missing)} in network {conf.network}")
    if not held:
        raise CNIError(errors.CHECK_FAILED,
                       f"failed to find an address held by {container_id} ({ifname}) in network {conf.network}")


def gc(net_config: dict[str, Any], store_factory: StoreFactory = disk_store) -> None:
    valid = valid_attachments(net_config)
    store = store_factory(*config.location(net_config))
    with store.lock(create=False) as present:
        if present:
            allocator.gc(store, valid)


def status(net_config: dict[str, Any], store_factory: StoreFactory = disk_store) -> None:
    conf = config.load(net_config)
    store = store_factory(conf.network, conf.data_dir)
    problem = store.writable_problem() if isinstance(store, DiskStore) else None
    if problem is None:
        problem = allocator.free_problem(store, conf.range_sets)
    if problem:
        raise CNIError(errors.PLUGIN_NOT_AVAILABLE, f"host-local IPAM for {conf.network}: {problem}")


# --- CNI verbs -------------------------------------------------------------

def cmd_add(args: CmdArgs) -> Result:
    return add(args.config, args.container_id, args.ifname, args.raw_args)


def cmd_del(args: CmdArgs) -> None:
    delete(args.config, args.container_id, args.ifname)


def cmd_check(args: CmdArgs) -> None:
    check(args.config, args.container_id, args.ifname)


def cmd_gc(args: CmdArgs) -> None:
    gc(args.config)


def cmd_status(args: CmdArgs) -> None:
    status(args.config)


FUNCS = PluginFuncs(
    name="berth-host-local", add=cmd_add, delete=cmd_del, check=cmd_check, gc=cmd_gc, status=cmd_status,
    # IP is ours; the rest are what runtimes and the bridge plugin commonly pass through.
    known_args=frozenset({"IP", "MAC", "K8S_POD_NAME", "K8S_POD_NAMESPACE", "K8S_POD_INFRA_CONTAINER_ID",
                          "K8S_POD_UID"}),
)
