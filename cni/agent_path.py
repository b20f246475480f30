"""Where the node agent listens: cni.agent serves there, cni.agent_client forwards there.

Its own module so that a plugin exec tells "no agent here" (forwarding off, or no
socket file: every node without the agent) without importing the client.
"""

import os

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_SOCKET = "/run/berth/agent.sock"
DISABLED = ("off", "none", "0")


def socket_path(environ: "Mapping[str, str]") -> str:
    return environ.get("BERTH_AGENT_SOCKET") or DEFAULT_SOCKET


def may_answer(environ: "Mapping[str, str]") -> bool:
    """Could an agent answer this call? Not when forwarding is off or nothing is at the path."""
    path = socket_path(environ)
    return path.lower() not in DISABLED and os.path.exists(path)
