"""TritonPusher executor: the stock Pusher's contract, with a Triton repository as destination.

Subclassing `tfx.components.pusher.executor.Executor` (as tfx-addons' huggingface_pusher does)
keeps what downstream tools rely on: the blessing checks (`CheckBlessing`), the model path
resolution (`GetModelPath`, including InfraValidator-stamped models), the archive copy of the
model into the PushedModel artifact (what a later Importer / rollback reads), and the MLMD custom
properties `pushed`, `pushed_destination`, `pushed_version`. Only the destination differs, and
the code that writes it lives in `repository.py`.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List

from absl import logging
from tfx import types
from tfx.components.pusher import executor as tfx_pusher_executor
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils

from hoh.components.triton_pusher import repository

MODEL_REPOSITORY_KEY = "model_repository"
MODEL_NAME_KEY = "model_name"
MAX_BATCH_SIZE_KEY = "max_batch_size"
PREFERRED_BATCH_SIZES_KEY = "preferred_batch_sizes"
MAX_QUEUE_DELAY_US_KEY = "max_queue_delay_us"
INSTANCE_COUNT_KEY = "instance_count"
VERSIONS_TO_SERVE_KEY = "versions_to_serve"
VERSIONS_TO_KEEP_KEY = "versions_to_keep"
# Optional: absent keys keep TritonPushSettings' defaults (which come from hoh.config).
LIMIT_KEYS = ("max_image_bytes", "max_image_pixels", "max_images_per_request",
              "max_request_bytes", "max_gif_frames", "max_request_pixels")
RESPONSE_CACHE_KEY = "response_cache"

# Extra custom properties on the PushedModel, next to the stock ones.
TRITON_MODEL_NAME_PROPERTY = "triton_model_name"
TRITON_MODEL_REPOSITORY_PROPERTY = "triton_model_repository"


def parse_batch_sizes(value: Any) -> tuple[int, ...]:
    """`preferred_batch_sizes` travels as a JSON list string (a plain str compiles everywhere)."""
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else []
    return tuple(int(v) for v in value)


def settings_from_exec_properties(exec_properties: Dict[str, Any]) -> repository.TritonPushSettings:
    """Exec properties -> validated settings; absent keys keep the defaults of the settings."""
    defaults = repository.TritonPushSettings()

    def get(key: str, default: Any) -> Any:
        value = exec_properties.get(key)
        return default if value is None else value

    return repository.TritonPushSettings(
        model_name=str(get(MODEL_NAME_KEY, defaults.model_name)),
        max_batch_size=int(get(MAX_BATCH_SIZE_KEY, defaults.max_batch_size)),
        preferred_batch_sizes=parse_batch_sizes(
            get(PREFERRED_BATCH_SIZES_KEY, list(defaults.preferred_batch_sizes))
        ),
        max_queue_delay_us=int(get(MAX_QUEUE_DELAY_US_KEY, defaults.max_queue_delay_us)),
        instance_count=int(get(INSTANCE_COUNT_KEY, defaults.instance_count)),
        versions_to_serve=int(get(VERSIONS_TO_SERVE_KEY, defaults.versions_to_serve)),
        versions_to_keep=int(get(VERSIONS_TO_KEEP_KEY, defaults.versions_to_keep)),
        **{k: int(exec_properties[k]) for k in LIMIT_KEYS if exec_properties.get(k)},
        response_cache=bool(get(RESPONSE_CACHE_KEY, defaults.response_cache)),
    ).validate()


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

        result = repository.push_model(model_path, model_repository, settings, source=model_path)
        if result.pushed:
            logging.info("Model %s pushed to %s as version %d", model_path, result.model_dir,
                         result.version)
        else:
            logging.info("Model %s already is version %d of %s; nothing written", model_path,
                         result.version, result.model_dir)
        if result.removed_versions:
            logging.info("Deleted old versions %s of %s", list(result.removed_versions),
                         result.model_dir)

        io_utils.copy_dir(model_path, model_push.uri)  # archive, like the stock Pusher
        self._MarkPushed(
            model_push, pushed_destination=result.version_dir, pushed_version=str(result.version)
        )
        model_push.set_string_custom_property(TRITON_MODEL_NAME_PROPERTY, settings.model_name)
        model_push.set_string_custom_property(TRITON_MODEL_REPOSITORY_PROPERTY, model_repository)
