"""Multi-call entry point: one executable, dispatching on the name it was run as.

`berth-bridge`, `berth-host-local`, `berth-portmap` (and, for a drop-in install,
`bridge`, `host-local`, `portmap`) are links to the one `berth` executable;
`berth` itself is the operator CLI. `berth plugin NAME` runs a plugin by name,
for systems where links are awkward. Imports are lazy: a VERSION call must not
pay for pyroute2 or libnftables.
"""

from __future__ import annotations

import importlib
import os
import sys

from cni.skel import PluginFuncs

# exec name -> "module:attribute" holding the PluginFuncs
PLUGINS: dict[str, str] = {
    "berth-bridge": "cni.bridge:FUNCS",
    "berth-host-local": "ipam.hostlocal:FUNCS",
    "berth-portmap": "portmap.portmap:FUNCS",
}
ALIASES: dict[str, str] = {"bridge": "berth-bridge", "host-local": "berth-host-local", "portmap": "berth-portmap"}


def canonical_name(name: str) -> str | None:
    name = ALIASES.get(name, name)
    return name if name in PLUGINS else None


def plugin_funcs(name: str) -> PluginFuncs | None:
    canonical = canonical_name(name)
    if canonical is None:
        return None
    module_name, _, attr = PLUGINS[canonical].partition(":")
    funcs: PluginFuncs = getattr(importlib.import_module(module_name), attr)
    return funcs


def load_funcs(name: str) -> PluginFuncs:
    """The plugin's verbs; an unknown or unloadable plugin still answers in CNI's format."""
    try:
        funcs = plugin_funcs(name)
    except ImportError as exc:  # a broken bundle still answers in CNI's format
        funcs = _unloadable(canonical_name(name) or name, f"{type(exc).__name__}: {exc}")
    return PluginFuncs(name=name) if funcs is None else funcs


def _run_plugin(name: str) -> int:
    from cni import skel

    if os.environ.get("CNI_COMMAND") in (None, "", "VERSION"):
        # VERSION and the about text need no plugin code: keep them instant.
        return skel.main(PluginFuncs(name=canonical_name(name) or name))
    from cni import agent_client

    # a frozen bundle knows its real binary; argv[0] may be a bare name found on PATH
    self_path = os.path.realpath(sys.executable if getattr(sys, "frozen", False) else sys.argv[0])
    # the node agent, when one listens, does the work with warm imports (issue #10)
    rc, data = agent_client.forward(canonical_name(name) or name, os.environ, sys.stdin.buffer, sys.stdout,
                                    sys.stderr, self_path)
    if rc is not None:
        return rc
    from cni import invoke

    invoke.SELF_PATH = self_path
    funcs = load_funcs(name)
    if data is None:
        return skel.main(funcs)
    import io  # the agent declined after we had read stdin: run on what we read

    return skel.run(funcs, os.environ, io.BytesIO(data), sys.stdout, sys.stderr)


def _unloadable(name: str, reason: str) -> PluginFuncs:
    """Every verb fails with the real reason, rather than 'does not implement'."""
    from cni import errors

    def fail(_args: object) -> None:
        raise errors.CNIError(errors.INTERNAL, f"cannot load plugin {name}", reason[:500])

    return PluginFuncs(name=name, add=fail, delete=fail, check=fail, gc=fail, status=fail)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    name = os.path.basename(argv[0]) if argv else "berth"
    if canonical_name(name):
        return _run_plugin(name)
    if len(argv) >= 3 and argv[1] == "plugin" and canonical_name(argv[2]):
        return _run_plugin(argv[2])
    from cni.runner.cli import main as cli_main

    return cli_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
