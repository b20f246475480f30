"""Running another plugin: in-process for berth's own, exec for the rest.

berth's IPAM runs inside the bridge process (saves an exec and an interpreter
start per pod); anything else is found on CNI_PATH and exec'd. `run_plugin` is
the one exec path, for delegation and for the runner (cni/runner/libcni.py)
alike: one timeout, one kill, one reading of what the plugin printed.

Which plugin types are berth itself is told by the entry point
(`register_own`): this module, below the plugins, imports none of them.
berth's other names (the CLI, the bridge, portmap, by name or by a link on
CNI_PATH that leads to this executable) are never an IPAM plugin: error 7.
"""

from __future__ import annotations

import os

from cni import errors, jsonc
from cni.errors import CNIError
from cni.skel import CmdArgs, PluginFuncs
from cni.spec import CURRENT_VERSION, Result, convert_result

# Plugin types that are this very program; run them without an exec.
OWN_PLUGINS = ("berth-host-local", "berth-bridge", "berth-portmap", "berth-loopback", "berth-tuning",
               "berth-firewall", "berth-bandwidth")
OWN_IPAM = ("berth-host-local",)  # those of them that are IPAM plugins
OWN_NAMES = ("berth", *OWN_PLUGINS)
# What a plugin gets to answer: runtimes give a whole ADD a few minutes.
EXEC_TIMEOUT_SECONDS = 300.0

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from collections.abc import Callable

    Resolver = Callable[[str], PluginFuncs | None]
_resolver: Resolver | None = None
_self_path: str | None = None


def register_own(resolver: Resolver, self_path: str | None = None) -> None:
    """How to find berth's own plugins in-process (by type or exec name), and the
    real path of the running executable, so that a link to it on CNI_PATH
    (an aliased `host-local`) is recognised as ourselves and not exec'd."""
    global _resolver, _self_path
    _resolver = resolver
    _self_path = os.path.realpath(self_path) if self_path else None


def own_executable() -> str | None:
    """The running berth executable, as register_own was told (None: not told)."""
    return _self_path


def own_funcs(plugin_type: str) -> PluginFuncs | None:
    return _resolver(plugin_type) if _resolver is not None else None


def own_ipam(plugin_type: str) -> PluginFuncs:
    """The funcs of one of berth's names used as the IPAM type; error 7 unless it is an IPAM plugin."""
    funcs = own_funcs(plugin_type)
    if funcs is None or funcs.name not in OWN_IPAM:
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
    return _self_path is not None and os.path.realpath(executable) == _self_path


def delegate(plugin_type: str, command: str, args: CmdArgs, stdin: bytes | None = None) -> Result | None:
    """Run `plugin_type` for `command` with the caller's env; return its result (current shape)."""
    data = args.stdin if stdin is None else stdin
    env = dict(args.environ)
    env["CNI_COMMAND"] = command
    if plugin_type in OWN_NAMES and plugin_type not in OWN_IPAM:
        raise errors.invalid_config(f"invalid IPAM type {plugin_type!r}",
                                    "it is berth's own executable but no IPAM plugin (berth's is berth-host-local)")
    funcs = own_funcs(plugin_type) if plugin_type in OWN_IPAM else None
    if funcs is None:
        executable = find_plugin(plugin_type, args.path)
        if not _is_self(executable):
            out = run_plugin(executable, env, data, command)
            if command != "ADD" or not out:
                return None
            return convert_result(decode_result(executable, out), CURRENT_VERSION)
        funcs = own_ipam(os.path.basename(executable))
    from cni.skel import execute

    result = execute(funcs, env, data)
    return None if result is None else convert_result(result, CURRENT_VERSION)


def run_plugin(executable: str, env: dict[str, str], data: bytes, command: str,
               timeout: float | None = None, stderr_sink: Callable[[bytes], object] | None = None) -> str:
    """Exec `executable` with `data` on stdin and `env` as its whole environment;
    return what it printed. A plugin that fails raises its own CNI error (code
    kept), or 999 with what it printed when that is not one; an exec that
    fails is code 5; no answer within the timeout is code 11, after the
    plugin's whole process group is killed (helpers it forked would otherwise
    keep our pipes open forever). `stderr_sink` gets what it wrote to stderr."""
    import signal
    import subprocess

    limit = EXEC_TIMEOUT_SECONDS if timeout is None else timeout
    try:
        proc = subprocess.Popen(
            [executable], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            cwd="/", start_new_session=True,
        )
    except OSError as exc:
        raise CNIError(errors.IO_FAILURE, f"cannot exec plugin {executable}", str(exc)) from None
    try:
        stdout, stderr = proc.communicate(data, timeout=limit)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.communicate()
        raise CNIError(errors.TRY_AGAIN_LATER, f"plugin {executable} timed out",
                       f"no answer to {command} within {limit:g} s") from None
    if stderr_sink is not None and stderr:
        stderr_sink(stderr)
    out = stdout.decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        raise error_from(executable, out, stderr.decode("utf-8", "replace"), proc.returncode)
    return out


def decode_result(executable: str, out: str) -> Result:
    """The result a plugin printed; one that is no JSON object is code 6 (decode failure)."""
    try:
        result = jsonc.loads(out)
    except (ValueError, RecursionError):
        result = None
    if not isinstance(result, dict):
        raise CNIError(errors.DECODE_FAILURE, f"plugin {executable} printed an invalid result", out[:300])
    return result


def error_from(executable: str, out: str, err: str, status: int) -> CNIError:
    """The plugin's own error JSON, with its code; anything else is 999."""
    try:
        parsed = jsonc.loads(out)
        code = parsed["code"]
        if type(code) is not int or code <= 0:
            raise ValueError(code)
        return CNIError(code, str(parsed.get("msg", "")), str(parsed.get("details", "") or ""))
    except Exception:
        printed = (out or err.strip())[:500]
        detail = f"exit status {status}: {printed}" if printed else f"exit status {status}, nothing printed"
        return CNIError(errors.INTERNAL, f"plugin {executable} failed without a CNI error", detail)
