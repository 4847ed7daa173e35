"""Progress of long loops (import, sampling, download) for people and for logs alike.

On a terminal: a tqdm bar with counts, rate and ETA. Anywhere else (CI, Kubeflow pod logs,
`2> file`): a plain line at most every few seconds and one at the end, because carriage-return
bars turn a log into one unreadable line. Kept in core so every layer reports progress the same
way; the loops themselves only call `update(done, total)`.
"""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class Progress:
    """`update(done, total)` from a loop; `close()` when it ends (idempotent)."""

    def __init__(
        self,
        label: str,
        unit: str = "files",
        stream: Optional[TextIO] = None,
        every_seconds: float = 5.0,
        tty: Optional[bool] = None,
    ):
        self.label, self.unit = label, unit
        self._stream = stream if stream is not None else sys.stderr
        isatty = getattr(self._stream, "isatty", None)
        self._tty = tty if tty is not None else bool(isatty and isatty())
        self._every = every_seconds
        self._last = time.monotonic()
        self._bar = None
        self._done = 0
        self._total: Optional[int] = None
        self._printed = False

    def update(self, done: int, total: Optional[int] = None) -> None:
        self._done, self._total = done, total
        if self._tty:
            self._bar_update(done, total)
            return
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            self._line()

    __call__ = update

    def close(self) -> None:
        """Finish the bar, or print the final count if a plain line was printed before (a
        quick loop stays silent)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._printed:
            self._line()
            self._printed = False

    def _line(self) -> None:
        of = f"/{self._total}" if self._total is not None else ""
        print(f"{self.label}: {self._done}{of} {self.unit}", file=self._stream, flush=True)
        self._printed = True

    def _bar_update(self, done: int, total: Optional[int]) -> None:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(
                desc=self.label, unit=f" {self.unit}", total=total, file=self._stream, leave=True
            )
        if total is not None and self._bar.total != total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)


class StagedProgress:
    """One `Progress` per stage name, for loops that report `(stage, done, total)`: the importer
    checks every file, then writes the good ones."""

    def __init__(self, unit: str = "files", **options):
        self._unit, self._options = unit, options
        self._current: Optional[Progress] = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self._current is None or self._current.label != stage:
            self.close()
            self._current = Progress(stage, self._unit, **self._options)
        self._current.update(done, total)

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None
