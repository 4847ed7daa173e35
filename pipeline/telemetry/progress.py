"""One console line per component (start, end, duration, peak memory, cached) while
LocalDagRunner works.

LocalDagRunner has no callback API, but it logs "Component X is running." / "... is finished."
and "A cached execution N is used." through absl; a logging handler turns exactly those records
into progress lines, while everything else goes to the run's log file.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from typing import Callable, Dict, List, Optional

from hoh.pipeline.telemetry.peak_memory import PeakMemory, format_mb
from hoh.trainer import EPOCH_PREFIX

_RUNNING = re.compile(r"^Component (\S+) is running\.$")
_FINISHED = re.compile(r"^Component (\S+) is finished\.$")
_CACHED = re.compile(r"^A cached execution \d+ is used\.$")


@dataclasses.dataclass
class ComponentRun:
    component_id: str
    started: float
    seconds: Optional[float] = None
    cached: bool = False
    # The process's peak RSS while this component ran (None: not measurable here).
    peak_rss_mb: Optional[float] = None

    @property
    def status(self) -> str:
        if self.seconds is None:
            return "failed"
        return "cached" if self.cached else "done"


class ProgressHandler(logging.Handler):
    def __init__(
        self,
        echo: Callable[[str], None] = print,
        clock: Callable[[], float] = time.monotonic,
        memory: Optional[PeakMemory] = None,
    ):
        super().__init__(level=logging.INFO)
        self.echo = echo
        self.clock = clock
        # Run inside `with handler.memory:` for sampling between the start and end records.
        self.memory = memory or PeakMemory()
        self.runs: List[ComponentRun] = []
        self._by_id: Dict[str, ComponentRun] = {}

    @property
    def running(self) -> Optional[ComponentRun]:
        """The component that started and has not finished (the one that failed, after an error)."""
        return next((r for r in reversed(self.runs) if r.seconds is None), None)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a malformed third-party log record must not break the run
            return
        if m := _RUNNING.match(message):
            self.memory.reset()
            run = ComponentRun(m.group(1), self.clock())
            self.runs.append(run)
            self._by_id[run.component_id] = run
            self.echo(f"▶ {run.component_id} ...")
        elif m := _FINISHED.match(message):
            run = self._by_id.get(m.group(1))
            if run is not None:
                run.seconds = self.clock() - run.started
                run.peak_rss_mb = self.memory.peak_mb()
                peak = format_mb(run.peak_rss_mb)
                suffix = (f", peak RSS {peak}" if peak else "") + (
                    " (cached)" if run.cached else ""
                )
                self.echo(f"✔ {run.component_id} {run.seconds:.1f}s{suffix}")
        elif _CACHED.match(message):
            if (run := self.running) is not None:
                run.cached = True
        elif message.startswith(EPOCH_PREFIX):
            self.echo("    " + message[len(EPOCH_PREFIX) :])
