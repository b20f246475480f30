"""`berth doctor`: what this berth runs on, as JSON.

Answers the questions a bundle raises: which interpreter, whether it is frozen,
which libnftables file the binding actually mapped (the bundled copy, not the
host's), whether pyroute2 imports, and which shared libraries the process mapped. It reads only this process; it never
touches the network configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

# libnftables and the shared libraries it pulls in (the bundle must carry them all)
NFT_LIBRARIES = ("libnftables.so", "libnftnl.so", "libmnl.so", "libjansson.so", "libgmp.so", "libxtables.so")


def mapped_libraries(fragment: str) -> list[str]:
    """Paths of files mapped into this process whose name contains `fragment`."""
    found: list[str] = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6 and fragment in parts[5] and parts[5].strip() not in found:
                    found.append(parts[5].strip())
    except OSError:
        pass
    return found


def report() -> dict[str, Any]:
    from cni import __version__

    out: dict[str, Any] = {
        "berth": __version__,
        "python": sys.version.split()[0],
        "executable": sys.executable,
        # the interpreter binary itself (in a bundle: _internal/bin/, exec'd by the launcher)
        "interpreter": (sys.orig_argv or [sys.executable])[0],
        "frozen": bool(getattr(sys, "frozen", False)),
        "bundle_dir": getattr(sys, "_MEIPASS", None),
    }
    # A diagnostic is the one exception to "only portmap/nft.py imports nftables,
    # only cni/rtnl.py (and the conntrack flush) imports pyroute2": it checks the
    # imports themselves.
    try:
        import nftables

        nft = nftables.Nftables()
        libs = [path for lib in NFT_LIBRARIES for path in mapped_libraries(lib)]
        out["nftables"] = {"ok": bool(nft), "libraries": libs}
    except Exception as exc:
        out["nftables"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    try:
        import pyroute2

        with pyroute2.IPRoute() as ipr:  # read-only: count this namespace's links
            links = len(ipr.get_links())
        out["pyroute2"] = {"ok": True, "version": getattr(pyroute2, "__version__", None), "links": links}
    except Exception as exc:
        out["pyroute2"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    # every shared object mapped by now: a bundle's should all be its own, glibc's aside
    out["shared_libraries"] = [path for path in mapped_libraries(".so") if path.startswith("/")]
    return out


def main(command: str, argv: list[str]) -> int:
    argparse.ArgumentParser(prog=f"berth {command}", description=__doc__.splitlines()[0] if __doc__ else None,
                            ).parse_args(argv)
    info = report()
    sys.stdout.write(json.dumps(info, indent=2) + "\n")
    return 0 if info["nftables"]["ok"] and info["pyroute2"]["ok"] else 1
