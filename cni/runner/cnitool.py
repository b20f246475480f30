"""`berth add|del|check|gc|status NAME NETNS`: cnitool, command for command.

Same environment as cnitool: NETCONFPATH (default /etc/cni/net.d), CNI_PATH,
CAP_ARGS (JSON object of capability arguments), CNI_ARGS (`K=V;K=V`),
CNI_IFNAME (default eth0); the container ID is cnitool's
`cnitool-<first 10 bytes of sha512(abs(netns)) in hex>` unless CNI_CONTAINERID
is set. Results are cached like libcni's (BERTH_CACHE_DIR overrides /var/lib/cni).
Output: ADD prints the result; any failure prints the CNI error JSON on stdout,
a readable line on stderr, and exits 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Mapping
from typing import IO, Any

from cni import errors
from cni.errors import CNIError
from cni.spec import CURRENT_VERSION, SUPPORTED_VERSIONS

DEFAULT_IFNAME = "eth0"

SUMMARIES = {
    "add": "attach the netns to network NAME (runs every plugin's ADD, caches the result)",
    "del": "detach the netns from network NAME (plugins' DEL in reverse, with the cached result)",
    "check": "check the attachment against the cached result (plugins' CHECK)",
    "gc": "garbage-collect network NAME: every cached attachment is kept, anything else is removed",
    "status": "ask every plugin of network NAME whether it is ready for ADDs (STATUS)",
}

ENV_HELP = """environment (as cnitool):
  NETCONFPATH      directory of *.conflist / *.conf / *.json files (default /etc/cni/net.d)
  CNI_PATH         plugin directories, ':'-separated
  CAP_ARGS         JSON object of capability arguments, e.g. '{"portMappings": [...]}'
  CNI_ARGS         plugin arguments 'K=V;K2=V2'
  CNI_IFNAME       interface name in the container (default eth0; -i overrides)
  CNI_CONTAINERID  container ID (default: cnitool's hash of the netns path)
  BERTH_CACHE_DIR  libcni cache directory (default /var/lib/cni; results in <dir>/results)
"""


def container_id_for(netns: str) -> str:
    """cnitool's container ID: "cnitool-" + hex of the first 10 bytes of sha512(netns)."""
    return "cnitool-" + hashlib.sha512(netns.encode()).hexdigest()[:20]


def parse_cni_args(raw: str) -> list[list[str]]:
    """CNI_ARGS as cnitool parses it: every pair exactly K=V with both sides non-empty."""
    pairs = []
    for pair in raw.split(";"):
        kv = pair.split("=")
        if len(kv) != 2 or not kv[0] or not kv[1]:
            raise errors.invalid_env(f"invalid CNI_ARGS pair {pair!r}")
        pairs.append([kv[0], kv[1]])
    return pairs


def parse_capability_args(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise CNIError(errors.DECODE_FAILURE, "CAP_ARGS is not valid JSON", str(exc)[:300]) from None
    if not isinstance(value, dict):
        raise CNIError(errors.DECODE_FAILURE, "CAP_ARGS must be a JSON object")
    return value


def parser(command: str) -> argparse.ArgumentParser:
    needs_netns = command in ("add", "del", "check")
    p = argparse.ArgumentParser(
        prog=f"berth {command}", description=SUMMARIES[command],
        epilog=ENV_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", metavar="NAME", help="network name (the conflist's \"name\")")
    p.add_argument("netns", metavar="NETNS", nargs=None if needs_netns else "?", default="",
                   help="path of the network namespace, e.g. /run/netns/x"
                        + ("" if needs_netns else " (accepted for cnitool compatibility, unused)"))
    p.add_argument("-i", "--ifname", default=None, help="interface name (default: $CNI_IFNAME or eth0)")
    return p


def _run(command: str, ns: argparse.Namespace, environ: Mapping[str, str], stdout: IO[str]) -> None:
    from cni.runner import cache, conflist
    from cni.runner.libcni import Runner, RuntimeConf

    netlist = conflist.load(environ.get("NETCONFPATH") or conflist.DEFAULT_NETCONF_DIR, ns.name)
    caps = parse_capability_args(environ["CAP_ARGS"]) if environ.get("CAP_ARGS") else {}
    cni_args = parse_cni_args(environ["CNI_ARGS"]) if environ.get("CNI_ARGS") else []
    ifname = ns.ifname or environ.get("CNI_IFNAME") or DEFAULT_IFNAME
    netns = os.path.abspath(ns.netns) if ns.netns else ""
    container_id = environ.get("CNI_CONTAINERID") or container_id_for(netns)
    runner = Runner(
        path=[p for p in environ.get("CNI_PATH", "").split(os.pathsep) if p],
        cache_dir=cache.cache_dir(environ), environ=environ,
    )
    rt = RuntimeConf(container_id=container_id, netns=netns, ifname=ifname, args=cni_args, capability_args=caps)
    if command == "add":
        result = runner.add(netlist, rt)
        stdout.write(json.dumps(result, indent=4) + "\n")
    elif command == "del":
        runner.delete(netlist, rt)
    elif command == "check":
        runner.check(netlist, rt)
    elif command == "status":
        runner.status(netlist)
    elif command == "gc":
        problems = runner.gc(netlist)
        if problems:
            raise CNIError(problems[0].code, "; ".join(p.msg for p in problems),
                           "; ".join(p.details for p in problems if p.details))


def _error_version(environ: Mapping[str, str], name: str) -> str:
    try:
        from cni.runner import conflist

        version = conflist.load(environ.get("NETCONFPATH") or conflist.DEFAULT_NETCONF_DIR, name).version
    except Exception:
        return CURRENT_VERSION
    return version if version in SUPPORTED_VERSIONS else CURRENT_VERSION


def main(command: str, argv: list[str], environ: Mapping[str, str] | None = None,
         stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> int:
    env = os.environ if environ is None else environ
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    ns = parser(command).parse_args(argv)
    try:
        _run(command, ns, env, out)
        return 0
    except CNIError as exc:
        failure = exc
    except Exception as exc:  # still answer in CNI's format
        failure = CNIError(errors.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"[:1000])
    out.write(json.dumps(failure.to_json(_error_version(env, ns.name))) + "\n")
    detail = f" ({failure.details})" if failure.details else ""
    err.write(f"berth {command}: error {failure.code}: {failure.msg}{detail}\n")
    return 1
