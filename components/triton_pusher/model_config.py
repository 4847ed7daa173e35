"""config.pbtxt as a proto: pure functions from settings and model info to what Triton reads.

Built as a `ModelConfig` proto (not text), so every config hoh writes parses the way Triton
parses it; tests and benchmarks edit configs through the same parse/render pair.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Mapping, Optional, Sequence

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from hoh.components.triton_pusher.settings import PushError, ServingModelInfo, TritonPushSettings
from hoh.serving.triton_model import CLASS_NAMES_KEY, class_names_key

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


def class_name_parameters(
    served: Sequence[int], names: Mapping[int, Sequence[str]]
) -> dict[str, str]:
    """`parameters` naming the classes of every served version, and `class_names` the newest's.

    One config serves every pinned version and Triton has no per-version output, so each
    version's names travel under their own key (`class_names.v<N>`); clients label an answer
    with the names of the version that gave it. A served version without names is refused: a
    client would have to guess them.
    """
    missing = [v for v in served if v not in names]
    if missing:
        raise PushError(
            f"no class names for served version(s) {', '.join(map(str, missing))}: "
            f"their {LABELS_FILE} is missing; the config cannot name their classes"
        )
    out = {class_names_key(v): json.dumps(list(names[v])) for v in sorted(served)}
    if served:
        out[CLASS_NAMES_KEY] = out[class_names_key(max(served))]
    return out


def build_model_config(
    settings: TritonPushSettings,
    info: ServingModelInfo,
    kind: int = mc.ModelInstanceGroup.KIND_CPU,
    served: Sequence[int] = (),
    names: Optional[Mapping[int, Sequence[str]]] = None,
) -> mc.ModelConfig:
    """The ModelConfig proto of the served model (built as a proto, so it always parses).

    `served` pins the versions Triton serves, which makes config.pbtxt the one file whose
    replacement publishes a push (see the module docstring). `names` holds each served
    version's class names (default: `info`'s for every one); the probabilities are
    variable-width, since served versions may have different class counts, and
    `label_filename` (Triton's classification extension, which has one label file for all
    versions) points into the newest version only while every served version has its classes.
    Without `served` (a config rendered for inspection only) the newest `versions_to_serve`
    versions are served.
    """
    if served:
        policy = mc.ModelVersionPolicy(
            specific=mc.ModelVersionPolicy.Specific(versions=sorted(served))
        )
        names = dict(names) if names is not None else {v: info.class_names for v in served}
        same = len({tuple(names.get(v, ())) for v in served}) == 1
        labels = f"{max(served)}/{LABELS_FILE}" if same else ""
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
                dims=[-1],  # each version's own class count (`class_names.v<N>`)
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
        **(
            class_name_parameters(served, names)
            if served
            else {CLASS_NAMES_KEY: json.dumps(list(info.class_names))}
        ),
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
    settings: TritonPushSettings,
    info: ServingModelInfo,
    served: Sequence[int],
    names: Optional[Mapping[int, Sequence[str]]] = None,
) -> dict[str, bytes]:
    """The configs pinning `served`, in write order: replacing config.pbtxt publishes a push.

    Each of them is consistent on its own (its versions, their labels), so a push killed between
    the two leaves a GPU server on the new model and a CPU server on the old one, never a mix.
    """
    return {
        rel: render_model_config(build_model_config(settings, info, kind, served, names)).encode(
            "utf-8"
        )
        for rel, kind in (
            (GPU_CONFIG_FILE, mc.ModelInstanceGroup.KIND_GPU),
            (CONFIG_FILE, mc.ModelInstanceGroup.KIND_CPU),
        )
    }
