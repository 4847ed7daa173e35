"""A model's predictions on its own eval split: the baseline of `hoh monitor`'s prediction drift.

The pusher writes this record into each version directory it publishes (`N/eval_predictions.json`)
so a monitoring run compares served answers with the model's answers on data it was not trained
on without the training data being online; `hoh monitor` writes the same format when it has to
compute it itself (a version pushed before the record existed). It lives in the trainer layer
because both the pusher and the monitor need it and two components never import each other.

One row per predicted image (class, top-1 confidence) rather than a histogram: Evidently's
drift tests compare samples, and at ~40 bytes a row an eval split of 10k images is 400 KB.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from hoh.data.sources import ImageRecord
from hoh.errors import UsageError

RECORD_FILE = "eval_predictions.json"
PREDICTED, CONFIDENCE = "predicted", "confidence"
RECORD_SCHEMA = 1


def predict_records(
    records: Iterable[ImageRecord], predictor: Any, batch_size: int = 32
) -> tuple[list[tuple[str, float]], list[dict]]:
    """(class, confidence) per usable record, and the records skipped with their reason."""
    rows: list[tuple[str, float]] = []
    skipped: list[dict] = []
    batch: list[ImageRecord] = []

    def flush() -> None:
        prediction = predictor.predict([r.data for r in batch])
        for position, reason in sorted(prediction.failed.items()):
            skipped.append({"source": batch[position].source, "reason": reason})
        for probabilities in prediction.probabilities:
            top = int(np.argmax(probabilities))
            rows.append((predictor.class_names[top], float(probabilities[top])))
        batch.clear()

    for record in records:
        if record.problem:
            skipped.append({"source": record.source, "reason": record.problem})
            continue
        batch.append(record)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return rows, skipped


def summarize(rows: list[tuple[str, float]]) -> dict:
    """Class shares and confidence figures of one set of predictions."""
    if not rows:
        return {"images": 0, "class_share": {}, "mean_confidence": None}
    classes, confidences = zip(*rows)
    names, counts = np.unique(np.array(classes), return_counts=True)
    return {
        "images": len(rows),
        "class_share": {str(n): round(c / len(rows), 6) for n, c in zip(names, counts)},
        "mean_confidence": round(float(np.mean(confidences)), 6),
        "confidence_quantiles": {
            q: round(float(np.quantile(confidences, float(q))), 6) for q in ("0.1", "0.5", "0.9")
        },
    }


def record(
    model_version: Optional[str], source: str, rows: list[tuple[str, float]], skipped: list
) -> dict:
    """`model_version` None: the record sits in the version directory it belongs to."""
    return {
        "schema_version": RECORD_SCHEMA,
        "model_version": model_version,
        "source": source,
        "summary": summarize(rows),
        "predictions": [{PREDICTED: c, CONFIDENCE: round(p, 6)} for c, p in rows],
        "skipped": skipped,
    }


def record_bytes(data: dict) -> bytes:
    return (json.dumps(data, separators=(",", ":")) + "\n").encode("utf-8")


def predict_split(model_path: str, source: Any) -> dict:
    """The record of the model at `model_path` on `source` (an ImageSource); refused when no
    image of it could be predicted, since an empty baseline would make every window drift."""
    from hoh.trainer.predictor import Predictor

    predictor = Predictor(model_path, embeddings=False)
    rows, skipped = predict_records(source, predictor)
    if not rows:
        raise UsageError(f"{source.description}: no image the model {model_path} could predict")
    return record(None, source.description, rows, skipped)


def read_record(
    path: str | Path, model_version: Optional[str]
) -> tuple[list[tuple[str, float]], dict]:
    """Rows of a record; refused when it belongs to another version than `model_version`
    (None: the caller found it inside the version directory, which says whose it is)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        rows = [(str(p[PREDICTED]), float(p[CONFIDENCE])) for p in data["predictions"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"reference predictions {path}: unreadable ({exc})") from None
    recorded = data.get("model_version")
    if model_version is not None and recorded is not None and str(recorded) != model_version:
        raise UsageError(
            f"reference predictions {path} are of model version {recorded!r}, "
            f"not {model_version!r}: predictions of two models must not be compared"
        )
    return rows, data
