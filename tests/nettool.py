"""Tiny traffic tool run inside test namespaces with the system python.

serve-tcp PORT [FAMILY] [COUNT]: answer each connection with "<banner> <peer-ip>\n" (BIND: an address).
serve-udp PORT [FAMILY] [COUNT]: answer each datagram the same way.
tcp HOST PORT / udp HOST PORT [SOURCEPORT]: print the answer, exit 1 on failure.
The servers exit after COUNT requests or 60 s, whichever comes first.
sink PORT [FAMILY]: read one TCP connection to its end, print "<bytes> <seconds from first to last byte>".
send HOST PORT BYTES: send that many bytes over TCP, as fast as the path takes them.
"""

import os
import socket
import sys
import time


def serve(kind: str, port: int, family: str, count: int) -> None:
    fam = socket.AF_INET6 if family == "6" else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((os.environ.get("BIND") or ("::" if fam == socket.AF_INET6 else "0.0.0.0"), port))
    if kind == "tcp":
        sock.listen(64)
    banner = os.environ.get("BANNER", "hello")
    print("ready", flush=True)
    deadline = time.monotonic() + float(os.environ.get("SERVE_SECONDS", "60"))
    served = 0
    while served < count and time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            if kind == "tcp":
                conn, peer = sock.accept()
                with conn:
                    conn.sendall(f"{banner} {peer[0]}\n".encode())
            else:
                _, peer = sock.recvfrom(2048)
                sock.sendto(f"{banner} {peer[0]}\n".encode(), peer)
        except TimeoutError:
            break
        served += 1


def client(kind: str, host: str, port: int, source_port: int = 0) -> int:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    sock.settimeout(float(os.environ.get("CLIENT_TIMEOUT", "2")))
    if source_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", source_port))
    try:
        if kind == "tcp":
            sock.connect((host, port))
            data = sock.recv(2048)
        else:
            sock.sendto(b"ping", (host, port))
            data, _ = sock.recvfrom(2048)
    except OSError as exc:
        print(f"error {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(data.decode())
    return 0


def sink(port: int, family: str) -> None:
    fam = socket.AF_INET6 if family == "6" else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", port))
    sock.listen(1)
    sock.settimeout(float(os.environ.get("SERVE_SECONDS", "60")))
    print("ready", flush=True)
    conn, _peer = sock.accept()
    conn.settimeout(30)
    total, first, last = 0, 0.0, 0.0
    with conn:
        while True:
            data = conn.recv(1 << 16)
            if not data:
                break
            last = time.monotonic()
            first = first or last
            total += len(data)
    print(f"{total} {last - first:.6f}", flush=True)


def send(host: str, port: int, count: int) -> int:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_STREAM)
    sock.settimeout(30)
    chunk = b"x" * (1 << 16)
    try:
        sock.connect((host, port))
        while count > 0:
            sent = sock.send(chunk[:count])
            count -= sent
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)  # the sink closes once it has read everything
    except OSError as exc:
        print(f"error {exc}", file=sys.stderr)
        return 1
    finally:
        sock.close()
    return 0


def main() -> int:
    cmd = sys.argv[1]
    if cmd == "sink":
        sink(int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "4")
        return 0
    if cmd == "send":
        return send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    if cmd in ("serve-tcp", "serve-udp"):
        family = sys.argv[3] if len(sys.argv) > 3 else "4"
        count = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
        serve(cmd[6:], int(sys.argv[2]), family, count)
        return 0
    source = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    return client(cmd, sys.argv[2], int(sys.argv[3]), source)


if __name__ == "__main__":
    sys.exit(main())
