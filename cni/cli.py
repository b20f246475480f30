"""The `berth` command: a small dispatch table of subcommands.

Each subcommand lives in its own module under cni.runner and is imported only
when it runs, so `berth --help` and plugin calls stay cheap. A module exposes
`main(command: str, argv: list[str]) -> int`; adding a subcommand (list,
explain, reconcile, agent, ...) is one line in COMMANDS.
"""

from __future__ import annotations

import importlib
import sys
from typing import NamedTuple


class Command(NamedTuple):
    module: str
    summary: str


COMMANDS: dict[str, Command] = {
    "add": Command("cni.runner.cnitool", "attach a netns to a network (as cnitool add)"),
    "check": Command("cni.runner.cnitool", "check an attachment (as cnitool check)"),
    "del": Command("cni.runner.cnitool", "detach a netns from a network (as cnitool del)"),
    "gc": Command("cni.runner.cnitool", "remove what the cache does not list (cnitool gc removes everything)"),
    "status": Command("cni.runner.cnitool", "are the network's plugins ready? (as cnitool status)"),
    "doctor": Command("cni.ops.doctor", "show what this berth runs on (interpreter, libnftables, pyroute2)"),
    "agent": Command("cni.agent", "serve plugin calls from a warm node agent on a root-only Unix socket"),
    "list": Command("cni.ops.listing", "every attachment on this node and whether its rules are present"),
    "explain": Command("cni.ops.explain", "walk a published port's path hop by hop and give a verdict"),
    "reconcile": Command("cni.ops.reconcile", "re-create missing nft chains/elements from the journals"),
    "proxy": Command("portmap.proxy", "the userland proxy for [::1]:hostPort (berth-portmap starts it)"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: berth COMMAND [ARGS...]",
        "       berth-bridge | berth-host-local | berth-portmap   (CNI plugins, via links to this program)",
        "       berth-loopback | berth-tuning | berth-firewall | berth-bandwidth",
        "       berth plugin PLUGIN                              (run a plugin by name)",
        "",
        "commands:",
        *(f"  {name.ljust(width)}  {cmd.summary}" for name, cmd in COMMANDS.items()),
        "",
        "'berth COMMAND --help' describes one command.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        (sys.stdout if argv else sys.stderr).write(usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version", "version"):
        from cni import __version__

        sys.stdout.write(f"berth {__version__}\n")
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        sys.stderr.write(f"berth: unknown command {argv[0][:64]!r}\n\n{usage()}")
        return 2
    module = importlib.import_module(command.module)
    status: int = module.main(argv[0], argv[1:])
    return status
