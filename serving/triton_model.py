"""Triton python-backend model that serves a hoh SavedModel (copied as `VERSION/model.py`).

The pusher copies this file next to `model.savedmodel/` in every version directory, so it must
stand alone: it imports only the standard library, numpy, TensorFlow and Triton's
`triton_python_backend_utils` (never `hoh`), because a repository may be served by an image that
has TensorFlow but not hoh installed.

Behaviour that matters to clients:
- Triton's dynamic batcher hands `execute` several requests at once; they run as ONE
  `serving_default` call. If that call fails (some request holds bytes TensorFlow cannot decode),
  each request is re-run alone, so one bad request gets a `TritonError` and the others in the same
  batch still succeed. Within a failing multi-image request the offending element is located and
  named in the message as `input <i>: ...` (clients map it back to a file).
- Cheap checks run before TensorFlow: empty bytes, bytes over `max_image_bytes`, data that is not a
  PNG/JPEG/GIF/BMP, and headers claiming more than `max_image_pixels` pixels (a 30000x30000 PNG
  compresses to a few KB but would make TensorFlow allocate gigabytes).
- TensorFlow is imported in `initialize`, not at module level: Triton imports this module once
  more to auto-complete the config, and a module-level import would load TensorFlow twice.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Optional, Sequence

import numpy as np

try:  # Only importable inside Triton's stub; the pure helpers below are unit-tested without it.
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - exercised only outside Triton
    pb_utils = None

INPUT_NAME = "image_bytes"
PROBABILITIES_NAME = "probabilities"
LABEL_NAME = "label"
SAVED_MODEL_DIR = "model.savedmodel"
SIGNATURE = "serving_default"

# Defaults when config.pbtxt carries no `parameters` for them (the pusher always writes them).
DEFAULT_MAX_IMAGE_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000


class InputError(ValueError):
    """One input element is unusable; the message starts with `input <i>:`."""


# --------------------------------------------------------------------------- pure helpers


def _be16(data: bytes, at: int) -> int:
    return struct.unpack(">H", data[at : at + 2])[0]


def _jpeg_size(data: bytes) -> Optional[tuple[int, int]]:
    """Width and height from the first SOF marker; None if not found in the bytes given."""
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xDA)):  # standalone markers carry no length
            i += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                return None
            return _be16(data, i + 7), _be16(data, i + 5)
        i += 2 + _be16(data, i + 2)
    return None


def image_format_and_size(data: bytes) -> tuple[Optional[str], Optional[tuple[int, int]]]:
    """(format, (width, height)) read from the header only; (None, None) if not an image we serve.

    The size is None when the header does not reveal it cheaply (e.g. a JPEG whose SOF marker is
    past a huge EXIF block); TensorFlow then decides.
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        size = struct.unpack(">II", data[16:24]) if len(data) >= 24 else None
        return "PNG", size
    if data[:6] in (b"GIF87a", b"GIF89a"):
        size = struct.unpack("<HH", data[6:10]) if len(data) >= 10 else None
        return "GIF", size
    if data.startswith(b"BM"):
        if len(data) < 26:
            return "BMP", None
        width, height = struct.unpack("<ii", data[18:26])
        return "BMP", (abs(width), abs(height))
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG", _jpeg_size(data)
    return None, None


def check_image(index: int, data: bytes, max_bytes: int, max_pixels: int) -> None:
    """Raise InputError naming `index` when `data` cannot be a servable image."""
    if not data:
        raise InputError(f"input {index}: empty image bytes")
    if len(data) > max_bytes:
        raise InputError(
            f"input {index}: {len(data)} bytes is above the limit of {max_bytes} bytes"
        )
    fmt, size = image_format_and_size(data)
    if fmt is None:
        raise InputError(
            f"input {index}: not a PNG, JPEG, GIF or BMP image (starts with {data[:8]!r})"
        )
    if size is not None and size[0] * size[1] > max_pixels:
        raise InputError(
            f"input {index}: {fmt} image of {size[0]}x{size[1]} pixels is above the limit of "
            f"{max_pixels} pixels"
        )


def flatten_input(array: np.ndarray) -> list[bytes]:
    """[batch, 1] object array of bytes (Triton's TYPE_STRING) -> list of bytes."""
    return [bytes(x) for x in np.asarray(array, dtype=object).reshape(-1)]


def config_parameter(model_config: dict, key: str, default: str) -> str:
    """A `parameters { key: ... value { string_value: ... } }` entry of config.pbtxt."""
    value = model_config.get("parameters", {}).get(key, {}).get("string_value", "")
    return value if value != "" else default


def thread_counts(model_config: dict, cpu_count: int) -> tuple[int, int]:
    """(intra_op, inter_op) TensorFlow threads for one model instance.

    Each instance is its own process with its own TensorFlow thread pools; left at TF's default
    (one thread per core each), N instances on a small machine oversubscribe the cores N times.
    `intra_op_threads` 0 (the default) = cores / CPU instances.
    """
    configured = int(config_parameter(model_config, "intra_op_threads", "0"))
    instances = sum(
        int(g.get("count", 1)) for g in model_config.get("instance_group", [])
    ) or 1
    intra = configured if configured > 0 else max(1, cpu_count // instances)
    return intra, max(1, min(2, intra))


_TF_NOISE = ("Graph execution error", "Detected at node", "<stack traces unavailable>", "File ")


def error_summary(message: str, limit: int = 300) -> str:
    """The line of a TensorFlow error that says what failed ("Invalid PNG ...").

    TF 2.16 wraps op errors as "Graph execution error: Detected at node ... <trace> REASON
    [[{{node ...}}]]"; only REASON means anything to a client.
    """
    for line in message.splitlines():
        line = line.split("[[", 1)[0].strip()
        if line and not line.startswith(_TF_NOISE):
            return line[:limit]
    return (message.strip() or "unknown error")[:limit]


# --------------------------------------------------------------------------- Triton model


class TritonPythonModel:
    """Runs `serving_default(image_bytes)` of the SavedModel next to this file."""

    def initialize(self, args: dict) -> None:
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        self._tf = tf
        config = json.loads(args["model_config"])
        intra, inter = thread_counts(config, len(os.sched_getaffinity(0)))
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
        self._max_bytes = int(
            config_parameter(config, "max_image_bytes", str(DEFAULT_MAX_IMAGE_BYTES))
        )
        self._max_pixels = int(
            config_parameter(config, "max_image_pixels", str(DEFAULT_MAX_IMAGE_PIXELS))
        )
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), SAVED_MODEL_DIR)
        self._model = tf.saved_model.load(path)  # keep a reference: signatures need it alive
        self._serve = self._model.signatures[SIGNATURE]

    def _run(self, images: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        out = self._serve(image_bytes=self._tf.constant(list(images), dtype=self._tf.string))
        probabilities = out[PROBABILITIES_NAME].numpy().astype(np.float32)
        labels = out[LABEL_NAME].numpy().astype(object).reshape(-1, 1)
        return probabilities, labels

    def _response(self, probabilities: np.ndarray, labels: np.ndarray):
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(PROBABILITIES_NAME, probabilities),
                pb_utils.Tensor(LABEL_NAME, labels),
            ]
        )

    @staticmethod
    def _error(message: str, invalid_input: bool = True):
        code = pb_utils.TritonError.INVALID_ARG if invalid_input else pb_utils.TritonError.INTERNAL
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))

    def _read(self, request) -> list[bytes]:
        images = flatten_input(pb_utils.get_input_tensor_by_name(request, INPUT_NAME).as_numpy())
        for i, data in enumerate(images):
            check_image(i, data, self._max_bytes, self._max_pixels)
        return images

    def _run_alone(self, images: list[bytes]):
        """One request by itself; on a bad image, name the first element TensorFlow rejects."""
        try:
            return self._response(*self._run(images))
        except self._tf.errors.InvalidArgumentError as exc:  # what decode_image raises
            bad, message = 0, str(exc)
            for i, data in enumerate(images if len(images) > 1 else []):
                try:
                    self._run([data])
                except self._tf.errors.InvalidArgumentError as item_exc:
                    bad, message = i, str(item_exc)
                    break
            return self._error(
                f"input {bad}: could not be decoded as an image: {error_summary(message)}"
            )
        except Exception as exc:  # noqa: BLE001 - anything else is the server's fault
            return self._error(f"inference failed: {error_summary(str(exc))}", invalid_input=False)

    def execute(self, requests):
        """One response per request, in order; a request's bad input never fails the others."""
        responses = [None] * len(requests)
        batch: list[tuple[int, list[bytes]]] = []
        for r, request in enumerate(requests):
            try:
                batch.append((r, self._read(request)))
            except InputError as exc:
                responses[r] = self._error(str(exc))
        if batch:
            try:
                probabilities, labels = self._run([img for _, imgs in batch for img in imgs])
            except Exception:  # noqa: BLE001 - fall back to per-request execution below
                for r, images in batch:
                    responses[r] = self._run_alone(images)
            else:
                start = 0
                for r, images in batch:
                    end = start + len(images)
                    responses[r] = self._response(probabilities[start:end], labels[start:end])
                    start = end
        return responses

    def finalize(self) -> None:
        self._serve = None
        self._model = None
