"""TritonPusher: a TFX component that publishes a blessed model to a Triton model repository.

Its exec properties are plain str/int values (the batch sizes as a JSON list string) rather than
a proto or a dict: they then compile to Kubeflow v2 pipeline parameters without custom encoding,
and each one shows up by name in the KFP UI.
"""
from __future__ import annotations

import json
from typing import Optional, Sequence, Union

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.orchestration import data_types
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.types.system_executions import Deploy

from hoh.components.triton_pusher import executor, repository


class TritonPusherSpec(types.ComponentSpec):
    """Inputs/outputs of the stock Pusher; Triton settings as simple exec properties."""

    PARAMETERS = {
        executor.MODEL_REPOSITORY_KEY: ExecutionParameter(type=str),
        executor.MODEL_NAME_KEY: ExecutionParameter(type=str),
        executor.MAX_BATCH_SIZE_KEY: ExecutionParameter(type=int),
        executor.PREFERRED_BATCH_SIZES_KEY: ExecutionParameter(type=str),
        executor.MAX_QUEUE_DELAY_US_KEY: ExecutionParameter(type=int),
        executor.INSTANCE_COUNT_KEY: ExecutionParameter(type=int),
        executor.VERSIONS_TO_SERVE_KEY: ExecutionParameter(type=int),
        executor.VERSIONS_TO_KEEP_KEY: ExecutionParameter(type=int),
    }
    INPUTS = {
        standard_component_specs.MODEL_KEY: ChannelParameter(
            type=standard_artifacts.Model, optional=True
        ),
        standard_component_specs.MODEL_BLESSING_KEY: ChannelParameter(
            type=standard_artifacts.ModelBlessing, optional=True
        ),
        standard_component_specs.INFRA_BLESSING_KEY: ChannelParameter(
            type=standard_artifacts.InfraBlessing, optional=True
        ),
    }
    OUTPUTS = {
        standard_component_specs.PUSHED_MODEL_KEY: ChannelParameter(
            type=standard_artifacts.PushedModel
        ),
    }
    TYPE_ANNOTATION = Deploy


_Int = Union[int, data_types.RuntimeParameter]


class TritonPusher(base_component.BaseComponent):
    """Pushes a blessed model as the next version of a Triton (python backend) model.

    Outputs `pushed_model` (PushedModel) with custom properties `pushed` (1/0),
    `pushed_destination` (the version directory), `pushed_version`, `triton_model_name` and
    `triton_model_repository`. Nothing is written to the repository when a blessing says no.
    """

    SPEC_CLASS = TritonPusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(
        self,
        model_repository: Union[str, data_types.RuntimeParameter],
        model: Optional[types.BaseChannel] = None,
        model_blessing: Optional[types.BaseChannel] = None,
        infra_blessing: Optional[types.BaseChannel] = None,
        model_name: str = "hoh",
        max_batch_size: _Int = 32,
        preferred_batch_sizes: Sequence[int] = (8, 16, 32),
        max_queue_delay_us: _Int = 2000,
        instance_count: _Int = 1,
        versions_to_serve: _Int = 1,
        versions_to_keep: _Int = 2,
    ):
        if model is None and infra_blessing is None:
            raise ValueError("TritonPusher needs `model` (or an `infra_blessing` holding a model)")
        values = dict(
            model_name=model_name,
            max_batch_size=max_batch_size,
            max_queue_delay_us=max_queue_delay_us,
            instance_count=instance_count,
            versions_to_serve=versions_to_serve,
            versions_to_keep=versions_to_keep,
        )
        if all(not isinstance(v, data_types.RuntimeParameter) for v in values.values()):
            # Fail while the pipeline is built, not after training in the pusher's container.
            repository.TritonPushSettings(
                preferred_batch_sizes=tuple(preferred_batch_sizes), **values
            ).validate()
        spec = TritonPusherSpec(
            model=model,
            model_blessing=model_blessing,
            infra_blessing=infra_blessing,
            model_repository=model_repository,
            preferred_batch_sizes=json.dumps([int(b) for b in preferred_batch_sizes]),
            pushed_model=types.Channel(type=standard_artifacts.PushedModel),
            **values,
        )
        super().__init__(spec=spec)
