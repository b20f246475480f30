"""A runtime's CNI plugin directory with every call logged, and what the log says.

PluginDir(path, sources) fills `path` with one small wrapper per plugin found in `sources` (a
directory gives every executable in it, a file just that plugin; on a name clash the first source
wins). Each wrapper execs cnilog.py, which runs the real plugin and appends the call to
`path/.calls.jsonl`: delegated IPAM calls found through CNI_PATH are logged too. A runtime is given
`path` as its only plugin directory.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests import harness

CNILOG = str(Path(__file__).resolve().parent / "cnilog.py")


@dataclass
class CniCall:
    plugin: str
    command: str
    rc: int
    env: dict[str, str]
    stdin: Any
    stdout: Any
    stderr: str
    t: int

    @property
    def network(self) -> str:
        return str(self.stdin.get("name", "")) if isinstance(self.stdin, dict) else ""

    @property
    def container_id(self) -> str:
        return self.env.get("CNI_CONTAINERID", "")

    @property
    def netns(self) -> str:
        return self.env.get("CNI_NETNS", "")

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.plugin, self.container_id, self.env.get("CNI_IFNAME", ""), self.network)

    def __str__(self) -> str:
        return (f"{self.plugin} {self.command} rc={self.rc} net={self.network} id={self.container_id[:12]} "
                f"netns={self.netns!r} {self.stderr.strip()[:300]}")


class PluginDir:
    def __init__(self, path: Path, sources: Sequence[Path]) -> None:
        self.path = path
        self.sources = list(sources)
        self.log = path / ".calls.jsonl"
        path.mkdir(parents=True, exist_ok=True)
        self.names: list[str] = []
        for source in self.sources:
            entries = sorted(source.iterdir()) if source.is_dir() else [source]
            for real in entries:
                name = real.name
                if name.startswith(".") or name in self.names or not (real.is_file() and os.access(real, os.X_OK)):
                    continue
                wrapper = path / name
                wrapper.write_text("#!/bin/sh\nexec " + " ".join(shlex.quote(a) for a in (
                    harness.SYSTEM_PYTHON, "-I", CNILOG, str(self.log), name, str(real))) + ' "$@"\n')
                wrapper.chmod(0o755)
                self.names.append(name)
        assert self.names, f"no CNI plugins in {self.sources}"

    def calls(self) -> list[CniCall]:
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            r = json.loads(line)
            out.append(CniCall(r["plugin"], r["command"], r["rc"], r["env"], r["stdin"], r["stdout"], r["stderr"],
                               r["t"]))
        return sorted(out, key=lambda c: c.t)

    def table(self) -> str:
        """The calls, one a line, for failure messages."""
        return "\n".join(str(c) for c in self.calls() if c.command != "VERSION") or "(no CNI calls)"


def conflist_as(conflist: Path, network: str | None) -> tuple[str, str]:
    """(network name, text) of `conflist` as a runtime gets it: unchanged, or renamed to `network`."""
    text = conflist.read_text()
    conf = json.loads(text)
    if network is None or network == conf["name"]:
        return str(conf["name"]), text
    conf["name"] = network
    return network, json.dumps(conf, indent=2)


def add_del_problems(calls: Sequence[CniCall], network: str) -> list[str]:
    """Every plugin that got ADD for `network` also got a successful DEL, and no ADD or DEL failed."""
    adds = {c.key for c in calls if c.command == "ADD" and c.network == network}
    dels = {c.key for c in calls if c.command == "DEL" and c.rc == 0}
    problems = [f"no ADD for {network}"] if not adds else []
    problems += [f"ADD without a successful DEL: {k}" for k in sorted(adds - dels)]
    problems += [f"failed: {c}" for c in calls if c.command in ("ADD", "DEL") and c.rc != 0]
    return problems
