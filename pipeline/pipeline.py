"""`create_pipeline`: the one hoh DAG, used unchanged by the local runner, notebooks and Kubeflow.

Every option is a parameter (penguin style); mapping the typed config onto these parameters is
`hoh.pipeline.factory`'s job, so runners differ only in how they orchestrate.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

from google.protobuf import message

# Direct imports, not `from tfx import v1`: the v1 facade also loads the Google Cloud and Kubeflow
# extensions, 7 s of every `hoh run` start (measured: 20.3 s vs 13.3 s).
from tfx.components import (
    Evaluator,
    ExampleValidator,
    SchemaGen,
    StatisticsGen,
    Trainer,
    Transform,
)
from tfx.components.schema_gen.import_schema_gen.component import ImportSchemaGen
from tfx.dsl.components.common.resolver import Resolver
from tfx.dsl.experimental.conditionals.conditional import Cond
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import (
    LatestBlessedModelStrategy,
)
from tfx.orchestration.data_types import RuntimeParameter
from tfx.orchestration.pipeline import Pipeline
from tfx.proto import example_gen_pb2
from tfx.types import standard_artifacts
from tfx.types.channel import Channel
from tfx.utils import json_utils, proto_utils

from hoh import features
from hoh.components.anomalies_gate.component import AnomaliesGate
from hoh.components.drift.component import DriftCheck, push_allowed
from hoh.components.example_copy.component import CopyingImportExampleGen
from hoh.components.sampling.component import ActiveLearningSampler, pool_example_gen
from hoh.pipeline.evaluation import make_eval_config
from hoh.pipeline.factory import span_range_config

PREPROCESSING_FN = "hoh.transforms.preprocessing.preprocessing_fn"
RUN_FN = "hoh.trainer.task.run_fn"
# The values an engineer changes per run. Kubeflow's v2 compiler substitutes whole exec
# properties only, so span, epochs and thresholds travel inside the exec property that holds
# them; `hoh kfp submit --param span=3 --param epochs=5 ...` rewrites them
# (hoh.pipeline.kfp.params).
RUNTIME_PARAMETERS = ("data_root", "range_config", "trainer_config", "eval_config")


def example_gen_input_config() -> example_gen_pb2.Input:
    return example_gen_pb2.Input(
        splits=[
            example_gen_pb2.Input.Split(name=split, pattern=features.split_pattern(split))
            for split in features.SPLITS
        ]
    )


def image_bytes_stats_options() -> Any:
    """Statistics options that treat the image feature as bytes when no schema says so.

    Without a schema TFDV takes `image_raw` for a string feature and keeps top-k/unique sketches
    of its values, i.e. image bytes, in memory: StatisticsGen's peak grew with the span. The
    curated schema says the same with `image_domain` (schemas/schema.pbtxt).
    """
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = schema_pb2.Schema()
    schema.feature.add(name=features.IMAGE_KEY, type=schema_pb2.BYTES).image_domain.SetInParent()
    return tfdv.StatsOptions(schema=schema)


def as_runtime_parameter(name: str, value: Any) -> Any:
    """A string pipeline parameter defaulting to `value`, as the JSON its executor parses."""
    if isinstance(value, message.Message):
        default = proto_utils.proto_to_json(value)
    elif isinstance(value, dict):
        default = json_utils.dumps(value)
    else:
        default = str(value)
    if not default:  # TFX's compiler drops an empty default, leaving the parameter unset
        raise ValueError(f"pipeline parameter {name} needs a non-empty default, got {value!r}")
    return RuntimeParameter(name=name, ptype=str, default=default)


def _plain_value(name: str, value: Any) -> Any:
    return value


def create_components(
    *,
    data_root: str,
    span: Optional[int],
    schema_path: Optional[str],
    fail_on_anomalies: bool,
    image_size: int,
    materialize: bool,
    trainer_config: Dict[str, Any],
    classes: Sequence[str],
    min_auc: float,
    min_accuracy: float,
    max_regression: float,
    min_class_recall: float = 0.0,
    compare_with_baseline: bool = True,
    pusher: Optional[Any] = None,
    baseline: Optional[Callable[[Any], Any]] = None,
    runtime_parameters: bool = False,
    drift: Optional[Dict[str, Any]] = None,
    drift_blocks_push: bool = False,
    pool_root: Optional[str] = None,
    sampling: Optional[Dict[str, Any]] = None,
    embedding_store: Optional[str] = None,
) -> Dict[str, Any]:
    """The components by id, in DAG order; `pusher`, when given, is a callable
    `(model, model_blessing, examples) -> component` so pushers stay pluggable (Triton,
    filesystem...); TritonPusher records the model's predictions on the examples' eval split.

    `classes`: class names in id order (`factory.resolve_classes`). `compare_with_baseline`
    False: the Evaluator gates on values only (`factory.compare_with_baseline`).
    `baseline`: None = the latest blessed model in MLMD (a Resolver: LocalDagRunner and Vertex
    run it, open-source Kubeflow refuses it); else a callable `(candidate_model) -> node` whose
    `outputs["model"]` is the model to beat (hoh.pipeline.runners.kubeflow uses LatestPushedModel).
    `runtime_parameters`: turn RUNTIME_PARAMETERS into pipeline parameters whose defaults are
    the values given here (LocalDagRunner runs them with those defaults).
    `drift`: DriftCheck parameters (None = no drift check); `drift_blocks_push` puts the pusher
    under a `Cond` on the drift verdict. `pool_root`: an unlabeled pool's data root
    (None = no sampling); `sampling`: ActiveLearningSampler parameters. See docs/DRIFT.md and
    docs/ACTIVE_LEARNING.md. `embedding_store`: where the drift check and the sampler reuse and
    keep backbone embeddings (the Trainer's is in `trainer_config`); None = nowhere.

    Exposed separately from `create_pipeline` so notebooks can run the very same components one
    by one with InteractiveContext.
    """
    param = as_runtime_parameter if runtime_parameters else _plain_value
    example_gen = CopyingImportExampleGen(
        input_base=param("data_root", data_root),
        input_config=example_gen_input_config(),
        range_config=param(
            "range_config", span_range_config(span, explicit_latest=runtime_parameters)
        ),
    ).with_id("ImportExampleGen")
    if schema_path:
        schema_gen = ImportSchemaGen(schema_file=schema_path)
        statistics_gen = StatisticsGen(
            examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"]
        )
    else:
        statistics_gen = StatisticsGen(
            examples=example_gen.outputs["examples"], stats_options=image_bytes_stats_options()
        )
        schema_gen = SchemaGen(
            statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True
        )
    example_validator = ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
    )
    anomalies_gate = AnomaliesGate(
        anomalies=example_validator.outputs["anomalies"],
        fail_on_anomalies=int(fail_on_anomalies),
    )
    transform = Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        materialize=materialize,
        # Statistics of 150k floats per image are useless and slow.
        disable_statistics=True,
        # Class ids follow `classes`, never label frequencies (transforms/preprocessing.py).
        custom_config={"image_size": image_size, features.CLASSES_KEY: list(classes)},
    )
    transform.add_upstream_node(anomalies_gate)
    trainer = Trainer(
        run_fn=RUN_FN,
        examples=(
            transform.outputs["transformed_examples"]
            if materialize
            else example_gen.outputs["examples"]
        ),
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        custom_config=param(
            "trainer_config",
            {**trainer_config, "image_size": image_size, "materialize": materialize},
        ),
    )
    if baseline is None:
        model_resolver = Resolver(
            strategy_class=LatestBlessedModelStrategy,
            model=Channel(type=standard_artifacts.Model),
            model_blessing=Channel(type=standard_artifacts.ModelBlessing),
        ).with_id("latest_blessed_model_resolver")
    else:
        model_resolver = baseline(trainer.outputs["model"])
    evaluator = Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        # No baseline when the classes changed: its metrics are not comparable.
        baseline_model=model_resolver.outputs["model"] if compare_with_baseline else None,
        schema=schema_gen.outputs["schema"],
        eval_config=param(
            "eval_config",
            make_eval_config(
                len(classes),
                min_auc,
                min_accuracy,
                max_regression,
                min_class_recall=min_class_recall,
                compare_with_baseline=compare_with_baseline,
            ),
        ),
        example_splits=["eval"],
    )
    components = [
        example_gen,
        statistics_gen,
        schema_gen,
        example_validator,
        anomalies_gate,
        transform,
        trainer,
        model_resolver,
        evaluator,
    ]
    drift_check = None
    if drift is not None:
        drift_check = DriftCheck(
            examples=example_gen.outputs["examples"],
            model=model_resolver.outputs["model"],  # embeddings from the model to beat, if any
            data_root=example_gen.exec_properties[
                "input_base"
            ],  # same value, also as a KFP parameter
            blocks_push=int(drift_blocks_push and pusher is not None),
            embedding_store=embedding_store or "",
            **drift,
        )
        components.insert(components.index(model_resolver) + 1, drift_check)
    if pusher is not None:
        push_inputs = (
            trainer.outputs["model"],
            evaluator.outputs["blessing"],
            example_gen.outputs["examples"],
        )
        if drift_check is not None and drift_blocks_push:
            with Cond(push_allowed(drift_check)):
                components.append(pusher(*push_inputs))
        else:
            components.append(pusher(*push_inputs))
    if pool_root:
        pool_gen = pool_example_gen(pool_root)
        components += [
            pool_gen,
            ActiveLearningSampler(
                pool=pool_gen.outputs["examples"],
                model=trainer.outputs["model"],
                model_blessing=evaluator.outputs["blessing"],
                baseline_model=model_resolver.outputs["model"],
                labeled=example_gen.outputs["examples"],
                embedding_store=embedding_store or "",
                **(sampling or {}),
            ),
        ]
    return {c.id: c for c in components}


def create_pipeline(
    *,
    pipeline_name: str,
    pipeline_root: str,
    metadata_connection_config: Optional[Any] = None,
    beam_pipeline_args: Optional[List[str]] = None,
    enable_cache: bool = True,
    **component_options: Any,
) -> Pipeline:
    """The hoh DAG; `component_options` are `create_components`' parameters."""
    return Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=list(create_components(**component_options).values()),
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        # Empty locally: any Beam arg makes TFX package itself for each Beam step (5-7 s each).
        beam_pipeline_args=beam_pipeline_args or [],
    )
