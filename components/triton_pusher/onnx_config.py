"""The ONNX flavour's three model configs, derived from the TensorFlow flavour's proto.

`<name>` is an ensemble exposing exactly the TensorFlow flavour's interface (image_bytes ->
probabilities with labels + label, the same `parameters` clients read), so it starts from
`build_model_config` and only the execution parts change; the steps are
`<name>_preprocess` (python backend: numpy + Pillow) and `<name>_classifier` (model.onnx).

The classifier gets three configs over one version directory:
- `config.pbtxt`: python backend running onnxruntime (the bundled server has no other backend),
- `configs/stock.pbtxt`: `platform: "onnxruntime_onnx"` on CPU (`--model-config-name=stock`),
- `configs/gpu.pbtxt`: the native backend on `KIND_GPU` with the TensorRT accelerator
  (`--model-config-name=gpu`); the other two models have no such file, so Triton falls back to
  their config.pbtxt and preprocessing stays on CPU instances.
"""

from __future__ import annotations

from typing import Sequence

from tritonclient.grpc import model_config_pb2 as mc

from hoh.components.triton_pusher.model_config import (
    CONFIG_FILE,
    GPU_CONFIG_FILE,
    INPUT_NAME,
    LABEL_NAME,
    LABELS_FILE,
    PROBABILITIES_NAME,
    WARMUP_FILE,
    build_model_config,
    render_model_config,
)
from hoh.components.triton_pusher.onnx_export import IMAGE_NAME
from hoh.components.triton_pusher.settings import ServingModelInfo, TritonPushSettings
from hoh.serving.triton_model import CLASS_NAMES_KEY

STOCK_CONFIG_FILE = "configs/stock.pbtxt"
PREPROCESS_SUFFIX = "_preprocess"
CLASSIFIER_SUFFIX = "_classifier"
# Which request limits each model enforces (the ensemble only advertises them to clients).
_PREPROCESS_ONLY = ("max_image_bytes", "max_image_pixels", "max_gif_frames", "max_request_pixels")
# TensorRT builds an engine per batch-size profile on first use; 1 GiB is TRT's usual default.
TRT_WORKSPACE_BYTES = 1 << 30


def preprocess_name(settings: TritonPushSettings) -> str:
    return settings.model_name + PREPROCESS_SUFFIX


def classifier_name(settings: TritonPushSettings) -> str:
    return settings.model_name + CLASSIFIER_SUFFIX


def _drop_class_names(config: mc.ModelConfig) -> None:
    """Class names are the ensemble's to announce; a step's copy would only go stale."""
    for key in [k for k in config.parameters if k.split(".")[0] == CLASS_NAMES_KEY]:
        del config.parameters[key]


def _image_io(image_size: int, cls):
    return cls(name=IMAGE_NAME, data_type=mc.TYPE_FP32, dims=[image_size, image_size, 3])


def ensemble_config(
    settings: TritonPushSettings,
    info: ServingModelInfo,
    served: Sequence[int],
    preprocess_version: int,
    classifier_version: int,
) -> mc.ModelConfig:
    """`<name>` serving `served`; each step pinned to the version pushed with it."""
    config = build_model_config(settings, info, served=served)
    config.backend = ""
    config.platform = "ensemble"
    for field in ("dynamic_batching", "instance_group", "model_warmup"):
        config.ClearField(field)
    del config.parameters["intra_op_threads"]
    scheduling = config.ensemble_scheduling
    scheduling.step.add(
        model_name=preprocess_name(settings),
        model_version=preprocess_version,
        input_map={INPUT_NAME: INPUT_NAME},
        output_map={IMAGE_NAME: "hoh_pixels"},
    )
    scheduling.step.add(
        model_name=classifier_name(settings),
        model_version=classifier_version,
        input_map={IMAGE_NAME: "hoh_pixels"},
        output_map={PROBABILITIES_NAME: PROBABILITIES_NAME, LABEL_NAME: LABEL_NAME},
    )
    return config


def preprocess_config(
    settings: TritonPushSettings, info: ServingModelInfo, image_size: int, served: Sequence[int]
) -> mc.ModelConfig:
    """Python backend, CPU, with every request limit and the warmup sample."""
    config = build_model_config(settings, info, served=served)
    config.name = preprocess_name(settings)
    config.ClearField("output")
    config.output.append(_image_io(image_size, mc.ModelOutput))
    config.instance_group[0].count = settings.preprocess_instance_count
    config.dynamic_batching.max_queue_delay_microseconds = settings.cpu_step_queue_delay_us
    config.response_cache.enable = False  # the ensemble caches whole answers
    _drop_class_names(config)
    del config.parameters["intra_op_threads"]
    config.parameters["image_size"].string_value = str(image_size)
    return config


def classifier_config(
    settings: TritonPushSettings,
    info: ServingModelInfo,
    image_size: int,
    served: Sequence[int],
    variant: str,
) -> mc.ModelConfig:
    """`variant`: "local" (python backend + onnxruntime), "stock" (native, CPU) or "gpu"."""
    config = build_model_config(settings, info, served=served)
    config.name = classifier_name(settings)
    config.ClearField("input")
    config.input.append(_image_io(image_size, mc.ModelInput))
    config.response_cache.enable = False
    _drop_class_names(config)
    for key in ("max_images_per_request", "max_request_bytes", *_PREPROCESS_ONLY):
        del config.parameters[key]
    config.ClearField("model_warmup")
    warmup = config.model_warmup.add(name="zeros", batch_size=1)
    warmup.inputs[IMAGE_NAME].CopyFrom(
        mc.ModelWarmup.Input(
            data_type=mc.TYPE_FP32, dims=[image_size, image_size, 3], zero_data=True
        )
    )
    config.parameters["cpu_instances_beside"].string_value = str(settings.preprocess_instance_count)
    if variant != "gpu":
        config.dynamic_batching.max_queue_delay_microseconds = settings.cpu_step_queue_delay_us
    if variant == "local":
        config.instance_group[0].count = settings.classifier_instance_count
        return config
    config.backend = ""
    config.platform = "onnxruntime_onnx"
    # The native backend compares the declared width with the graph's, which a wildcard fails.
    config.output[0].dims[:] = [info.num_classes]
    # The native backend produces `label` as [N, 1] like the python one (the graph reshapes it).
    del config.parameters["intra_op_threads"], config.parameters["cpu_instances_beside"]
    # onnxruntime_backend's own knob; "0" lets onnxruntime pick (one thread per core).
    config.parameters["intra_op_thread_count"].string_value = "0"
    if variant == "gpu":
        config.instance_group[0].kind = mc.ModelInstanceGroup.KIND_GPU
        trt = config.optimization.execution_accelerators.gpu_execution_accelerator.add(
            name="tensorrt"
        )
        trt.parameters["precision_mode"] = "FP16" if settings.gpu_fp16 else "FP32"
        trt.parameters["max_workspace_size_bytes"] = str(TRT_WORKSPACE_BYTES)
    return config


def classifier_files(
    settings: TritonPushSettings, info: ServingModelInfo, image_size: int, served: Sequence[int]
) -> dict[str, bytes]:
    """The classifier's configs in write order (config.pbtxt, the one hoh's server reads, last)."""
    variants = ((GPU_CONFIG_FILE, "gpu"), (STOCK_CONFIG_FILE, "stock"), (CONFIG_FILE, "local"))
    return {
        rel: render_model_config(
            classifier_config(settings, info, image_size, served, variant)
        ).encode("utf-8")
        for rel, variant in variants
    }


def labels_file(info: ServingModelInfo) -> tuple[str, bytes]:
    return LABELS_FILE, "".join(f"{name}\n" for name in info.class_names).encode("utf-8")


__all__ = [
    "CONFIG_FILE",
    "GPU_CONFIG_FILE",
    "STOCK_CONFIG_FILE",
    "WARMUP_FILE",
    "classifier_files",
    "classifier_name",
    "ensemble_config",
    "labels_file",
    "preprocess_config",
    "preprocess_name",
]
