"""What the small plugins (loopback, tuning, firewall, bandwidth) share: kernel
errors as CNI errors, the chained call's prevResult, their journal sections and GC."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping

from cni import errors, netlink, netns
from cni.errors import CNIError
from cni.skel import CmdArgs
from cni.spec import Result, prev_result, valid_attachments
from cni.state import Journal, journals, state_root

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from typing import Any

SIGKILL = 9  # the test hook's kill; `signal` would import enum for every exec
ADDING_GRACE_SECONDS = 300.0  # as the bridge's GC: an ADD this young may still be running


@contextlib.contextmanager
def kernel_errors(action: str) -> Iterator[None]:
    """The netlink and netns layers' typed exceptions as CNI errors."""
    try:
        yield
    except CNIError:
        raise
    except netns.NetnsNotFound as exc:
        raise CNIError(errors.INVALID_NETNS, f"{action}: network namespace {exc} does not exist") from None
    except netns.OwnNetns as exc:
        raise CNIError(errors.INVALID_NETNS, f"{action}: {exc} is the plugin's own network namespace (the node's), "
                       "not the container's") from None
    except netns.NotANetns as exc:
        raise CNIError(errors.INVALID_NETNS, f"{action}: {exc} is not a network namespace") from None
    except netlink.NetlinkFailure as exc:
        code = errors.INVALID_NETWORK_CONFIG if exc.code in (22, 34) else errors.NETLINK_FAILURE  # EINVAL, ERANGE
        raise CNIError(code, f"{action}: {exc}") from None
    except OSError as exc:
        raise CNIError(errors.IO_FAILURE, f"{action}: {exc}") from None


def step_done(step: str, environ: Mapping[str, str]) -> None:
    """Failure injection for tests (docs/journal.md): BERTH_TEST_KILL_AFTER=<step>
    SIGKILLs the process after the step, BERTH_TEST_FAIL_AFTER=<step> fails the call there."""
    if environ.get("BERTH_TEST_KILL_AFTER") == step:
        import os

        os.kill(os.getpid(), SIGKILL)
    if environ.get("BERTH_TEST_FAIL_AFTER") == step:
        raise CNIError(errors.INTERNAL, f"test failure injected after step {step!r}")


def chained_result(args: CmdArgs, plugin: str) -> Result:
    """The prevResult a chained ADD or CHECK needs (error 7 without one)."""
    prev = prev_result(args.config)
    if prev is None:
        raise errors.invalid_config(f"{plugin} must be called as a chained plugin (no prevResult)")
    return prev


def journal(args: CmdArgs) -> Journal:
    return Journal(state_root(args.environ), args.network, args.container_id, args.ifname)


def section(journal: Journal, name: str) -> dict[str, Any]:
    """The plugin's section, {} when there is none or the journal cannot be read
    (DEL and GC then clean what the config and the names tell)."""
    try:
        return journal.section(name) or {}
    except CNIError:
        return {}


def quietly(fn: Callable[[], Any]) -> Callable[[], None]:
    """An undo step that never masks the error that triggered the rollback."""
    def run() -> None:
        with contextlib.suppress(Exception):
            fn()
    return run


def gc_sections(args: CmdArgs, name: str, teardown: Callable[[Journal, dict[str, Any]], None]) -> None:
    """GC: tear down the section `name` of every journaled attachment of the
    network that is not in cni.dev/valid-attachments, and drop it (an unfinished
    ADD younger than ADDING_GRACE_SECONDS is spared: the runtime cannot have listed it yet)."""
    valid = valid_attachments(args.config)
    root = state_root(args.environ)
    problems = []
    for _path, data in journals(root, args.network):
        record = data.get(name)
        cid, ifname = str(data.get("containerID", "")), str(data.get("ifname", ""))
        if not isinstance(record, dict) or not cid or not ifname or (cid, ifname) in valid:
            continue
        created = data.get("created")
        age = time.time() - created if isinstance(created, int | float) else float("inf")
        if record.get("state") == "adding" and age < ADDING_GRACE_SECONDS:
            continue
        entry = Journal(root, args.network, cid, ifname)
        try:
            teardown(entry, record)
            entry.drop(name)
        except Exception as exc:
            problems.append(f"{cid}/{ifname}: {exc}")
    if problems:
        raise CNIError(errors.NETLINK_FAILURE, "GC did not finish", "; ".join(problems))
