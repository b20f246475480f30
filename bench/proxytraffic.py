"""Traffic for the [::1] proxy bench, exec'd inside the bench's namespaces with
/usr/bin/python3 (stdlib only).

serve TCPPORT UDPPORT: on :: (both families). A TCP connection's first byte
    picks what it is: "T" a sink (count the bytes until end of file, answer the
    count), "P" ping-pong (echo 64-byte messages), "C" one byte back and close.
    UDP datagrams are echoed. Prints "ready".
client HOST TCPPORT UDPPORT MIB PINGS CONNS: one throughput transfer of MIB MiB,
    PINGS request/response round trips on one connection, CONNS new connections,
    PINGS UDP round trips; prints the timings as JSON.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time

MSG = 64
CHUNK = 1 << 20


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _conn(conn: socket.socket) -> None:
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        kind = conn.recv(1)
        if kind == b"T":
            buf = bytearray(CHUNK)
            total = 0
            while True:
                n = conn.recv_into(buf)
                if not n:
                    break
                total += n
            conn.sendall(f"{total}\n".encode())
        elif kind == b"P":
            try:
                while True:
                    conn.sendall(_recv_exact(conn, MSG))
            except (EOFError, OSError):
                return
        elif kind == b"C":
            conn.sendall(b"c")


def serve(tcp_port: int, udp_port: int) -> None:
    tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    tcp.bind(("::", tcp_port))
    tcp.listen(1024)
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    udp.bind(("::", udp_port))

    def echo() -> None:
        while True:
            data, peer = udp.recvfrom(2048)
            udp.sendto(data, peer)

    threading.Thread(target=echo, daemon=True).start()
    print("ready", flush=True)
    while True:
        conn, _ = tcp.accept()
        threading.Thread(target=_conn, args=(conn,), daemon=True).start()


def _percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"p50_us": round(s[len(s) // 2] * 1e6, 1), "p99_us": round(s[min(len(s) - 1, int(len(s) * 0.99))] * 1e6, 1),
            "n": len(s)}


def client(host: str, tcp_port: int, udp_port: int, mib: int, pings: int, conns: int) -> dict[str, object]:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    out: dict[str, object] = {}
    payload = memoryview(bytes(CHUNK))
    with socket.create_connection((host, tcp_port), timeout=60) as sock:
        started = time.perf_counter()
        sock.sendall(b"T")
        for _ in range(mib):
            sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        got = int(sock.makefile().readline())
        seconds = time.perf_counter() - started
    out["throughput"] = {"MiB_per_s": round(mib / seconds, 1), "sent": mib * CHUNK + 1, "received": got + 1,
                         "lost": mib * CHUNK - got}
    with socket.create_connection((host, tcp_port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"P")
        msg = bytes(MSG)
        times = []
        for _ in range(pings):
            t = time.perf_counter()
            sock.sendall(msg)
            _recv_exact(sock, MSG)
            times.append(time.perf_counter() - t)
    out["tcp_rtt"] = _percentiles(times)
    times = []
    for _ in range(conns):
        t = time.perf_counter()
        with socket.create_connection((host, tcp_port), timeout=10) as sock:
            sock.sendall(b"C")
            _recv_exact(sock, 1)
        times.append(time.perf_counter() - t)
    out["tcp_connect"] = _percentiles(times)
    udp = socket.socket(fam, socket.SOCK_DGRAM)
    udp.settimeout(2)
    udp.connect((host, udp_port))
    times = []
    lost = 0
    for _ in range(pings):
        t = time.perf_counter()
        udp.send(bytes(MSG))
        try:
            udp.recv(2048)
        except TimeoutError:
            lost += 1
            continue
        times.append(time.perf_counter() - t)
    udp.close()
    out["udp_rtt"] = {**_percentiles(times), "lost": lost}
    return out


def main() -> int:
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), int(sys.argv[3]))
        return 0
    host, tcp_port, udp_port, mib, pings, conns = sys.argv[2:8]
    print(json.dumps(client(host, int(tcp_port), int(udp_port), int(mib), int(pings), int(conns))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
