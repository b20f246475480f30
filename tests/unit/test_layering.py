"""The product's imports point one way: plugins and tools -> adapters -> protocol core.

    upper cni/   bridge, bridge_conf, loopback, tuning, firewall, bandwidth, meta, agent, agent_client, main,
                 cli, ops/, runner/
    portmap/     berth's nft table and the portmap plugin    ipam/  host-local
    lower cni/   errors, spec, skel, invoke, files, state, records, rtnl, netlink, tc, netns, sysctl,
                 jsonc, tuples (the stdlib's json and NamedTuple without their imports)

Read from the sources with ast (every import, lazy ones included), so a rule
broken anywhere fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOWER = {"cni", "cni.errors", "cni.spec", "cni.skel", "cni.invoke", "cni.files", "cni.state", "cni.records",
         "cni.rtnl", "cni.netlink", "cni.tc", "cni.netns", "cni.sysctl", "cni.phases", "cni.jsonc", "cni.tuples",
         "cni.addrs", "cni.ctx"}
# modules that may import the kernel libraries (and what only they may do); cni.tc packs its tc
# messages itself (pyroute2's tcmsg package imports dataclasses and inspect) but is the tc adapter
ADAPTERS = {"cni.rtnl", "cni.netlink", "cni.tc", "portmap.nft", "portmap.conntrack", "cni.ops.doctor",
            # sock_diag (host sockets on published ports): packs its requests as the rtnl adapter does
            "portmap.sockdiag"}


def modules() -> dict[str, Path]:
    out = {}
    for package in ("cni", "ipam", "portmap"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports(path: Path) -> list[str]:
    """Every module `path` imports, lazily or not (`from a import b` yields a.b when that is a module)."""
    tree = ast.parse(path.read_text())
    known = modules()
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
            out += [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known]
    return out


def ours(name: str) -> bool:
    return name.split(".")[0] in ("cni", "ipam", "portmap")


def is_upper(name: str) -> bool:
    return name.startswith("cni") and name not in LOWER


MODULES = modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    found = [name for name in imports(MODULES[module]) if ours(name) and name != module]
    if module in LOWER:
        bad = [n for n in found if is_upper(n) or n.startswith(("portmap", "ipam"))]
        assert not bad, f"{module} (protocol core / kernel adapters) imports {bad}"
    elif module.startswith(("portmap", "ipam")):
        bad = [n for n in found if is_upper(n) or n.startswith("ipam" if module.startswith("portmap") else "portmap")]
        assert not bad, f"{module} imports {bad}: only the lower cni modules are below it"


def test_layout_imports_only_the_records() -> None:
    found = {n for n in imports(MODULES["portmap.layout"]) if ours(n)}
    assert found <= {"cni", "cni.records", "cni.addrs"}, found


def test_nft_imports_only_the_errors_its_probes_and_the_phase_clock() -> None:
    found = {n for n in imports(MODULES["portmap.nft"]) if ours(n)}
    assert found <= {"cni", "cni.errors", "cni.jsonc", "cni.phases", "portmap", "portmap.features"}, found


def test_only_the_adapters_load_the_kernel_libraries() -> None:
    for module, path in MODULES.items():
        heavy = [n for n in imports(path) if n.split(".")[0] in ("pyroute2", "nftables")]
        if module not in ADAPTERS:
            assert not heavy, f"{module} imports {heavy}: only the kernel adapters may"


@pytest.mark.parametrize(("needle", "owner"), [(".setns(", "cni.netns"), ("/proc/sys", "cni.sysctl")])
def test_one_module_for_setns_and_proc_sys(needle: str, owner: str) -> None:
    users = [m for m, path in MODULES.items() if needle in _code(path)]
    assert users == [owner], f"{needle!r} outside {owner}: {users}"


def _code(path: Path) -> str:
    """The source without comments and docstrings (a docstring may name /proc/sys)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            node.value.value = ""
    return ast.unparse(tree)


def test_no_module_uses_another_modules_private_names() -> None:
    problems = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        aliases = _module_aliases(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                target = aliases[node.value.id]
                if node.attr.startswith("_") and not node.attr.startswith("__") and target != module:
                    problems.append(f"{module}: {target}.{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.module and ours(node.module) and node.module != module:
                problems += [f"{module}: from {node.module} import {a.name}" for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__")]
    assert not problems, problems


def _module_aliases(tree: ast.AST) -> dict[str, str]:
    """Local names bound to one of our modules: `from cni import skel`, `import cni.skel as s`."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in MODULES:
                    out[alias.asname or alias.name] = full
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES and alias.asname:
                    out[alias.asname] = alias.name
    return out
