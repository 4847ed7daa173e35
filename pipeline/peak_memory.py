"""Peak resident memory of this process per pipeline step, from Linux's own high-water mark.

LocalDagRunner runs every component in one process, so the process's overall peak says nothing
about which step needs the memory. Linux keeps the peak (`VmHWM` in /proc/self/status) and lets
a process reset it (writing 5 to /proc/self/clear_refs, kernel 4.0+), so each step's own peak
costs two small file operations and no sampling thread. Where that is unavailable (not Linux, a
restricted /proc) the peak is simply not reported.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_HWM = re.compile(r"^VmHWM:\s+(\d+) kB$", re.M)
_RESET_PEAK = "5"


class PeakMemory:
    """Reset, then read, the process's peak RSS; every method is a no-op where /proc lacks it."""

    def __init__(self, status: Path = _STATUS, clear_refs: Path = _CLEAR_REFS):
        self._status = status
        self._clear_refs = clear_refs

    def reset(self) -> bool:
        try:
            self._clear_refs.write_text(_RESET_PEAK)
            return True
        except OSError:
            return False

    def peak_mb(self) -> Optional[float]:
        try:
            match = _HWM.search(self._status.read_text())
        except OSError:
            return None
        return int(match.group(1)) / 1024.0 if match else None


def format_mb(mb: Optional[float]) -> str:
    if mb is None:
        return ""
    return f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.0f} MB"
