"""config.pbtxt as a proto: pure functions from settings and model info to what Triton reads.

Built as a `ModelConfig` proto (not text), so every config hoh writes parses the way Triton
parses it; tests and benchmarks edit configs through the same parse/render pair.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Sequence

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from hoh.components.triton_pusher.settings import ServingModelInfo, TritonPushSettings

CONFIG_FILE = "config.pbtxt"
GPU_CONFIG_FILE = "configs/gpu.pbtxt"
LABELS_FILE = "labels.txt"
WARMUP_FILE = "warmup/image_bytes"
INPUT_NAME = "image_bytes"
PROBABILITIES_NAME = "probabilities"
LABEL_NAME = "label"


def sniff_image(data: bytes) -> bool:
    """True for PNG/JPEG/GIF/BMP magic bytes: a warmup sample that fails would fail the load."""
    return data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM"))


def warmup_data(image: bytes) -> bytes:
    """Triton's `input_data_file` format for one TYPE_STRING element: uint32 LE length + bytes."""
    return struct.pack("<I", len(image)) + image


def build_model_config(
    settings: TritonPushSettings,
    info: ServingModelInfo,
    kind: int = mc.ModelInstanceGroup.KIND_CPU,
    served: Sequence[int] = (),
) -> mc.ModelConfig:
    """The ModelConfig proto of the served model (built as a proto, so it always parses).

    `served` pins the versions Triton serves, which makes config.pbtxt the one file whose
    replacement publishes a push (see the module docstring); the labels are those of the newest
    of them, read from inside its version directory. Without `served` (a config rendered for
    inspection only) the newest `versions_to_serve` versions are served.
    """
    if served:
        policy = mc.ModelVersionPolicy(
            specific=mc.ModelVersionPolicy.Specific(versions=sorted(served))
        )
        labels = f"{max(served)}/{LABELS_FILE}"
    else:
        policy = mc.ModelVersionPolicy(
            latest=mc.ModelVersionPolicy.Latest(num_versions=settings.versions_to_serve)
        )
        labels = LABELS_FILE
    config = mc.ModelConfig(
        name=settings.model_name,
        backend="python",
        max_batch_size=settings.max_batch_size,
        version_policy=policy,
        input=[mc.ModelInput(name=INPUT_NAME, data_type=mc.TYPE_STRING, dims=[1])],
        output=[
            mc.ModelOutput(
                name=PROBABILITIES_NAME,
                data_type=mc.TYPE_FP32,
                dims=[info.num_classes],
                label_filename=labels,
            ),
            mc.ModelOutput(name=LABEL_NAME, data_type=mc.TYPE_STRING, dims=[1]),
        ],
        dynamic_batching=mc.ModelDynamicBatching(
            preferred_batch_size=sorted(set(settings.preferred_batch_sizes)),
            max_queue_delay_microseconds=settings.max_queue_delay_us,
        ),
        instance_group=[mc.ModelInstanceGroup(kind=kind, count=settings.instance_count)],
        response_cache=mc.ModelResponseCache(enable=settings.response_cache),
    )
    parameters = {
        # Read by clients through the model-config API to name the probability columns.
        "class_names": json.dumps(list(info.class_names)),
        # Read by model.py; edit config.pbtxt to change them without a new push.
        "max_image_bytes": str(settings.max_image_bytes),
        "max_image_pixels": str(settings.max_image_pixels),
        "max_images_per_request": str(settings.images_per_request),
        "max_request_bytes": str(settings.max_request_bytes),
        "max_gif_frames": str(settings.max_gif_frames),
        "max_request_pixels": str(settings.max_request_pixels),
        "intra_op_threads": "0",
    }
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    if info.sample_image is not None:
        warmup = config.model_warmup.add(name="sample_image", batch_size=1)
        warmup_input = warmup.inputs[INPUT_NAME]
        warmup_input.data_type = mc.TYPE_STRING
        warmup_input.dims.append(1)
        warmup_input.input_data_file = os.path.basename(WARMUP_FILE)
    return config


def render_model_config(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse_model_config(text: str) -> mc.ModelConfig:
    """Parse config.pbtxt the way Triton does (raises text_format.ParseError when invalid)."""
    return text_format.Parse(text, mc.ModelConfig())


def model_level_files(
    settings: TritonPushSettings, info: ServingModelInfo, served: Sequence[int]
) -> dict[str, bytes]:
    """The configs pinning `served`, in write order: replacing config.pbtxt publishes a push.

    Each of them is consistent on its own (its versions, their labels), so a push killed between
    the two leaves a GPU server on the new model and a CPU server on the old one, never a mix.
    """
    return {
        rel: render_model_config(build_model_config(settings, info, kind, served)).encode("utf-8")
        for rel, kind in (
            (GPU_CONFIG_FILE, mc.ModelInstanceGroup.KIND_GPU),
            (CONFIG_FILE, mc.ModelInstanceGroup.KIND_CPU),
        )
    }
