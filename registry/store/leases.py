"""Who owns a temp file: the host and process named in its name.

A store may be shared by several hosts (a network file system). A PID means
something only on the host that wrote it, so every temp name carries
``<host>.<pid>.<random>``: the owning host judges a temp file by whether its
process is alive; every other host judges it by age alone.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass


def host_token() -> str:
    """This host's name as it appears in temp names (no dots or slashes)."""
    name = socket.gethostname() or "host"
    return "".join(c if c.isalnum() or c == "-" else "-" for c in name)[:64]


@dataclass(frozen=True)
class Owner:
    """Who wrote a temp file or lease: parsed from its name."""

    host: str | None
    pid: int | None


def parse_owner(token: str) -> Owner:
    """``<host>.<pid>.<rand>`` (this layout) or ``<pid>.<rand>`` (older, host unknown)."""
    parts = token.split(".")
    if len(parts) >= 3 and parts[-2].isdigit():
        return Owner(parts[-3] or None, int(parts[-2]))
    if len(parts) >= 2 and parts[0].isdigit():
        return Owner(None, int(parts[0]))
    return Owner(None, None)


def owner_alive(owner: Owner) -> bool | None:
    """True/False when this host can tell; None when the owner is another host (or unknown)."""
    if owner.pid is None or owner.host != host_token():
        return None
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


