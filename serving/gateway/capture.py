"""Sampled traffic capture: served images and their results, for monitoring and active learning.

Layout (docs/GATEWAY.md), one folder per UTC day:

    CAPTURE_DIR/date=YYYY-MM-DD/<request_id>-<i>.<png|jpg|gif|bmp>      the image, as received
    CAPTURE_DIR/date=YYYY-MM-DD/.results/results-<host>-<pid>.jsonl    one JSON line per image

A day folder (or CAPTURE_DIR itself) is an image folder that `hoh data import --unlabeled` and
the drift check read as is: both skip folders whose name starts with '.', so the results never
look like a bad image. One results file per process lets several gateway replicas share a
volume without interleaving lines.

Requests only enqueue (`offer`): a bounded queue and one writer thread keep the disk off the
request path, and a full queue drops the capture and counts it instead of waiting.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from hoh import imagecheck

log = logging.getLogger("hoh.gateway")

EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "GIF": "gif", "BMP": "bmp"}
RESULTS_DIR = ".results"


@dataclass(frozen=True)
class Capture:
    request_id: str
    index: int
    model: str
    version: str
    image: bytes
    sha256: str
    result: dict  # class, probability, probabilities
    time: datetime


def day_dir(root: Path, when: datetime) -> Path:
    return root / f"date={when.astimezone(timezone.utc):%Y-%m-%d}"


def image_name(capture: Capture) -> str:
    ext = EXTENSIONS.get(imagecheck.sniff(capture.image) or "", "bin")
    return f"{capture.request_id}-{capture.index}.{ext}"


def result_line(capture: Capture, name: str) -> str:
    return json.dumps(
        {
            "time": capture.time.isoformat(timespec="milliseconds"),
            "request_id": capture.request_id,
            "image": name,
            "sha256": capture.sha256,
            "model": capture.model,
            "version": capture.version,
            **capture.result,
        },
        sort_keys=True,
    )


class Capturer:
    def __init__(
        self,
        root: str | os.PathLike,
        rate: float,
        queue_size: int,
        on_event: Callable[[str], None] = lambda _: None,
        rng: Optional[random.Random] = None,
    ):
        self.root = Path(root)
        self.rate = rate
        self._queue: "queue.Queue[Optional[Capture]]" = queue.Queue(maxsize=queue_size)
        self._on_event = on_event
        self._rng = rng or random.Random()
        self._results_name = f"results-{socket.gethostname()}-{os.getpid()}.jsonl"
        self.written = self.dropped = self.failed = 0
        self._thread = threading.Thread(target=self._run, name="hoh-capture", daemon=True)
        self._thread.start()

    def sampled(self) -> bool:
        return self.rate > 0 and self._rng.random() < self.rate

    def offer(self, capture: Capture) -> bool:
        """Queue one capture; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(capture)
        except queue.Full:
            self.dropped += 1
            self._on_event("dropped")
            return False
        return True

    def write(self, capture: Capture) -> Path:
        folder = day_dir(self.root, capture.time)
        (folder / RESULTS_DIR).mkdir(parents=True, exist_ok=True)
        name = image_name(capture)
        temp = folder / RESULTS_DIR / f".{name}.tmp"  # inside a skipped folder until complete
        temp.write_bytes(capture.image)
        os.replace(temp, folder / name)
        with open(folder / RESULTS_DIR / self._results_name, "a", encoding="utf-8") as out:
            out.write(result_line(capture, name) + "\n")
        return folder / name

    def _run(self) -> None:
        while True:
            capture = self._queue.get()
            try:
                if capture is None:
                    return
                self.write(capture)
                self.written += 1
                self._on_event("written")
            except OSError as exc:
                self.failed += 1
                self._on_event("error")
                log.error("capture: cannot write to %s: %s", self.root, exc)
            finally:
                self._queue.task_done()

    def flush(self) -> None:
        """Wait until everything queued is written (tests, shutdown)."""
        self._queue.join()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=30)
