"""Append-only, hash-chained audit log: one JSON line per decision, and `verify`.

Each line carries `seq` (consecutive across files) and `prev`, the SHA-256 of the previous
line's exact bytes, so editing, deleting, reordering or cutting a line breaks the chain at that
line; every `anchor_every` lines an `anchor` line repeats the chain hash so far, a value an
operator can copy elsewhere (a ticket, a WORM bucket) to pin the log up to that point. Files
rotate by size (`audit-000001.jsonl`, ...) and the chain simply continues into the next file,
whose first line is a `rotate` record naming the previous file. One writer per directory: a
second gateway on the same directory would fork the chain, so the writer holds an exclusive
lock (`DIR/.lock`) and a second one is refused at start (each replica gets its own directory).

Lines are written by one thread (requests only enqueue), which writes everything waiting and
fsyncs once per batch of at most `fsync_batch` lines: a burst of requests costs one fsync, not
one each. What goes into a line is fixed by `record_for`; image bytes and tokens have no field.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import queue
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from hoh.errors import UsageError

log = logging.getLogger("hoh.gateway")

GENESIS = "0" * 64
FILE_RE = re.compile(r"^audit-(\d{6})\.jsonl$")
FIELDS = (
    "time",
    "request_id",
    "subject",
    "client",
    "route",
    "model",
    "version",
    "outcome",
    "reason",
    "status",
    "latency_ms",
    "cache_hit",
    "images",
)


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def record_for(**values: Any) -> dict:
    """An audit record with exactly the known fields (anything else is dropped, never logged).

    `images` is a list of {"sha256", "bytes"}: what was classified, never the bytes.
    """
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise ValueError(f"not audit fields: {sorted(unknown)}")
    return {k: values.get(k) for k in FIELDS}


def _serialize(record: dict) -> bytes:
    return json.dumps(record, separators=(",", ":"), sort_keys=True, ensure_ascii=True).encode()


def audit_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if FILE_RE.match(p.name))


def _chain_state(files: list[Path]) -> tuple[str, int, bool]:
    """(hash of the last complete line, its seq, whether the last file ends cleanly)."""
    for path in reversed(files):
        data = path.read_bytes()
        if not data:
            continue
        clean = data.endswith(b"\n")
        lines = data.split(b"\n")[:-1] if clean else data.split(b"\n")[:-1]
        if not lines:
            continue
        last = lines[-1]
        try:
            seq = int(json.loads(last)["seq"])
        except (ValueError, KeyError, TypeError):
            return line_hash(last), 0, False
        return line_hash(last), seq, clean
    return GENESIS, 0, True


def lock_directory(directory: Path) -> int:
    """An exclusive lock on `directory` (its open descriptor), or UsageError when another
    writer holds it. The lock goes with the descriptor, so a crashed writer never leaves it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UsageError(f"audit directory {directory}: cannot write there: {exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise UsageError(
            f"audit directory {directory} is in use by another gateway; give each "
            "replica its own --audit-dir (docs/GATEWAY.md)"
        ) from None
    return fd


class AuditLog:
    """Writer of one audit directory. `write(record)` never blocks on the disk."""

    def __init__(
        self,
        directory: str | os.PathLike,
        fsync_batch: int = 64,
        anchor_every: int = 1000,
        max_bytes: int = 64 * 1024 * 1024,
    ):
        self.directory = Path(directory)
        self._lock = lock_directory(self.directory)
        self.fsync_batch, self.anchor_every, self.max_bytes = fsync_batch, anchor_every, max_bytes
        files = audit_files(self.directory)
        self._prev, self._seq, clean = _chain_state(files)
        number = int(FILE_RE.match(files[-1].name).group(1)) if files else 0
        # A log whose last line was cut (a crash mid-write) is left as evidence: new lines go to
        # a new file, and `verify` reports the cut line.
        if not files or not clean or files[-1].stat().st_size >= max_bytes:
            number += 1
        self._path = self.directory / f"audit-{number:06d}.jsonl"
        self._number = number
        self._file = open(self._path, "ab")
        self._queue: "queue.SimpleQueue[Optional[dict]]" = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="hoh-audit", daemon=True)
        self.errors = 0
        if files and self._path != files[-1]:
            self._append({"kind": "rotate", "previous_file": files[-1].name, "time": now_iso()})
            self._sync()
        self._thread.start()

    def write(self, record: dict) -> None:
        self._queue.put(record)

    def _append(self, body: dict) -> None:
        self._seq += 1
        line = _serialize({"seq": self._seq, "prev": self._prev, **body})
        self._file.write(line + b"\n")
        self._prev = line_hash(line)
        if body.get("kind") == "decision" and self._seq % self.anchor_every == 0:
            self._append({"kind": "anchor", "chain": self._prev, "time": now_iso()})

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def _rotate(self) -> None:
        self._sync()
        self._file.close()
        previous = self._path.name
        self._number += 1
        self._path = self.directory / f"audit-{self._number:06d}.jsonl"
        self._file = open(self._path, "ab")
        self._append({"kind": "rotate", "previous_file": previous, "time": now_iso()})

    def _run(self) -> None:
        stop = False
        while not stop:
            batch = [self._queue.get()]
            while len(batch) < self.fsync_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                for record in batch:
                    if record is None:
                        stop = True
                        continue
                    if self._file.tell() >= self.max_bytes:
                        self._rotate()
                    self._append({"kind": "decision", **record})
                self._sync()
            except OSError as exc:  # a full disk must be loud, not a silent gap
                self.errors += 1
                log.error("audit log: cannot write to %s: %s", self._path, exc)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=30)
        if not self._file.closed:
            self._sync()
            self._file.close()
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1


@dataclass(frozen=True)
class VerifyResult:
    lines: int
    files: int
    problem: Optional[str] = None  # "FILE:LINE: what is wrong", the first one
    anchors: int = 0

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify(directory: str | os.PathLike) -> VerifyResult:
    """Walk every file in order and report the first line that breaks the chain."""
    directory = Path(directory)
    files = audit_files(directory)
    prev, expected_seq, count, anchors = GENESIS, 1, 0, 0
    prev_where = "(start)"
    if not files:
        return VerifyResult(0, 0, f"{directory}: no audit-NNNNNN.jsonl files")
    for index, path in enumerate(files):
        data = path.read_bytes()
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        for number, line in enumerate(lines, start=1):
            where = f"{path.name}:{number}"
            if number == len(lines) and not data.endswith(b"\n"):
                return VerifyResult(
                    count,
                    len(files),
                    f"{where}: truncated line (no newline at "
                    "the end: cut while being written, or edited)",
                    anchors,
                )
            try:
                record = json.loads(line)
                seq, claimed = int(record["seq"]), record["prev"]
            except (ValueError, KeyError, TypeError):
                return VerifyResult(
                    count,
                    len(files),
                    f"{where}: not an audit record (broken or edited JSON)",
                    anchors,
                )
            if seq != expected_seq:
                what = (
                    "reordered or duplicated" if seq < expected_seq else "lines missing before it"
                )
                return VerifyResult(
                    count,
                    len(files),
                    f"{where}: seq {seq} where {expected_seq} was expected ({what})",
                    anchors,
                )
            if claimed != prev:
                return VerifyResult(
                    count,
                    len(files),
                    f"{prev_where}: edited or replaced (its hash is not the one {where} recorded)",
                    anchors,
                )
            if number == 1 and index > 0 and record.get("kind") != "rotate":
                return VerifyResult(
                    count, len(files), f"{where}: a file must start with its rotate record", anchors
                )
            if record.get("kind") == "anchor":
                anchors += 1
                if record.get("chain") != claimed:
                    return VerifyResult(
                        count, len(files), f"{where}: anchor does not match the chain", anchors
                    )
            prev, expected_seq, count = line_hash(line), seq + 1, count + 1
            prev_where = where
    return VerifyResult(count, len(files), None, anchors)
