"""The Evidently workspace behind `hoh dashboard`: every monitoring run adds its snapshots.

A run's HTML reports answer "what happened in this window"; the workspace answers "since
when": its project dashboard plots each run's figures over time (drift share, which descriptors
moved, class mix, mean confidence, online accuracy, sample counts). Each run adds two
snapshots, both real Evidently reports a user can open from the UI:
- `input_drift`: the drift check's own descriptor report (the one behind input_drift/report.html,
  not a recomputation), whose DriftedColumnsCount and per-descriptor ValueDrift are the drift
  panels;
- `served`: a small report over the window's served answers (one row per served image: class,
  confidence, and whether its label, fed back or from Label Studio, agreed), whose RowCount,
  MeanValue and UniqueValueCount are the other panels.
Both carry the window's end as their time, so the dashboard's axis is traffic time, not the time
the monitor happened to run, and the served version and verdict as metadata.

The workspace is a local folder (`monitor.workspace`) or, with `monitor.workspace_url`, a remote
Evidently UI; the project (`monitor.project`) is created with its panels on first use.
"""

from __future__ import annotations

import datetime
import warnings
from typing import Any, Optional, Sequence

from hoh.errors import HohError, RunFailed

TAG = "hoh-monitor"
INPUT_DRIFT, SERVED = "input_drift", "served"
PREDICTED, CONFIDENCE, CORRECT = "predicted", "confidence", "correct"
TAB = "Monitoring"


def open_workspace(path: Optional[str], url: Optional[str]) -> Any:
    """The remote UI at `url`, else the folder `path` (created when missing)."""
    if url:
        from evidently.ui.workspace import RemoteWorkspace

        try:
            return RemoteWorkspace(url)
        except Exception as exc:  # requests' errors, Evidently's "not an Evidently UI"
            raise RunFailed(f"Evidently UI {url}: not reachable ({exc})") from None
    if not path:
        raise HohError("no Evidently workspace: set monitor.workspace or monitor.workspace_url")
    from evidently.ui.workspace import Workspace

    return Workspace(path)


def panels() -> list:
    """The project's dashboard, one panel per figure the issue asks to follow over time."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import bar_plot_panel, line_plot_panel

    def metric(legend: str, name: str, tag: str, **labels: str) -> PanelMetric:
        return PanelMetric(legend=legend, metric=name, tags=[tag], metric_labels=labels)

    return [
        line_plot_panel(
            "Drift share",
            [
                metric(
                    "share of drifted descriptors",
                    "DriftedColumnsCount",
                    INPUT_DRIFT,
                    value_type="share",
                )
            ],  # fmt: skip
            "Descriptors whose distribution drifted from the training span (input drift).",
            size="half",
        ),
        bar_plot_panel(
            "Drifted descriptors",
            [metric("drifted descriptors", "DriftedColumnsCount", INPUT_DRIFT, value_type="count")],
            "How many image descriptors drifted; their scores are in the next panel.",
            size="half",
        ),
        line_plot_panel(
            "Descriptor drift scores",
            [metric("{{column}}", "ValueDrift", INPUT_DRIFT)],
            "Per-descriptor test score of each window (the method of the drift section).",
        ),
        bar_plot_panel(
            "Class mix",
            [metric("{{label}}", "UniqueValueCount", SERVED, column=PREDICTED, value_type="share")],
            "Share of each served class.",
            size="half",
            stacked=True,
        ),
        line_plot_panel(
            "Mean confidence",
            [metric("mean top-1 confidence", "MeanValue", SERVED, column=CONFIDENCE)],
            "Mean confidence of the served answers.",
            size="half",
        ),
        line_plot_panel(
            "Online accuracy",
            [metric("accuracy on labels", "MeanValue", SERVED, column=CORRECT)],
            "Share of served answers their label agrees with (windows with labels only).",
            size="half",
        ),
        bar_plot_panel(
            "Sample counts",
            [
                metric("served images", "RowCount", SERVED),
                metric("labels", "MeanValue", SERVED, column="labelled_count"),
            ],
            "Images the figures rest on.",
            size="half",
        ),
    ]


def project_of(workspace: Any, name: str) -> Any:
    """The project called `name`, created with the panels above when missing."""
    found = workspace.search_project(name)
    if found:
        return found[0]
    project = workspace.create_project(name, description="hoh monitor: captured gateway traffic")
    for panel in panels():
        project.dashboard.add_panel(panel, tab=TAB)
    return project


def served_snapshot(
    served: Sequence[tuple[str, float]],
    truths: Sequence[Optional[str]],
) -> Any:
    """Evidently report of the served answers: counts, class mix, confidence, and (with labels)
    online accuracy as the mean of a 0/1 column over the labelled rows."""
    import numpy as np
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import MeanValue, RowCount, UniqueValueCount

    frame = pd.DataFrame(list(served), columns=[PREDICTED, CONFIDENCE])
    labelled = [t is not None for t in truths]
    frame[CORRECT] = [
        float(t == p) if t is not None else np.nan for t, (p, _) in zip(truths, served)
    ]
    # A constant column: its mean is the number of labels (a Report reads one dataset).
    frame["labelled_count"] = float(sum(labelled))
    metrics: list = [
        RowCount(),
        MeanValue(column=CONFIDENCE),
        UniqueValueCount(column=PREDICTED),
        MeanValue(column="labelled_count"),
    ]
    if any(labelled):
        metrics.append(MeanValue(column=CORRECT))
    definition = DataDefinition(
        numerical_columns=[CONFIDENCE, CORRECT, "labelled_count"], categorical_columns=[PREDICTED]
    )
    with warnings.catch_warnings():  # numpy's warnings on the all-missing column
        warnings.simplefilter("ignore", RuntimeWarning)
        return Report(metrics).run(Dataset.from_pandas(frame, data_definition=definition), None)


def add_run(
    workspace: Any,
    project_name: str,
    snapshots: dict[str, Any],
    timestamp: datetime.datetime,
    metadata: dict,
) -> dict:
    """Add a run's snapshots (name -> snapshot) to the project; returns where they went."""
    project = project_of(workspace, project_name)
    ids = {}
    for name, snapshot in snapshots.items():
        snapshot.set_name(f"{name} {metadata.get('window', '')}".strip())
        # Evidently 0.7 sets these only through Report.run; the drift check's snapshot was run
        # before the monitor knew the window's time (private, checked by the workspace test).
        snapshot._timestamp = timestamp
        snapshot._metadata = {**snapshot._metadata, **{k: str(v) for k, v in metadata.items()}}
        snapshot._tags = [*snapshot._tags, *(t for t in (TAG, name) if t not in snapshot._tags)]
        ids[name] = str(workspace.add_run(project.id, snapshot).id)
    return {"project": project_name, "project_id": str(project.id), "snapshots": ids}
