"""The facts of one finished pipeline run, read from MLMD and the artifacts it names.

Runner-independent by design: it needs only MLMD and the artifacts, not the runner's state (the
local runner calls `collect` after the DAG; a Kubeflow run's TrackRun node and a step-by-step
notebook, where no MLMD run gathers the artifacts, call `from_artifacts`). Each fact is read
on its own; one that cannot be read becomes a note in the run's record (and a line on the
terminal), never a failed run and never a silently missing value.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from typing import Any, Callable, Dict, List, Optional

from hoh.config import HohConfig
from hoh.fileio import exists, listdir, read_json
from hoh.pipeline.telemetry.summary import RunSummary

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


def metric_key(*parts: str) -> str:
    """An MLflow-safe key (class names are folder names and may hold any character)."""
    return ".".join(_KEY_UNSAFE.sub("_", str(p)) for p in parts if p != "")


def flatten(data: Any, prefix: str = "") -> Dict[str, str]:
    """Nested config -> `section.key: value` strings (lists as JSON, so they read back)."""
    if isinstance(data, dict):
        out: Dict[str, str] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(data, (list, tuple)):
        return {prefix: json.dumps(list(data))}
    return {prefix: "null" if data is None else str(data)}


@dataclasses.dataclass
class RunFacts:
    """What MLflow, the registry and the model card record about a run."""

    pipeline_name: str
    run_id: Optional[str]  # MLMD pipeline_run context name
    run_context_id: Optional[int] = None
    artifact_ids: Dict[str, int] = dataclasses.field(default_factory=dict)
    artifact_uris: Dict[str, str] = dataclasses.field(default_factory=dict)
    span: Optional[int] = None
    data_source: Optional[str] = None
    class_counts: Dict[str, Dict[str, int]] = dataclasses.field(default_factory=dict)  # split->
    example_counts: Dict[str, int] = dataclasses.field(default_factory=dict)
    anomalies: Dict[str, List[str]] = dataclasses.field(default_factory=dict)  # split -> features
    curves: Dict[str, List[float]] = dataclasses.field(default_factory=dict)
    metrics: Dict[str, float] = dataclasses.field(default_factory=dict)  # overall, eval split
    per_class: Dict[str, Dict[str, float]] = dataclasses.field(default_factory=dict)
    diffs: Dict[str, float] = dataclasses.field(default_factory=dict)
    thresholds: Dict[str, float] = dataclasses.field(default_factory=dict)
    blessed: Optional[bool] = None
    blessing_reason: str = ""
    drift: Optional[dict] = None
    pushed: Optional[bool] = None
    pushed_version: Optional[str] = None
    pushed_destination: Optional[str] = None
    model_uri: Optional[str] = None  # the Trainer's serving model (Format-Serving)
    model_repository: Optional[str] = None
    model_name: Optional[str] = None
    classes: List[str] = dataclasses.field(default_factory=list)
    components: List[dict] = dataclasses.field(default_factory=list)
    # artifact type -> the earlier run whose execution Kubeflow's cache reused for it
    cached_from: Dict[str, str] = dataclasses.field(default_factory=dict)
    summary_lines: List[str] = dataclasses.field(default_factory=list)
    notes: List[str] = dataclasses.field(default_factory=list)

    @property
    def drift_verdict(self) -> str:
        if self.drift is None:
            return "not checked"
        if self.drift.get("drift_detected"):
            return "drift detected: " + "; ".join(self.drift.get("reasons") or [])
        notes = self.drift.get("notes") or []
        return "no drift" + (f" ({'; '.join(notes)})" if notes else "")

    @property
    def duration_s(self) -> float:
        return float(sum(c.get("seconds") or 0.0 for c in self.components))

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def thresholds_of(cfg: HohConfig) -> Dict[str, float]:
    e = cfg.evaluation
    return {
        "min_auc": e.min_auc,
        "min_accuracy": e.min_accuracy,
        "max_regression": e.max_regression,
    }


def blessing_reason(
    blessed: Optional[bool], failures: List[str], thresholds: Dict[str, float], has_baseline: bool
) -> str:
    """Why the Evaluator decided as it did, in one line."""
    if blessed is None:
        return "no evaluation (the run stopped before the Evaluator)"
    if not blessed:
        return "; ".join(failures) or "the Evaluator refused it (see its validation result)"
    bounds = ", ".join(f"{k} {v:g}" for k, v in thresholds.items())
    against = "no regression against the last blessed model" if has_baseline else "no baseline yet"
    return f"passed the thresholds ({bounds}); {against}"


def _label_counts(stats_uri: str, split: str) -> Dict[str, int]:
    import tensorflow_data_validation as tfdv

    from hoh.features import LABEL_KEY

    path = os.path.join(stats_uri, f"Split-{split}", "FeatureStats.pb")
    if not exists(path):
        return {}
    counts: Dict[str, int] = {}
    for dataset in tfdv.load_stats_binary(path).datasets:
        for feature in dataset.features:
            if list(feature.path.step) == [LABEL_KEY]:
                for bucket in feature.string_stats.rank_histogram.buckets:
                    counts[bucket.label] = counts.get(bucket.label, 0) + int(bucket.sample_count)
    return counts


def _anomalies(uri: str) -> Dict[str, List[str]]:
    import tensorflow as tf
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    out = {}
    for name in sorted(listdir(uri)):
        path = os.path.join(uri, name, "SchemaDiff.pb")
        if name.startswith("Split-") and exists(path):
            anomalies = anomalies_pb2.Anomalies()
            with tf.io.gfile.GFile(path, "rb") as f:
                anomalies.ParseFromString(f.read())
            out[name[len("Split-") :]] = sorted(
                f"{feature}: {info.short_description}"
                for feature, info in anomalies.anomaly_info.items()
            )
    return out


def _per_class_metrics(uri: str) -> Dict[str, Dict[str, float]]:
    """TFMA metrics by class: the `label` slices, and class_id sub keys (multi-class)."""
    import math

    import tensorflow_model_analysis as tfma

    from hoh.features import LABEL_KEY

    out: Dict[str, Dict[str, float]] = {}
    for slice_metrics in tfma.load_metrics(uri):
        keys = slice_metrics.slice_key.single_slice_keys
        label = None
        if len(keys) == 1 and keys[0].column == LABEL_KEY:
            label = keys[0].bytes_value.decode("utf-8", "replace")
        elif keys:
            continue
        for kv in slice_metrics.metric_keys_and_values:
            key = kv.key
            if key.is_diff or "baseline" in (key.model_name or ""):
                continue
            if not kv.value.HasField("double_value"):
                continue
            value = kv.value.double_value.value
            if math.isnan(value):
                continue
            if key.HasField("sub_key") and key.sub_key.HasField("class_id"):
                name = label or f"class_id {key.sub_key.class_id.value}"
            elif key.HasField("sub_key") or label is None:
                continue
            else:
                name = label
            out.setdefault(name, {})[key.name] = value
    return out


def _read_mlmd(metadata_path: str, run_name: Optional[str], facts: RunFacts) -> None:
    from hoh.pipeline.telemetry.mlmd import open_readonly

    store = open_readonly(metadata_path)
    contexts = store.get_contexts_by_type("pipeline_run")
    if run_name is not None:
        contexts = [c for c in contexts if c.name == run_name]
    if not contexts:
        return
    run = max(contexts, key=lambda c: (c.create_time_since_epoch, c.id))
    facts.run_id, facts.run_context_id = run.name, run.id
    types = {t.id: t.name for t in store.get_artifact_types()}
    for artifact in store.get_artifacts_by_context(run.id):
        kind = types.get(artifact.type_id, str(artifact.type_id))
        facts.artifact_ids[kind] = artifact.id
        if kind == "Examples" and "span" in artifact.custom_properties:
            facts.span = artifact.custom_properties["span"].int_value
        elif kind == "Model":
            facts.model_uri = os.path.join(artifact.uri, "Format-Serving")
        elif kind == "PushedModel":
            props = artifact.custom_properties
            if "triton_model_repository" in props:
                facts.model_repository = props["triton_model_repository"].string_value
            if "triton_model_name" in props:
                facts.model_name = props["triton_model_name"].string_value


def _attempt(facts: RunFacts, what: str, read: Callable[[], None]) -> None:
    try:
        read()
    except Exception as exc:  # one unreadable fact must not lose the others
        facts.notes.append(f"could not read {what}: {type(exc).__name__}: {exc}")


def collect(cfg: HohConfig, summary: RunSummary, metadata_path: Optional[str] = None) -> RunFacts:
    """Everything the run recorded: the summary's facts plus what only MLMD and the artifacts
    hold (ids, span, classes, anomalies, curves, per-class metrics)."""
    facts = RunFacts(pipeline_name=cfg.pipeline_name, run_id=summary.run_id)
    facts.example_counts = dict(summary.example_counts)
    facts.metrics = dict(summary.metrics)
    facts.diffs = dict(summary.diffs)
    facts.thresholds = thresholds_of(cfg)
    facts.blessed = summary.blessed
    facts.blessing_reason = blessing_reason(
        summary.blessed, summary.failures, facts.thresholds, summary.has_baseline
    )
    facts.drift = summary.drift
    facts.pushed = summary.pushed
    facts.pushed_version = summary.pushed_version
    facts.pushed_destination = summary.pushed_destination
    facts.model_name = cfg.push.model_name
    facts.model_repository = cfg.model_repository
    facts.components = [
        {
            "component": c.component_id,
            "seconds": c.seconds,
            "peak_rss_mb": c.peak_rss_mb,
            "cached": c.cached,
            "status": c.status,
        }
        for c in summary.components
    ]
    _attempt(facts, "the run summary", lambda: facts.summary_lines.extend(summary.lines()))
    path = metadata_path or cfg.metadata_path
    if os.path.exists(path):
        _attempt(facts, "MLMD", lambda: _read_mlmd(path, summary.run_id, facts))
    uris = summary.artifacts
    facts.artifact_uris = dict(uris)
    if "Model" in uris:
        facts.model_uri = os.path.join(uris["Model"], "Format-Serving")
    if "ExampleStatistics" in uris:

        def counts() -> None:
            for split in sorted(summary.example_counts) or ["train", "eval"]:
                if per := _label_counts(uris["ExampleStatistics"], split):
                    facts.class_counts[split] = per

        _attempt(facts, "class counts (ExampleStatistics)", counts)
    if "ExampleAnomalies" in uris:
        _attempt(
            facts,
            "schema anomalies",
            lambda: facts.anomalies.update(_anomalies(uris["ExampleAnomalies"])),
        )
    if "ModelRun" in uris:
        from hoh.trainer import HISTORY_FILE

        _attempt(
            facts,
            "training curves",
            lambda: facts.curves.update(
                read_json(os.path.join(uris["ModelRun"], HISTORY_FILE)) or {}
            ),
        )
    if "ModelEvaluation" in uris:
        _attempt(
            facts,
            "per-class metrics",
            lambda: facts.per_class.update(_per_class_metrics(uris["ModelEvaluation"])),
        )
    if facts.model_uri:

        def classes() -> None:
            from hoh.components.triton_pusher.settings import read_model_info

            facts.classes = list(read_model_info(facts.model_uri).class_names)

        _attempt(facts, "class names (model assets)", classes)
    if not facts.classes:
        facts.classes = sorted({c for per in facts.class_counts.values() for c in per})
    _data_source(cfg, facts)
    return facts


def _data_source(cfg: HohConfig, facts: RunFacts) -> None:
    """Where the span's images came from (the model card credits it), once the span is known."""
    if facts.span is None or facts.data_source is not None:
        return
    from hoh.features import span_dir

    root = cfg.data.root or cfg.demo_data_dir

    def source() -> None:
        path = os.path.join(str(span_dir(root, facts.span)), "import_report.json")
        facts.data_source = (read_json(path) or {}).get("src")

    _attempt(facts, "the data source (import_report.json)", source)


def push_from_repository(
    cfg: HohConfig,
    summary: RunSummary,
    wait_s: float,
    poll_s: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Optional[str]:
    """Fill `summary`'s push facts from the Triton repository, for a run whose pusher sits
    under the drift gate's `Cond`: the reading node cannot consume that PushedModel, and as it
    does not depend on the pusher it may run while the pusher still works, so it waits up to
    `wait_s` for the version pushed from this run's model. Only when the gate lets the pusher
    run and the model is blessed; otherwise nothing was pushed. A note when it was not found."""
    from hoh.components.triton_pusher.filesystem import join
    from hoh.components.triton_pusher.rollback import model_dir_of, pushed_version_of

    if summary.blessed is False:
        summary.pushed = False  # the pusher ran and refused it, as a consumed PushedModel says
        return None
    model = summary.artifacts.get("Model")
    if not summary.blessed or (summary.drift or {}).get("drift_detected") or not model:
        return None  # not evaluated, or held by the gate: no push to look for
    model_uri = os.path.join(model, "Format-Serving")
    deadline = time.monotonic() + wait_s
    while (
        version := pushed_version_of(cfg.model_repository, cfg.push.model_name, model_uri)
    ) is None:
        if time.monotonic() >= deadline:
            return (
                f"no version of {cfg.push.model_name} in {cfg.model_repository} was pushed from "
                f"{model_uri} within {wait_s:g} s: the pushed version is not recorded"
            )
        sleep(poll_s)
    summary.pushed = True
    summary.pushed_version = str(version)
    summary.pushed_destination = join(
        model_dir_of(cfg.model_repository, cfg.push.model_name), str(version)
    )
    return None


def from_artifacts(
    cfg: HohConfig,
    run_id: str,
    artifacts,
    cached_from: Optional[Dict[str, str]] = None,
    push_wait_s: Optional[float] = None,
) -> RunFacts:
    """The facts of a run known only by its artifacts (TFX `Artifact`s with their MLMD ids):
    a Kubeflow run's TrackRun node and a notebook's InteractiveContext, where no MLMD run context
    gathers them. The first artifact of each type counts (a notebook's pool Examples come after
    the training Examples). Durations and peak memory are those the executors stamped on their
    outputs (`measured_components`), for the nodes whose artifacts are given.

    `cached_from`: artifact type -> the earlier run it came from (Kubeflow cache hits).
    `push_wait_s`: without a PushedModel among `artifacts`, how long to wait for the push in the
    Triton repository (`push_from_repository`); None = do not look."""
    from hoh.pipeline.telemetry.summary import add_artifact

    summary = RunSummary(components=[], run_id=run_id)
    first = {}
    for a in artifacts:
        first.setdefault(a.type_name, a)
    for kind, a in first.items():
        add_artifact(summary, kind, a.uri, a.mlmd_artifact.custom_properties)
    push_note = None
    if push_wait_s is not None and "PushedModel" not in first:
        push_note = push_from_repository(cfg, summary, push_wait_s)
    facts = collect(cfg, summary, metadata_path="")  # the ids come from the artifacts
    if push_note:
        facts.notes.append(push_note)
    facts.components = measured_components(artifacts, cached_from or {})
    if cached_from:
        facts.cached_from = dict(cached_from)
        facts.summary_lines.append(cached_line(cached_from, len(first)))
    for kind, a in first.items():
        if a.id:
            facts.artifact_ids[kind] = a.id
        if kind == "Examples" and a.has_custom_property("span"):
            facts.span = int(a.get_int_custom_property("span"))
    _data_source(cfg, facts)  # the span is known only now, from the Examples artifact
    return facts


def cached_line(cached_from: Dict[str, str], inputs: int) -> str:
    """Says that (and which of) the facts are an earlier run's, reused by Kubeflow's cache."""
    runs = ", ".join(sorted(set(cached_from.values())))
    if len(cached_from) >= inputs:
        return (
            f"cache: every input of this record came from cached executions (run {runs}); "
            "nothing was recomputed, the facts are those of that run"
        )
    kinds = ", ".join(sorted(cached_from))
    return (
        f"cache: {len(cached_from)} of {inputs} inputs came from cached executions "
        f"({kinds}; run {runs})"
    )


def measured_components(artifacts, cached_from: Dict[str, str]) -> List[dict]:
    """The `components` entries of the nodes whose measuring executors (hoh.pipeline.kfp.measured:
    a Kubeflow run) stamped the artifacts; a node whose outputs came from the cache is `cached`,
    with the measurements of the execution reused."""
    from hoh.pipeline.kfp.measured import COMPONENT, PEAK_RSS_MB, SECONDS

    found: Dict[str, dict] = {}
    for a in artifacts:
        if not a.has_custom_property(COMPONENT):
            continue
        node = str(a.get_custom_property(COMPONENT))
        if node not in found:
            cached = a.type_name in cached_from
            found[node] = {
                "component": node,
                "seconds": float(a.get_custom_property(SECONDS)),
                "peak_rss_mb": float(a.get_custom_property(PEAK_RSS_MB)),
                "cached": cached,
                "status": "cached" if cached else "done",
            }
    return list(found.values())
