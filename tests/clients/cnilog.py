"""Logging CNI plugin wrapper, exec'd with the system python by the wrappers tests/clients/plugins.py writes.

usage: cnilog.py LOG NAME PLUGIN [ARGS...]

Runs PLUGIN with the caller's stdin, environment and arguments, passes its stdout, stderr and exit
status through, and appends one JSON line per call to LOG: what the runtime sent and what it got.
"""

import fcntl
import json
import os
import subprocess
import sys
import time

LOGGED_ENV = ("CNI_", "BERTH_")


def parsed(data: bytes) -> object:
    text = data.decode(errors="replace")
    try:
        return json.loads(text) if text.strip() else None
    except ValueError:
        return text


def main() -> int:
    log, name, plugin, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    stdin = sys.stdin.buffer.read()
    started = time.time_ns()
    proc = subprocess.run([plugin, *args], input=stdin, capture_output=True, check=False)
    record = {
        "t": started, "ms": (time.time_ns() - started) // 1_000_000, "plugin": name,
        "command": os.environ.get("CNI_COMMAND", ""), "rc": proc.returncode, "argv": args,
        "env": {k: v for k, v in os.environ.items() if k.startswith(LOGGED_ENV) or k == "PATH"},
        "stdin": parsed(stdin), "stdout": parsed(proc.stdout), "stderr": proc.stderr.decode(errors="replace"),
    }
    with open(log, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(json.dumps(record) + "\n")
    sys.stdout.buffer.write(proc.stdout)
    sys.stderr.buffer.write(proc.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
