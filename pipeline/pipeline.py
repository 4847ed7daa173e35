"""`create_pipeline`: the one hoh DAG, used unchanged by the local runner, notebooks and Kubeflow.

Every option is a parameter (penguin style); mapping the typed config onto these parameters is
`hoh.pipeline.factory`'s job, so runners differ only in how they orchestrate.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from tfx import v1 as tfx
from tfx.proto import example_gen_pb2, range_config_pb2

from hoh import features
from hoh.components.anomalies_gate.component import AnomaliesGate
from hoh.pipeline.evaluation import make_eval_config

PREPROCESSING_FN = "hoh.transforms.preprocessing.preprocessing_fn"
RUN_FN = "hoh.trainer.task.run_fn"


def example_gen_input_config() -> example_gen_pb2.Input:
    return example_gen_pb2.Input(
        splits=[
            example_gen_pb2.Input.Split(name=split, pattern=features.split_pattern(split))
            for split in features.SPLITS
        ]
    )


def span_range_config(span: Optional[int]) -> Optional[range_config_pb2.RangeConfig]:
    """None = ImportExampleGen's default: the latest span."""
    if span is None:
        return None
    return range_config_pb2.RangeConfig(
        static_range=range_config_pb2.StaticRange(start_span_number=span, end_span_number=span)
    )


def create_components(
    *,
    data_root: str,
    span: Optional[int],
    schema_path: Optional[str],
    fail_on_anomalies: bool,
    image_size: int,
    materialize: bool,
    trainer_config: Dict[str, Any],
    num_classes: int,
    min_auc: float,
    min_accuracy: float,
    max_regression: float,
    pusher: Optional[Any] = None,
) -> Dict[str, Any]:
    """The components by id, in DAG order; `pusher`, when given, is a callable
    `(model, model_blessing) -> component` so pushers stay pluggable (Triton, filesystem...).

    Exposed separately from `create_pipeline` so notebooks can run the very same components one
    by one with InteractiveContext.
    """
    example_gen = tfx.components.ImportExampleGen(
        input_base=data_root,
        input_config=example_gen_input_config(),
        range_config=span_range_config(span),
    )
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    if schema_path:
        schema_gen = tfx.components.ImportSchemaGen(schema_file=schema_path)
    else:
        schema_gen = tfx.components.SchemaGen(
            statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True
        )
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
    )
    anomalies_gate = AnomaliesGate(
        anomalies=example_validator.outputs["anomalies"],
        fail_on_anomalies=int(fail_on_anomalies),
    )
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        materialize=materialize,
        # Statistics of 150k floats per image are useless and slow.
        disable_statistics=True,
        custom_config={"image_size": image_size},
    )
    transform.add_upstream_node(anomalies_gate)
    trainer = tfx.components.Trainer(
        run_fn=RUN_FN,
        examples=(transform.outputs["transformed_examples"] if materialize else example_gen.outputs["examples"]),
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        custom_config={**trainer_config, "image_size": image_size, "materialize": materialize},
    )
    model_resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=model_resolver.outputs["model"],
        schema=schema_gen.outputs["schema"],
        eval_config=make_eval_config(num_classes, min_auc, min_accuracy, max_regression),
        example_splits=["eval"],
    )
    components = [
        example_gen, statistics_gen, schema_gen, example_validator, anomalies_gate,
        transform, trainer, model_resolver, evaluator,
    ]
    if pusher is not None:
        components.append(pusher(trainer.outputs["model"], evaluator.outputs["blessing"]))
    return {c.id: c for c in components}


def create_pipeline(
    *,
    pipeline_name: str,
    pipeline_root: str,
    metadata_connection_config: Optional[Any] = None,
    beam_pipeline_args: Optional[List[str]] = None,
    enable_cache: bool = True,
    **component_options: Any,
) -> tfx.dsl.Pipeline:
    """The hoh DAG; `component_options` are `create_components`' parameters."""
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=list(create_components(**component_options).values()),
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        # Empty locally: any Beam arg makes TFX package itself for each Beam step (5-7 s each).
        beam_pipeline_args=beam_pipeline_args or [],
    )
