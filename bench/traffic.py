"""Traffic tool exec'd inside the bench's namespaces with /usr/bin/python3 (stdlib only).

serve PORT: accept forever, answer each connection with one line and close.
    Prints "ready" once listening.
rate HOST PORT MAX_CONNECTIONS MAX_SECONDS [WARMUP]: after WARMUP untimed
    connections, open new TCP connections one after another until either bound,
    read the line, close; print
    {"ok": n, "errors": n, "seconds": s} as JSON.
"""

from __future__ import annotations

import json
import socket
import sys
import time


def serve(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(1024)
    print("ready", flush=True)
    while True:
        conn, _ = sock.accept()
        try:
            conn.sendall(b"ok\n")
        except OSError:
            pass
        conn.close()


def rate(host: str, port: int, max_conns: int, max_seconds: float, warmup: int = 0) -> dict[str, float]:
    for _ in range(warmup):
        try:
            with socket.create_connection((host, port), timeout=2) as sock:
                sock.recv(16)
        except OSError:
            pass
    ok = errors = 0
    start = time.perf_counter()
    deadline = start + max_seconds
    while ok + errors < max_conns and time.perf_counter() < deadline:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(2)
        try:
            sock.connect((host, port))
            if sock.recv(16).startswith(b"ok"):
                ok += 1
            else:
                errors += 1
        except OSError:
            errors += 1
        finally:
            sock.close()
    return {"ok": ok, "errors": errors, "seconds": time.perf_counter() - start}


def main() -> int:
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
        return 0
    if sys.argv[1] == "rate":
        warmup = int(sys.argv[6]) if len(sys.argv) > 6 else 0
        out = rate(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), warmup)
        print(json.dumps(out))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
