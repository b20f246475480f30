"""berth-tuning: sysctls and link attributes of the container interface, as upstream's plugins/meta/tuning.

A chained plugin: it needs prevResult and passes it on (with the interface's new
MAC when it set one). In the container's network namespace it writes `net.*`
sysctls (dotted keys as upstream's, or `/`-separated ones, whose parts may hold
dots; a part `IFNAME` is CNI_IFNAME), then changes the MAC address, promiscuous
mode, MTU, all-multicast mode and transmit queue length of CNI_IFNAME.

The journal section "tuning" is written before anything changes, with the
attributes as they were (upstream keeps them in /run/cni/tuning/<id>_<if>.json):
DEL restores them when the interface still exists, as upstream does. Sysctls are
not restored by DEL (upstream's neither: they belong to a namespace that is going
away); a failed ADD puts back everything it changed, sysctls included.

Values come from the config, then CNI_ARGS `MAC=`, then `runtimeConfig.mac` (the
`mac` capability), then `args.cni` (sysctl, mac, promisc, mtu, allmulti, txQLen),
each overriding the one before, as upstream reads them. When
/etc/cni/tuning/allowlist.conf exists (BERTH_TUNING_ALLOWLIST names another
file), every sysctl key must match one of its regular expressions, as upstream's.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import sys
from collections import Counter
from collections.abc import Mapping

from cni import errors, jsonc, netlink, netns, sysctl
from cni.errors import CNIError
from cni.meta import chained_result, gc_sections, journal, kernel_errors, quietly, section, step_done
from cni.records import TUNING, LinkAttrs, TuningRecord
from cni.skel import CmdArgs, PluginFuncs
from cni.spec import Result

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from typing import Any, NamedTuple
else:
    from cni.tuples import NamedTuple

ALLOWLIST = "/etc/cni/tuning/allowlist.conf"
MAX_SYSCTL_VALUE = 4096
MIN_MTU, MAX_MTU = 68, 65535
MAX_TXQLEN = 0xFFFFFFFF
IFNAME_PART = "IFNAME"


class Sysctl(NamedTuple):
    key: str  # as configured (what the allowlist is matched against)
    parts: tuple[str, ...]  # below /proc/sys, CNI_IFNAME substituted
    value: str


class TuningConf(NamedTuple):
    sysctls: tuple[Sysctl, ...]
    mac: str | None
    mtu: int | None
    promisc: bool
    allmulti: bool | None
    txqlen: int | None

    @property
    def changes_link(self) -> bool:
        return any(v is not None for v in (self.mac, self.mtu, self.allmulti, self.txqlen)) or self.promisc


# --- configuration ---------------------------------------------------------------

def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise errors.invalid_config(f"{field} must be true or false")
    return value


def _int(value: Any, field: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise errors.invalid_config(f"{field} must be an integer from {lo} to {hi}", repr(value)[:60])
    return value


def parse_mac(value: Any, field: str = "mac") -> str:
    """A unicast Ethernet address (`:` or `-` separated), lower-case with colons."""
    if not isinstance(value, str):
        raise errors.invalid_config(f"{field} must be a string")
    parts = value.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts):
        raise errors.invalid_config(f"invalid {field} {value[:40]!r}", "a MAC address like c2:b0:57:49:47:f1")
    if int(parts[0], 16) & 1:
        raise errors.invalid_config(f"{field} {value!r} is a multicast address", "an interface needs a unicast one")
    return ":".join(parts).lower()


def sysctl_parts(key: str, ifname: str) -> tuple[str, ...]:
    """The name of a `net.*` sysctl as parts below /proc/sys, refusing anything that
    could leave /proc/sys/net: empty parts, `.`, `..`, NUL, whitespace."""
    sep = "/" if "/" in key else "."
    parts = tuple(ifname if part == IFNAME_PART else part for part in key.split(sep))
    if len(parts) < 2 or parts[0] != "net":
        raise errors.invalid_config(f"invalid net sysctl key {key[:120]!r}", "only net.* sysctls can be set")
    for part in parts:
        if part in ("", ".", "..") or "/" in part or any(c.isspace() or ord(c) < 32 or c == "\x7f" for c in part):
            raise errors.invalid_config(f"invalid net sysctl key {key[:120]!r}", f"bad part {part[:40]!r}")
    return parts


def _sysctl_map(value: Any, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise errors.invalid_config(f"{field} must be an object of sysctl names to string values")
    for key, item in value.items():
        if not isinstance(item, str):
            raise errors.invalid_config(f"{field}: the value of {key[:80]!r} must be a string", repr(item)[:60])
        if "\0" in item or len(item) > MAX_SYSCTL_VALUE:
            raise errors.invalid_config(f"{field}: invalid value for {key[:80]!r}")
    return dict(value)


class _Object(dict):  # type: ignore[type-arg]
    """A JSON object that remembers which of its keys appeared more than once."""

    def __init__(self, items: list[tuple[str, Any]]) -> None:
        super().__init__(items)
        self.duplicates = sorted(k for k, n in Counter(k for k, _v in items).items() if n > 1)


def _duplicate_sysctl_keys(stdin: bytes) -> list[str]:
    """Keys that appear twice in the top-level `sysctl` object (json.loads keeps the
    last one silently; upstream refuses them)."""
    try:
        raw = jsonc.loads_pairs(stdin.decode("utf-8"), _Object)
    except (ValueError, RecursionError, UnicodeDecodeError):
        return []
    found = raw.get("sysctl") if isinstance(raw, dict) else None
    return found.duplicates if isinstance(found, _Object) else []


def parse(config: dict[str, Any], cni_args: dict[str, str], ifname: str, stdin: bytes = b"",
          environ: Mapping[str, str] | None = None) -> TuningConf:
    duplicates = _duplicate_sysctl_keys(stdin)
    if duplicates:
        raise errors.invalid_config("duplicated sysctl keys are not allowed", ", ".join(duplicates)[:200])
    data_dir = config.get("dataDir")
    if data_dir is not None and not isinstance(data_dir, str):
        raise errors.invalid_config("dataDir must be a string")  # accepted: the journal keeps the originals
    sysctls = _sysctl_map(config.get("sysctl"), "sysctl")
    mac = parse_mac(config["mac"]) if config.get("mac") not in (None, "") else None
    promisc = _bool(config.get("promisc", False), "promisc")
    mtu = _int(config["mtu"], "mtu", 0, MAX_MTU) if config.get("mtu") is not None else 0
    allmulti = _bool(config["allmulti"], "allmulti") if config.get("allmulti") is not None else None
    txqlen = _int(config["txQLen"], "txQLen", 0, MAX_TXQLEN) if config.get("txQLen") is not None else None
    if cni_args.get("MAC"):
        mac = parse_mac(cni_args["MAC"], "CNI_ARGS MAC")
    runtime = config.get("runtimeConfig")
    if runtime is not None and not isinstance(runtime, dict):
        raise errors.invalid_config("runtimeConfig must be an object")
    if runtime and runtime.get("mac") not in (None, ""):
        mac = parse_mac(runtime["mac"], "runtimeConfig.mac")
    extra = config.get("args")
    cni = extra.get("cni") if isinstance(extra, dict) else None
    if (extra is not None and not isinstance(extra, dict)) or (cni is not None and not isinstance(cni, dict)):
        raise errors.invalid_config("args and args.cni must be objects")
    if cni:
        sysctls.update(_sysctl_map(cni.get("sysctl"), "args.cni.sysctl"))
        if cni.get("mac") is not None:
            mac = parse_mac(cni["mac"], "args.cni.mac")
        if cni.get("promisc") is not None:
            promisc = _bool(cni["promisc"], "args.cni.promisc")
        if cni.get("mtu") is not None:
            mtu = _int(cni["mtu"], "args.cni.mtu", 0, MAX_MTU)
        if cni.get("allmulti") is not None:
            allmulti = _bool(cni["allmulti"], "args.cni.allmulti")
        if cni.get("txQLen") is not None:
            txqlen = _int(cni["txQLen"], "args.cni.txQLen", 0, MAX_TXQLEN)
    if mtu and mtu < MIN_MTU:
        raise errors.invalid_config(f"mtu must be an integer from {MIN_MTU} to {MAX_MTU}", str(mtu))
    _check_allowlist(list(sysctls), (environ or {}).get("BERTH_TUNING_ALLOWLIST") or ALLOWLIST)
    return TuningConf(tuple(Sysctl(k, sysctl_parts(k, ifname), v) for k, v in sysctls.items()), mac, mtu or None,
                      promisc, allmulti, txqlen)


def _check_allowlist(keys: list[str], path: str) -> None:
    """Upstream's allowlist: when the file exists, each key must match one of its
    expressions (anywhere in the key, as Go's regexp.MatchString)."""
    if not keys:
        return
    try:
        with open(path) as fh:
            patterns = [line.strip() for line in fh.read().splitlines() if line.strip()]
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CNIError(errors.IO_FAILURE, f"cannot read the sysctl allowlist {path}", str(exc)) from None
    import re

    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise errors.invalid_config(f"invalid expression in the sysctl allowlist {path}",
                                        f"{pattern[:80]!r}: {exc}") from None
    for key in keys:
        if not any(p.search(key) for p in compiled):
            raise errors.invalid_config(f"sysctl {key[:120]!r} is not allowed",
                                        f"only these are allowed ({path}): {patterns}"[:500])


# --- the kernel --------------------------------------------------------------------

def _write_sysctl(parts: tuple[str, ...], value: str) -> None:
    name = ".".join(parts)
    try:
        if not sysctl.write(*parts, value=value):
            raise errors.invalid_config(f"sysctl {name} does not exist in the container's network namespace")
    except IsADirectoryError:
        raise errors.invalid_config(f"sysctl {name} is a directory, not a sysctl") from None
    except OSError as exc:
        code = errors.INVALID_NETWORK_CONFIG if exc.errno in (errno.EINVAL, errno.ERANGE) else errors.IO_FAILURE
        raise CNIError(code, f"cannot set sysctl {name} to {value[:60]!r}", exc.strerror or str(exc)) from None


def _originals(link: netlink.Link, conf: TuningConf, before: LinkAttrs) -> LinkAttrs:
    """What the attributes tuning changes are now; a second ADD keeps the first one's originals."""
    return LinkAttrs(
        mac=before.mac or (link.mac if conf.mac else None),
        mtu=before.mtu if before.mtu is not None else (link.mtu if conf.mtu else None),
        promisc=before.promisc if before.promisc is not None else (link.promisc if conf.promisc else None),
        allmulti=before.allmulti if before.allmulti is not None else (
            link.allmulti if conf.allmulti is not None else None),
        txqlen=before.txqlen if before.txqlen is not None else (link.txqlen if conf.txqlen is not None else None))


def _apply(cont: netlink.Handle, index: int, ifname: str, attrs: LinkAttrs,
           environ: Mapping[str, str] | None = None) -> None:
    """Set the attributes in upstream's order (MAC, promisc, MTU, allmulti, txQLen), one
    request each, so that a refusal leaves the earlier ones done and undoable."""
    steps: list[tuple[str, Any, Any]] = [
        ("mac", attrs.mac, lambda v: netlink.set_attributes(cont, index, f"set MAC of {ifname} to {v}", mac=v)),
        ("promisc", attrs.promisc,
         lambda v: netlink.set_flag(cont, index, netlink.IFF_PROMISC, v, f"set promisc of {ifname}")),
        ("mtu", attrs.mtu, lambda v: netlink.set_attributes(cont, index, f"set MTU of {ifname} to {v}", mtu=v)),
        ("allmulti", attrs.allmulti,
         lambda v: netlink.set_flag(cont, index, netlink.IFF_ALLMULTI, v, f"set allmulticast of {ifname}")),
        ("txqlen", attrs.txqlen,
         lambda v: netlink.set_attributes(cont, index, f"set txqueuelen of {ifname} to {v}", txqlen=v)),
    ]
    for name, value, step in steps:
        if value is not None:
            step(value)
            if environ is not None:
                step_done(f"tuning-{name}", environ)


# --- verbs ---------------------------------------------------------------------------

def cmd_add(args: CmdArgs) -> Result:
    conf = parse(args.config, args.args, args.ifname, args.stdin, args.environ)
    result = chained_result(args, "berth-tuning")
    if not conf.sysctls and not conf.changes_link:  # podman's list chains an empty tuning: nothing to record
        with kernel_errors("ADD"):
            netns.check_container(args.netns)
        return result
    entry = journal(args)
    previous = section(entry, TUNING)
    before = TuningRecord.from_json(previous)
    with contextlib.ExitStack() as undo, kernel_errors("ADD"):
        netns.check_container(args.netns)
        cont = undo.enter_context(netlink.open_netns(args.netns))
        with contextlib.ExitStack() as rollback:
            link = netlink.link_by_name(cont, args.ifname)
            if link is None:
                raise CNIError(errors.NETLINK_FAILURE, f"ADD: interface {args.ifname} not found in {args.netns}")
            now = _originals(link, conf, LinkAttrs())  # what a failure of this ADD puts back
            originals = _originals(link, conf, before.original)  # what DEL puts back: the first ADD's
            with netns.entered(args.netns):
                old = tuple((s.parts, sysctl.read(*s.parts) or "") for s in conf.sysctls)
            record = TuningRecord("adding", args.netns, args.ifname, originals, old)
            entry.put(TUNING, record.to_json())
            step_done("tuning-journal", args.environ)
            if previous:
                rollback.callback(quietly(lambda: entry.put(TUNING, previous)))
            else:
                rollback.callback(quietly(lambda: entry.drop(TUNING)))
            for s, (_parts, was) in zip(conf.sysctls, old, strict=True):
                with netns.entered(args.netns):
                    _write_sysctl(s.parts, s.value)
                rollback.callback(quietly(functools.partial(_put_back_sysctl, args.netns, s.parts, was)))
            step_done("tuning-sysctls", args.environ)
            wanted = LinkAttrs(conf.mac, conf.mtu, True if conf.promisc else None, conf.allmulti, conf.txqlen)
            rollback.callback(quietly(lambda: _restore(cont, link.index, args.ifname, now)))
            _apply(cont, link.index, args.ifname, wanted, args.environ)
            entry.put(TUNING, record._replace(state="done").to_json())
            rollback.pop_all()
    if conf.mac:
        for iface in result.get("interfaces") or []:
            if iface.get("name") == args.ifname:
                iface["mac"] = conf.mac
    return result


def _put_back_sysctl(path: str, parts: tuple[str, ...], value: str) -> None:
    with netns.entered(path):
        sysctl.write(*parts, value=value)


def _restore(cont: netlink.Handle, index: int, ifname: str, original: LinkAttrs) -> list[str]:
    """Put each recorded attribute back; the ones that could not be, as messages."""
    problems = []
    for attrs in (LinkAttrs(mtu=original.mtu), LinkAttrs(mac=original.mac), LinkAttrs(promisc=original.promisc),
                  LinkAttrs(allmulti=original.allmulti), LinkAttrs(txqlen=original.txqlen)):
        try:
            _apply(cont, index, ifname, attrs)
        except netlink.NetlinkFailure as exc:
            problems.append(str(exc))
    return problems


def cmd_del(args: CmdArgs) -> None:
    entry = journal(args)
    data = section(entry, TUNING)
    if data and args.netns:
        record = TuningRecord.from_json(data)
        try:
            with kernel_errors("DEL"), netlink.open_netns(args.netns) as cont:
                link = netlink.link_by_name(cont, args.ifname)
                problems = _restore(cont, link.index, args.ifname, record.original) if link is not None else []
        except CNIError as exc:
            problems = [] if exc.code == errors.INVALID_NETNS else [exc.msg]  # a namespace that is gone: nothing
        for problem in problems:
            # as upstream, DEL does not fail on this: the pod's removal must not wedge
            sys.stderr.write(f"berth-tuning: DEL could not restore {args.ifname}: {problem}\n")
    entry.drop(TUNING)


def cmd_check(args: CmdArgs) -> None:
    conf = parse(args.config, args.args, args.ifname, args.stdin, args.environ)
    chained_result(args, "berth-tuning")
    problems = []
    with kernel_errors("CHECK"):
        netns.check_container(args.netns)
        with netns.entered(args.netns):
            for s in conf.sysctls:
                have = sysctl.read(*s.parts)
                if have is None:
                    problems.append(f"sysctl {'.'.join(s.parts)} cannot be read")
                elif have.split() != s.value.split():
                    problems.append(f"sysctl {'.'.join(s.parts)} is {have!r}, configured {s.value!r}")
        with netlink.open_netns(args.netns) as cont:
            link = netlink.link_by_name(cont, args.ifname)
    if link is None:
        raise CNIError(errors.CHECK_FAILED, f"CHECK failed: interface {args.ifname} not found in {args.netns}")
    if conf.mac and link.mac != conf.mac:
        problems.append(f"{args.ifname} has MAC {link.mac}, configured {conf.mac}")
    if link.promisc != conf.promisc:
        problems.append(f"{args.ifname} promiscuous mode is {'on' if link.promisc else 'off'}, configured "
                        f"{'on' if conf.promisc else 'off'}")
    if conf.mtu and link.mtu != conf.mtu:
        problems.append(f"{args.ifname} has MTU {link.mtu}, configured {conf.mtu}")
    if conf.allmulti is not None and link.allmulti != conf.allmulti:
        problems.append(f"{args.ifname} all-multicast mode is {'on' if link.allmulti else 'off'}, configured "
                        f"{'on' if conf.allmulti else 'off'}")
    if conf.txqlen is not None and link.txqlen != conf.txqlen:
        problems.append(f"{args.ifname} has txqueuelen {link.txqlen}, configured {conf.txqlen}")
    if problems:
        raise CNIError(errors.CHECK_FAILED, "CHECK failed: " + problems[0], "; ".join(problems))


def cmd_gc(args: CmdArgs) -> None:
    # the namespace of a gone attachment is gone or someone else's by now: only the journal goes
    gc_sections(args, TUNING, lambda _journal, _record: None)


def cmd_status(args: CmdArgs) -> None:
    parse(args.config, args.args, "eth0", args.stdin, args.environ)


FUNCS = PluginFuncs(name="berth-tuning", add=cmd_add, delete=cmd_del, check=cmd_check, gc=cmd_gc, status=cmd_status,
                    known_args=frozenset({"MAC", "K8S_POD_NAME", "K8S_POD_NAMESPACE", "K8S_POD_INFRA_CONTAINER_ID",
                                          "K8S_POD_UID"}))
