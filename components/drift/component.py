"""`DriftCheck`: the drift check as a TFX component, and its `hoh.DriftReport` artifact.

The current data is the ExampleGen output (so the check runs on exactly what the pipeline
trains on, and is re-run only when that changes); the reference is read straight from the data
root as the previous span (or a pinned one): spans are immutable, so caching on the current
artifact stays correct, and no second ExampleGen with a span number known only at run time is
needed. That keeps the component compilable for Kubeflow, where the data root is a bucket.

The verdict is copied into custom properties (`drift_detected`, `drifted_share`) that
`tfx.dsl.Cond` can read, which is how `create_components` holds the push on drift.
Settings travel as one JSON string parameter validated by the typed config on arrival, so they
compile to a KFP parameter without sentinel encodings and keep their defaults in one place.
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
    drift_config: Parameter[str] = "{}",
    blocks_push: Parameter[int] = 0,
    embedding_store: Parameter[str] = "",
) -> None:
    """`drift_config`: the config's `drift` section as JSON (`hoh.config.DriftConfig`), the one
    place its defaults live; a KFP run can override it as one parameter. `embedding_store`:
    where backbone embeddings are reused and kept ("" = none)."""
    import logging

    from hoh import features
    from hoh.components.artifacts import span_of
    from hoh.components.drift.check import check_drift
    from hoh.components.drift.report import summary_lines
    from hoh.config import DriftConfig, parse_section
    from hoh.data import sources
    from hoh.errors import HohError

    if not data_root:
        raise HohError("DriftCheck: data_root is empty; it is where the reference spans are read")
    settings = parse_section(DriftConfig, drift_config, "DriftCheck drift_config")
    current_span = span_of(examples)
    current = sources.tfrecord_source(
        [artifact_utils.get_split_uri([examples], s) for s in features.SPLITS],
        f"span {current_span} ({', '.join(features.SPLITS)}; Examples artifact {examples.id})",
    )
    ref_span = sources.reference_span(
        features.list_spans(data_root), current_span, settings.reference_span
    )
    reference = (
        sources.span_source(data_root, ref_span, features.SPLITS) if ref_span is not None else None
    )
    model_path = model.uri if (model is not None and settings.embeddings) else None
    summary = check_drift(
        current,
        reference,
        drift_report.uri,
        settings,
        model_path,
        echo=logging.info,
        context={BLOCKS_PUSH: bool(blocks_push)},
        embedding_store=embedding_store or None,
    )
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
