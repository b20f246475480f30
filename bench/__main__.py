"""`python -m bench` (`make bench BENCH_ARGS=...`): see bench/__init__.py."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.chain import Mode, ensure_links
from bench.report import REF, coldpath, goals, goals_agent, goals_standalone, markdown
from bench.run import Bench, Plan
from bench.stats import ratio
from bench.topo import Registry, stale_namespaces

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
REF_DIR = Path("/usr/lib/cni")
BUNDLE_DIR = ROOT / "dist" / "berth"
VENV_ENTRY = ROOT / ".venv" / "bin" / "berth"
BERTH_NAMES = ("berth", "berth-bridge", "berth-host-local", "berth-portmap")
KNOWN_MODES = ("berth", "berth-agent", "berth-venv", "berth-bundle", "ref")


def _out(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10).stdout.strip()
    except OSError:
        return ""


def _newest_source() -> float:
    return max((p.stat().st_mtime for pkg in ("cni", "ipam", "portmap") for p in (ROOT / pkg).rglob("*.py")),
               default=0.0)


def _bundle_copy(tmp: Path) -> tuple[Path, str]:
    """A private copy of dist/berth: a `make bundle` running meanwhile cannot change it mid-run."""
    copy = tmp / "bundle"
    if not copy.exists():
        shutil.copytree(BUNDLE_DIR, copy, symlinks=True)
    if not (copy / "berth-bridge").exists():
        raise SystemExit(f"{BUNDLE_DIR} is incomplete (being rebuilt?): try again")
    built = dt.datetime.fromtimestamp((BUNDLE_DIR / "berth").stat().st_mtime).isoformat(timespec="seconds")
    return copy, f"PyInstaller bundle {BUNDLE_DIR} (built {built}; benched from a private copy)"


def berth_dir(kind: str, tmp: Path) -> tuple[Path, str]:
    """Where berth's executables come from, and a sentence saying so for the report."""
    venv = (ensure_links(VENV_ENTRY, tmp / "bin", BERTH_NAMES), f"links to the venv entry point {VENV_ENTRY}")
    bundle_ok = (BUNDLE_DIR / "berth-bridge").exists()
    if kind == "berth-venv":
        return venv
    if kind == "berth-bundle":
        if not bundle_ok:
            raise SystemExit(f"no bundle in {BUNDLE_DIR}: run 'make bundle'")
        return _bundle_copy(tmp)
    given = os.environ.get("BERTH_BIN_DIR")
    if given:
        return Path(given).resolve(), f"BERTH_BIN_DIR={given}"
    if bundle_ok:
        if (BUNDLE_DIR / "berth").stat().st_mtime >= _newest_source():
            return _bundle_copy(tmp)
        path, text = venv
        return path, text + f" ({BUNDLE_DIR} is older than the sources: run 'make bundle' to bench it)"
    return venv


def make_modes(names: list[str], tmp: Path) -> list[Mode]:
    modes = []
    for name in names:
        if name == "ref":
            version = _out(["dpkg-query", "-W", "-f=${Version}", "containernetworking-plugins"])
            modes.append(Mode("ref", REF_DIR, "bridge", "host-local", "portmap",
                              f"{REF_DIR} (Debian containernetworking-plugins {version or '?'}; portmap on iptables)",
                              in_process_ipam=False))
        else:
            # berth-agent: the same executables as `berth`, with `berth agent` serving them
            agent = name == "berth-agent"
            path, origin = berth_dir("berth" if agent else name, tmp)
            if agent:
                origin = f"`berth agent` in the node namespace; plugins: {origin}"
            modes.append(Mode(name, path, "berth-bridge", "berth-host-local", "berth-portmap", origin,
                              in_process_ipam=True, agent=agent))
    return modes


def plan_from(args: argparse.Namespace) -> Plan:
    plan = Plan()
    if args.quick:
        plan = Plan(samples=5, version_samples=10, levels=(0, 100), conn_max=1000, conn_seconds=1.0,
                    burst_del=False, small_burst=0, filler_containers=4, filler_mappings=250)
    if args.full:
        plan.levels = (0, 100, 1000)
    if args.levels:
        plan.levels = tuple(sorted({int(x) for x in args.levels.split(",")}))
    if args.n:
        plan.samples = args.n
    if args.concurrency:
        plan.concurrency = args.concurrency
    if args.phases:
        plan.phases = tuple(args.phases.split(","))
    return plan


def meta(plan: Plan, modes: list[Mode], started: float) -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1),
        "machine": {"cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(),
                    "os": _out(["sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"]),
                    "python": platform.python_version(), "nft": _out(["nft", "--version"]),
                    "iptables": _out(["iptables", "-V"])},
        "berth_commit": _out(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        "modes": {m.name: m.origin for m in modes},
        "plan": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(plan).items()},
        "conflist": "bridge (isGateway, ipMasq) + host-local (10.99.0.0/20) + portmap (snat), 2 TCP mappings each",
    }


def startup_share(fig: dict[str, Any], modes: list[Mode]) -> dict[str, Any]:
    """Start-up estimate: execs per chain ADD x VERSION p50, as a share of chain ADD p50 at 0."""
    out = {}
    for m in modes:
        execs = 2 if m.in_process_ipam else 3  # bridge, [host-local], portmap
        version = fig.get("startup", {}).get(m.name, {}).get("p50_ms")
        add = fig.get("levels", {}).get("0", {}).get(m.name, {}).get("add", {}).get("p50_ms")
        startup = execs * version if version is not None else None
        out[m.name] = {"execs_per_add": execs, "startup_ms": startup, "add_p50_ms": add,
                       "share": ratio(startup, add)}
    return out


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--n", type=int, help="chain ADD/DEL samples per mode and level (default 20, quick 5)")
    ap.add_argument("--concurrency", type=int, help="parallel ADDs when creating existing attachments (4)")
    ap.add_argument("--quick", action="store_true", help="small sample counts: under 2 minutes")
    ap.add_argument("--full", action="store_true", help="also measure at 1,000 existing attachments (slow)")
    ap.add_argument("--levels", help="existing-attachment levels, e.g. 0,100,500")
    ap.add_argument("--modes", default="berth,berth-agent,ref", help=f"comma list of {', '.join(KNOWN_MODES)}")
    ap.add_argument("--phases", help="comma list of startup,coldpath,levels,rules,conn,burst (default all)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = ap.parse_args(argv)
    for name in args.modes.split(","):
        if name not in KNOWN_MODES:
            ap.error(f"unknown mode {name!r}")
    return args


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        print("bench: needs root (it builds its own network namespaces)", file=sys.stderr)
        return 2
    stale = stale_namespaces()
    if stale:
        print(f"bench: note: namespaces from another (or an interrupted) bench run exist: {stale[:5]}...",
              file=sys.stderr)
    plan = plan_from(args)
    signal.signal(signal.SIGTERM, _sigterm)
    started = time.time()
    reg = Registry()
    try:
        modes = make_modes(args.modes.split(","), reg.tmp)
        for m in modes:
            print(f"bench: {m.name}: {m.origin}", file=sys.stderr)
        bench = Bench(reg, plan, modes, log=lambda s: print(f"bench: {s}", file=sys.stderr, flush=True))
        fig = bench.run()
    except KeyboardInterrupt:
        print("bench: interrupted; removing namespaces", file=sys.stderr)
        return 130
    finally:
        reg.cleanup()
    fig["startup_share"] = startup_share(fig, modes)
    labels = {"ref": "reference", "berth": "berth", "berth-agent": "berth + agent"}
    table = markdown(fig, [m.name for m in modes], labels)
    info = meta(plan, modes, started)
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stamp}.json").write_text(json.dumps({"meta": info, "figures": fig}, indent=2) + "\n")
    m = info["machine"]
    head = (f"# berth bench {info['date']}\n\n{m['cpus']} x {m['cpu']}, kernel {m['kernel']}, {m['os']}; "
            f"commit {info['berth_commit']}; {info['seconds']} s\n\n"
            + "".join(f"- {k}: {v}\n" for k, v in info["modes"].items())
            + f"- conflist: {info['conflist']}\n- plan: {json.dumps(info['plan'])}\n\n")
    errors = "".join(f"- {e['mode']} {e['phase']} (x{e['count']}): {e['error']}\n" for e in fig.get("errors", []))
    if REF in info["modes"]:
        table += "".join("\n" + goals(fig, m.name) for m in modes if m.name != REF)
        if "berth" in info["modes"]:
            table += "\n" + goals_standalone(fig)
        table += ("\n" + coldpath(fig)) if fig.get("coldpath") else ""
        table += "\n" + goals_agent(fig)
    text = head + table + (f"\nErrors (distinct, first {len(fig['errors'])}):\n\n{errors}" if errors else "")
    (args.out / f"{stamp}.md").write_text(text)
    print(text)
    print(f"bench: wrote {args.out / stamp}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
