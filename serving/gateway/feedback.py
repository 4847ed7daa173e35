"""`POST /v1/feedback`: the true class of a served image, kept for online accuracy.

A client (or a labelling tool) that learns what an image really showed sends the request id the
gateway answered with (`X-Request-ID`, `request_id` in the body), the image's index in that
request (0 for a single image) and the true class. The gateway stores it beside the captures:

    CAPTURE_DIR/.feedback/feedback-<host>-<pid>.jsonl    one JSON line per label

`hoh monitor` joins these lines with the captured results of its window by (request id, index),
so accuracy rests on what the gateway served, never on what the client says it was served.
Labels are rare and precious, so each line is fsynced before the 200 (off the event loop): a
label the client saw accepted survives a crash. A later label for the same image replaces an
earlier one (a correction). The folder starts with '.', so importers and the drift check, which
read the capture folder as images, skip it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

FEEDBACK_DIR = ".feedback"
REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")  # the gateway's uuid4().hex
MAX_CLASS_CHARS = 200
MAX_INDEX = 10_000


class FeedbackError(ValueError):
    """The body is not a label the gateway can keep (the message says which field and why)."""


def parse_label(body: Any) -> dict:
    """{"request_id", "index", "class"} of a feedback body, or FeedbackError."""
    if not isinstance(body, dict):
        raise FeedbackError('the body must be a JSON object {"request_id", "index", "class"}')
    unknown = sorted(set(body) - {"request_id", "index", "class"})
    if unknown:
        raise FeedbackError(f"unknown field(s) {unknown}; expected request_id, index, class")
    request_id, index, label = body.get("request_id"), body.get("index", 0), body.get("class")
    if not isinstance(request_id, str) or not REQUEST_ID.match(request_id):
        raise FeedbackError("request_id must be the 32 hex digits the gateway answered with")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < MAX_INDEX:
        raise FeedbackError(f"index must be an integer from 0 to {MAX_INDEX - 1}")
    if not isinstance(label, str) or not label.strip() or len(label) > MAX_CLASS_CHARS:
        raise FeedbackError(f"class must be a non-empty string of at most {MAX_CLASS_CHARS} chars")
    if any(ord(c) < 32 for c in label):
        raise FeedbackError("class must not contain control characters")
    return {"request_id": request_id, "index": index, "class": label.strip()}


class FeedbackStore:
    """Appends labels to this process' file (several replicas may share the capture volume)."""

    def __init__(self, capture_dir: str | os.PathLike):
        self.directory = Path(capture_dir) / FEEDBACK_DIR
        self.path = self.directory / f"feedback-{socket.gethostname()}-{os.getpid()}.jsonl"
        self._lock = threading.Lock()

    def append(self, label: dict, feedback_id: str) -> None:
        """`feedback_id` is the feedback request's own id: its audit line names the subject."""
        line = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "feedback_id": feedback_id,
            **label,
        }
        data = (json.dumps(line, sort_keys=True) + "\n").encode()
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
