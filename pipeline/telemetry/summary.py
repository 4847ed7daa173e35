"""What a run produced, read back from MLMD and the artifacts: data counts, metrics,
blessing, push."""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional

from hoh.fileio import exists, read_json
from hoh.pipeline.telemetry.mlmd import open_readonly
from hoh.pipeline.telemetry.progress import ComponentRun


@dataclasses.dataclass
class RunSummary:
    components: List[ComponentRun]
    run_id: Optional[str] = None
    example_counts: Dict[str, int] = dataclasses.field(default_factory=dict)
    metrics: Dict[str, float] = dataclasses.field(default_factory=dict)
    diffs: Dict[str, float] = dataclasses.field(default_factory=dict)  # candidate - baseline
    blessed: Optional[bool] = None
    failures: List[str] = dataclasses.field(default_factory=list)
    has_baseline: bool = False
    pushed: Optional[bool] = None
    pushed_destination: Optional[str] = None
    pushed_version: Optional[str] = None
    artifacts: Dict[str, str] = dataclasses.field(default_factory=dict)
    drift: Optional[dict] = None  # DriftCheck's summary.json
    sampling: Optional[dict] = None  # ActiveLearningSampler's summary.json
    class_weights: Optional[str] = None  # the Trainer's class-weight decision and its reason
    embedding_store: Optional[dict] = None  # the Trainer's store use: store, reused, computed

    def lines(self) -> List[str]:
        out = []
        if self.example_counts:
            counts = ", ".join(f"{split} {n}" for split, n in sorted(self.example_counts.items()))
            out.append(f"data: {counts} examples")
        if self.metrics:
            shown = ", ".join(
                f"{k} {v:.4f}" + (f" ({self.diffs[k]:+.4f} vs baseline)" if k in self.diffs else "")
                for k, v in sorted(self.metrics.items())
            )
            out.append(f"metrics (eval split): {shown}")
        if self.class_weights:
            out.append(f"class weights: {self.class_weights}")
        if self.embedding_store:
            e = self.embedding_store
            out.append(
                f"embedding store: {e['reused']} image(s) reused, {e['computed']} computed "
                f"({e['store']})"
            )
        if self.blessed is not None:
            against = "against the last blessed model" if self.has_baseline else "no baseline yet"
            if self.blessed:
                out.append(f"blessed: yes ({against})")
            else:
                out.append(
                    "blessed: NO - " + "; ".join(self.failures or ["see the Evaluator output"])
                )
        if self.drift is not None:
            from hoh.components.drift.report import summary_lines as drift_lines

            out += drift_lines(self.drift)[:1] + [f"  - {r}" for r in self.drift["reasons"]]
            if self.drift.get("blocks_push") and self.drift["drift_detected"] and self.blessed:
                out.append(
                    "pushed: no (held by the drift gate, drift.block_push; see the drift report)"
                )
        if self.pushed is not None:
            if self.pushed:
                out.append(f"pushed: version {self.pushed_version} -> {self.pushed_destination}")
            else:
                out.append("pushed: no (model not blessed)")
        if self.sampling is not None:
            from hoh.components.sampling.sample import summary_lines as sampling_lines

            out += (
                sampling_lines(self.sampling)[:1]
                if "scored" in self.sampling
                else ["sampling: nothing sampled - " + "; ".join(self.sampling.get("notes", []))]
            )
        cached = sum(1 for c in self.components if c.cached)
        if cached:
            out.append(
                f"cache: {cached} of {len(self.components)} components reused a cached execution"
            )
        return out


def _latest_run_context(store):
    contexts = store.get_contexts_by_type("pipeline_run")
    return max(contexts, key=lambda c: (c.create_time_since_epoch, c.id)) if contexts else None


def _example_counts(uri: str) -> Dict[str, int]:
    import tensorflow_data_validation as tfdv

    counts = {}
    for split in ("train", "eval"):
        path = os.path.join(uri, f"Split-{split}", "FeatureStats.pb")
        if exists(path):
            stats = tfdv.load_stats_binary(path)
            counts[split] = int(sum(d.num_examples for d in stats.datasets))
    return counts


def _training_facts(uri: str) -> dict:
    """The Trainer's timing.json ({} for a run written before it existed or without one)."""
    from hoh.trainer import TIMING_FILE

    return read_json(os.path.join(uri, TIMING_FILE)) or {}


def _evaluation(uri: str, summary: RunSummary) -> None:
    import tensorflow_model_analysis as tfma

    result = tfma.load_validation_result(uri)
    for per_slice in result.metric_validations_per_slice:
        for f in per_slice.failures:
            summary.failures.append(describe_failure(f))
    for slice_metrics in tfma.load_metrics(uri):
        if slice_metrics.slice_key.single_slice_keys:  # overall slice only
            continue
        for key_and_value in slice_metrics.metric_keys_and_values:
            key = key_and_value.key
            if key.HasField("sub_key") or not key_and_value.value.HasField("double_value"):
                continue
            value = key_and_value.value.double_value.value
            if key.model_name and "baseline" in key.model_name:
                summary.has_baseline = True
            elif key.is_diff:
                summary.diffs[key.name] = value
            else:
                summary.metrics[key.name] = value


def describe_failure(failure) -> str:
    """'auc 0.6942 is below the minimum 0.9' rather than a proto dump."""
    name = failure.metric_key.name + (" change vs baseline" if failure.metric_key.is_diff else "")
    value = failure.metric_value.double_value.value
    threshold = failure.metric_threshold
    if threshold.HasField("value_threshold") and threshold.value_threshold.HasField("lower_bound"):
        minimum = threshold.value_threshold.lower_bound.value
        return f"{name} {value:.4f} is below the minimum {minimum:g}"
    if threshold.HasField("change_threshold"):
        allowed = threshold.change_threshold.absolute.value
        return f"{name} {value:+.4f} is worse than allowed ({allowed:+.4g})"
    return f"{name} {value:.4f}: {failure.message}".strip()


def summarize(metadata_path: str, components: List[ComponentRun]) -> RunSummary:
    summary = RunSummary(components=components)
    store = open_readonly(metadata_path)
    run = _latest_run_context(store)
    if run is None:
        return summary
    summary.run_id = run.name
    types = {t.id: t.name for t in store.get_artifact_types()}
    for artifact in store.get_artifacts_by_context(run.id):
        add_artifact(summary, types.get(artifact.type_id), artifact.uri, artifact.custom_properties)
    return summary


def add_artifact(summary: RunSummary, kind: Optional[str], uri: str, props) -> None:
    """Put what one artifact says into `summary`. `props`: its MLMD custom properties, as MLMD
    returns them or as a TFX executor holds them (`artifact.mlmd_artifact.custom_properties`),
    so a run read back from MLMD and a component given the artifacts see the same facts."""
    summary.artifacts[kind] = uri
    if kind == "ExampleStatistics":
        summary.example_counts = _example_counts(uri)
    elif kind == "ModelRun":
        facts = _training_facts(uri)
        summary.class_weights = facts.get("class_weights")
        summary.embedding_store = facts.get("embedding_store")
    elif kind == "ModelBlessing":
        summary.blessed = props["blessed"].int_value == 1
    elif kind == "ModelEvaluation":
        _evaluation(uri, summary)
    elif kind in ("hoh.DriftReport", "hoh.SampledImages"):
        from hoh.components.drift.report import SUMMARY_FILE as DRIFT_SUMMARY
        from hoh.components.sampling.sample import SUMMARY_FILE as SAMPLING_SUMMARY

        drift = kind == "hoh.DriftReport"
        name = DRIFT_SUMMARY if drift else SAMPLING_SUMMARY
        setattr(summary, "drift" if drift else "sampling", read_json(os.path.join(uri, name)))
    elif kind == "PushedModel":
        summary.pushed = props["pushed"].int_value == 1 if "pushed" in props else None
        if summary.pushed:
            summary.pushed_destination = props["pushed_destination"].string_value
            summary.pushed_version = props["pushed_version"].string_value
