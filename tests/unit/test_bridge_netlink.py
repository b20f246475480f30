"""cni.netlink without a kernel: errno translation, dump-race retries, netns checks, lazy pyroute2."""

from __future__ import annotations

import errno
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cni import netlink


def test_errno_translation() -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    def fail(code: int) -> None:
        raise NetlinkError(code, "text that must not matter")

    with pytest.raises(netlink.LinkNotFound):
        netlink._call("x", fail, errno.ENODEV)
    with pytest.raises(netlink.AlreadyExists):
        netlink._call("x", fail, errno.EEXIST)
    with pytest.raises(netlink.NetlinkFailure) as err:
        netlink._call("set mtu", fail, errno.EINVAL)
    assert err.value.code == errno.EINVAL and "set mtu" in str(err.value)


def test_dump_interrupted_is_retried_a_bounded_number_of_times() -> None:
    from pyroute2.netlink.exceptions import NetlinkDumpInterrupted

    calls = []

    def flaky(failures: int) -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise NetlinkDumpInterrupted()
        return "ok"

    assert netlink._call("dump", flaky, netlink.DUMP_RETRIES - 1) == "ok"
    calls.clear()
    with pytest.raises(netlink.NetlinkFailure):
        netlink._call("dump", flaky, netlink.DUMP_RETRIES)
    assert len(calls) == netlink.DUMP_RETRIES


def test_check_netns(tmp_path: Path) -> None:
    netlink.check_netns("/proc/self/ns/net")
    with pytest.raises(netlink.NetnsNotFound):
        netlink.check_netns(str(tmp_path / "missing"))
    plain = tmp_path / "plain"
    plain.write_text("")
    with pytest.raises(netlink.NotANetns):
        netlink.check_netns(str(plain))
    with pytest.raises(netlink.NotANetns):
        netlink.check_netns(str(tmp_path))


def test_random_veth_name() -> None:
    names = {netlink.random_veth_name() for _ in range(50)}
    assert len(names) == 50 and all(re.fullmatch(r"veth[0-9a-f]{8}", n) for n in names)


def test_pyroute2_is_lazy_and_stays_whole() -> None:
    """Importing the plugin loads no pyroute2; after our slim load the full package still works."""
    code = (
        "import sys, cni.bridge\n"
        "assert not any(m.startswith('pyroute2') for m in sys.modules), 'eager pyroute2'\n"
        "from cni import netlink\n"
        "cls = netlink._iproute_class()\n"
        "assert 'pyroute2.ndb.main' not in sys.modules\n"
        "from pyroute2 import IPRoute, NDB, Conntrack\n"
        "assert IPRoute is cls\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
