"""Peak resident memory of this process per pipeline step.

LocalDagRunner runs every component in one process, so the process's overall peak says nothing
about which step needs the memory. Two sources, neither with side effects on the process:

- Linux's high-water mark (`VmHWM`): if it rose while a step ran, the step set the process's
  peak and the mark is exact;
- otherwise the largest `VmRSS` a background thread sampled during the step (every 0.1 s, so a
  spike shorter than that can be missed; the step stayed below an earlier peak anyway).

Resetting the mark (/proc/self/clear_refs) would be simpler but would also reset what `time`,
`getrusage` and `wait4` report for the whole process. Where /proc is missing, nothing is reported.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Optional

_STATUS = Path("/proc/self/status")
_FIELD = {name: re.compile(rf"^{name}:\s+(\d+) kB$", re.M) for name in ("VmHWM", "VmRSS")}


class PeakMemory:
    def __init__(self, status: Path = _STATUS, interval: float = 0.1):
        self._status = status
        self._interval = interval
        self._hwm_at_reset: Optional[int] = None
        self._sampled = 0
        # The sampler thread and `reset` both write `_sampled`: without the lock a reading taken
        # before a reset could land after it and be charged to the next step.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _read(self, field: str) -> Optional[int]:
        try:
            match = _FIELD[field].search(self._status.read_text())
        except OSError:
            return None
        return int(match.group(1)) if match else None

    def _sample(self) -> None:
        with self._lock:
            rss = self._read("VmRSS")
            if rss is not None and rss > self._sampled:
                self._sampled = rss

    def reset(self) -> None:
        """A step starts: measure from here."""
        with self._lock:
            self._hwm_at_reset = self._read("VmHWM")
            self._sampled = 0
        self._sample()

    def peak_mb(self) -> Optional[float]:
        """The peak since `reset`, in MB (None where /proc is unavailable)."""
        self._sample()
        hwm = self._read("VmHWM")
        if hwm is not None and self._hwm_at_reset is not None and hwm > self._hwm_at_reset:
            return hwm / 1024.0
        return self._sampled / 1024.0 if self._sampled else None

    def __enter__(self) -> "PeakMemory":
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="hoh-peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()


def format_mb(mb: Optional[float]) -> str:
    if mb is None:
        return ""
    return f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.0f} MB"
