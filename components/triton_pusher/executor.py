"""TritonPusher executor: the stock Pusher's contract, with a Triton repository as destination.

Subclassing `tfx.components.pusher.executor.Executor` (as tfx-addons' huggingface_pusher does)
keeps what downstream tools rely on: the blessing checks (`CheckBlessing`), the model path
resolution (`GetModelPath`, including InfraValidator-stamped models), the archive copy of the
model into the PushedModel artifact (what a later Importer / rollback reads), and the MLMD custom
properties `pushed`, `pushed_destination`, `pushed_version`. Only the destination differs, and
the code that writes it lives in `repository.py`.

Given the `examples` (ExampleGen's), the pusher also records the model's predictions on their
eval split in the version directory (`hoh.trainer.eval_predictions`): `hoh monitor` compares
served answers with them and so never needs the training data online.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from absl import logging
from tfx import types
from tfx.components.pusher import executor as tfx_pusher_executor
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils

from hoh import features
from hoh.components.triton_pusher import flavors, repository
from hoh.config import PushConfig, parse_section

MODEL_REPOSITORY_KEY = "model_repository"
# The `push:` section of the typed config as one JSON string (see component.py for why).
PUSH_CONFIG_KEY = "push_config"

# Extra custom properties on the PushedModel, next to the stock ones.
TRITON_MODEL_NAME_PROPERTY = "triton_model_name"
TRITON_MODEL_REPOSITORY_PROPERTY = "triton_model_repository"
EVAL_SPLIT = features.SPLITS[1]  # the Evaluator's split: data the model was not trained on


def settings_from_exec_properties(exec_properties: Dict[str, Any]) -> repository.TritonPushSettings:
    """Validated settings: the config's rules and defaults apply to what the run received."""
    push = parse_section(
        PushConfig, exec_properties.get(PUSH_CONFIG_KEY) or "{}", f"TritonPusher {PUSH_CONFIG_KEY}"
    )
    return repository.TritonPushSettings.from_config(push)


def eval_record(examples: Optional[List[types.Artifact]], model_path: str) -> Dict[str, bytes]:
    """{record file: bytes} of the model's predictions on the eval split; {} without examples
    (a pipeline built before the pusher took them: `hoh monitor` then computes it itself)."""
    if not examples:
        return {}
    from hoh.data.sources import tfrecord_source
    from hoh.trainer import eval_predictions

    split = artifact_utils.get_split_uri(examples, EVAL_SPLIT)
    source = tfrecord_source([split], f"{EVAL_SPLIT} split of {examples[0].uri}")
    record = eval_predictions.predict_split(model_path, source)
    logging.info(
        "Recorded the model's predictions on %d images of %s", record["summary"]["images"], split
    )
    return {eval_predictions.RECORD_FILE: eval_predictions.record_bytes(record)}


class Executor(tfx_pusher_executor.Executor):
    """Pushes a blessed hoh model as the next version of a Triton model."""

    def Do(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY]
        )
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        settings = settings_from_exec_properties(exec_properties)
        model_repository = str(exec_properties[MODEL_REPOSITORY_KEY])
        model_path = self.GetModelPath(input_dict)

        extra = eval_record(input_dict.get(standard_component_specs.EXAMPLES_KEY), model_path)
        result = flavors.push_model(
            model_path, model_repository, settings, source=model_path, extra_files=extra
        )
        if result.pushed:
            logging.info(
                "Model %s pushed to %s as version %d", model_path, result.model_dir, result.version
            )
        else:
            logging.info(
                "Model %s already is version %d of %s; nothing written",
                model_path,
                result.version,
                result.model_dir,
            )
        if result.removed_versions:
            logging.info(
                "Deleted old versions %s of %s", list(result.removed_versions), result.model_dir
            )

        io_utils.copy_dir(model_path, model_push.uri)  # archive, like the stock Pusher
        self._MarkPushed(
            model_push, pushed_destination=result.version_dir, pushed_version=str(result.version)
        )
        model_push.set_string_custom_property(TRITON_MODEL_NAME_PROPERTY, settings.model_name)
        model_push.set_string_custom_property(TRITON_MODEL_REPOSITORY_PROPERTY, model_repository)
