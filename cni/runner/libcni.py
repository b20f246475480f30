"""Running a network list the way libcni does (AddNetworkList, CheckNetworkList,
DelNetworkList, GCNetworkList, GetStatusNetworkList).

Every plugin is exec'd from CNI_PATH, never run in-process, so `berth add`
exercises exactly what a runtime would: the plugin's env is the caller's env
with the CNI_* variables replaced, its stdin the injected config.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cni import errors
from cni.errors import CNIError
from cni.invoke import decode_result, find_plugin, run_plugin
from cni.runner import cache
from cni.runner.conflist import NetworkList, plugin_config
from cni.skel import validate_container_id, validate_ifname, validate_network_name
from cni.spec import convert_result, version_at_least


@dataclass
class RuntimeConf:
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: list[list[str]] = field(default_factory=list)  # CNI_ARGS as [key, value] pairs
    capability_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Runner:
    path: list[str]
    cache_dir: str
    environ: Mapping[str, str]

    # --- one plugin ----------------------------------------------------------
    def _env(self, command: str, rt: RuntimeConf) -> dict[str, str]:
        env = dict(self.environ)
        env.update({
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": rt.container_id,
            "CNI_NETNS": rt.netns,
            "CNI_ARGS": ";".join(f"{k}={v}" for k, v in rt.args),
            "CNI_IFNAME": rt.ifname,
            "CNI_PATH": os.pathsep.join(self.path),
        })
        return env

    def exec_plugin(self, plugin: dict[str, Any], command: str, stdin: bytes, rt: RuntimeConf) -> dict[str, Any] | None:
        """Exec the plugin for one verb (cni.invoke's exec path); its ADD result as
        printed, None otherwise. Errors keep the plugin's code, prefixed like libcni's."""
        plugin_type = str(plugin.get("type", ""))
        executable = find_plugin(plugin_type, self.path)
        try:
            # the plugin's stderr goes on to ours, as libcni's RawExec does
            out = run_plugin(executable, self._env(command, rt), stdin, command,
                             stderr_sink=sys.stderr.buffer.write)
            if command != "ADD":
                return None
            return decode_result(executable, out)
        except CNIError as err:
            raise CNIError(err.code, f"plugin {describe(plugin)} failed ({command.lower()}): {err.msg}",
                           err.details) from None

    # --- lists -----------------------------------------------------------------
    def add(self, netlist: NetworkList, rt: RuntimeConf) -> dict[str, Any]:
        validate_container_id(rt.container_id)
        validate_network_name(netlist.name)
        validate_ifname(rt.ifname)
        result: dict[str, Any] | None = None
        for plugin in netlist.plugins:
            stdin = plugin_config(netlist, plugin, result, rt.capability_args)
            result = self.exec_plugin(plugin, "ADD", stdin, rt)
        assert result is not None  # a list has at least one plugin
        cache.write(self.cache_dir, cache.Attachment(
            container_id=rt.container_id, network=netlist.name, ifname=rt.ifname, config=netlist.raw,
            netns=rt.netns, cni_args=rt.args, capability_args=rt.capability_args, result=result,
        ))
        return result

    def cached_result(self, netlist: NetworkList, rt: RuntimeConf) -> dict[str, Any] | None:
        att = cache.read(self.cache_dir, netlist.name, rt.container_id, rt.ifname)
        if att is None or att.result is None:
            return None
        # in the list's version, so plugins get prevResult in their config's version
        return convert_result(att.result, netlist.version)

    def check(self, netlist: NetworkList, rt: RuntimeConf) -> None:
        if not version_at_least(netlist.version or "0.1.0", "0.4.0"):
            raise CNIError(errors.INCOMPATIBLE_VERSION,
                           f"configuration version {netlist.version!r} does not support the CHECK command")
        if netlist.disable_check:
            return
        prev = self.cached_result(netlist, rt)
        for plugin in netlist.plugins:
            self.exec_plugin(plugin, "CHECK", plugin_config(netlist, plugin, prev, rt.capability_args), rt)

    def delete(self, netlist: NetworkList, rt: RuntimeConf) -> None:
        prev = None
        if version_at_least(netlist.version or "0.1.0", "0.4.0"):
            try:
                prev = self.cached_result(netlist, rt)
            except CNIError:  # an unreadable cache entry must not block DEL (libcni drops it)
                cache.remove(self.cache_dir, netlist.name, rt.container_id, rt.ifname)
        for plugin in reversed(netlist.plugins):
            self.exec_plugin(plugin, "DEL", plugin_config(netlist, plugin, prev, rt.capability_args), rt)
        cache.remove(self.cache_dir, netlist.name, rt.container_id, rt.ifname)

    def gc(self, netlist: NetworkList, valid: list[dict[str, str]] | None = None) -> list[CNIError]:
        """GC every plugin; `valid` defaults to every cached attachment of the network.

        cnitool calls GCNetworkList with no args, which makes libcni DEL every
        cached attachment; berth instead treats what the cache holds as alive,
        so `berth gc` only removes what no runtime remembers.
        """
        cached = cache.attachments(self.cache_dir, netlist.name)
        if valid is None:
            valid = [{"containerID": a.container_id, "ifname": a.ifname} for a in cached]
        keep = {(v["containerID"], v["ifname"]) for v in valid}
        problems: list[CNIError] = []
        for att in cached:
            if (att.container_id, att.ifname) in keep:
                continue
            rt = RuntimeConf(att.container_id, att.netns, att.ifname, att.cni_args, att.capability_args)
            try:
                self.delete(netlist, rt)
            except CNIError as err:
                problems.append(CNIError(err.code, f"failed to delete stale attachment {att.container_id} "
                                                   f"{att.ifname}: {err.msg}", err.details))
        if netlist.disable_gc or not version_at_least(netlist.version or "0.1.0", "1.1.0"):
            return problems
        for plugin in netlist.plugins:
            stdin = plugin_config(netlist, plugin, extra={"cni.dev/valid-attachments": valid})
            try:
                self.exec_plugin(plugin, "GC", stdin, RuntimeConf())
            except CNIError as err:
                problems.append(err)
        return problems

    def status(self, netlist: NetworkList) -> None:
        if not version_at_least(netlist.version or "0.1.0", "1.1.0"):
            return
        for plugin in netlist.plugins:  # the first failure answers, with its own code
            self.exec_plugin(plugin, "STATUS", plugin_config(netlist, plugin), RuntimeConf())


def describe(plugin: Mapping[str, Any]) -> str:
    out = f"type={str(plugin.get('type', ''))!r}"
    if plugin.get("name"):
        out += f" name={str(plugin['name'])!r}"
    return out
