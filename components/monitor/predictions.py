"""Prediction drift: the class mix and confidences served in a window against the model's own
predictions on its reference data.

Input drift says the pictures changed; this says the model's answers changed, which also catches
a shift the descriptors miss (a new kind of subject under the same light) and is what users
feel. The baseline is the model's predictions on the reference span's eval split: data it was
not trained on, so its confidences there are the honest ones. The pusher records them in each
version directory (`hoh.trainer.eval_predictions`, `N/eval_predictions.json`); for a version
pushed before that record existed they are computed by the monitor and written out as
`reference_predictions.json` in the same format, which `--reference-predictions` reads back.

The two tests are Evidently's per-column drift tests with the `drift` section's method and
threshold, read back by the drift check's own parser.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

from hoh.components.drift.evaluation import value_drift_rows
from hoh.config import DriftConfig
from hoh.trainer.eval_predictions import (  # noqa: F401  (re-exported: the monitor's API)
    CONFIDENCE,
    PREDICTED,
    predict_records,
    read_record,
    record,
)
from hoh.trainer.eval_predictions import summarize as side


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
