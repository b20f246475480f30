"""Entry point of the `berth` command (placeholder until the runner lands)."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    sys.stderr.write("usage: berth add|del|check|gc|status NAME NETNS\n")
    return 2
