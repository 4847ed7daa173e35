"""The drift tests, run by Evidently 0.7, and the verdict hoh draws from them.

Three independent questions, each with its own threshold (the pipeline config's `drift`
section, `hoh.config.DriftConfig`):

- descriptors: Evidently tests every descriptor column (by default K-S / chi-square up to 1000
  reference rows, Wasserstein / Jensen-Shannon beyond) and counts the drifted share. The share,
  not one column, decides: descriptors are correlated (a darker camera moves brightness and all
  three channel means together), and single columns flip by chance on small spans.
- labels: class proportions, tested like a categorical column.
- embeddings: MMD between the two sides' reduced backbone embeddings. Evidently reports only the
  score here, so hoh compares it with `embedding_threshold` itself; below `embedding_min_rows`
  images per side the score is reported but does not vote (MMD's noise at n=24 reaches 0.036,
  above the usual 0.015 threshold; at n=200 it stays under 0.003).

Current comes FIRST in `Report.run(current, reference)` (the legacy API had it the other way).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

from hoh.components.drift.descriptors import CATEGORICAL, NUMERIC
from hoh.components.drift.profile import EMBEDDING_PREFIX, LABEL, Profile
from hoh.config import DriftConfig

EMBEDDINGS_NAME = "backbone"
UNLABELED = "(unlabeled)"


def value_drift_rows(snapshot_dict: dict) -> dict[str, dict]:
    """Per column: method, threshold, value and the test's status, from the snapshot's dict."""
    tests_by_metric = {t["metric_config"]["metric_id"]: t for t in snapshot_dict.get("tests", [])}
    rows = {}
    for metric in snapshot_dict["metrics"]:
        config = metric["config"]
        if not config["type"].endswith(":ValueDrift"):
            continue
        test = tests_by_metric.get(metric["id"], {})
        method = str(config.get("method"))
        rows[config["column"]] = {
            "test": method,
            "statistic": "p_value" if "p_value" in method else "distance",
            "value": _number(metric["value"]),
            "threshold": _number(config.get("threshold")),
            "drifted": test.get("status") == "FAIL",
        }
    return rows


def _number(value: Any) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _proportions(labels: Any) -> dict[str, float]:
    counts = labels.value_counts(normalize=True)
    return {str(k): round(float(v), 6) for k, v in sorted(counts.items())}


def descriptor_report(
    reference: Profile, current: Profile, settings: DriftConfig
) -> tuple[Any, dict]:
    """Evidently report over descriptors (+ labels when both sides have them); returns the
    snapshot (for the HTML) and the per-feature results."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import DriftedColumnsCount, ValueDrift

    ref, cur = reference.frame(), current.frame()
    columns = list(NUMERIC + CATEGORICAL)
    with_labels = settings.label_drift and ref[LABEL].notna().any() and cur[LABEL].notna().any()
    categorical = list(CATEGORICAL) + ([LABEL] if with_labels else [])
    definition = DataDefinition(numerical_columns=list(NUMERIC), categorical_columns=categorical)
    options = {"method": settings.column_method, "threshold": settings.column_threshold}
    metrics: list = [
        DriftedColumnsCount(columns=columns, drift_share=settings.drift_share, **options)
    ]
    metrics += [ValueDrift(column=c, **options) for c in columns]
    if with_labels:
        metrics.append(ValueDrift(column=LABEL))
        # Images without a label (loose files in a folder) stay in the descriptor tests.
        ref[LABEL], cur[LABEL] = ref[LABEL].fillna(UNLABELED), cur[LABEL].fillna(UNLABELED)
    keep = columns + ([LABEL] if with_labels else [])
    with warnings.catch_warnings():  # numpy's divide warnings on constant columns (e.g. one format)
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = Report(metrics, include_tests=True).run(
            Dataset.from_pandas(cur[keep], data_definition=definition),
            Dataset.from_pandas(ref[keep], data_definition=definition),
        )
    result = snapshot.dict()
    per_column = value_drift_rows(result)
    count = next(
        m["value"]
        for m in result["metrics"]
        if m["config"]["type"].endswith(":DriftedColumnsCount")
    )
    features = []
    for name in columns:
        row = {"name": name, "kind": "descriptor", **per_column[name]}
        if name in NUMERIC:
            row["reference_mean"] = _number(ref[name].mean())
            row["current_mean"] = _number(cur[name].mean())
        else:
            row["reference"] = _proportions(ref[name])
            row["current"] = _proportions(cur[name])
        features.append(row)
    labels = None
    if with_labels:
        labels = {
            "name": LABEL,
            "kind": "label",
            **per_column[LABEL],
            "reference": _proportions(ref[LABEL]),
            "current": _proportions(cur[LABEL]),
        }
    share = float(count["share"])
    return snapshot, {
        "features": features,
        "descriptors": {
            "drifted": [f["name"] for f in features if f["drifted"]],
            "count": int(count["count"]),
            "columns": len(columns),
            "share": share,
            "drift_share": settings.drift_share,
            "drifted_verdict": share >= settings.drift_share,
        },
        "labels": labels,
    }


def _sample(frame: Any, rows: int, seed: int) -> Any:
    return frame if len(frame) <= rows else frame.sample(rows, random_state=seed)


def embedding_report(
    reference: Profile, current: Profile, settings: DriftConfig
) -> tuple[Any, Optional[dict]]:
    """MMD drift of the reduced embeddings on at most `embedding_max_rows` rows per side (the
    kernel is quadratic in rows); (None, None) when either side has no embeddings."""
    if reference.embeddings is None or current.embeddings is None:
        return None, None
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift
    from evidently.metrics.embeddings import MMDDriftMethod

    width = min(reference.embeddings.shape[1], current.embeddings.shape[1])
    names = [f"{EMBEDDING_PREFIX}{i}" for i in range(width)]
    ref = _sample(reference.frame()[names], settings.embedding_max_rows, settings.seed)
    cur = _sample(current.frame()[names], settings.embedding_max_rows, settings.seed)
    definition = DataDefinition(numerical_columns=names, embeddings={EMBEDDINGS_NAME: names})
    metric = EmbeddingsDrift(
        embeddings_name=EMBEDDINGS_NAME,
        drift_method=MMDDriftMethod(threshold=settings.embedding_threshold),
    )
    snapshot = Report([metric]).run(
        Dataset.from_pandas(cur, data_definition=definition),
        Dataset.from_pandas(ref, data_definition=definition),
    )
    score = _number(snapshot.dict()["metrics"][0]["value"]) or 0.0
    votes = min(len(ref), len(cur)) >= settings.embedding_min_rows
    return snapshot, {
        "name": EMBEDDINGS_NAME,
        "kind": "embedding",
        "test": "mmd",
        "statistic": "distance",
        "value": score,
        "threshold": settings.embedding_threshold,
        "drifted": score > settings.embedding_threshold,
        "counts_in_verdict": votes,
        "components": width,
        "rows": {"reference": len(ref), "current": len(cur)},
        "note": ""
        if votes
        else (
            f"fewer than {settings.embedding_min_rows} images on a side: "
            "the MMD score is too noisy to vote on the verdict"
        ),
    }


def verdict(descriptors: dict, labels: Optional[dict], embeddings: Optional[dict]) -> list[str]:
    """The reasons drift was declared; empty = no drift."""
    reasons = []
    if descriptors["drifted_verdict"]:
        reasons.append(
            f"{descriptors['count']} of {descriptors['columns']} descriptors drifted "
            f"({', '.join(descriptors['drifted'])}): share {descriptors['share']:.2f} >= "
            f"{descriptors['drift_share']:.2f}"
        )
    if labels is not None and labels["drifted"]:
        reasons.append(f"class proportions drifted: {labels['reference']} -> {labels['current']}")
    if embeddings is not None and embeddings["drifted"] and embeddings["counts_in_verdict"]:
        reasons.append(
            f"backbone embeddings drifted: "
            f"MMD {embeddings['value']:.4f} > {embeddings['threshold']:g}"
        )
    return reasons
