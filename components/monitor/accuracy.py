"""Online accuracy: the served class of each captured image against the true class fed back.

Labels come from `POST /v1/feedback` (serving/gateway/feedback.py), stored in
`CAPTURE_DIR/.feedback/*.jsonl`, one line per label, keyed by (request id, image index). They
are joined with the window's captured results, so the figures rest on what the gateway served;
feedback for a request the window did not capture (another window, not sampled, another
version) is counted, not used. A later label for the same image replaces an earlier one (a
correction). Lines that are not well-formed labels are counted and named, never fatal.

Every figure says how many labels it rests on: accuracy over 3 labels is not accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

from hoh.serving.gateway.feedback import FEEDBACK_DIR, parse_label

LISTED = 50


def read_feedback(capture_root: str | Path) -> tuple[dict[tuple[str, int], str], list[dict]]:
    """({(request_id, index): true class}, bad lines) of every feedback file; the latest label
    of an image wins (by its time, then its place in the files)."""
    folder = Path(capture_root) / FEEDBACK_DIR
    labels: dict[tuple[str, int], tuple[str, str]] = {}
    bad: list[dict] = []
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as lines:
            for number, text in enumerate(lines, 1):
                if not text.strip():
                    continue
                where = f"{FEEDBACK_DIR}/{path.name}:{number}"
                try:
                    line = json.loads(text)
                    label = parse_label(
                        {k: line.get(k) for k in ("request_id", "index", "class") if k in line}
                        if isinstance(line, dict)
                        else line
                    )
                except ValueError as exc:  # FeedbackError too
                    bad.append({"line": where, "reason": str(exc)[:200]})
                    continue
                key = (label["request_id"], label["index"])
                when = str(line.get("time", ""))
                if key not in labels or when >= labels[key][0]:
                    labels[key] = (when, label["class"])
    return {k: v[1] for k, v in labels.items()}, bad


def image_index(path: Path, request_id: str) -> Optional[int]:
    """The index in its request of a captured image named `<request_id>-<i>.<ext>`."""
    stem = path.name.split(".", 1)[0]
    prefix = f"{request_id}-"
    if not stem.startswith(prefix) or not stem[len(prefix) :].isdigit():
        return None
    return int(stem[len(prefix) :])


def scores(pairs: Iterable[tuple[str, str]], classes: Iterable[str] = ()) -> dict:
    """Accuracy, per-class precision/recall and the confusion matrix of (true, served) pairs.

    A class nobody predicted has precision None (not 0: nothing was wrong), one with no true
    example has recall None."""
    pairs = list(pairs)
    names = sorted({*classes, *(t for t, _ in pairs), *(p for _, p in pairs)})
    matrix = {t: {p: 0 for p in names} for t in names}
    for true, served in pairs:
        matrix[true][served] += 1
    per_class = {}
    for name in names:
        hit = matrix[name][name]
        predicted = sum(matrix[t][name] for t in names)
        actual = sum(matrix[name].values())
        per_class[name] = {
            "precision": hit / predicted if predicted else None,
            "recall": hit / actual if actual else None,
            "support": actual,
        }
    correct = sum(1 for t, p in pairs if t == p)
    return {
        "labels": len(pairs),
        "correct": correct,
        "accuracy": correct / len(pairs) if pairs else None,
        "per_class": per_class,
        "confusion_matrix": {"classes": names, "rows_true_columns_served": matrix},
    }


def true_classes(window, labels: Optional[dict] = None) -> list[Optional[str]]:
    """The fed-back class of each served image of the window (None: no label came back);
    `labels` as `read_feedback` returns them, read from the window's capture dir if None."""
    labels = read_feedback(window.root)[0] if labels is None else labels
    out: list[Optional[str]] = []
    for served in window.served:
        index = image_index(served.path, served.request_id)
        out.append(labels.get((served.request_id, index)) if index is not None else None)
    return out


def online_accuracy(window, min_accuracy: float, min_labels: int) -> Optional[dict]:
    """Scores of the window's captures that have feedback, and whether accuracy is below
    `min_accuracy` on at least `min_labels` labels; None when no feedback exists at all."""
    labels, bad = read_feedback(window.root)
    if not labels and not bad:
        return None
    truths = true_classes(window, labels)
    pairs = [(t, s.predicted) for t, s in zip(truths, window.served) if t is not None]
    matched = {
        (s.request_id, image_index(s.path, s.request_id))
        for t, s in zip(truths, window.served)
        if t is not None
    }
    classes = {c for s in window.served for c in s.probabilities}
    result = scores(pairs, classes)
    low = (
        result["labels"] >= min_labels
        and result["accuracy"] is not None
        and result["accuracy"] < min_accuracy
    )
    reasons = []
    if low:
        reasons.append(
            f"online accuracy {result['accuracy']:.1%} on {result['labels']} fed-back labels is "
            f"below monitor.min_accuracy={min_accuracy:.0%}"
        )
    unknown = sorted({t for t, _ in pairs} - classes)
    return {
        **result,
        "min_accuracy": min_accuracy,
        "min_labels": min_labels,
        "judged": result["labels"] >= min_labels,
        "accuracy_low": low,
        "reasons": reasons,
        "labelled_images": len(labels),
        "unmatched": len(labels) - len(matched),
        "unknown_classes": unknown,
        "bad_lines": bad[:LISTED],
        "bad_line_count": len(bad),
    }
