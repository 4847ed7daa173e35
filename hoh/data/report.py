"""What an import did, in a form both people (the CLI summary) and scripts (JSON) can check.

The counts obey one identity, `seen = written + rejected + duplicates`, so nothing a user put in
SRC can silently disappear: every file is in exactly one of the three buckets.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional


@dataclass(frozen=True)
class Rejected:
    path: str  # relative to SRC
    kind: str  # stable keyword: not_an_image, corrupt, undecodable, too_large, ...
    reason: str


@dataclass(frozen=True)
class Duplicate:
    path: str  # the copy that was not written
    duplicate_of: str  # the copy that was written (first in path order)
    id: str
    label: Optional[str] = None
    kept_label: Optional[str] = None

    @property
    def label_conflict(self) -> bool:
        """Same bytes filed under two classes: the kept label may be the wrong one."""
        return self.label != self.kept_label


@dataclass
class ImportReport:
    src: str
    out_dir: str
    span: int
    span_dir: str
    eval_ratio: float
    unlabeled: bool = False
    classes: list[str] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # label -> split -> n
    split_counts: dict[str, int] = field(default_factory=dict)
    shards: dict[str, int] = field(default_factory=dict)
    seen: int = 0
    written: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Spans sealed by `hoh ingest` only: broker, sources, capture-time range, dead letters
    # (hoh.data.stream.openspan); None for `hoh data import`.
    stream: Optional[dict[str, Any]] = None

    @property
    def adds_up(self) -> bool:
        return self.seen == self.written + len(self.rejected) + len(self.duplicates)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["duplicates"] = [
            {**asdict(d), "label_conflict": d.label_conflict} for d in self.duplicates
        ]
        data["rejected_by_kind"] = dict(sorted(Counter(r.kind for r in self.rejected).items()))
        data["identity"] = "seen = written + rejected + duplicates"
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def summary_lines(self, report_paths: tuple[str, ...] = ()) -> list[str]:
        """The short account the CLI prints; the JSON report has the per-file detail."""
        lines = [
            f"span {self.span} -> {self.span_dir}",
            f"seen {self.seen} = written {self.written} + rejected {len(self.rejected)}"
            f" + duplicates {len(self.duplicates)}",
        ]
        splits = ", ".join(f"{s} {n}" for s, n in self.split_counts.items())
        lines.append(f"splits: {splits}")
        for label in self.classes:
            per_split = ", ".join(f"{s} {n}" for s, n in self.counts[label].items())
            lines.append(f"  {label}: {per_split}")
        if self.rejected:
            kinds = Counter(r.kind for r in self.rejected)
            lines.append("rejected: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
        conflicts = sum(d.label_conflict for d in self.duplicates)
        if conflicts:
            lines.append(f"{conflicts} duplicate(s) are filed under different classes")
        lines.extend(f"warning: {w}" for w in self.warnings)
        for path in report_paths:
            lines.append(f"report: {path}")
        return lines


def read_import_report(data_root: str | Path, span: int) -> dict[str, Any]:
    """The import report `hoh data import` (or `hoh ingest`) wrote beside a span."""
    from hoh import features
    from hoh.errors import HohError

    report = features.span_dir(data_root, span) / features.IMPORT_REPORT
    try:
        content = json.loads(report.read_text(encoding="utf-8"))
        list(content["classes"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HohError(
            f"cannot tell the classes: {report} is missing or unreadable ({exc}); "
            "set data.classes in the config (class names in id order)"
        ) from None
    return content
