"""Prediction drift: the class mix and confidences served in a window against the model's own
predictions on its reference data.

Input drift says the pictures changed; this says the model's answers changed, which also catches
a shift the descriptors miss (a new kind of subject under the same light) and is what users
feel. The baseline is the model's predictions on the reference span's eval split: data it was
not trained on, so its confidences there are the honest ones. Push time does not record them
yet, so they are computed here with the Predictor and written out as `reference_predictions.json`
in the format `--reference-predictions` reads back (a later run, or a future push step, can
reuse them and skip the pass over the reference data).

The two tests are Evidently's per-column drift tests with the `drift` section's method and
threshold, read back by the drift check's own parser.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from hoh.components.drift.evaluation import value_drift_rows
from hoh.config import DriftConfig
from hoh.data.sources import ImageRecord
from hoh.errors import UsageError

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


def record(model_version: str, source: str, rows: list[tuple[str, float]], skipped: list) -> dict:
    return {
        "schema_version": RECORD_SCHEMA,
        "model_version": model_version,
        "source": source,
        "predictions": [{PREDICTED: c, CONFIDENCE: round(p, 6)} for c, p in rows],
        "skipped": skipped,
    }


def read_record(path: str | Path, model_version: str) -> tuple[list[tuple[str, float]], dict]:
    """Rows of a `reference_predictions.json`; refused when it belongs to another version."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        rows = [(str(p[PREDICTED]), float(p[CONFIDENCE])) for p in data["predictions"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"reference predictions {path}: unreadable ({exc})") from None
    if str(data.get("model_version")) != model_version:
        raise UsageError(
            f"reference predictions {path} are of model version {data.get('model_version')!r}, "
            f"not {model_version!r}: predictions of two models must not be compared"
        )
    return rows, data


def side(rows: list[tuple[str, float]]) -> dict:
    """Class shares and confidence figures of one side."""
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


def prediction_report(
    reference: list[tuple[str, float]], served: list[tuple[str, float]], settings: DriftConfig
) -> tuple[Any, dict]:
    """Evidently drift tests of the served class and confidence against the reference ones;
    returns the snapshot (for the HTML) and the results."""
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    columns = [PREDICTED, CONFIDENCE]
    ref, cur = pd.DataFrame(reference, columns=columns), pd.DataFrame(served, columns=columns)
    definition = DataDefinition(numerical_columns=[CONFIDENCE], categorical_columns=[PREDICTED])
    options = {"method": settings.column_method, "threshold": settings.column_threshold}
    with warnings.catch_warnings():  # numpy's divide warnings when one side has a single class
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = Report(
            [ValueDrift(column=c, **options) for c in columns], include_tests=True
        ).run(
            Dataset.from_pandas(cur, data_definition=definition),
            Dataset.from_pandas(ref, data_definition=definition),
        )
    tests = value_drift_rows(snapshot.dict())
    drifted = [c for c in columns if tests[c]["drifted"]]
    return snapshot, {
        "drift_detected": bool(drifted),
        "drifted": drifted,
        "tests": tests,
        "reference": side(reference),
        "served": side(served),
    }


def reasons(result: Optional[dict]) -> list[str]:
    if not result or not result["drift_detected"]:
        return []
    ref, cur, out = result["reference"], result["served"], []
    if PREDICTED in result["drifted"]:
        out.append(f"served class mix drifted: {ref['class_share']} -> {cur['class_share']}")
    if CONFIDENCE in result["drifted"]:
        out.append(
            f"served confidence drifted: mean {ref['mean_confidence']:.3f} -> "
            f"{cur['mean_confidence']:.3f}"
        )
    return out
