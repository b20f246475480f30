"""The bench itself: one node namespace per mode, phases interleaved across modes.

Phases: start-up (VERSION execs), then for each level of existing attachments
chain ADD/DEL samples (with the per-plugin split and IPAM on its own), rules
per attachment, connection rate with 1 and ~1,000 mappings, 32 concurrent ADDs.
Samples alternate between modes (and flip the order each round) so drift in
the machine's load hits both sides alike. At the highest level, an empty node
of each mode (`<mode>@empty`, its own agent) takes part in the same rounds: the
growth figure compares the two side by side, not runs minutes apart.
"""

from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import stats
from bench.chain import Chain, ChainOutcome, Exec, Mode, addresses, mappings_for, python_pass
from bench.report import EMPTY
from bench.topo import NODE_V4, Registry, call, link_node
from tests.harness import Netns

TRAFFIC = str(Path(__file__).resolve().parent / "traffic.py")
CONN_WARMUP = 100  # untimed connections first: neighbour entries, a cold server process
CONN_ROUNDS = 5
SYSTEM_PYTHON = "/usr/bin/python3"
MAX_LISTED_ERRORS = 40


@dataclass
class Plan:
    samples: int = 20
    version_samples: int = 30
    levels: tuple[int, ...] = (0, 100)
    concurrency: int = 4  # for populating existing attachments
    burst: int = 32  # concurrent ADDs
    small_burst: int = 16  # a smaller burst first, ADDs and DELs (0: none)
    conn_max: int = 2000
    conn_seconds: float = 5.0
    filler_containers: int = 10
    filler_mappings: int = 100  # per filler container: 10 x 100 = 1,000 mappings
    burst_del: bool = True  # time 32 concurrent DELs too (else the 32 stay as existing attachments)
    # at the highest level > 0, also sample an empty node of each mode in the same rounds:
    # growth measured side by side, so drift in the machine's load hits both alike
    empty_baseline: bool = True
    phases: tuple[str, ...] = ("startup", "coldpath", "levels", "rules", "conn", "burst")
    coldpath_samples: int = 15


@dataclass
class Attachment:
    cid: str
    tag: str
    netns: Netns
    mappings: list[dict[str, Any]]
    result: dict[str, Any] | None


@dataclass
class Side:
    """One mode's node, outside host, pool, chain and live attachments."""

    mode: Mode
    node: Netns
    outside: Netns
    pool: ThreadPoolExecutor
    chain: Chain
    live: list[Attachment] = field(default_factory=list)
    next_port: int = 20000
    next_cid: int = 0
    next_ns: int = 0
    tag: str = ""  # namespace name suffix: "" for the main node, "-k" for the connection-rate node

    def ports(self, count: int) -> int:
        first = self.next_port
        self.next_port += count
        return first

    def cid(self, tag: str) -> str:
        self.next_cid += 1
        return f"bench-{self.mode.name}-{tag}-{self.next_cid:05d}"


class Bench:
    def __init__(self, reg: Registry, plan: Plan, modes: list[Mode], log: Any = print) -> None:
        self.reg, self.plan, self.modes, self.log = reg, plan, modes, log
        self.sides: dict[str, Side] = {}
        self.baselines: dict[str, Side] = {}  # "<mode>@empty" -> an empty node of that mode (level_targets)
        self.errors: list[dict[str, Any]] = []
        self.error_count: dict[str, int] = {m.name: 0 for m in modes}
        self.figures: dict[str, Any] = {}

    # --- set-up -------------------------------------------------------------
    def make_side(self, mode: Mode, suffix: str = "") -> Side:
        workers = max(self.plan.burst, self.plan.concurrency, 4)
        node, outside = self.reg.make_namespaces([self.reg.name(mode.name + suffix),
                                                  self.reg.name(mode.name + suffix + "-o")])
        link_node(self.reg, node, outside)
        pool = self.reg.pool(node, workers)
        chain = Chain(mode, self.reg.tmp / (mode.name + suffix))
        if mode.agent:
            self.start_agent(node, chain)
        return Side(mode, node, outside, pool, chain, tag=suffix)

    def start_agent(self, node: Netns, chain: Chain) -> None:
        """`berth agent` inside this mode's node namespace, on a socket of the run's own."""
        log = chain.state_dir.parent / "agent.log"
        argv = [str(chain.mode.bin_dir / "berth"), "agent", "--socket", chain.agent_socket,
                "--state-dir", str(chain.state_dir), "--max-workers", str(max(self.plan.burst, 16))]
        with open(log, "a") as fh:
            proc = self.reg.popen(node, argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=fh,
                                  env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                       "BERTH_STATE_DIR": str(chain.state_dir)})
        deadline = time.monotonic() + 30
        while "listening on" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"berth agent did not start: {log.read_text()[-500:]}")
            time.sleep(0.05)

    def build(self) -> None:
        for mode in self.modes:
            self.sides[mode.name] = self.make_side(mode)

    def containers(self, side: Side, count: int) -> list[Netns]:
        names = []
        for _ in range(count):
            side.next_ns += 1
            names.append(self.reg.name(f"{side.mode.name}{side.tag}-c{side.next_ns}"))
        return self.reg.make_namespaces(names)

    def error(self, side: Side, phase: str, msg: str) -> None:
        self.error_count[side.mode.name] += 1
        for entry in self.errors:  # the same failure repeated is one line with a count
            if (entry["mode"], entry["phase"], entry["error"]) == (side.mode.name, phase, msg):
                entry["count"] += 1
                return
        if len(self.errors) < MAX_LISTED_ERRORS:
            self.errors.append({"mode": side.mode.name, "phase": phase, "error": msg, "count": 1})

    def order(self, round_no: int) -> list[Side]:
        sides = list(self.sides.values())
        return sides if round_no % 2 == 0 else sides[::-1]

    # --- chain operations -------------------------------------------------
    def add(self, side: Side, tag: str, netns: Netns, mappings: list[dict[str, Any]], phase: str,
            pool_call: bool = True) -> tuple[Attachment, ChainOutcome]:
        cid = side.cid(tag)
        out: ChainOutcome = (call(side.pool, side.chain.add, cid, netns.path, mappings) if pool_call
                             else side.chain.add(cid, netns.path, mappings))
        att = Attachment(cid, tag, netns, mappings, out.result)
        if out.ok:
            side.live.append(att)
        else:
            self.error(side, phase, out.error)
            # a runtime cleans up a failed ADD with a DEL; so do we (untimed)
            call(side.pool, side.chain.delete, cid, netns.path, mappings, None)
        return att, out

    def delete(self, side: Side, att: Attachment, phase: str) -> ChainOutcome:
        out: ChainOutcome = call(side.pool, side.chain.delete, att.cid, att.netns.path, att.mappings, att.result)
        if not out.ok:
            self.error(side, phase, out.error)
        if att in side.live:
            side.live.remove(att)
        return out

    def populate(self, side: Side, target: int) -> float:
        """Bring the node to `target` existing attachments (2 mappings each), concurrently."""
        need = target - len(side.live)
        if need <= 0:
            return 0.0
        start = time.perf_counter()
        nets = self.containers(side, need)
        pending: dict[Future[ChainOutcome], Attachment] = {}
        todo = list(nets)
        finished = 0
        while todo or pending:
            # at most plan.concurrency in flight (the pool itself is burst-sized)
            while todo and len(pending) < self.plan.concurrency:
                ns = todo.pop(0)
                att = Attachment(side.cid("fill"), "fill", ns, mappings_for(side.ports(2)), None)
                pending[side.pool.submit(side.chain.add, att.cid, ns.path, att.mappings)] = att
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                att = pending.pop(fut)
                out = fut.result()
                if out.ok:
                    att.result = out.result
                    side.live.append(att)
                else:
                    self.error(side, f"populate-{target}", out.error)
                finished += 1
                if finished % 200 == 0:
                    self.log(f"level {target}: {side.mode.name} {finished}/{need} existing attachments added "
                             f"({time.perf_counter() - start:.0f}s)")
        return time.perf_counter() - start

    # --- phases -------------------------------------------------------------
    def phase_startup(self) -> None:
        self.log("start-up: VERSION execs")
        times: dict[str, list[float]] = {m.name: [] for m in self.modes}
        times["python3 -c pass"] = []
        for i in range(self.plan.version_samples):
            for side in self.order(i):
                ex: Exec = call(side.pool, side.chain.version, side.mode.bridge)
                if ex.ok:
                    times[side.mode.name].append(ex.seconds)
                else:
                    self.error(side, "version", ex.error_text())
            first = next(iter(self.sides.values()))
            times["python3 -c pass"].append(call(first.pool, python_pass).seconds)
        self.figures["startup"] = {k: stats.summary(v) for k, v in times.items()}

    def phase_coldpath(self) -> None:
        """Where a standalone exec's time goes (cni/phases.py): chain ADD/DELs on the
        empty node of each standalone berth mode with BERTH_PHASES=1, each exec's
        phases kept; the median per plugin, verb and phase."""
        samples: dict[str, dict[str, dict[str, list[float]]]] = {}
        for side in self.sides.values():
            if side.mode.name == "ref" or side.mode.agent:
                continue
            self.log(f"cold path: {side.mode.name}, {self.plan.coldpath_samples} chain ADD/DELs")
            side.chain.phases = True
            try:
                ns = self.containers(side, 1)[0]
                for i in range(self.plan.coldpath_samples):
                    att, out = self.add(side, f"cold{i}", ns, mappings_for(side.ports(2)), "coldpath")
                    dele = self.delete(side, att, "coldpath") if out.ok else None
                    for ex in out.execs + (dele.execs if dele else []):
                        per = samples.setdefault(side.mode.name, {}).setdefault(f"{ex.plugin} {ex.command}", {})
                        for name, ms in {**ex.phases, "total": ex.seconds * 1000}.items():
                            per.setdefault(name, []).append(ms)
            finally:
                side.chain.phases = False
        self.figures["coldpath"] = {mode: {call_: {name: round(stats.percentile(v, 50) or 0.0, 2)
                                                   for name, v in phases.items()}
                                           for call_, phases in calls.items()}
                                    for mode, calls in samples.items()}

    def level_targets(self, level: int) -> dict[str, Side]:
        """Figure name -> side sampled at this level: each mode's node, and at the
        highest level > 0 also each mode's empty baseline node (made once, kept empty)."""
        targets = dict(self.sides)
        if self.plan.empty_baseline and level > 0 and level == max(self.plan.levels):
            for mode in self.modes:
                name = mode.name + EMPTY
                if name not in self.baselines:
                    self.baselines[name] = self.make_side(mode, "-e")
                targets[name] = self.baselines[name]
        return targets

    def phase_level(self, level: int) -> None:
        for side in self.sides.values():
            took = self.populate(side, level)
            if took:
                self.log(f"level {level}: {side.mode.name} populated in {took:.1f}s")
        targets = self.level_targets(level)
        names = list(targets)

        def order(round_no: int) -> list[tuple[str, Side]]:
            pairs = [(n, targets[n]) for n in names]
            return pairs if round_no % 2 == 0 else pairs[::-1]

        # one untimed ADD/DEL per side first: one-time set-up (table, bridge) and cold caches
        # (page cache, a new agent's workers) are not what a node that runs pods pays per pod
        for _name, side in order(0):
            netns = self.containers(side, 1)[0]
            att, out = self.add(side, "w", netns, mappings_for(side.ports(2)), f"warm-{level}")
            if out.ok:
                self.delete(side, att, f"warm-{level}")
            self.reg.remove_namespaces([netns.name])
        self.log(f"level {level}: {self.plan.samples} chain ADD/DEL samples per mode"
                 + (" (and per empty baseline node)" if len(names) > len(self.modes) else ""))
        keys = ("add", "del", "bridge_add", "portmap_add", "portmap_del", "bridge_del", "ipam_add", "ipam_del")
        samples: dict[str, dict[str, list[float]]] = {n: {k: [] for k in keys} for n in names}
        errors_before = dict(self.error_count)
        rules: dict[str, Any] = {}
        for i in range(self.plan.samples):
            nets = {n: self.containers(side, 1)[0] for n, side in order(0)}
            added: dict[str, Attachment] = {}
            for name, side in order(i):
                # the second sample, as ever (the untimed warm-up made the base chains and table)
                want_rules = (i == min(1, self.plan.samples - 1) and "rules" in self.plan.phases
                              and not name.endswith(EMPTY))
                before = call(side.pool, stats.snapshot_rules) if want_rules else None
                att, out = self.add(side, "s", nets[name], mappings_for(side.ports(2)), f"add-{level}")
                if before is not None and out.ok:
                    rules[name] = stats.delta(before, call(side.pool, stats.snapshot_rules))
                if out.ok:
                    s = samples[name]
                    s["add"].append(out.seconds)
                    for plugin, key in ((side.mode.bridge, "bridge_add"), (side.mode.portmap, "portmap_add")):
                        t = out.plugin_seconds(plugin)
                        if t is not None:
                            s[key].append(t)
                    added[name] = att
            for name, side in order(i + 1):
                victim = added.get(name)
                if victim is None:
                    continue
                out = self.delete(side, victim, f"del-{level}")
                if out.ok:
                    s = samples[name]
                    s["del"].append(out.seconds)
                    for plugin, key in ((side.mode.bridge, "bridge_del"), (side.mode.portmap, "portmap_del")):
                        t = out.plugin_seconds(plugin)
                        if t is not None:
                            s[key].append(t)
            # IPAM on its own, as a runtime would exec it
            for name, side in order(i):
                cid = side.cid("ipam")
                ns = nets[name].path
                ex = call(side.pool, side.chain.ipam, "ADD", cid, ns)
                if ex.ok:
                    samples[name]["ipam_add"].append(ex.seconds)
                else:
                    self.error(side, f"ipam-add-{level}", ex.error_text())
                ex = call(side.pool, side.chain.ipam, "DEL", cid, ns)
                if ex.ok:
                    samples[name]["ipam_del"].append(ex.seconds)
                else:
                    self.error(side, f"ipam-del-{level}", ex.error_text())
            self.reg.remove_namespaces([n.name for n in nets.values()])
        fig: dict[str, dict[str, Any]] = {name: {k: stats.summary(v) for k, v in s.items()}
                                          for name, s in samples.items()}
        for name in fig:
            mode = targets[name].mode.name
            fig[name]["errors"] = self.error_count[mode] - errors_before[mode]
            fig[name]["existing"] = len(targets[name].live)
        self.figures.setdefault("levels", {})[str(level)] = fig
        if rules:
            self.figures.setdefault("rules_per_attachment", {})[str(level)] = rules

    def _serve(self, side: Side, ns: Netns, port: int) -> bool:
        proc = self.reg.popen(ns, [SYSTEM_PYTHON, TRAFFIC, "serve", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            self.error(side, "conn", f"server did not start: {line!r}")
            return False
        return True

    def _rate(self, side: Side, host_port: int) -> dict[str, Any]:
        argv = [SYSTEM_PYTHON, TRAFFIC, "rate", NODE_V4, str(host_port), str(self.plan.conn_max),
                str(self.plan.conn_seconds), str(CONN_WARMUP)]
        proc = side.outside.exec(argv, check=False, timeout=self.plan.conn_seconds + 60)
        try:
            out: dict[str, Any] = json.loads(proc.stdout)
        except ValueError:
            self.error(side, "conn", f"client failed: {proc.stderr[:300]}")
            return {"ok": 0, "errors": 0, "seconds": 0.0, "per_second": None}
        out["per_second"] = round(out["ok"] / out["seconds"], 1) if out["seconds"] else None
        if out["errors"]:
            self.error(side, "conn", f"{out['errors']} failed connections to hostPort {host_port}")
        return out

    def _rates(self, targets: list[tuple[Side, str, int]]) -> dict[tuple[str, str], dict[str, Any]]:
        """CONN_ROUNDS measurements per target, rounds interleaved across targets; the median counts."""
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for _ in range(CONN_ROUNDS):
            for side, label, port in targets:
                runs.setdefault((side.mode.name, label), []).append(self._rate(side, port))
        out = {}
        for key, results in runs.items():
            rates = sorted(r["per_second"] for r in results if r["per_second"] is not None)
            out[key] = {"per_second": rates[len(rates) // 2] if rates else None,
                        "runs": [r["per_second"] for r in results],
                        "connections": sum(r["ok"] for r in results),
                        "errors": sum(r["errors"] for r in results)}
        return out

    def _conn_target(self, side: Side, ns: Netns) -> int | None:
        port = side.ports(1)
        _, out = self.add(side, "conn", ns, [{"hostPort": port, "containerPort": 8080, "protocol": "tcp"}], "conn")
        return port if out.ok and self._serve(side, ns, 8080) else None

    def phase_conn(self) -> None:
        """New TCP connections/s from the outside host to a hostPort, with 1 and ~1,000 mappings.

        Two nodes of their own per mode: `<mode>-k1` holds one mapping, `<mode>-k` ~1,000
        (fillers, a target added first and one added last); every target is measured in
        interleaved rounds, so load drift on the machine hits all figures alike."""
        total = self.plan.filler_containers * self.plan.filler_mappings
        self.log(f"connection rate: 1 mapping vs {total + 2} mappings")
        targets: list[tuple[Side, str, int]] = []
        for mode in self.modes:
            one, many = self.make_side(mode, "-k1"), self.make_side(mode, "-k")
            port = self._conn_target(one, self.containers(one, 1)[0])
            if port is not None:
                targets.append((one, "one", port))
            start = time.perf_counter()
            nets = self.containers(many, self.plan.filler_containers + 2)
            port = self._conn_target(many, nets[0])
            if port is not None:
                targets.append((many, "first", port))
            for ns in nets[1:-1]:
                first_port = many.ports(self.plan.filler_mappings)
                maps = [{"hostPort": first_port + k, "containerPort": 9000 + k, "protocol": "tcp"}
                        for k in range(self.plan.filler_mappings)]
                self.add(many, "connfill", ns, maps, "conn-fill")
            # a second target added last: rule lists are searched in order, so measure the far end too
            port = self._conn_target(many, nets[-1])
            if port is not None:
                targets.append((many, "last", port))
            self.log(f"connection rate: {mode.name} fillers added in {time.perf_counter() - start:.1f}s")
        rates = self._rates(targets)
        fig: dict[str, Any] = {}
        for mode in self.modes:
            name = mode.name
            got = {label: rates[(name, label)] for label in ("one", "first", "last") if (name, label) in rates}
            many_rates = [got[k]["per_second"] for k in ("first", "last")
                          if k in got and got[k]["per_second"] is not None]
            fig[name] = {"mappings_many": total + 2, "one": got.get("one"), "many_first_added": got.get("first"),
                         "many_last_added": got.get("last"),
                         "per_second_1": got["one"]["per_second"] if "one" in got else None,
                         "per_second_many": min(many_rates) if many_rates else None}
        self.figures["conn_rate"] = fig

    def phase_burst(self) -> None:
        """plan.small_burst chain ADDs at once on an empty node, then as many DELs; then
        plan.burst (32) ADDs, and 32 DELs (plan.burst_del) or the attachments stay as
        existing ones for the next level (saves a populate in --quick)."""
        if self.plan.small_burst:
            self.figures["burst_small"] = self.burst_of(self.plan.small_burst, True)
        self.figures["burst"] = self.burst_of(self.plan.burst, self.plan.burst_del)

    def burst_of(self, n: int, with_del: bool) -> dict[str, Any]:
        self.log(f"{n} concurrent ADDs" + (f" (then {n} concurrent DELs)" if with_del else ""))
        fig: dict[str, Any] = {}
        for side in self.sides.values():
            nets = self.containers(side, n)
            jobs = {}
            start = time.perf_counter()
            for ns in nets:
                att = Attachment(side.cid("burst"), "burst", ns, mappings_for(side.ports(2)), None)
                jobs[side.pool.submit(side.chain.add, att.cid, ns.path, att.mappings)] = att
            good, errs = [], []
            for fut in as_completed(jobs):
                out, att = fut.result(), jobs[fut]
                if out.ok:
                    att.result = out.result
                    good.append(att)
                else:
                    errs.append((att, out.error))
            wall = time.perf_counter() - start
            for att, e in errs:
                self.error(side, "burst-add", e)
                call(side.pool, side.chain.delete, att.cid, att.netns.path, att.mappings, None)
            ips = [ip for a in good for ip in addresses(a.result)]
            fig[side.mode.name] = {"adds": n, "wall_s": round(wall, 3), "errors": len(errs),
                                   "duplicate_addresses": len(ips) - len(set(ips))}
            if not with_del:
                side.live.extend(good)
                continue
            start = time.perf_counter()
            dels = [side.pool.submit(side.chain.delete, a.cid, a.netns.path, a.mappings, a.result) for a in good]
            del_errs = [f.result().error for f in dels if not f.result().ok]
            fig[side.mode.name].update(del_wall_s=round(time.perf_counter() - start, 3), del_errors=len(del_errs))
            for e in del_errs:
                self.error(side, "burst-del", e)
            self.reg.remove_namespaces([ns.name for ns in nets])
        return fig

    def run(self) -> dict[str, Any]:
        self.build()
        p = self.plan.phases
        if "startup" in p:
            self.phase_startup()
        if "coldpath" in p:
            self.phase_coldpath()
        levels = list(self.plan.levels)
        if "levels" in p and levels and levels[0] == 0:
            self.phase_level(0)
            levels = levels[1:]
        if "conn" in p:
            self.phase_conn()
        if "burst" in p:
            self.phase_burst()
        if "levels" in p:
            for level in levels:
                self.phase_level(level)
        self.figures["errors_total"] = dict(self.error_count)
        self.figures["errors"] = self.errors
        return self.figures
