"""The kernels berth is tested on, and where Debian keeps them.

Each entry names the exact package last tested and a pattern for the same
series: an archive drops superseded builds (security suites keep only the
newest), so when the pinned package is gone the newest of its series is used
and the report says which one ran.
"""

from __future__ import annotations

from typing import NamedTuple


class Kernel(NamedTuple):
    name: str  # what `make test-kernels KERNELS=…` and the report call it
    package: str  # the -unsigned image package last tested
    series: str  # a prefix every build of the series shares
    suites: tuple[str, ...]  # Debian suites that carry it
    note: str


BOOKWORM = ("bookworm", "bookworm-updates", "bookworm-security")
BULLSEYE = ("bullseye", "bullseye-updates", "bullseye-security")

MATRIX: tuple[Kernel, ...] = (
    Kernel("5.10", "linux-image-5.10.0-32-cloud-amd64-unsigned", "linux-image-5.10.0-",
           BULLSEYE, "Debian 11"),
    Kernel("6.1", "linux-image-6.1.0-57-cloud-amd64-unsigned", "linux-image-6.1.0-",
           BOOKWORM, "Debian 12"),
    Kernel("6.12", "linux-image-6.12.117+deb12-cloud-amd64-unsigned", "linux-image-6.12.",
           BOOKWORM, "the series Debian 13 runs (Debian 12's security suite)"),
)

# the kernel CI boots on every submission
CI_KERNEL = "6.1"


def by_name(name: str) -> Kernel:
    for kernel in MATRIX:
        if kernel.name == name:
            return kernel
    raise KeyError(f"no kernel {name!r} in the matrix: {', '.join(k.name for k in MATRIX)}")
