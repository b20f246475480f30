"""32 processes ADD at once on one network through the real executable, then 32 DELs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ENTRY = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "berth"
N = 32


def _spawn(exe: Path, command: str, cid: str, config: Path) -> subprocess.Popen[bytes]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_IFNAME": "eth0", "CNI_NETNS": "/proc/1/ns/net",
           "CNI_PATH": str(exe.parent), "PATH": "/usr/bin:/bin"}
    with open(config, "rb") as stdin:
        return subprocess.Popen([str(exe)], stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, cwd="/")


def _run_all(exe: Path, command: str, config: Path) -> list[tuple[int, bytes, bytes]]:
    procs = [_spawn(exe, command, f"ctr{i}", config) for i in range(N)]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=60)
        out.append((proc.returncode, stdout, stderr))
    return out


def test_32_concurrent_adds_then_dels(tmp_path: Path) -> None:
    exe = tmp_path / "bin" / "berth-host-local"
    exe.parent.mkdir()
    exe.symlink_to(ENTRY)
    data = tmp_path / "data"
    config = tmp_path / "conf.json"
    config.write_text(json.dumps({"cniVersion": "1.1.0", "name": "race", "type": "berth-host-local",
                         "ipam": {"type": "berth-host-local", "dataDir": str(data),
                                  "ranges": [[{"subnet": "10.77.0.0/26"}], [{"subnet": "fd00:77::/64"}]]}}))
    results = _run_all(exe, "ADD", config)
    assert all(rc == 0 for rc, _, _ in results), [r for r in results if r[0]]
    v4 = [json.loads(out)["ips"][0]["address"] for _, out, _ in results]
    v6 = [json.loads(out)["ips"][1]["address"] for _, out, _ in results]
    assert len(set(v4)) == N and len(set(v6)) == N
    leases = [n for n in os.listdir(data / "race") if n[0].isdigit() or ":" in n]
    assert len(leases) == 2 * N
    assert all((data / "race" / n).read_bytes().startswith(b"ctr") for n in leases)

    results = _run_all(exe, "DEL", config)
    assert all(rc == 0 for rc, _, _ in results), [r for r in results if r[0]]
    left = sorted(os.listdir(data / "race"))
    assert left == ["last_reserved_ip.0", "last_reserved_ip.1", "lock"]
