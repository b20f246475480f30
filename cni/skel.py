"""Turns a CNI invocation (env + stdin) into a call of a plugin handler.

Everything the dispatcher reads or writes is passed in (environ, stdin, stdout,
stderr), as libcni's skel does, so unit tests drive it without a kernel. This is
the one place where exceptions become the CNI error JSON.

Import cost matters here: every runtime probes plugins with VERSION, so this
module imports only os/sys/time at load time; JSON goes through cni.jsonc, and
typing and dataclasses (which pulls inspect) stay out of the exec path.
"""

from __future__ import annotations

import os
import sys
import time

from cni import errors
from cni.errors import CNIError
from cni.spec import (
    CURRENT_VERSION,
    MISSING_VERSION,
    SUPPORTED_VERSIONS,
    Result,
    convert_result,
    require_supported,
    version_at_least,
)

TYPE_CHECKING = False  # mypy treats this name as True; avoids importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import IO, Any

MAX_STDIN_BYTES = 4 * 1024 * 1024
MAX_ID_LENGTH = 200  # the journal file name <id>:<ifname>.json (and its .tmp) must fit NAME_MAX
MAX_NAME_LENGTH = 128
MAX_IFNAME_LENGTH = 15  # IFNAMSIZ - 1, counted in bytes as the kernel does

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS")
# libcni's `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, as character sets: no regex to
# import, and no `$`-matches-before-a-trailing-newline trap.
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_ID_CHARS = _ALNUM | frozenset("_.-")

# Which CNI_* variables each verb needs (libcni skel's reqForCmd table).
_REQUIRED_ENV: dict[str, frozenset[str]] = {
    "CNI_CONTAINERID": frozenset({"ADD", "DEL", "CHECK"}),
    "CNI_NETNS": frozenset({"ADD", "CHECK"}),
    "CNI_IFNAME": frozenset({"ADD", "DEL", "CHECK"}),
    "CNI_PATH": frozenset({"ADD", "DEL", "CHECK", "GC"}),
}
# The spec version a verb first appeared in.
_MIN_VERSION = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}

_EMPTY_ENV: dict[str, str] = {}


class CmdArgs:
    """One invocation, validated (a plain class: see docs/contributing.md on the exec path's imports)."""

    __slots__ = ("args", "command", "config", "container_id", "environ", "ifname", "netns", "path", "raw_args",
                 "stdin", "version")

    def __init__(
        self, command: str, container_id: str, netns: str, ifname: str, args: dict[str, str], raw_args: str,
        path: list[str], stdin: bytes, config: dict[str, Any], version: str,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.command = command
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.args = args
        self.raw_args = raw_args
        self.path = path
        self.stdin = stdin
        self.config = config
        self.version = version
        self.environ: Mapping[str, str] = {} if environ is None else environ

    @property
    def network(self) -> str:
        return str(self.config.get("name", ""))

    def replace(self, **changes: Any) -> CmdArgs:
        """A copy with some fields changed (what dataclasses.replace gave)."""
        fields = {name: getattr(self, name) for name in self.__slots__}
        fields.update(changes)
        return CmdArgs(**fields)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CmdArgs):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it replaces

    def __repr__(self) -> str:
        return (f"CmdArgs(command={self.command!r}, container_id={self.container_id!r}, netns={self.netns!r}, "
                f"ifname={self.ifname!r}, network={self.network!r}, version={self.version!r})")


if TYPE_CHECKING:
    Handler = Callable[[CmdArgs], Result | None]
else:
    Handler = object


class PluginFuncs:
    """A plugin's verbs. Handlers return a current-shape result (ADD) or None."""

    __slots__ = ("add", "check", "delete", "gc", "known_args", "name", "status")

    def __init__(
        self, name: str, add: Handler | None = None, delete: Handler | None = None, check: Handler | None = None,
        gc: Handler | None = None, status: Handler | None = None,
        # CNI_ARGS keys the plugin understands; others fail unless IgnoreUnknown.
        known_args: frozenset[str] = frozenset(),
    ) -> None:
        self.name = name
        self.add = add
        self.delete = delete
        self.check = check
        self.gc = gc
        self.status = status
        self.known_args = known_args

    def handler(self, command: str) -> Handler | None:
        return {
            "ADD": self.add,
            "DEL": self.delete,
            "CHECK": self.check,
            "GC": self.gc,
            "STATUS": self.status,
        }.get(command)

    def __repr__(self) -> str:
        return f"PluginFuncs(name={self.name!r})"


def _is_id(value: str) -> bool:
    return bool(value) and value[0] in _ALNUM and all(c in _ID_CHARS for c in value)


def validate_container_id(value: str) -> None:
    if not value:
        raise errors.invalid_env("missing containerID")
    if len(value) > MAX_ID_LENGTH or not _is_id(value):
        raise errors.invalid_env("invalid characters in containerID", value[:MAX_ID_LENGTH])


def validate_network_name(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise errors.invalid_config("missing network name")
    if len(value) > MAX_NAME_LENGTH or not _is_id(value):
        raise errors.invalid_config("invalid characters found in network name", value[:MAX_NAME_LENGTH])
    return value


def ifname_problem(value: str) -> tuple[str, str] | None:
    """Why `value` cannot be a Linux interface name ((message, details)), or None.
    The one rule for every interface name berth is given (CNI_IFNAME, a bridge,
    a portmap condition): 1-15 bytes as the kernel counts them (IFNAMSIZ - 1),
    not . or .., no /, :, NUL or whitespace."""
    if not value:
        return "interface name is empty", ""
    if len(value.encode("utf-8", "surrogatepass")) > MAX_IFNAME_LENGTH:
        return "interface name is too long", f"max {MAX_IFNAME_LENGTH} bytes"
    if value in (".", ".."):
        return "interface name is . or ..", ""
    if any(c in "/:\0" or c.isspace() for c in value):
        return "interface name contains / or : or whitespace characters", value
    return None


def validate_ifname(value: str) -> None:
    problem = ifname_problem(value)
    if problem is not None:
        raise errors.invalid_env(*problem)


def validate_netns(value: str) -> None:
    if "\0" in value or not value.startswith("/") or len(value) > 4096:
        raise CNIError(errors.INVALID_NETNS, "netns must be an absolute path", value[:256])


def parse_cni_args(raw: str, known: frozenset[str]) -> dict[str, str]:
    """Parse CNI_ARGS `K=V;K2=V2`; unknown keys fail unless IgnoreUnknown is set."""
    parsed: dict[str, str] = {}
    if not raw:
        return parsed
    for pair in raw.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key or not all(c in _ID_CHARS for c in key):
            raise errors.invalid_env("invalid CNI_ARGS pair", pair[:200])
        parsed[key] = value
    # libcni's UnmarshallableBool: 1/true/0/false (any case), anything else is an error
    flag = parsed.get("IgnoreUnknown", "").lower()
    if flag not in ("", "0", "1", "true", "false"):
        raise errors.invalid_env("invalid IgnoreUnknown value in CNI_ARGS", flag[:40])
    unknown = sorted(k for k in parsed if k not in known and k != "IgnoreUnknown")
    if unknown and flag not in ("1", "true"):
        raise errors.invalid_env(f"unknown CNI_ARGS {unknown}", "set IgnoreUnknown=1 to ignore them")
    return parsed


def read_stdin(stream: IO[bytes]) -> bytes:
    data = stream.read(MAX_STDIN_BYTES + 1)
    if len(data) > MAX_STDIN_BYTES:
        raise CNIError(errors.DECODE_FAILURE, f"network configuration is larger than {MAX_STDIN_BYTES} bytes")
    return data


def decode_config(data: bytes) -> dict[str, Any]:
    from cni import jsonc

    try:
        config = jsonc.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CNIError(errors.DECODE_FAILURE, "error parsing network configuration", str(exc)[:300]) from None
    except RecursionError:  # "[[[[..." nested deeper than the interpreter's stack
        raise CNIError(errors.DECODE_FAILURE, "error parsing network configuration", "nested too deeply") from None
    if not isinstance(config, dict):
        raise CNIError(errors.DECODE_FAILURE, "network configuration must be a JSON object")
    return config


def config_version(config: Mapping[str, Any]) -> str:
    return require_supported(config.get("cniVersion", MISSING_VERSION))


def version_info() -> dict[str, Any]:
    return {"cniVersion": CURRENT_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}


def _version_json() -> str:
    # what jsonc.dumps(version_info()) prints, without importing json for the hottest call
    versions = ", ".join(f'"{v}"' for v in SUPPORTED_VERSIONS)
    return f'{{"cniVersion": "{CURRENT_VERSION}", "supportedVersions": [{versions}]}}'


def _check_env(command: str, environ: Mapping[str, str]) -> None:
    missing = [var for var, verbs in _REQUIRED_ENV.items() if command in verbs and not environ.get(var)]
    if missing:
        raise errors.invalid_env(f"required env variables [{','.join(missing)}] missing")


def parse_args(funcs: PluginFuncs, environ: Mapping[str, str], stdin: bytes) -> CmdArgs:
    """Validate env and config for a verb other than VERSION."""
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise errors.invalid_env(f"unknown CNI_COMMAND {command[:40]!r}")
    _check_env(command, environ)
    container_id = environ.get("CNI_CONTAINERID", "")
    ifname = environ.get("CNI_IFNAME", "")
    netns = environ.get("CNI_NETNS", "")
    if container_id or command in ("ADD", "DEL", "CHECK"):
        validate_container_id(container_id)
    if ifname or command in ("ADD", "DEL", "CHECK"):
        validate_ifname(ifname)
    if netns:
        validate_netns(netns)
    raw_args = environ.get("CNI_ARGS", "")
    parsed_args = parse_cni_args(raw_args, funcs.known_args)
    config = decode_config(stdin)
    version = config_version(config)
    minimum = _MIN_VERSION.get(command)
    if minimum and not version_at_least(version, minimum):
        raise CNIError(
            errors.INCOMPATIBLE_VERSION, f"config version {version} does not allow {command}",
            f"{command} needs cniVersion >= {minimum}",
        )
    validate_network_name(config.get("name"))
    if not isinstance(config.get("type", ""), str):
        raise errors.invalid_config("type must be a string")
    path = [p for p in environ.get("CNI_PATH", "").split(os.pathsep) if p]
    return CmdArgs(
        command=command, container_id=container_id, netns=netns, ifname=ifname,
        args=parsed_args, raw_args=raw_args, path=path, stdin=stdin, config=config,
        version=version, environ=environ,
    )


def execute(funcs: PluginFuncs, environ: Mapping[str, str], stdin: bytes) -> Result | None:
    """Run one verb and return its result in the config's version (None for DEL/GC/STATUS)."""
    return dispatch(funcs, parse_args(funcs, environ, stdin))


def dispatch(funcs: PluginFuncs, args: CmdArgs) -> Result | None:
    """execute() for arguments parse_args accepted."""
    handler = funcs.handler(args.command)
    if handler is None:
        raise CNIError(errors.NOT_IMPLEMENTED, f"{funcs.name} does not implement {args.command}")
    result = handler(args)
    if result is None or args.command != "ADD":
        return None
    return convert_result(result, args.version)


def _error_version(stdin: bytes) -> str:
    from cni import jsonc

    try:
        version = jsonc.loads(stdin).get("cniVersion")
    except Exception:
        return CURRENT_VERSION
    return version if version in SUPPORTED_VERSIONS else CURRENT_VERSION


def about(funcs: PluginFuncs) -> str:
    from cni import __version__

    return (
        f"CNI {funcs.name} plugin (berth {__version__})\n"
        f"CNI protocol versions supported: {', '.join(SUPPORTED_VERSIONS)}\n"
    )


def run(
    funcs: PluginFuncs,
    environ: Mapping[str, str],
    stdin: IO[bytes],
    stdout: IO[str],
    stderr: IO[str],
) -> int:
    """The plugin's main: returns the exit status. Never lets a traceback escape."""
    command = environ.get("CNI_COMMAND")
    if not command:
        stderr.write(about(funcs))
        return 0
    data = b""
    started = time.monotonic()
    outcome = "ok"
    message = ""
    accepted = False  # the config passed parse_args: only then may it name the log file
    try:
        if command == "VERSION":
            stdout.write(_version_json() + "\n")
            return 0
        data = read_stdin(stdin)
        args = parse_args(funcs, environ, data)
        accepted = True
        result = dispatch(funcs, args)
        if result is not None:
            from cni import jsonc

            stdout.write(jsonc.dumps(result) + "\n")
        return 0
    except CNIError as err:
        outcome, message = f"error {err.code}", err.msg
        print_error(err, data, stdout, stderr, funcs.name)
        return 1
    except Exception as exc:  # anything unexpected still answers in CNI's format
        outcome, message = "error 999", type(exc).__name__
        if environ.get("BERTH_DEBUG"):
            import traceback

            traceback.print_exc(file=stderr)
        internal = CNIError(errors.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"[:1000])
        print_error(internal, data, stdout, stderr, funcs.name)
        return 1
    finally:
        _flush(stdout, stderr)  # the runtime's answer is complete before anything else happens
        _log_call(funcs.name, environ, data, started, outcome, message, accepted)


def _flush(*streams: IO[str]) -> None:
    for stream in streams:
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # closed pipes
            pass


def print_error(err: CNIError, data: bytes, stdout: IO[str], stderr: IO[str], name: str) -> None:
    from cni import jsonc

    detail = f" ({err.details})" if err.details else ""
    try:
        stdout.write(jsonc.dumps(err.to_json(_error_version(data))) + "\n")
        stderr.write(f"{name}: error {err.code}: {err.msg}{detail}\n".replace("\n", " ")[:-1] + "\n")
    except (OSError, ValueError):  # the runtime closed our pipes: nobody is left to tell
        pass


LOG_CONFIG_KEY = "berthLogFile"


def _log_call(name: str, environ: Mapping[str, str], data: bytes, started: float, outcome: str,
              message: str = "", accepted: bool = True) -> None:
    """One structured line per call (off by default) to the file named by env
    BERTH_LOG_FILE or, failing that, by the plugin config's top-level
    "berthLogFile" (an absolute path; anything else is ignored, and so is a
    config the call refused). Never fails or blocks the call (see _append)."""
    path = environ.get("BERTH_LOG_FILE")
    if not path and not (data and accepted):
        return
    try:
        from cni import jsonc

        network = ""
        try:
            conf = jsonc.loads(data) if data else {}
            network = str(conf.get("name", ""))[:MAX_NAME_LENGTH]
            configured = conf.get(LOG_CONFIG_KEY) if accepted else None
            if not path and isinstance(configured, str) and configured.startswith("/") and "\0" not in configured:
                path = configured[:4096]
        except Exception:
            pass
        if not path:
            return
        line = {
            "ts": round(time.time(), 3),
            "plugin": name,
            "verb": environ.get("CNI_COMMAND", "")[:16],
            "container": environ.get("CNI_CONTAINERID", "")[:MAX_ID_LENGTH],
            "ifname": environ.get("CNI_IFNAME", "")[:MAX_IFNAME_LENGTH],
            "network": network,
            "ms": round((time.monotonic() - started) * 1000, 1),
            "outcome": outcome,
        }
        if message:
            line["msg"] = message[:500]
        _append(path, (jsonc.dumps(line) + "\n").encode())
    except Exception:
        pass


LOG_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC


def _append(path: str, line: bytes) -> None:
    """Append to a regular file only: a FIFO (whose open or write would block), a
    device, a socket, a directory, a symlink, or a kernel interface that looks
    like a file (/proc, /sys) is left alone, unopened when lstat tells, and the
    fstat after the open catches one swapped in meanwhile."""
    try:
        if not _loggable(os.lstat(path)):
            return
    except FileNotFoundError:
        pass
    fd = os.open(path, LOG_OPEN_FLAGS, 0o600)
    try:
        if _loggable(os.fstat(fd)):
            os.write(fd, line)
    finally:
        os.close(fd)


def _loggable(st: os.stat_result) -> bool:
    import stat

    if not stat.S_ISREG(st.st_mode):
        return False
    for pseudo in ("/proc", "/sys"):
        try:
            if os.stat(pseudo).st_dev == st.st_dev:
                return False
        except OSError:
            pass
    return True


def main(funcs: PluginFuncs) -> int:
    return run(funcs, os.environ, sys.stdin.buffer, sys.stdout, sys.stderr)
