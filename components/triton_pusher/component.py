"""TritonPusher: a TFX component that publishes a blessed model to a Triton model repository.

Two exec properties, both plain strings so they compile to Kubeflow v2 pipeline parameters
without custom encoding: where to push (`model_repository`, a runtime parameter on Kubeflow) and
how to serve (`push_config`, the typed config's `push:` section as JSON). One JSON value rather
than a property per setting keeps the defaults in one place, `hoh.config.PushConfig`: a setting
added there reaches the executor without touching this file, and a KFP run overrides any of
them with one parameter.
"""

from __future__ import annotations

from typing import Optional, Union

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.orchestration import data_types
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.types.system_executions import Deploy

from hoh.components.triton_pusher import executor, repository
from hoh.config import PushConfig, parse_section, section_json


class TritonPusherSpec(types.ComponentSpec):
    """Inputs/outputs of the stock Pusher; the destination and the settings as strings."""

    PARAMETERS = {
        executor.MODEL_REPOSITORY_KEY: ExecutionParameter(type=str),
        executor.PUSH_CONFIG_KEY: ExecutionParameter(type=str),
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
        # Not in the stock Pusher: the eval split whose predictions the pusher records.
        standard_component_specs.EXAMPLES_KEY: ChannelParameter(
            type=standard_artifacts.Examples, optional=True
        ),
    }
    OUTPUTS = {
        standard_component_specs.PUSHED_MODEL_KEY: ChannelParameter(
            type=standard_artifacts.PushedModel
        ),
    }
    TYPE_ANNOTATION = Deploy


class TritonPusher(base_component.BaseComponent):
    """Pushes a blessed model as the next version of a Triton (python backend) model.

    Outputs `pushed_model` (PushedModel) with custom properties `pushed` (1/0),
    `pushed_destination` (the version directory), `pushed_version`, `triton_model_name` and
    `triton_model_repository`. Nothing is written to the repository when a blessing says no.
    With `examples`, the version directory also holds `eval_predictions.json`.
    """

    SPEC_CLASS = TritonPusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(
        self,
        model_repository: Union[str, data_types.RuntimeParameter],
        model: Optional[types.BaseChannel] = None,
        model_blessing: Optional[types.BaseChannel] = None,
        infra_blessing: Optional[types.BaseChannel] = None,
        push_config: Union[PushConfig, dict, str, None] = None,
        examples: Optional[types.BaseChannel] = None,
    ):
        """`push_config`: the `push:` section (PushConfig, dict or JSON); None = defaults.
        `examples`: ExampleGen's; the model's predictions on their eval split are recorded in
        the version directory for `hoh monitor`."""
        if model is None and infra_blessing is None:
            raise ValueError("TritonPusher needs `model` (or an `infra_blessing` holding a model)")
        if not isinstance(push_config, PushConfig):
            push_config = parse_section(PushConfig, push_config or "{}", "TritonPusher push_config")
        # Fail while the pipeline is built, not after training in the pusher's container.
        repository.TritonPushSettings.from_config(push_config)
        spec = TritonPusherSpec(
            model=model,
            model_blessing=model_blessing,
            infra_blessing=infra_blessing,
            examples=examples,
            model_repository=model_repository,
            push_config=section_json(push_config, exclude={"enabled", "model_repository"}),
            pushed_model=types.Channel(type=standard_artifacts.PushedModel),
        )
        super().__init__(spec=spec)
