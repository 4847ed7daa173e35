"""A window of captured traffic: the images the gateway kept and the results it served for them.

The capture layout is the gateway's (`hoh.serving.gateway.capture`, whose constants are used
here so the two cannot drift apart). The window is read into a list of small `Served` rows (a
path, a class, a confidence) and iterated again as an image source, so the drift check and the
sampler stream the image bytes exactly as they stream a span.

Nothing in a capture folder is trusted to be whole or well formed: a torn or corrupt JSON line,
a result without probabilities, an image without its line (or a line without its image), a
result served by another model version are each counted and named, never fatal and never mixed
into the figures. A result line names its image by a bare file name; one that tries to leave its
day folder is a bad line, not a file read.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Iterator, Optional

from hoh.data.images import content_id
from hoh.data.sources import ImageRecord
from hoh.errors import UsageError
from hoh.serving.gateway.capture import RESULTS_DIR

DAY_PREFIX = "date="
# Task data fields of a labelling batch made from a window: the captured image each task is, so
# Label Studio's export maps back to (request id, image index) whatever the image is renamed to.
TASK_REQUEST_ID = "hoh_request_id"
TASK_INDEX = "hoh_index"
_DAY = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
LISTED = 50  # problems named one by one in the summary; more are counted


def image_index(path: Path, request_id: str) -> Optional[int]:
    """The index in its request of a captured image named `<request_id>-<i>.<ext>`."""
    stem = path.name.split(".", 1)[0]
    prefix = f"{request_id}-"
    if not stem.startswith(prefix) or not stem[len(prefix) :].isdigit():
        return None
    return int(stem[len(prefix) :])


@dataclass(frozen=True)
class Served:
    """One captured image with the result served for it."""

    path: Path
    request_id: str
    time: str
    predicted: str
    confidence: float
    probabilities: dict[str, float]

    @property
    def key(self) -> tuple[str, Optional[int]]:
        """(request id, image index): how feedback and labels name this image."""
        return self.request_id, image_index(self.path, self.request_id)


@dataclass
class Window:
    root: Path
    since: date
    until: date
    model: Optional[str]  # served model name to keep; None = any
    version: str
    days: list[str] = field(default_factory=list)
    served: list[Served] = field(default_factory=list)
    result_lines: int = 0
    bad_lines: list[dict] = field(default_factory=list)  # unparseable, malformed, repeated
    failed: list[dict] = field(default_factory=list)  # lines without a usable result
    missing_images: list[dict] = field(default_factory=list)  # lines whose image is absent
    missing_results: list[str] = field(default_factory=list)  # images no line speaks of
    other_versions: dict[str, int] = field(default_factory=dict)  # "model:version" -> lines
    _by_source: Optional[dict[str, Served]] = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def description(self) -> str:
        span = str(self.since) if self.since == self.until else f"{self.since}..{self.until}"
        return f"captures {self.root} ({span}, version {self.version})"

    def __iter__(self) -> Iterator[ImageRecord]:
        """The served images as an image source (unlabeled: the served class is not a label)."""
        for item in self.served:
            try:
                data = item.path.read_bytes()
            except OSError as exc:
                yield ImageRecord("", str(item.path), None, b"", f"cannot read it: {exc}")
                continue
            yield ImageRecord(content_id(data), str(item.path), None, data)

    def task_fields(self, source: str) -> dict:
        """Label Studio task data naming the captured image read from `source` (an image of
        this window as `__iter__` yields it), for `sample_pool`'s batch."""
        if self._by_source is None:  # built once the window is read
            self._by_source = {str(s.path): s for s in self.served}
        served = self._by_source.get(source)
        if served is None or served.key[1] is None:
            return {}
        return {TASK_REQUEST_ID: served.request_id, TASK_INDEX: served.key[1]}

    def counts(self) -> dict:
        return {
            "days": len(self.days),
            "result_lines": self.result_lines,
            "served_images": len(self.served),
            "bad_lines": len(self.bad_lines),
            "failed_results": len(self.failed),
            "missing_images": len(self.missing_images),
            "missing_results": len(self.missing_results),
            "other_versions": sum(self.other_versions.values()),
        }

    def problems(self) -> dict:
        return {
            "bad_lines": self.bad_lines[:LISTED],
            "failed_results": self.failed[:LISTED],
            "missing_images": self.missing_images[:LISTED],
            "missing_results": self.missing_results[:LISTED],
            "other_versions": dict(sorted(self.other_versions.items())),
        }


def parse_day(text: str, what: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{what} {text!r} is not a date (YYYY-MM-DD)") from None


def window_dates(
    since: Optional[str], until: Optional[str], days: int, today: date
) -> tuple[date, date]:
    """[since, until] inclusive, in UTC days; `days` sets the width when `since` is not given."""
    end = parse_day(until, "--until") if until else today
    start = parse_day(since, "--since") if since else end - timedelta(days=days - 1)
    if start > end:
        raise UsageError(f"--since {start} is after --until {end}")
    return start, end


def _result(line: dict) -> Optional[tuple[str, float, dict[str, float]]]:
    """(class, confidence, probabilities) of a well-formed successful result, else None."""
    predicted, probabilities = line.get("class"), line.get("probabilities")
    if line.get("error") or not isinstance(predicted, str) or not isinstance(probabilities, dict):
        return None
    try:
        values = {str(k): float(v) for k, v in probabilities.items()}
        confidence = float(line.get("probability", values.get(predicted, math.nan)))
    except (TypeError, ValueError):
        return None
    if predicted not in values or not all(map(math.isfinite, [confidence, *values.values()])):
        return None
    return predicted, confidence, values


def _safe_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and bool(name)
        and not name.startswith(".")
        and "/" not in name
        and "\\" not in name
        and "\x00" not in name
    )


def _read_day(folder: Path, window: Window) -> None:
    named: set[str] = set()
    results = folder / RESULTS_DIR
    files = sorted(results.glob("*.jsonl")) if results.is_dir() else []
    for file in files:
        where = f"{folder.name}/{RESULTS_DIR}/{file.name}"
        with open(file, encoding="utf-8", errors="replace") as lines:
            for number, text in enumerate(lines, 1):
                if not text.strip():
                    continue
                window.result_lines += 1
                _read_line(folder, f"{where}:{number}", text, named, window)
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.name not in named:
            window.missing_results.append(f"{folder.name}/{path.name}")


def _read_line(folder: Path, where: str, text: str, named: set[str], window: Window) -> None:
    try:
        line = json.loads(text)
    except ValueError as exc:
        window.bad_lines.append({"line": where, "reason": f"not JSON: {exc}"})
        return
    if not isinstance(line, dict):
        window.bad_lines.append({"line": where, "reason": "not a JSON object"})
        return
    name = line.get("image")
    if not _safe_name(name):
        window.bad_lines.append({"line": where, "reason": f"bad image name {str(name)[:80]!r}"})
        return
    if name in named:
        window.bad_lines.append({"line": where, "reason": f"a second line for image {name!r}"})
        return
    named.add(name)
    served_by = f"{line.get('model')}:{line.get('version')}"
    if str(line.get("version")) != window.version or (
        window.model is not None and line.get("model") != window.model
    ):
        window.other_versions[served_by] = window.other_versions.get(served_by, 0) + 1
        return
    result = _result(line)
    image = f"{folder.name}/{name}"
    if result is None:
        reason = str(line.get("error") or "no class/probabilities in the result")[:200]
        window.failed.append({"line": where, "image": image, "reason": reason})
        return
    path = folder / name
    if not path.is_file():
        window.missing_images.append({"line": where, "image": image})
        return
    window.served.append(
        Served(path, str(line.get("request_id", "")), str(line.get("time", "")), *result)
    )


def read_window(
    root: str | Path, since: date, until: date, version: str, model: Optional[str] = None
) -> Window:
    """Every capture of the day folders from `since` to `until` (inclusive) served by `version`
    (and `model`, when given)."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"capture directory {root} does not exist (gateway --capture-dir)")
    window = Window(root, since, until, model, str(version))
    for folder in sorted(root.iterdir()):
        match = _DAY.match(folder.name)
        if not (match and folder.is_dir()):
            continue
        try:
            day = date.fromisoformat(match.group(1))
        except ValueError:
            continue
        if since <= day <= until:
            window.days.append(match.group(1))
            _read_day(folder, window)
    return window
