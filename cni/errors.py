"""CNI error codes and the error value every failure is turned into.

Codes follow the CNI spec (SPEC.md, "Error"): 1-99 are reserved for the spec,
plugin-specific codes start at 100. The dispatcher (cni.skel) is the only place
that turns exceptions into the wire format.
"""

from __future__ import annotations

TYPE_CHECKING = False  # mypy treats this name as True; typing stays out of the VERSION path
if TYPE_CHECKING:
    from typing import Any

INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_NETWORK_CONFIG = 7
INVALID_NETNS = 8
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51
INTERNAL = 999

# berth-specific codes (>= 100)
NOT_IMPLEMENTED = 100
ADDRESS_EXHAUSTED = 101
PORT_CONFLICT = 102
LINK_CONFLICT = 103
NFTABLES_FAILURE = 104
NETLINK_FAILURE = 105
CHECK_FAILED = 106


class CNIError(Exception):
    """An error with a CNI code; printed as the error JSON by the dispatcher."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    def __repr__(self) -> str:
        return f"CNIError({self.code}, {self.msg!r}, {self.details!r})"


def invalid_config(msg: str, details: str = "") -> CNIError:
    return CNIError(INVALID_NETWORK_CONFIG, msg, details)


def invalid_env(msg: str, details: str = "") -> CNIError:
    return CNIError(INVALID_ENV, msg, details)
