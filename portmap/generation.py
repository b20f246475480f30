"""Is berth's static nftables layout exactly as berth last left it?

portmap's ADD used to re-assert the whole static layout (flush and refill of
the base chains, CNI-HOSTPORT-DNAT, the mark chains, the guard) in every
transaction, so that whatever an operator or a firewall reload had done to it
was repaired by the next ADD. That is 50-odd commands libnftables parses and
the kernel replaces on every ADD, for nothing almost always.

The ruleset generation answers the question for free: the kernel adds one on
every commit in the namespace, by anyone. Under the node-wide ports lock (which
every berth transaction that records here holds), a transaction that left the
layout intact and was the only commit since it read the generation records
`<boot id> <netns> <generation> <variant>` in `<state root>/.nft-layout`. The next
transaction that reads the same boot and generation knows nobody else
committed since: the layout is intact, and it sends only its own part. Any
other commit (`nft flush chain`, a firewall reload, a berth process that does
not record, a reboot) changes the generation and the next ADD re-asserts the
whole layout, as before. The file is a cache: losing it costs one re-assert.
"""

from __future__ import annotations

import os

from portmap import nft, ports

RECORD = ".nft-layout"  # a leading dot: never a network's name (those start with a letter or digit)
GENERATION_MASK = 0xFFFFFFFF


def _path(root: str) -> str:
    return os.path.join(root, RECORD)


def _read(root: str) -> list[str]:
    try:
        with open(_path(root)) as fh:
            return fh.read().split()
    except OSError:
        return []


def _where() -> str:
    """This boot and network namespace: a generation means nothing outside them."""
    try:
        netns = os.stat("/proc/thread-self/ns/net").st_ino
    except OSError:
        netns = 0
    return f"{ports.boot_id() or '-'} {netns}"


def layout_known(root: str, variant: str | None = None) -> tuple[bool, int | None]:
    """(is the static layout as berth left it, the generation now). `variant`
    (portmap's mark bit and setmark chain) must match too when given; the
    generation is None when the kernel cannot tell (then: not known)."""
    now = nft.generation()
    if now is None:
        return False, None
    parts = _read(root)
    known = (len(parts) == 4 and " ".join(parts[:2]) == _where() and parts[2] == str(now)
             and (variant is None or parts[3] == variant))
    return known, now


def note_commit(root: str, before: int | None, intact: bool, variant: str | None = None) -> None:
    """After a transaction committed: when the layout was intact once it had run
    (known before, or re-asserted by it) and no one else committed since
    `before`, record the new generation (with `variant`, or the recorded one)."""
    if before is None or not intact:
        return
    after = nft.generation()
    if after not in (before, (before + 1) & GENERATION_MASK):
        return  # someone else committed meanwhile: the next ADD re-asserts
    if variant is None:
        parts = _read(root)
        if len(parts) != 4:
            return
        variant = parts[3]
    tmp = _path(root) + ".new"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{_where()} {after} {variant}\n")
        os.replace(tmp, _path(root))  # no fsync: a cache, and a reboot invalidates it anyway
    except OSError:
        return


# The static layout's own revision: a berth that writes another static layout than
# the one recorded re-asserts it on its first portmap ADD after an upgrade.
STATIC_REVISION = 2


def portmap_variant(mark_bit: int, external_setmark: str | None) -> str:
    """What of the static layout depends on portmap's config (the mark chains' bit
    and chain), and which revision of it this berth writes."""
    return f"{mark_bit}:{external_setmark or ''}:r{STATIC_REVISION}".replace(" ", "_")
