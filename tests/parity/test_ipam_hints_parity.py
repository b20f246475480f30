"""berth's hints (<dataDir>/.berth-ipam-hints, the seal in the lock) next to the reference host-local.

The reference must work unchanged on a dataDir berth wrote, never take a hint or the seal for a lease,
and berth must notice what the reference did behind its back (ipam/store.py).
"""

from __future__ import annotations

from pathlib import Path

from ipam.store import HINTS_DIR, owner_key, parse_owner
from tests.parity.test_ipam_parity import Runner, leases, make_conf, pytestmark  # noqa: F401

NET = "paritynet"


def hints(data_dir: Path) -> dict[str, set[str]]:
    root = data_dir / HINTS_DIR / NET
    return {d.name: {f.name for f in d.iterdir()} for d in root.iterdir()} if root.exists() else {}


def expected_hints(data_dir: Path) -> dict[str, set[str]]:
    want: dict[str, set[str]] = {}
    for ip, content in leases(data_dir).items():
        want.setdefault(owner_key(*parse_owner(content)), set()).add(ip)
    return want


def test_reference_works_on_a_dataDir_berth_wrote(tmp_path: Path, ref: Runner, berth: Runner) -> None:
    conf = make_conf(tmp_path)
    mine = berth.ok("ADD", conf, "b1")["ips"]
    assert hints(tmp_path) and (tmp_path / NET / "lock").read_bytes().startswith(b"berth-ipam-index 1 ")
    # the reference sees berth's lease (duplicate allocation), not a hint or the seal
    rc, out = ref("ADD", conf, "b1")
    assert rc != 0 and "duplicate allocation" in out["msg"]
    other = ref.ok("ADD", conf, "r1")["ips"]
    assert [ip["address"] for ip in other] != [ip["address"] for ip in mine]
    # the reference releases berth's lease: exactly its two files, nothing else
    before = leases(tmp_path)
    ref.ok("DEL", conf, "b1")
    assert set(before) - set(leases(tmp_path)) == {ip["address"].split("/")[0] for ip in mine}
    # berth notices both changes (the seal no longer matches) and its hints follow
    berth.ok("ADD", conf, "b2")
    assert hints(tmp_path) == expected_hints(tmp_path)
    berth.ok("DEL", conf, "r1")  # a lease the reference wrote, DEL'd by berth
    assert not any(v.startswith(b"r1\r") for v in leases(tmp_path).values())
    # and the reference still reads the dataDir: it finds b2's lease and releases it
    ref.ok("DEL", conf, "b2")
    assert leases(tmp_path) == {}
    berth.ok("DEL", conf, "b2")
    assert hints(tmp_path) == {}


def test_berth_after_the_reference_reuses_an_address(tmp_path: Path, ref: Runner, berth: Runner) -> None:
    conf = make_conf(tmp_path, ranges=[[{"subnet": "10.66.2.0/30"}]], routes=[])  # a single address: .2
    assert berth.ok("ADD", conf, "first")["ips"][0]["address"] == "10.66.2.2/30"
    ref.ok("DEL", conf, "first")
    assert ref.ok("ADD", conf, "second")["ips"][0]["address"] == "10.66.2.2/30"  # same file name, new owner
    # first's hint still points at .2: berth must not take second's lease for first's, nor miss second's
    rc, out = berth("ADD", conf, "first")
    assert rc != 0 and "no IP addresses available" in out["msg"]
    berth.ok("DEL", conf, "first")
    assert leases(tmp_path) == {"10.66.2.2": b"second\r\neth0"}
    berth.ok("DEL", conf, "second")
    assert leases(tmp_path) == {} and hints(tmp_path) == {}
