"""`DriftCheck`: the drift check as a TFX component, and its `hoh.DriftReport` artifact.

The current data is the ExampleGen output (so the check runs on exactly what the pipeline
trains on, and is re-run only when that changes); the reference is read straight from the data
root as the previous span (or a pinned one): spans are immutable, so caching on the current
artifact stays correct, and no second ExampleGen with a span number known only at run time is
needed. That keeps the component compilable for Kubeflow, where the data root is a bucket.

The verdict is copied into custom properties (`drift_detected`, `drifted_share`) that
`tfx.dsl.Cond` can read, which is how `create_components` holds the push on drift.
Parameters are plain str/int/float (flags as 0/1) so they compile to KFP parameters; sentinel
values ("" / 0.0 / -1) mean "the default" where None cannot be expressed.
"""

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact, artifact_utils, standard_artifacts

DRIFT_DETECTED = "drift_detected"  # int 1/0
DRIFTED_SHARE = "drifted_share"  # float, share of drifted descriptors
REFERENCE_SPAN = "reference_span"  # int, -1 = no reference
CURRENT_SPAN = "current_span"
BLOCKS_PUSH = "blocks_push"  # in summary.json: whether create_components gated the pusher on it


class DriftReport(artifact.Artifact):
    """report.html (+ embeddings.html) and summary.json of one drift check."""

    TYPE_NAME = "hoh.DriftReport"


@component
def DriftCheck(
    examples: InputArtifact[standard_artifacts.Examples],
    drift_report: OutputArtifact[DriftReport],
    model: InputArtifact[standard_artifacts.Model] = None,
    data_root: Parameter[str] = "",
    reference_span: Parameter[int] = -1,
    splits: Parameter[str] = "train,eval",
    drift_share: Parameter[float] = 0.25,
    column_method: Parameter[str] = "",
    column_threshold: Parameter[float] = 0.0,
    label_drift: Parameter[int] = 1,
    embeddings: Parameter[int] = 1,
    embedding_components: Parameter[int] = 8,
    embedding_threshold: Parameter[float] = 0.015,
    embedding_min_rows: Parameter[int] = 100,
    embedding_max_rows: Parameter[int] = 500,
    blocks_push: Parameter[int] = 0,
) -> None:
    import logging

    from hoh import features
    from hoh.components.artifacts import span_of
    from hoh.components.drift.check import check_drift
    from hoh.components.drift.evaluation import DriftSettings
    from hoh.components.drift.report import summary_lines
    from hoh.data import sources
    from hoh.errors import HohError

    if not data_root:
        raise HohError("DriftCheck: data_root is empty; it is where the reference spans are read")
    split_names = [s.strip() for s in splits.split(",") if s.strip()]
    current_span = span_of(examples)
    current = sources.tfrecord_source(
        [artifact_utils.get_split_uri([examples], s) for s in split_names],
        f"span {current_span} ({', '.join(split_names)}; Examples artifact {examples.id})",
    )
    ref_span = sources.reference_span(
        features.list_spans(data_root), current_span, reference_span if reference_span >= 0 else None
    )
    reference = sources.span_source(data_root, ref_span, split_names) if ref_span is not None else None
    settings = DriftSettings(
        drift_share=drift_share,
        column_method=column_method or None,
        column_threshold=column_threshold or None,
        label_drift=bool(label_drift),
        embedding_components=embedding_components,
        embedding_threshold=embedding_threshold,
        embedding_min_rows=embedding_min_rows,
        embedding_max_rows=embedding_max_rows,
    )
    model_path = model.uri if (model is not None and embeddings) else None
    summary = check_drift(current, reference, drift_report.uri, settings, model_path, echo=logging.info,
                          context={BLOCKS_PUSH: bool(blocks_push)})
    for line in summary_lines(summary):
        logging.info("hoh-drift: %s", line)
    drift_report.set_int_custom_property(DRIFT_DETECTED, int(summary["drift_detected"]))
    drift_report.set_float_custom_property(DRIFTED_SHARE, float(summary["drifted_share"]))
    drift_report.set_int_custom_property(REFERENCE_SPAN, -1 if ref_span is None else ref_span)
    drift_report.set_int_custom_property(CURRENT_SPAN, current_span)


def push_allowed(drift_check) -> object:
    """Predicate for `tfx.dsl.Cond` around the pusher: this run's data did not drift.

    Reads the artifact's custom property, the only kind of value a Kubeflow v2 trigger
    condition can compare.
    """
    return drift_check.outputs["drift_report"].future()[0].custom_property(DRIFT_DETECTED) == 0
