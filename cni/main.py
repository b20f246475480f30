"""Multi-call entry point: one executable, dispatching on the name it was run as.

`berth-bridge`, `berth-host-local`, `berth-portmap`, `berth-loopback`,
`berth-tuning`, `berth-firewall`, `berth-bandwidth` (and, for a drop-in install,
the upstream names `bridge`, `host-local`, `portmap`, `loopback`, `tuning`,
`firewall`, `bandwidth`) are links to the one `berth` executable;
`berth` itself is the operator CLI. `berth plugin NAME` runs a plugin by name,
for systems where links are awkward. Imports are lazy: a VERSION call must not
pay for pyroute2 or libnftables, and a call forwarded to the node agent imports
only this module, cni.agent_path, cni.agent_client and cni.handoff (not cni.skel,
importlib or __future__); without an agent socket the client is not imported at all.
"""

import gc
import os
import sys

TYPE_CHECKING = False  # mypy treats this name as True; typing stays out of the hot path
if TYPE_CHECKING:
    from cni.skel import PluginFuncs

# exec name -> "module:attribute" holding the PluginFuncs
PLUGINS: dict[str, str] = {
    "berth-bridge": "cni.bridge:FUNCS",
    "berth-host-local": "ipam.hostlocal:FUNCS",
    "berth-portmap": "portmap.portmap:FUNCS",
    "berth-loopback": "cni.loopback:FUNCS",
    "berth-tuning": "cni.tuning:FUNCS",
    "berth-firewall": "cni.firewall:FUNCS",
    "berth-bandwidth": "cni.bandwidth:FUNCS",
}
ALIASES: dict[str, str] = {"bridge": "berth-bridge", "host-local": "berth-host-local", "portmap": "berth-portmap",
                           "loopback": "berth-loopback", "tuning": "berth-tuning", "firewall": "berth-firewall",
                           "bandwidth": "berth-bandwidth"}


def canonical_name(name: str) -> str | None:
    name = ALIASES.get(name, name)
    return name if name in PLUGINS else None


def plugin_funcs(name: str) -> "PluginFuncs | None":
    canonical = canonical_name(name)
    if canonical is None:
        return None
    module_name, _, attr = PLUGINS[canonical].partition(":")
    __import__(module_name)  # importlib would load warnings too
    funcs: PluginFuncs = getattr(sys.modules[module_name], attr)
    return funcs


def load_funcs(name: str) -> "PluginFuncs":
    """The plugin's verbs; an unknown or unloadable plugin still answers in CNI's format."""
    from cni.skel import PluginFuncs

    try:
        funcs = plugin_funcs(name)
    except ImportError as exc:  # a broken bundle still answers in CNI's format
        funcs = _unloadable(canonical_name(name) or name, f"{type(exc).__name__}: {exc}")
    return PluginFuncs(name=name) if funcs is None else funcs


def _run_plugin(name: str, fast_exit: bool = False) -> int:
    # One short process per call: the cyclic collector's passes over what the imports
    # create (thousands of functions, classes, dicts) would find nothing worth freeing.
    gc.disable()
    if os.environ.get("BERTH_PHASES"):  # make bench's cold-path breakdown (cni/phases.py)
        from cni import phases

        phases.start(os.environ)
        status = _run_plugin_timed(name)
        phases.mark("work")
        phases.report(sys.stderr)
        if fast_exit:
            exit_now(status)
        return status
    return _run_plugin_timed(name, fast_exit)


def _run_plugin_timed(name: str, fast_exit: bool = False) -> int:
    if os.environ.get("CNI_COMMAND") in (None, "", "VERSION"):
        # VERSION and the about text need no plugin code: keep them instant.
        from cni import skel

        status = skel.main(skel.PluginFuncs(name=canonical_name(name) or name))
        if fast_exit:
            exit_now(status)
        return status
    from cni import agent_path

    # a frozen bundle knows its real binary; argv[0] may be a bare name found on PATH
    self_path = os.path.realpath(sys.executable if getattr(sys, "frozen", False) else sys.argv[0])
    rc: int | None = None
    data: bytes | None = None
    if agent_path.may_answer(os.environ):  # the node agent, when one listens, does the work with warm imports
        from cni import agent_client

        rc, data = agent_client.forward(canonical_name(name) or name, os.environ, sys.stdin.buffer, sys.stdout,
                                        sys.stderr, self_path)
    if rc is not None:
        if fast_exit:
            exit_now(rc)
        return rc
    from cni import invoke, skel

    invoke.register_own(plugin_funcs, self_path)
    funcs = load_funcs(name)
    if os.environ.get("BERTH_PHASES"):
        from cni import phases

        phases.mark("imports")
    if data is None:
        status = skel.main(funcs)
    else:
        import io  # the agent declined after we had read stdin: run on what we read

        status = skel.run(funcs, os.environ, io.BytesIO(data), sys.stdout, sys.stderr)
    if fast_exit and _alone():
        exit_now(status)  # the call is done and written: the interpreter's teardown serves nobody
    return status


def _alone() -> bool:
    """No other thread runs (one would be cut off by os._exit: a kernel job's fallback thread)."""
    threading = sys.modules.get("threading")
    return threading is None or threading.active_count() == 1


def exit_now(rc: int) -> None:
    """End a plugin call without the interpreter's finalization (module teardown,
    GC passes: a good part of a short call). Nothing a call runs needs atexit or
    finalizers (berth's files are written with os-level calls and closed, leases
    fsync'ed); the output is flushed here. Netfilter sockets are left to a child to
    close (cni/handoff.py): closing them may wait for the kernel."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # closed pipes (None when closed at start)
            pass
    from cni import handoff

    handoff.hand_off()
    os._exit(rc)


def _unloadable(name: str, reason: str) -> "PluginFuncs":
    """Every verb fails with the real reason, rather than 'does not implement'."""
    from cni import errors
    from cni.skel import PluginFuncs

    def fail(_args: object) -> None:
        raise errors.CNIError(errors.INTERNAL, f"cannot load plugin {name}", reason[:500])

    return PluginFuncs(name=name, add=fail, delete=fail, check=fail, gc=fail, status=fail)


def main(argv: list[str] | None = None, fast_exit: bool = False) -> int:
    """`fast_exit`: the process is ours alone (the bundle's entry, `python -m cni`),
    so a call answered by the agent may end with os._exit (see exit_now)."""
    argv = list(sys.argv if argv is None else argv)
    name = os.path.basename(argv[0]) if argv else "berth"
    if canonical_name(name):
        return _run_plugin(name, fast_exit)
    if len(argv) >= 3 and argv[1] == "plugin" and canonical_name(argv[2]):
        return _run_plugin(argv[2], fast_exit)
    from cni.cli import main as cli_main

    return cli_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(fast_exit=True))
