"""The one place that talks to nftables: libnftables (JSON API, one transaction
per call) for every change and listing, and a few raw nf_tables GET requests
(does the table / a set exist, the ruleset generation) that must not pay for
libnftables' cache of the whole ruleset.

The binding is imported lazily: a plugin is exec'd per pod and VERSION/DEL with
nothing to do must not pay for it. Only berth's own table is ever listed.
"""

from __future__ import annotations

import _socket  # the C module: socket.py would import enum and selectors for every exec
import errno
import os
import struct
import sys
import threading

from cni import errors, jsonc, phases
from cni.errors import CNIError

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from typing import Any, Protocol
else:
    Protocol = object  # the interface needs no checking at run time

_lock = threading.Lock()
_handle: Any = None
# The table this adapter works in, and only that one (portmap/layout.py builds its
# objects under the same names; a unit test holds the two together).
FAMILY = "inet"
TABLE = "berth"
MAX_DETAIL_CHARS = 4000
# how the kernel answers a construct it does not support (or a module it lacks):
# then portmap/features.py names what is missing
KERNEL_REFUSALS = ("Invalid argument", "Operation not supported", "No such file or directory")


class Backend(Protocol):
    """What the plugins need from nftables; NFT (real) and Fake (tests) provide it."""

    def apply(self, commands: list[dict[str, Any]]) -> None: ...

    def list_table(self) -> list[dict[str, Any]] | None: ...

    def table_exists(self) -> bool | None: ...

    def set_exists(self, name: str) -> bool | None: ...

    def generation(self) -> int | None: ...


def _import_binding() -> Any:
    """The nftables binding, bound to cni.jsonc for its json.dumps/json.loads when
    nothing has loaded the json package yet: the same text and objects, without
    the regular expressions json compiles on import."""
    if "json" in sys.modules:
        import nftables

        return nftables
    sys.modules["json"] = jsonc
    try:
        import nftables

        return nftables
    finally:
        if sys.modules.get("json") is jsonc:
            del sys.modules["json"]


def _nft() -> Any:
    global _handle
    with _lock:
        if _handle is None:
            phases.mark("work")
            try:
                nftables = _import_binding()  # lazy: only when there is nft work
            except ImportError as exc:
                raise CNIError(errors.PLUGIN_NOT_AVAILABLE, "libnftables binding not available", str(exc)) from None
            try:
                handle = nftables.Nftables()
            except Exception as exc:  # the binding raises OSError-ish things when the .so is missing
                raise CNIError(errors.PLUGIN_NOT_AVAILABLE, "libnftables not loadable", str(exc)) from None
            handle.set_json_output(True)
            handle.set_handle_output(False)
            _handle = handle
            phases.mark("libnftables")
        return _handle


def wrap(commands: list[dict[str, Any]]) -> dict[str, Any]:
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]}


def render(commands: list[dict[str, Any]]) -> str:
    """A compact rendering of a transaction for error details."""
    lines = []
    for cmd in commands:
        verb, body = next(iter(cmd.items()))
        kind, obj = next(iter(body.items()))
        name = obj.get("name") or obj.get("chain") or ""
        lines.append(f"{verb} {kind} {name}".rstrip())
    return "; ".join(lines)


def _details(error: str, commands: list[dict[str, Any]]) -> str:
    return f"{error.strip()} | transaction: {render(commands)}"[:MAX_DETAIL_CHARS]


class NFT:
    """libnftables through its JSON API."""

    def apply(self, commands: list[dict[str, Any]]) -> None:
        """One json_cmd = one netlink batch: all of it or nothing."""
        if not commands:
            return
        error = self.try_apply(commands)
        if error is None:
            return
        if any(text in error for text in KERNEL_REFUSALS):
            from portmap import features

            found = features.missing(self.try_apply)
            if found is not None:
                msg, details = features.describe(found)
                raise CNIError(errors.NFTABLES_FAILURE, msg, details)
        raise CNIError(errors.NFTABLES_FAILURE, "nftables transaction failed", _details(error, commands))

    def try_apply(self, commands: list[dict[str, Any]]) -> str | None:
        """One transaction; the error text, or None when it committed."""
        rc, _out, err = _nft().json_cmd(wrap(commands))
        return None if rc == 0 else str(err)

    def list_table(self) -> list[dict[str, Any]] | None:
        """Objects of `table inet berth` (None when it does not exist)."""
        cmd = {"list": {"table": {"family": FAMILY, "name": TABLE}}}
        rc, out, _err = _nft().json_cmd(wrap([cmd]))
        if rc != 0:
            return None
        return [o for o in (out or {}).get("nftables", []) if "metainfo" not in o]

    def table_exists(self) -> bool | None:
        return kernel_table_exists()

    def set_exists(self, name: str) -> bool | None:
        return kernel_set_exists(name)

    def generation(self) -> int | None:
        return kernel_generation()


class Fake:
    """In-memory stand-in for the kernel's side of berth's table: chains with their
    rules, sets and maps with their elements, applied transaction by transaction
    (all or nothing, as the kernel does), listed back in libnftables' shape and
    dumped as text, so CHECK, diff and reconcile get golden tests without a kernel."""

    def __init__(self) -> None:
        self.transactions: list[list[dict[str, Any]]] = []
        self.table = False
        self.rules: dict[str, list[dict[str, Any]]] = {}  # chain -> rules, in order
        self.sets: dict[str, tuple[str, list[Any]]] = {}  # name -> (kind, elements)
        self.fail_next: str | None = None

    @property
    def chains(self) -> set[str]:
        return set(self.rules)

    @property
    def elements(self) -> dict[str, list[Any]]:
        return {name: elems for name, (_kind, elems) in self.sets.items()}

    def apply(self, commands: list[dict[str, Any]]) -> None:
        if self.fail_next:
            msg, self.fail_next = self.fail_next, None
            raise CNIError(errors.NFTABLES_FAILURE, "nftables transaction failed", _details(msg, commands))
        before = (self.table, {c: list(r) for c, r in self.rules.items()},
                  {n: (k, list(e)) for n, (k, e) in self.sets.items()})
        try:
            for cmd in commands:
                self._one(cmd)
        except KeyError as exc:  # what the kernel answers with ENOENT: nothing of the transaction stays
            self.table, self.rules, self.sets = before
            raise CNIError(errors.NFTABLES_FAILURE, "nftables transaction failed",
                           _details(f"No such file or directory: {exc}", commands)) from None
        self.transactions.append(commands)

    def _one(self, cmd: dict[str, Any]) -> None:
        verb, body = next(iter(cmd.items()))
        kind, obj = next(iter(body.items()))
        if kind == "table":
            if verb == "delete":
                self.table, self.rules, self.sets = False, {}, {}
            else:
                self.table = True
            return
        if not self.table:
            raise KeyError(f"table {TABLE}")
        name = obj.get("name") or obj.get("chain")
        if kind == "chain":
            if verb == "add":
                self.rules.setdefault(name, [])
            elif verb == "flush":
                self.rules[name][:] = []
            elif verb == "delete":
                del self.rules[name]
        elif kind == "rule" and verb == "add":
            rule = {"chain": obj["chain"], "expr": obj["expr"]}
            self.rules[obj["chain"]].append({**rule, "comment": obj["comment"]} if "comment" in obj else rule)
        elif kind in ("set", "map"):
            if verb == "add":
                self.sets.setdefault(name, (kind, []))
            elif verb == "delete":
                del self.sets[name]
        elif kind == "element":
            elems = self.sets[name][1]
            for elem in obj["elem"]:
                if verb == "add" and elem not in elems:
                    elems.append(elem)
                elif verb == "delete":  # nft deletes by key, whatever the value
                    key = elem[0] if isinstance(elem, list) else elem
                    elems[:] = [e for e in elems if (e[0] if isinstance(e, list) else e) != key]

    def table_exists(self) -> bool | None:
        return None  # "cannot tell": the plugins then send their DEL transactions, as they always did

    def set_exists(self, name: str) -> bool | None:
        return None  # "cannot tell": the plugins then assert what they need, as on a new node

    def generation(self) -> int | None:
        return None  # "cannot tell": every ADD re-asserts the static layout

    def list_table(self) -> list[dict[str, Any]] | None:
        """What `nft -j list table inet berth` would show (None: no table)."""
        if not self.table:
            return None
        out: list[dict[str, Any]] = [{"table": {"family": FAMILY, "name": TABLE}}]
        for name, (kind, elems) in self.sets.items():
            out.append({kind: {"family": FAMILY, "table": TABLE, "name": name,
                               **({"elem": list(elems)} if elems else {})}})
        for chain, rules in self.rules.items():
            out.append({"chain": {"family": FAMILY, "table": TABLE, "name": chain}})
            out += [{"rule": {"family": FAMILY, "table": TABLE, **r}} for r in rules]
        return out

    def dump(self) -> str:
        """The table as text, one line per object, in a stable order (for golden tests)."""
        if not self.table:
            return ""
        lines = [f"table {FAMILY} {TABLE}"]
        for name, (kind, elems) in sorted(self.sets.items()):
            lines.append(f"{kind} {name}" + (f" {jsonc.dumps(elems, sort_keys=True)}" if elems else ""))
        for chain, rules in sorted(self.rules.items()):
            lines.append(f"chain {chain}")
            lines += [f"  rule {jsonc.dumps(r, sort_keys=True)}" for r in rules]
        return "\n".join(lines) + "\n"


_backend: Backend | None = None


def backend() -> Backend:
    """The process-wide backend; tests may install a Fake with set_backend()."""
    global _backend
    if _backend is None:
        _backend = NFT()
    return _backend


def set_backend(value: Backend | None) -> None:
    global _backend
    _backend = value


def apply(commands: list[dict[str, Any]]) -> None:
    backend().apply(commands)


def list_table() -> list[dict[str, Any]] | None:
    return backend().list_table()


def table_exists() -> bool | None:
    """Does berth's table exist (None: cannot tell)? Cheap: see kernel_table_exists."""
    return backend().table_exists()


def set_exists(name: str) -> bool | None:
    """Does berth's table hold a set or map of this name (None: cannot tell)? Cheap: see kernel_set_exists."""
    return backend().set_exists(name)


def chain_exists(name: str) -> bool | None:
    """Does berth's table hold this chain (None: cannot tell)? One raw GET on the
    kernel; a test backend answers from its listing."""
    handle = backend()
    if isinstance(handle, NFT):
        return kernel_chain_exists(name)
    return any(o.get("chain", {}).get("name") == name for o in handle.list_table() or [])


def rule_comments(objects: list[dict[str, Any]] | None, chain: str) -> set[str]:
    """The comments of the rules of `chain` in a listing of berth's table."""
    return {str(o["rule"]["comment"]) for o in objects or []
            if isinstance(o.get("rule"), dict) and o["rule"].get("chain") == chain and o["rule"].get("comment")}


def existing(names: tuple[str, ...]) -> tuple[str, ...]:
    """Those of these sets/maps that berth's table holds (one raw GET each; a
    backend that cannot tell answers none)."""
    return tuple(name for name in names if set_exists(name) is True)


def generation() -> int | None:
    """The ruleset generation (None: cannot tell); see portmap/generation.py."""
    return backend().generation()


def unsupported() -> tuple[str, str] | None:
    """(message, details) naming an nf_tables feature berth needs that this kernel
    lacks, None when it has them all (or the backend is not the kernel's)."""
    handle = backend()
    if not isinstance(handle, NFT):
        return None
    from portmap import features

    found = features.missing(handle.try_apply)
    return features.describe(found) if found is not None else None


def forget_context() -> None:
    """Drop this process's libnftables context (a forked child must not share its
    parent's netlink socket and sequence numbers); the next call makes its own."""
    global _handle
    _handle = None


def prepare() -> None:
    """Load libnftables now, before the caller takes the node-wide ports lock:
    the import and context set-up need not hold up every other ADD/DEL."""
    if isinstance(backend(), NFT):
        _nft()


def list_foreign(family: str, table: str) -> list[dict[str, Any]] | None:
    """Read-only listing of a table berth does not own (operator tools explain
    what e.g. iptables-nft's FORWARD does); None when it does not exist. Never
    used to change anything: berth writes only its own table."""
    cmd = {"list": {"table": {"family": family, "name": table}}}
    rc, out, _err = _nft().json_cmd(wrap([cmd]))
    if rc != 0:
        return None
    return [o for o in (out or {}).get("nftables", []) if "metainfo" not in o]


# nfnetlink constants (linux/netfilter/nfnetlink.h, nf_tables.h)
NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWTABLE, NFT_MSG_GETTABLE = 0, 1
NFT_MSG_NEWCHAIN, NFT_MSG_GETCHAIN = 3, 4
NFT_MSG_NEWSET, NFT_MSG_GETSET = 9, 10
NFT_MSG_NEWGEN, NFT_MSG_GETGEN = 15, 16
NFTA_GEN_ID = 1
NLMSG_ERROR = 2
NFTA_TABLE_NAME = 1
NFTA_SET_TABLE, NFTA_SET_NAME = 1, 2
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME = 1, 3
NFPROTO = {"inet": 1, "ip": 2, "ip6": 10}


def _attr(kind: int, text: str) -> bytes:
    raw = text.encode() + b"\0"
    attr = struct.pack("HH", 4 + len(raw), kind) + raw
    return attr + b"\0" * (-len(attr) % 4)


class _RawSocket:
    """The process's one raw nf_tables netlink socket, kept open. Closing a
    NETLINK_NETFILTER socket makes the kernel wait for the destruction of the
    last commit's objects (nf_tables flushes its destroy work, an RCU grace
    period: milliseconds) whenever one is pending, which right after a berth
    transaction it is. Reopened after a fork (a child must not share its
    parent's replies), in another netns, or after any error."""

    def __init__(self) -> None:
        self.sock: _socket.socket | None = None
        self.owner: tuple[int, int] = (0, 0)  # (pid, netns inode) it was opened in
        self.seq = 0

    def request(self, message: bytes) -> bytes | None:
        with _lock:
            try:
                return self._request(message)
            except OSError:
                self.sock = None  # dropped, not closed: see the class docstring
                return None

    def _request(self, message: bytes) -> bytes | None:
        owner = (os.getpid(), os.stat("/proc/thread-self/ns/net").st_ino)
        if self.sock is None or self.owner != owner:
            self.sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW, NETLINK_NETFILTER)
            self.sock.settimeout(2.0)
            self.owner = owner
        self.seq = (self.seq + 1) & 0xFFFFFFFF or 1
        self.sock.send(message[:8] + struct.pack("I", self.seq) + message[12:])
        while True:  # skip a late answer to an earlier request that timed out
            answer = self.sock.recv(65536)
            if len(answer) < 16:
                return None
            if struct.unpack_from("I", answer, 8)[0] == self.seq:
                return answer


_raw = _RawSocket()


def _kernel_request(msg: int, family: str, attrs: bytes) -> bytes | None:
    """One nf_tables GET request for a single object, without libnftables (which
    would fetch the ruleset's chains and sets first: milliseconds at 1,000
    attachments): microseconds. The raw answer, or None when there is none."""
    body = struct.pack("BBH", NFPROTO[family], 0, 0) + attrs
    kind = (NFNL_SUBSYS_NFTABLES << 8) | msg
    return _raw.request(struct.pack("IHHII", 16 + len(body), kind, 1, 0, 0) + body)  # NLM_F_REQUEST


def _kernel_get(msg: int, reply: int, family: str, attrs: bytes) -> bool | None:
    """True: the object exists; False: ENOENT; None: cannot tell."""
    answer = _kernel_request(msg, family, attrs)
    if answer is None:
        return None
    _length, got = struct.unpack_from("IH", answer)
    if got == (NFNL_SUBSYS_NFTABLES << 8) | reply:
        return True
    if got == NLMSG_ERROR and len(answer) >= 20:
        (code,) = struct.unpack_from("i", answer, 16)
        return False if -code == errno.ENOENT else None
    return None


def kernel_generation() -> int | None:
    """The ruleset's generation: every nf_tables commit in this netns, by anyone, adds one."""
    answer = _kernel_request(NFT_MSG_GETGEN, "inet", b"")
    if answer is None or struct.unpack_from("H", answer, 4)[0] != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN:
        return None
    offset = 20  # nlmsghdr + nfgenmsg, then attributes
    while offset + 4 <= len(answer):
        size, kind = struct.unpack_from("HH", answer, offset)
        if size < 4:
            break
        if kind & 0x3FFF == NFTA_GEN_ID and size >= 8:
            return int(struct.unpack_from(">I", answer, offset + 4)[0])
        offset += (size + 3) & ~3
    return None


def kernel_table_exists(family: str = "", name: str = "") -> bool | None:
    """Does berth's table exist? The agent's flush watcher asks it every few
    seconds; DEL asks it so that it never creates the table just to delete
    nothing from it."""
    return _kernel_get(NFT_MSG_GETTABLE, NFT_MSG_NEWTABLE, family or FAMILY,
                       _attr(NFTA_TABLE_NAME, name or TABLE))


def kernel_chain_exists(name: str) -> bool | None:
    """Does berth's table hold the chain `name`? (False also when the table is gone.)"""
    return _kernel_get(NFT_MSG_GETCHAIN, NFT_MSG_NEWCHAIN, FAMILY,
                       _attr(NFTA_CHAIN_TABLE, TABLE) + _attr(NFTA_CHAIN_NAME, name))


def kernel_set_exists(name: str) -> bool | None:
    """Does berth's table hold the set or map `name`? (False also when the table is gone.)"""
    return _kernel_get(NFT_MSG_GETSET, NFT_MSG_NEWSET, FAMILY,
                       _attr(NFTA_SET_TABLE, TABLE) + _attr(NFTA_SET_NAME, name))
