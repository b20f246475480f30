"""Delegating to the IPAM plugin: in-process for berth's own, exec for the rest.

berth's IPAM runs inside the bridge process (saves an exec and an interpreter
start per pod); anything else is found on CNI_PATH and exec'd with the same
stdin and a CNI_COMMAND of our choosing, as libcni's invoke package does.
berth's other names (the CLI, the bridge, portmap, by name or by a link on
CNI_PATH that leads to this executable) are never an IPAM plugin: error 7.
"""

from __future__ import annotations

import json
import os

from cni import errors
from cni.errors import CNIError
from cni.skel import CmdArgs, PluginFuncs
from cni.spec import CURRENT_VERSION, Result, convert_result

# Plugin types that are this very program; run them without an exec.
OWN_PLUGINS = ("berth-host-local", "berth-bridge", "berth-portmap")
OWN_IPAM = ("berth-host-local",)  # those of them that are IPAM plugins
OWN_NAMES = ("berth", *OWN_PLUGINS)
# Set by cni.main to the real path of the running executable, so an aliased
# link (host-local -> berth) on CNI_PATH is recognised as ourselves.
SELF_PATH: str | None = None
EXEC_TIMEOUT_SECONDS = 300


def own_funcs(plugin_type: str) -> PluginFuncs | None:
    from cni.main import plugin_funcs

    return plugin_funcs(plugin_type)


def own_ipam(plugin_type: str) -> PluginFuncs:
    """The funcs of one of berth's names used as the IPAM type; error 7 unless it is an IPAM plugin."""
    from cni.main import canonical_name

    name = canonical_name(plugin_type)
    funcs = own_funcs(plugin_type) if name in OWN_IPAM else None
    if funcs is None:
        raise errors.invalid_config(f"invalid IPAM type {plugin_type!r}",
                                    "it is berth's own executable but no IPAM plugin (berth's is berth-host-local)")
    return funcs


def find_plugin(plugin_type: str, path: list[str]) -> str:
    bad = not isinstance(plugin_type, str) or plugin_type in ("", ".", "..")
    if bad or "/" in plugin_type or "\0" in plugin_type:
        raise errors.invalid_config(f"invalid plugin type {plugin_type!r}")
    for directory in path:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CNIError(
        errors.INVALID_NETWORK_CONFIG, f"failed to find plugin {plugin_type!r} in path {path}"
    )


def _is_self(executable: str) -> bool:
    return SELF_PATH is not None and os.path.realpath(executable) == SELF_PATH


def delegate(plugin_type: str, command: str, args: CmdArgs, stdin: bytes | None = None) -> Result | None:
    """Run `plugin_type` for `command` with the caller's env; return its result (current shape)."""
    data = args.stdin if stdin is None else stdin
    env = dict(args.environ)
    env["CNI_COMMAND"] = command
    funcs = own_ipam(plugin_type) if plugin_type in OWN_NAMES else None
    if funcs is None:
        executable = find_plugin(plugin_type, args.path)
        if not _is_self(executable):
            return _exec(executable, env, data, command)
        funcs = own_ipam(os.path.basename(executable))
    from cni.skel import execute

    result = execute(funcs, env, data)
    return None if result is None else convert_result(result, CURRENT_VERSION)


def _exec(executable: str, env: dict[str, str], data: bytes, command: str) -> Result | None:
    import signal
    import subprocess

    try:
        # own session: on timeout the whole group goes, including helpers the
        # plugin forked that would otherwise keep our pipes open forever
        proc = subprocess.Popen(
            [executable], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            cwd="/", start_new_session=True,
        )
    except OSError as exc:
        raise CNIError(errors.IO_FAILURE, f"cannot exec plugin {executable}", str(exc)) from None
    try:
        stdout, stderr = proc.communicate(data, timeout=EXEC_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.communicate()
        raise CNIError(errors.TRY_AGAIN_LATER, f"plugin {executable} timed out",
                       f"no answer to {command} within {EXEC_TIMEOUT_SECONDS} s") from None
    out = stdout.decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        raise _error_from(executable, out, stderr.decode("utf-8", "replace"))
    if command != "ADD" or not out:
        return None
    try:
        result = json.loads(out)
    except (ValueError, RecursionError):
        result = None
    if not isinstance(result, dict):
        # what libcni does too: a result that does not decode is an internal error of the chain
        raise CNIError(errors.INTERNAL, f"plugin {executable} printed an invalid result", out[:300])
    return convert_result(result, CURRENT_VERSION)


def _error_from(executable: str, out: str, err: str) -> CNIError:
    """The delegate's own error JSON, re-raised with its code; anything else is 999."""
    try:
        parsed = json.loads(out)
        code = parsed["code"]
        if type(code) is not int or code <= 0:
            raise ValueError(code)
        return CNIError(code, str(parsed.get("msg", "")), str(parsed.get("details", "")))
    except Exception:
        return CNIError(errors.INTERNAL, f"plugin {executable} failed", (out or err.strip())[:500])
