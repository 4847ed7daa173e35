"""`TrackRun`: the post-run step as the DAG's last node, for runners without a post-run hook.

A Kubeflow run has no process that outlives the DAG and no MLMD the compiling machine can read,
so the facts come from the artifacts handed to this node, and it logs them to MLflow with the
same code as the local runner's post-run step (`log.track_facts`). It lives in the pipeline
layer, not `components/`, because that code does; the executor imports from the package the
image installs, like every other node.

It also leaves what the Kubeflow UI renders: `summary` (system.Markdown: the run summary,
metrics, blessing, drift, MLflow outcome), `drift_report` (system.HTML: the drift check's
report) and `metrics` (system.Metrics: the evaluation metrics as scalars runs are compared on).
Kubeflow names an artifact's type by its schema title, which TFX takes from `TYPE_NAME`; the UI
reads an HTML or Markdown artifact's URI as the file itself, so those two are files, not
directories. A tracking problem never fails the node: the summary says it, like `hoh run` does.
"""

from __future__ import annotations

import html
import json
import logging
import os
from typing import Any, Dict, List, Optional

from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from hoh.components.drift.component import DriftReport

COMPONENT_ID = "TrackRun"
SUMMARY_KEY, DRIFT_KEY, METRICS_KEY = "summary", "drift_report", "metrics"
SUMMARY_FILE_NAME = "summary.md"  # MLflow artifact name of the same text
# How long TrackRun waits for a gated pusher's version to appear in the Triton repository: on
# Kubeflow it runs beside the pusher, not after it (facts.push_from_repository). LocalDagRunner
# runs one node at a time, TrackRun first (its layer is ordered by node id): waiting there would
# only hold up the pusher, so it looks once.
PUSH_WAIT_S = 30 * 60


class KfpMarkdown(artifact.Artifact):
    TYPE_NAME = "system.Markdown"


class KfpHtml(artifact.Artifact):
    TYPE_NAME = "system.HTML"


class KfpMetrics(artifact.Artifact):
    TYPE_NAME = "system.Metrics"


# input key -> (artifact type, the producing node's id, its output key)
_INPUTS = {
    "examples": (standard_artifacts.Examples, "ImportExampleGen", "examples"),
    "statistics": (standard_artifacts.ExampleStatistics, "StatisticsGen", "statistics"),
    "anomalies": (standard_artifacts.ExampleAnomalies, "ExampleValidator", "anomalies"),
    "model_run": (standard_artifacts.ModelRun, "Trainer", "model_run"),
    "model": (standard_artifacts.Model, "Trainer", "model"),
    "transform_graph": (standard_artifacts.TransformGraph, "Transform", "transform_graph"),
    "evaluation": (standard_artifacts.ModelEvaluation, "Evaluator", "evaluation"),
    "blessing": (standard_artifacts.ModelBlessing, "Evaluator", "blessing"),
    "drift": (DriftReport, "DriftCheck", "drift_report"),
    "pushed_model": (standard_artifacts.PushedModel, None, "pushed_model"),
}


class TrackRunSpec(types.ComponentSpec):
    PARAMETERS = {
        # The resolved config as the pods see it (JSON), and why MLflow is skipped ("" = log).
        "config": ExecutionParameter(type=str),
        "untracked_reason": ExecutionParameter(type=str),
    }
    INPUTS = {
        key: ChannelParameter(type=kind, optional=True) for key, (kind, _, _) in _INPUTS.items()
    }
    OUTPUTS = {
        SUMMARY_KEY: ChannelParameter(type=KfpMarkdown),
        DRIFT_KEY: ChannelParameter(type=KfpHtml),
        METRICS_KEY: ChannelParameter(type=KfpMetrics),
    }


def run_id_of(context_run_id: Optional[str], output_uri: str) -> str:
    """The pipeline run's id: the orchestrator's when it gives one (LocalDagRunner), else the
    run folder of Kubeflow's output layout `<root>/<pipeline>/<run id>/<task>/<output>`."""
    if context_run_id:
        return context_run_id
    parts = [p for p in output_uri.rstrip("/").split("/") if p]
    return parts[-3] if len(parts) >= 3 else output_uri


def cached_inputs(run_id: str, artifacts) -> Dict[str, str]:
    """Artifact type -> the earlier run it was written by, for inputs Kubeflow's cache reused.

    A cache hit hands on the earlier execution's artifacts, whose URIs keep that run's folder
    in Kubeflow's output layout; every input of TrackRun is produced by a node of this DAG, so
    an input outside this run's folder is a cached execution's. Only meaningful on Kubeflow
    (LocalDagRunner lays its outputs out by node and execution, not by run)."""
    found: Dict[str, str] = {}
    for a in artifacts:
        producer = run_id_of(None, a.uri)
        if a.type_name not in found and producer != run_id:
            found[a.type_name] = producer
    return found


def metric_scalars(facts) -> Dict[str, float]:
    """What Kubeflow shows as the run's scalar metrics (and compares runs on)."""
    from hoh.pipeline.tracking.facts import metric_key

    scalars = {metric_key(name): float(v) for name, v in sorted(facts.metrics.items())}
    for cls, per in sorted(facts.per_class.items()):
        for name, value in sorted(per.items()):
            scalars[metric_key(cls, name)] = float(value)
    if facts.blessed is not None:
        scalars["blessed"] = float(facts.blessed)
    if facts.drift is not None and facts.drift.get("drifted_share") is not None:
        scalars["drift.drifted_share"] = float(facts.drift["drifted_share"])
    return scalars


def summary_markdown(facts, tracking_lines: List[str]) -> str:
    """The run as one Markdown page: what `hoh run` prints, plus the tables behind it."""
    lines = [f"# {facts.pipeline_name}: run {facts.run_id}", ""]
    lines += [f"- {line}" for line in facts.summary_lines] or ["- (no summary recorded)"]
    lines += ["", f"**Blessing:** {facts.blessing_reason}", "", f"**Drift:** {facts.drift_verdict}"]
    if facts.metrics:
        lines += ["", "## Metrics (eval split)", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4f} |" for k, v in sorted(facts.metrics.items())]
    if facts.per_class:
        names = sorted({n for per in facts.per_class.values() for n in per})
        lines += ["", "## Per class", "", "| class | " + " | ".join(names) + " |"]
        lines += ["| --- |" + " --- |" * len(names)]
        for cls, per in sorted(facts.per_class.items()):
            cells = [f"{per[n]:.4f}" if n in per else "" for n in names]
            lines.append(f"| {cls} | " + " | ".join(cells) + " |")
    if facts.components:
        lines += ["", "## Components", "", "| component | seconds | peak RSS MB | cached |"]
        lines += ["| --- | --- | --- | --- |"]
        lines += [
            f"| {c['component']} | {c['seconds']:.1f} | {c['peak_rss_mb']:.0f} | "
            + ("yes" if c["cached"] else "no")
            + " |"
            for c in facts.components
        ]
    lines += ["", "## MLflow", ""] + [f"- {line}" for line in tracking_lines]
    if facts.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in facts.notes]
    return "\n".join(lines) + "\n"


def drift_html(facts, drift_uri: Optional[str]) -> str:
    """The drift check's own report, or a page that says why there is none."""
    from hoh.components.drift.report import REPORT_FILE

    if drift_uri:
        path = os.path.join(drift_uri, REPORT_FILE)
        try:
            import tensorflow as tf

            with tf.io.gfile.GFile(path, "r") as f:
                return f.read()
        except Exception as exc:  # the summary still carries the verdict
            reason = f"the drift report {path} could not be read: {exc}"
    else:
        reason = "this run has no drift check (drift.enabled: false)"
    return f"<html><body><p>{html.escape(reason)}</p></body></html>\n"


def _write_file_at(uri: str, text: str) -> None:
    """Kubeflow's UI opens an HTML/Markdown artifact's URI as a file; a local runner made it an
    empty directory first."""
    from hoh.fileio import is_remote, write_file

    if not is_remote(uri) and os.path.isdir(uri) and not os.listdir(uri):
        os.rmdir(uri)
    write_file(uri, text)


class Executor(base_executor.BaseExecutor):
    def Do(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        from hoh.config import HohConfig
        from hoh.pipeline.tracking import log
        from hoh.pipeline.tracking.facts import from_artifacts

        cfg = HohConfig.model_validate(json.loads(exec_properties["config"]))
        [summary_artifact] = output_dict[SUMMARY_KEY]
        [drift_artifact] = output_dict[DRIFT_KEY]
        [metrics_artifact] = output_dict[METRICS_KEY]
        on_kubeflow = not self._context.pipeline_run_id
        run_id = run_id_of(self._context.pipeline_run_id, summary_artifact.uri)
        inputs = [a for key in _INPUTS for a in input_dict.get(key, [])]
        gated = cfg.push.enabled and not input_dict.get("pushed_model")
        facts = from_artifacts(
            cfg,
            run_id,
            inputs,
            cached_from=cached_inputs(run_id, inputs) if on_kubeflow else None,
            push_wait_s=(PUSH_WAIT_S if on_kubeflow else 0) if gated else None,
        )
        reason = exec_properties.get("untracked_reason") or ""
        if reason:
            result = log.TrackingResult(True, f"tracking: off ({reason})", facts=facts)
            logging.info("hoh-tracking: %s", result.message)
        else:
            result = log.track_facts(
                cfg, facts, lambda line: logging.info("hoh-tracking: %s", line)
            )
        _write_file_at(summary_artifact.uri, summary_markdown(facts, result.lines()))
        drift_uri = next((a.uri for a in input_dict.get("drift", [])), None)
        _write_file_at(drift_artifact.uri, drift_html(facts, drift_uri))
        for name, value in metric_scalars(facts).items():
            metrics_artifact.set_float_custom_property(name, value)
        summary_artifact.set_int_custom_property("tracked", int(result.ok and not reason))
        if result.mlflow_run_id:
            summary_artifact.set_string_custom_property("mlflow_run_id", result.mlflow_run_id)


class TrackRun(base_component.BaseComponent):
    SPEC_CLASS = TrackRunSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, config: str, untracked_reason: str = "", **inputs: Any):
        outputs = {
            SUMMARY_KEY: types.Channel(type=KfpMarkdown),
            DRIFT_KEY: types.Channel(type=KfpHtml),
            METRICS_KEY: types.Channel(type=KfpMetrics),
        }
        super().__init__(
            spec=TrackRunSpec(config=config, untracked_reason=untracked_reason, **inputs, **outputs)
        )


def track_run_node(components: Dict[str, Any], config: str, untracked_reason: str, push: bool):
    """The TrackRun node reading the artifacts of `components` (create_components' result).

    `push`: whether to read the pusher's PushedModel; False when the pusher sits under the drift
    gate's `Cond`, since a node outside the condition cannot consume what a skipped branch never
    produced. The node then finds the version pushed from this run's model in the Triton
    repository (`facts.push_from_repository`), waiting for the pusher it runs beside."""
    inputs = {}
    for key, (_, node_id, output_key) in _INPUTS.items():
        if node_id is None:
            if not push:
                continue
            node = next((c for c in components.values() if output_key in c.outputs), None)
        else:
            node = components.get(node_id)
        if node is not None and output_key in node.outputs:
            inputs[key] = node.outputs[output_key]
    return TrackRun(config, untracked_reason, **inputs).with_id(COMPONENT_ID)
