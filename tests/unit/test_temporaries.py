"""What a writer killed between writing its temporary and renaming it leaves
behind (port claims, journals), and who removes it: the next write of the same
file, the owner's DEL, and GC. The kill is a real SIGKILL of a child process
in the middle of the write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cni import state
from cni.skel import CmdArgs
from portmap import nft, portmap, ports

ROOT = Path(__file__).resolve().parents[2]
PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "br0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/x"}],
        "ips": [{"address": "10.88.0.5/24", "interface": 2}]}

# SIGKILL at the rename: the temporary is written, the final name not yet replaced
KILLED_WRITE = """
import json, os, signal, sys
from cni import state
from cni.records import PortMapping
from portmap import layout, ports
root, what, cid, port = json.loads(sys.argv[1])
os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)
me = ports.Owner("pmnet", cid, "eth0")
if what == "claim":
    with ports.locked(root):
        ports.write(root, me, layout.dnat_chain_name("pmnet", cid), [PortMapping(port, port, 80, "tcp", "")])
else:
    state.Journal(root, "pmnet", cid, "eth0").put("portmap", {"chain": "x"})
"""


def killed_write(root: Path, what: str, cid: str, port: int = 8080) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITE, json.dumps([str(root), what, cid, port])],
                          cwd=str(ROOT), env={"PYTHONPATH": str(ROOT)}, capture_output=True, timeout=60, check=False)
    assert proc.returncode == -9, proc.stderr


def temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.tmp*"))


@pytest.fixture
def fake() -> Iterator[nft.Fake]:
    backend = nft.Fake()
    nft.set_backend(backend)
    yield backend
    nft.set_backend(None)


def call(tmp: Path, command: str, cid: str, port: int | None, **extra: Any) -> CmdArgs:
    config: dict[str, Any] = {"cniVersion": "1.1.0", "name": "pmnet", "type": "berth-portmap", **extra}
    if port is not None:
        config["runtimeConfig"] = {"portMappings": [{"hostPort": port, "containerPort": 80}]}
        config["prevResult"] = PREV
    return CmdArgs(command=command, container_id=cid, netns="/x", ifname="eth0", args={}, raw_args="", path=[],
                   stdin=json.dumps(config).encode(), config=config, version="1.1.0",
                   environ={"BERTH_STATE_DIR": str(tmp)})


def test_a_killed_claim_write_is_removed_by_the_owners_del(tmp_path: Path, fake: nft.Fake) -> None:
    portmap.cmd_add(call(tmp_path, "ADD", "c1", 8080))
    killed_write(tmp_path, "claim", "c1")
    assert temporaries(tmp_path / "ports") != []
    portmap.cmd_del(call(tmp_path, "DEL", "c1", None))
    assert temporaries(tmp_path / "ports") == [] and sorted(os.listdir(tmp_path / "ports")) == ["lock"]


def test_the_next_write_of_the_port_replaces_a_killed_ones_temporary(tmp_path: Path, fake: nft.Fake) -> None:
    killed_write(tmp_path, "claim", "gone", 8081)
    portmap.cmd_add(call(tmp_path, "ADD", "c2", 8081))
    assert temporaries(tmp_path / "ports") == []
    assert json.loads((tmp_path / "ports" / "any_tcp_8081").read_text())["containerID"] == "c2"


def test_gc_sweeps_temporaries_nobody_else_will(tmp_path: Path, fake: nft.Fake) -> None:
    killed_write(tmp_path, "claim", "gone", 8082)
    (tmp_path / "ports" / f"any_tcp_8083.tmp.{os.getpid()}").write_text("{")  # an older berth's name
    killed_write(tmp_path, "journal", "gone")
    assert len(temporaries(tmp_path / "ports")) == 2 and len(temporaries(tmp_path / "pmnet")) == 1
    portmap.cmd_gc(call(tmp_path, "GC", "", None, **{"cni.dev/valid-attachments": []}))
    assert temporaries(tmp_path / "ports") == []
    assert state.remove_empty_journals(str(tmp_path), "pmnet") == [str(tmp_path / "pmnet" / "gone:eth0.json.tmp")]
    assert temporaries(tmp_path / "pmnet") == []


def test_a_killed_journal_write_is_removed_with_the_journal(tmp_path: Path) -> None:
    journal = state.Journal(str(tmp_path), "pmnet", "c1", "eth0")
    journal.put("portmap", {"chain": "x"})
    killed_write(tmp_path, "journal", "c1")
    assert temporaries(tmp_path / "pmnet") == ["c1:eth0.json.tmp"]
    assert journal.section("portmap") == {"chain": "x"}  # the last complete write
    journal.drop("portmap")
    assert temporaries(tmp_path / "pmnet") == [] and not os.path.exists(journal.path)


def test_a_temporary_is_never_read_as_a_claim(tmp_path: Path) -> None:
    killed_write(tmp_path, "claim", "c1", 8084)
    with ports.locked(str(tmp_path)):
        ports.release_owner(str(tmp_path), ports.Owner("pmnet", "c1", "eth0"))
    assert temporaries(tmp_path / "ports") == []
