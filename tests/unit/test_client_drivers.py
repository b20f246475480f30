"""The client drivers' own pieces that need no runtime: the CRI wire format, the OCI archive, the call log."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.clients import cri, image
from tests.clients.plugins import CniCall, add_del_problems, conflist_as


def test_encode_matches_the_protobuf_wire_format() -> None:
    assert cri.encode([(1, 150)]) == b"\x08\x96\x01"
    assert cri.encode([(2, "testing")]) == b"\x12\x07testing"
    assert cri.encode([(3, [(1, 150)])]) == b"\x1a\x03\x08\x96\x01"
    assert cri.encode([(1, True), (2, False)]) == b"\x08\x01\x10\x00"
    assert cri.encode([(1, -1)]) == b"\x08" + b"\xff" * 9 + b"\x01"  # int64 two's complement, 10 bytes


@given(st.lists(st.tuples(st.integers(1, 2**29 - 1),
                          st.one_of(st.integers(-(2**63), 2**63 - 1), st.binary(max_size=300)))))
def test_decode_inverts_encode(fields: list[tuple[int, int | bytes]]) -> None:
    decoded = cri.decode(cri.encode(list(fields)))
    expected: dict[int, list[int | bytes]] = {}
    for number, value in fields:
        expected.setdefault(number, []).append(value % 2**64 if isinstance(value, int) else value)
    assert decoded == expected


def test_pod_config_fields() -> None:
    pod = cri.PodConfig(name="web", namespace="ns", log_directory="/logs", uid="u1", cgroup_parent="/bt-1-abc",
                        port_mappings=[cri.PortMapping(8080, 18081, cri.UDP, "127.0.0.1")], labels={"app": "web"})
    msg = cri.decode(cri.encode(pod.message()))
    meta = cri.decode(msg[1][0])  # type: ignore[arg-type]
    assert (meta[1], meta[2], meta[3]) == ([b"web"], [b"u1"], [b"ns"])
    port = cri.decode(msg[5][0])  # type: ignore[arg-type]
    assert port == {1: [cri.UDP], 2: [8080], 3: [18081], 4: [b"127.0.0.1"]}
    assert cri.decode(msg[6][0]) == {1: [b"app"], 2: [b"web"]}  # type: ignore[arg-type]
    assert cri.decode(msg[8][0]) == {1: [b"/bt-1-abc"]}  # type: ignore[arg-type]


def test_grpc_framing_and_status() -> None:
    assert cri.unframe(cri.frame(b"abc") + b"junk") == b"abc"
    with pytest.raises(cri.CriError):
        cri.unframe(b"\0\0")
    dump = "HTTP/2 200 \r\ncontent-type: application/grpc\r\n\r\ngrpc-status: 2\r\ngrpc-message: no such pod\r\n"
    assert cri.grpc_status(dump) == (2, "no such pod")
    assert cri.grpc_status("HTTP/2 200 \r\n") == (None, "")


def test_exec_sync_decodes_output_and_negative_exit_code() -> None:
    reply = cri.encode([(1, b"out"), (2, b"err"), (3, -1)])
    client = cri.Cri(lambda path, request: reply)
    assert client.exec_sync("c1", ["true"]) == (-1, "out", "err")


def test_oci_archive_is_a_consistent_image_layout() -> None:
    layer = b"a layer"
    archive = image.oci_archive(layer, "localhost/x:latest", ["/bin/sh"])
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    entry = json.loads(files["index.json"])["manifests"][0]
    assert entry["annotations"]["io.containerd.image.name"] == "localhost/x:latest"
    manifest = json.loads(files[f"blobs/sha256/{entry['digest'][7:]}"])
    assert manifest["layers"][0]["digest"] == "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.loads(files[f"blobs/sha256/{manifest['config']['digest'][7:]}"])
    assert config["rootfs"]["diff_ids"] == [manifest["layers"][0]["digest"]]


def test_static_check_tells_a_dynamic_binary() -> None:
    assert not image._is_static(Path("/bin/sh"))  # Debian's dash has an interpreter


def _call(plugin: str, command: str, rc: int = 0, cid: str = "c1") -> CniCall:
    return CniCall(plugin, command, rc, {"CNI_CONTAINERID": cid, "CNI_IFNAME": "eth0"}, {"name": "net"}, None, "", 0)


def test_add_del_problems() -> None:
    assert add_del_problems([_call("b", "ADD"), _call("b", "DEL")], "net") == []
    assert add_del_problems([], "net") == ["no ADD for net"]
    assert add_del_problems([_call("b", "ADD"), _call("b", "DEL", cid="c2")], "net")
    assert add_del_problems([_call("b", "ADD"), _call("b", "DEL", rc=1), _call("b", "DEL")], "net")


def test_conflist_as_renames_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "x.conflist"
    path.write_text('{"cniVersion": "1.0.0", "name": "a", "plugins": []}')
    assert conflist_as(path, None) == ("a", path.read_text())
    name, text = conflist_as(path, "b")
    assert name == "b" and json.loads(text) == {"cniVersion": "1.0.0", "name": "b", "plugins": []}
