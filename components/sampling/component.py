"""`ActiveLearningSampler`: the sampler as a TFX component, and its `hoh.SampledImages` artifact.

The pool comes from its own ImportExampleGen (`PoolExampleGen` over the pool's data root), so
a new pool span re-triggers sampling while an unchanged one is served from the cache.

Which model scores the pool: the one this run trained when the Evaluator blessed it (it is what
gets pushed, unless the drift gate holds it), else the last blessed model (still serving), else
none, in which case nothing is sampled and the artifact says why. Images already in the
training examples (same content id) are never proposed again.
"""

from typing import Optional

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact, artifact_utils, standard_artifacts

from hoh.components.sampling.labelstudio import (
    DEFAULT_FROM_NAME,
    DEFAULT_TO_NAME,
    DEFAULT_URL_PREFIX,
)

SELECTED = "selected"
SCORED = "scored"
SKIPPED = "skipped"
MODEL_SOURCE = "model_source"  # "current", "baseline" or "none"


class SampledImages(artifact.Artifact):
    """selected.jsonl/.csv, label_studio.json, label_config.xml, contact_sheet.html, images/."""

    TYPE_NAME = "hoh.SampledImages"


def choose_model(
    blessed: Optional[bool], current: str, baseline: Optional[str]
) -> tuple[Optional[str], str]:
    """(model uri, which) following the rule in the module docstring; blessed=None = no gate."""
    if blessed is None or blessed:
        return current, "current"
    if baseline:
        return baseline, "baseline"
    return None, "none"


@component
def ActiveLearningSampler(
    pool: InputArtifact[standard_artifacts.Examples],
    model: InputArtifact[standard_artifacts.Model],
    samples: OutputArtifact[SampledImages],
    model_blessing: InputArtifact[standard_artifacts.ModelBlessing] = None,
    baseline_model: InputArtifact[standard_artifacts.Model] = None,
    labeled: InputArtifact[standard_artifacts.Examples] = None,
    pool_split: Parameter[str] = "pool",
    k: Parameter[int] = 50,
    strategy: Parameter[str] = "margin",
    diversity: Parameter[int] = 1,
    candidates_factor: Parameter[int] = 5,
    exclude_labeled: Parameter[int] = 1,
    from_name: Parameter[str] = DEFAULT_FROM_NAME,
    to_name: Parameter[str] = DEFAULT_TO_NAME,
    url_prefix: Parameter[str] = DEFAULT_URL_PREFIX,
    embedding_store: Parameter[str] = "",
) -> None:
    import logging
    import os

    from hoh import fileio
    from hoh.components.artifacts import span_of
    from hoh.components.sampling.sample import (
        SUMMARY_FILE,
        SamplingSettings,
        read_ids,
        sample_pool,
        summary_lines,
    )
    from hoh.data import sources
    from hoh.trainer.predictor import Predictor

    blessed = None
    if model_blessing is not None:
        blessed = model_blessing.get_int_custom_property("blessed") == 1
    model_uri, which = choose_model(
        blessed, model.uri, baseline_model.uri if baseline_model is not None else None
    )
    samples.set_string_custom_property(MODEL_SOURCE, which)
    if model_uri is None:
        reason = "the model of this run was not blessed and there is no earlier blessed model"
        fileio.write_json(
            os.path.join(samples.uri, SUMMARY_FILE),
            {"schema_version": 1, "selected": 0, "notes": [reason]},
        )
        samples.set_int_custom_property(SELECTED, 0)
        logging.info("hoh-sampling: nothing sampled: %s", reason)
        return
    pool_source = sources.tfrecord_source(
        [artifact_utils.get_split_uri([pool], pool_split)],
        f"pool span {span_of(pool)} (Examples artifact {pool.id})",
    )
    exclude = frozenset()
    if labeled is not None and exclude_labeled:
        splits = artifact_utils.decode_split_names(labeled.split_names)
        exclude = read_ids(
            sources.tfrecord_source(
                [artifact_utils.get_split_uri([labeled], s) for s in splits], "labeled examples"
            )
        )
    settings = SamplingSettings(
        k=k,
        strategy=strategy,
        diversity=bool(diversity),
        candidates_factor=candidates_factor,
        from_name=from_name,
        to_name=to_name,
        url_prefix=url_prefix,
    )
    predictor = Predictor(
        model_uri, embeddings=settings.diversity, embedding_store=embedding_store or None
    )
    summary = sample_pool(pool_source, predictor, samples.uri, settings, exclude, echo=logging.info)
    for line in summary_lines(summary):
        logging.info("hoh-sampling: %s", line)
    samples.set_int_custom_property(SELECTED, summary["selected"])
    samples.set_int_custom_property(SCORED, summary["scored"])
    samples.set_int_custom_property(SKIPPED, len(summary["skipped"]))


def pool_example_gen(pool_root: object) -> object:
    """ImportExampleGen over the pool's data root: the latest span's `pool/` split, kept whole
    (with one input split and no output config, ExampleGen would re-split it 2:1 into
    train/eval)."""
    from tfx.proto import example_gen_pb2

    from hoh import features
    from hoh.components.example_copy.component import CopyingImportExampleGen

    name = features.POOL_SPLIT
    return CopyingImportExampleGen(
        input_base=pool_root,
        input_config=example_gen_pb2.Input(
            splits=[example_gen_pb2.Input.Split(name=name, pattern=features.split_pattern(name))]
        ),
        output_config=example_gen_pb2.Output(
            split_config=example_gen_pb2.SplitConfig(
                splits=[example_gen_pb2.SplitConfig.Split(name=name, hash_buckets=1)]
            )
        ),
    ).with_id("PoolExampleGen")
