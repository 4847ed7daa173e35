"""Process plumbing for servers hoh starts: free ports, and no server outliving its launcher."""

from __future__ import annotations

import ctypes
import signal
import socket
import sys


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (the server binds it a moment later; good enough for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _load_prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Resolved here, not in the child: dlopen between fork and exec can deadlock a threaded parent.
PRCTL = _load_prctl() if sys.platform.startswith("linux") else None


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """The server gets SIGTERM when the launching thread dies, so it is never orphaned.

    (PR_SET_PDEATHSIG follows the thread that forked: start servers from a long-lived thread.)
    """
    PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
