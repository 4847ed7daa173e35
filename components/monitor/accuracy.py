"""Online accuracy: the served class of each captured image against its true class.

Labels come from two places, both keyed by (request id, image index):
- `POST /v1/feedback` (serving/gateway/feedback.py), stored in `CAPTURE_DIR/.feedback/*.jsonl`,
  one line per label; a later label for the same image replaces an earlier one (a correction);
- Label Studio exports of the labelling batches `hoh monitor` writes: each task of such a batch
  carries the request id and index of its capture (`window.TASK_REQUEST_ID`, `TASK_INDEX`), so
  the export maps back exactly, whatever the image files are called.
Where both label the same image and disagree, the feedback wins: it comes from whoever sent
the request and knows what it was, and it is the only source that records corrections by time.
The disagreements are counted.

Labels are joined with the window's captured results, so the figures rest on what the gateway
served; a label for a request the window did not capture (another window, not sampled, another
version) is counted, not used. Feedback lines and export tasks that are not well-formed labels
are counted and named, never fatal; an export that cannot be read at all is an error.

Every figure says how many labels it rests on: accuracy over 3 labels is not accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional, Sequence

from hoh.components.monitor.window import TASK_INDEX, TASK_REQUEST_ID
from hoh.errors import HohError, UsageError
from hoh.serving.gateway.feedback import FEEDBACK_DIR, parse_label

LISTED = 50
Labels = dict[tuple[str, int], str]


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


def read_label_studio(
    exports: Sequence[str | Path], from_name: Optional[str]
) -> tuple[Labels, dict]:
    """(labels of captured images, what was read) from Label Studio JSON exports of labelling
    batches, parsed as `hoh labels` parses them; a later task (in the file, then in the order of
    `exports`) for the same image wins. Labelled tasks that name no capture (a `hoh sample`
    batch of some other pool) and tasks whose capture fields are not a well-formed label are
    counted; a file that is not a readable export is a UsageError naming it."""
    from hoh.components.sampling.labelstudio import annotated_tasks, read_export

    labels: Labels = {}
    report = {"files": [str(p) for p in exports], "labelled_tasks": 0, "unlabeled_tasks": 0}
    not_captures, bad = 0, []
    for path in exports:
        try:
            tasks, unlabeled = annotated_tasks(read_export(path), from_name)
        except HohError as exc:
            message = str(exc)
            raise UsageError(message if str(path) in message else f"{path}: {message}") from None
        report["labelled_tasks"] += len(tasks)
        report["unlabeled_tasks"] += unlabeled
        for data, label in tasks:
            if TASK_REQUEST_ID not in data and TASK_INDEX not in data:
                not_captures += 1
                continue
            fields = {"request_id": data.get(TASK_REQUEST_ID), "index": data.get(TASK_INDEX)}
            try:
                label = parse_label({**fields, "class": label})
            except ValueError as exc:
                name = data.get("hoh_file") or fields["request_id"]
                bad.append({"task": f"{path} ({str(name)[:80]})", "reason": str(exc)[:200]})
                continue
            labels[(label["request_id"], label["index"])] = label["class"]
    return labels, {
        **report,
        "not_captures": not_captures,
        "capture_labels": len(labels),
        "bad_tasks": bad[:LISTED],
        "bad_task_count": len(bad),
    }


def window_labels(window, studio: Optional[tuple[Labels, dict]] = None) -> tuple[Labels, dict]:
    """(true class per image: feedback over Label Studio, the feedback read) where
    `studio` is what `read_label_studio` returned."""
    feedback, bad = read_feedback(window.root)
    return {**(studio[0] if studio else {}), **feedback}, {"labels": feedback, "bad": bad}


def true_classes(window, labels: Optional[Labels] = None) -> list[Optional[str]]:
    """The true class of each served image of the window (None: no label came back);
    `labels` as `window_labels` returns them, the window's feedback alone if None."""
    labels = read_feedback(window.root)[0] if labels is None else labels
    return [labels.get(served.key) for served in window.served]


def rests_on(result: dict) -> str:
    """What the figures rest on, in words: '12 fed-back labels', '12 labels (8 fed back, 4
    from Label Studio)'."""
    fed, studio = result["sources"]["feedback"], result["sources"]["label_studio"]
    if not studio:
        return f"{result['labels']} fed-back labels"
    if not fed:
        return f"{result['labels']} Label Studio labels"
    return f"{result['labels']} labels ({fed} fed back, {studio} from Label Studio)"


def online_accuracy(
    window,
    min_accuracy: float,
    min_labels: int,
    studio: Optional[tuple[Labels, dict]] = None,
) -> Optional[dict]:
    """Scores of the window's captures that have a label (fed back, or from the Label Studio
    exports `studio` as `read_label_studio` returns them), and whether accuracy is below
    `min_accuracy` on at least `min_labels` labels; None when there is no label source at all."""
    labels, feedback = window_labels(window, studio)
    if not labels and not feedback["bad"] and studio is None:
        return None
    truths = true_classes(window, labels)
    pairs = [(t, s.predicted) for t, s in zip(truths, window.served) if t is not None]
    matched = {s.key for t, s in zip(truths, window.served) if t is not None}
    fed = len(matched & feedback["labels"].keys())
    classes = {c for s in window.served for c in s.probabilities}
    result = scores(pairs, classes)
    result["sources"] = {"feedback": fed, "label_studio": len(matched) - fed}
    low = (
        result["labels"] >= min_labels
        and result["accuracy"] is not None
        and result["accuracy"] < min_accuracy
    )
    reasons = []
    if low:
        reasons.append(
            f"online accuracy {result['accuracy']:.1%} on {rests_on(result)} is "
            f"below monitor.min_accuracy={min_accuracy:.0%}"
        )
    unknown = sorted({t for t, _ in pairs} - classes)
    label_studio = None
    if studio is not None:
        keys = studio[0].keys()
        label_studio = {
            **studio[1],
            "unmatched": len(keys - matched),
            "overruled_by_feedback": sum(
                1 for k in keys & feedback["labels"].keys() if studio[0][k] != feedback["labels"][k]
            ),
        }
    bad = feedback["bad"]
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
        "label_studio": label_studio,
    }
