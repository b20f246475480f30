"""A minimal CRI (runtime.v1) client: the calls kubelet makes to run a pod with hostPorts, nothing more.

Messages are encoded by hand (protobuf wire format; field numbers from the CRI v1 api.proto), and
sent as unary gRPC calls by curl over the runtime's unix socket (HTTP/2 with prior knowledge), so
no gRPC or protobuf package is needed. `Transport` does the sending: (method path, request) ->
response message, raising CriError on a non-zero grpc-status.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

RUNTIME = "/runtime.v1.RuntimeService/"
TCP, UDP, SCTP = 0, 1, 2

Message = list[tuple[int, "str | bytes | int | bool | Message"]]
Transport = Callable[[str, bytes], bytes]


class CriError(Exception):
    pass


# --- protobuf wire format ------------------------------------------------------
def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32/int64 go out as 10-byte two's complement
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode(fields: Message) -> bytes:
    out = bytearray()
    for number, value in fields:
        if isinstance(value, bool | int):
            out += _varint(number << 3) + _varint(int(value))
            continue
        if isinstance(value, str):
            data = value.encode()
        elif isinstance(value, bytes):
            data = value
        else:
            data = encode(value)
        out += _varint(number << 3 | 2) + _varint(len(data)) + data
    return bytes(out)


def decode(data: bytes) -> dict[int, list[int | bytes]]:
    """Field number -> values: ints for varints, bytes for length-delimited (nested messages, strings)."""
    out: dict[int, list[int | bytes]] = {}
    pos = 0

    def varint() -> int:
        nonlocal pos
        shift = value = 0
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while pos < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        item: int | bytes
        if wire == 0:
            item = varint()
        elif wire == 2:
            size = varint()
            item, pos = data[pos : pos + size], pos + size
        elif wire in (1, 5):  # fixed64 / fixed32: none of ours, skipped
            size = 8 if wire == 1 else 4
            item, pos = data[pos : pos + size], pos + size
        else:
            raise CriError(f"unsupported wire type {wire}")
        out.setdefault(number, []).append(item)
    return out


def _str(msg: dict[int, list[int | bytes]], number: int) -> str:
    values = msg.get(number) or [b""]
    value = values[-1]
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(msg: dict[int, list[int | bytes]], number: int) -> int:
    value = (msg.get(number) or [0])[-1]
    if isinstance(value, bytes):
        raise CriError(f"field {number} is not a varint")
    return value - (1 << 64) if value >= 1 << 63 else value


def _msgs(msg: dict[int, list[int | bytes]], number: int) -> list[dict[int, list[int | bytes]]]:
    return [decode(v) for v in msg.get(number, []) if isinstance(v, bytes)]


def _map(entries: dict[str, str]) -> Iterable[Message]:
    return ([(1, k), (2, v)] for k, v in sorted(entries.items()))


# --- gRPC framing (the transport runs the HTTP/2 part) ----------------------------
def frame(message: bytes) -> bytes:
    return b"\0" + len(message).to_bytes(4, "big") + message


def unframe(body: bytes) -> bytes:
    if len(body) < 5:
        raise CriError(f"short gRPC response ({len(body)} bytes)")
    if body[0] != 0:
        raise CriError("compressed gRPC response")
    size = int.from_bytes(body[1:5], "big")
    return body[5 : 5 + size]


def grpc_status(headers: str) -> tuple[int | None, str]:
    """grpc-status / grpc-message from response headers and trailers as curl dumps them."""
    status = re.findall(r"^grpc-status:\s*(\d+)", headers, re.M | re.I)
    message = re.findall(r"^grpc-message:\s*(.*?)\s*$", headers, re.M | re.I)
    return (int(status[-1]) if status else None), (message[-1] if message else "")


# --- the CRI calls ------------------------------------------------------------
@dataclass
class PortMapping:
    container_port: int
    host_port: int
    protocol: int = TCP
    host_ip: str = ""

    def message(self) -> Message:
        return [(1, self.protocol), (2, self.container_port), (3, self.host_port), (4, self.host_ip)]


@dataclass
class PodConfig:
    name: str
    namespace: str
    log_directory: str
    port_mappings: Sequence[PortMapping] = ()
    cgroup_parent: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)  # e.g. kubernetes.io/ingress-bandwidth
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))

    def message(self) -> Message:
        msg: Message = [(1, [(1, self.name), (2, self.uid), (3, self.namespace), (4, 0)]), (2, self.name),
                        (3, self.log_directory)]
        msg += [(5, pm.message()) for pm in self.port_mappings]
        msg += [(6, entry) for entry in _map(self.labels)]
        msg += [(7, entry) for entry in _map(self.annotations)]
        msg.append((8, [(1, self.cgroup_parent)]))
        return msg


@dataclass
class ContainerConfig:
    name: str
    image: str
    command: Sequence[str]
    log_path: str

    def message(self) -> Message:
        msg: Message = [(1, [(1, self.name), (2, 0)]), (2, [(1, self.image)])]
        msg += [(3, arg) for arg in self.command]
        msg.append((11, self.log_path))
        return msg


class Cri:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def call(self, method: str, request: Message) -> dict[int, list[int | bytes]]:
        return decode(self.transport(RUNTIME + method, encode(request)))

    def version(self) -> dict[str, str]:
        resp = self.call("Version", [(1, "v1")])
        return {"runtime_name": _str(resp, 2), "runtime_version": _str(resp, 3),
                "runtime_api_version": _str(resp, 4)}

    def conditions(self) -> dict[str, tuple[bool, str]]:
        """RuntimeReady / NetworkReady -> (status, reason and message)."""
        status = _msgs(self.call("Status", [(1, False)]), 1)
        out = {}
        for cond in _msgs(status[0], 1) if status else []:
            out[_str(cond, 1)] = (bool(_int(cond, 2)), f"{_str(cond, 3)} {_str(cond, 4)}".strip())
        return out

    def run_pod_sandbox(self, config: PodConfig) -> str:
        return _str(self.call("RunPodSandbox", [(1, config.message())]), 1)

    def create_container(self, pod_id: str, config: ContainerConfig, pod: PodConfig) -> str:
        return _str(self.call("CreateContainer", [(1, pod_id), (2, config.message()), (3, pod.message())]), 1)

    def start_container(self, container_id: str) -> None:
        self.call("StartContainer", [(1, container_id)])

    def pod_ips(self, pod_id: str) -> list[str]:
        status = _msgs(self.call("PodSandboxStatus", [(1, pod_id)]), 1)
        network = _msgs(status[0], 5) if status else []
        if not network:
            return []
        first = _str(network[0], 1)
        return ([first] if first else []) + [_str(extra, 1) for extra in _msgs(network[0], 2)]

    def exec_sync(self, container_id: str, cmd: Sequence[str], timeout: int = 10) -> tuple[int, str, str]:
        request: Message = [(1, container_id), *[(2, arg) for arg in cmd], (3, timeout)]
        resp = self.call("ExecSync", request)
        out = (resp.get(1) or [b""])[-1]
        err = (resp.get(2) or [b""])[-1]
        assert isinstance(out, bytes) and isinstance(err, bytes)
        return _int(resp, 3), out.decode(errors="replace"), err.decode(errors="replace")

    def stop_pod_sandbox(self, pod_id: str) -> None:
        self.call("StopPodSandbox", [(1, pod_id)])

    def remove_pod_sandbox(self, pod_id: str) -> None:
        self.call("RemovePodSandbox", [(1, pod_id)])

    def list_pod_sandboxes(self) -> list[str]:
        return [_str(pod, 1) for pod in _msgs(self.call("ListPodSandbox", []), 1)]
