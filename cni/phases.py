"""Where a standalone plugin exec's time goes, for `make bench` (BERTH_PHASES=1).

The caller puts CLOCK_MONOTONIC (ns) in BERTH_T0 just before the exec; the
plugin marks points on the same clock, each closing the phase since the mark
before under its name, and at the end writes one line to stderr:
`berth-phases {"interpreter": ms, "imports": ms, ...}`. The phases: interpreter
(the exec, the bootloader, Python's start-up and the entry module), imports
(the plugin's modules), libnftables (the binding's import and its context),
work (everything else the call does, its output included). What the process
takes to exit after that the caller sees as the rest of the wall time.
Off, which is the default, it costs one environment lookup per exec.
"""

from __future__ import annotations

import time

_marks: list[tuple[str, int]] | None = None
_t0 = 0


def start(environ: object) -> None:
    global _marks, _t0
    get = getattr(environ, "get", None)
    t0 = get("BERTH_T0", "") if get is not None and get("BERTH_PHASES") else ""
    if isinstance(t0, str) and t0.isdigit():
        _t0, _marks = int(t0), []
        mark("interpreter")


def mark(name: str) -> None:
    if _marks is not None:
        _marks.append((name, time.monotonic_ns()))


def report(stream: object) -> None:
    """Write the phases (ms, summed per name) as one line; nothing when off."""
    if not _marks:
        return
    from cni import jsonc

    out: dict[str, float] = {}
    last = _t0
    for name, at in _marks:
        out[name] = round(out.get(name, 0.0) + (at - last) / 1e6, 3)
        last = at
    write = getattr(stream, "write", None)
    if write is not None:
        write("berth-phases " + jsonc.dumps(out) + "\n")
