"""Run one command as a child process and measure its wall time and its own peak RSS.

`os.wait4` gives the rusage of exactly that child (RUSAGE_CHILDREN would mix in every other
child the benchmark ran before), and stdout goes to a file so a chatty child cannot block on a
full pipe while we wait.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from pathlib import Path
from typing import Sequence


@dataclasses.dataclass
class Measured:
    command: list[str]
    seconds: float
    peak_rss_mb: float
    returncode: int
    stdout: str
    # user + system CPU of the child and the children it waited for (a worker process's too):
    # what the work costs, which a busy shared machine inflates far less than the wall time
    cpu_s: float = 0.0

    def check(self) -> "Measured":
        if self.returncode != 0:
            tail = "\n".join(self.stdout.splitlines()[-20:])
            raise SystemExit(
                f"benchmark step failed ({self.returncode}): {' '.join(self.command)}\n{tail}"
            )
        return self


def run_measured(command: Sequence[str], log: Path, env: dict | None = None) -> Measured:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as out:
        started = time.monotonic()
        proc = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Measured(
        list(command),
        seconds,
        usage.ru_maxrss / 1024.0,
        proc.returncode,
        log.read_text(encoding="utf-8", errors="replace"),
        usage.ru_utime + usage.ru_stime,
    )
