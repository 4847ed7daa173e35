"""Triton python-backend model that serves a hoh SavedModel (copied as `VERSION/model.py`).

The pusher copies this file next to `model.savedmodel/` in every version directory, so it must
stand alone: it imports only the standard library, numpy, TensorFlow and Triton's
`triton_python_backend_utils` (never `hoh`), because a repository may be served by an image that
has TensorFlow but not hoh installed. The one exception is the image validator shared with the
importer, `hoh/imagecheck.py` (stdlib only), which the pusher copies next to this file as
`hoh_imagecheck.py` and which is loaded from there by path.

Behaviour that matters to clients:
- Triton's dynamic batcher hands `execute` several requests at once; they run as ONE
  `serving_default` call. If that call fails (some request holds bytes TensorFlow cannot decode),
  each request is re-run alone, so one bad request gets a `TritonError` and the others in the same
  batch still succeed. Within a failing multi-image request the offending element is located and
  named in the message as `input <i>: ...` (clients map it back to a file).
- Cheap checks run before TensorFlow: empty bytes, bytes over `max_image_bytes`, data that is not a
  PNG/JPEG/GIF/BMP, headers claiming more than `max_image_pixels` pixels (a 30000x30000 PNG
  compresses to a few KB but would make TensorFlow allocate gigabytes), images whose size cannot
  be read from the header, GIFs whose frames together exceed the pixel budget or
  `max_gif_frames`, and requests whose images add up to more than `max_request_pixels`.
- TensorFlow is imported in `initialize`, not at module level: Triton imports this module once
  more to auto-complete the config, and a module-level import would load TensorFlow twice.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
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
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024  # images per request default to max_batch_size

IMAGECHECK_FILE = "hoh_imagecheck.py"
# config.pbtxt `parameters`: the newest served version's class names (what clients before
# per-version names read), and one entry per served version, `class_names.v<N>`, because one
# config serves versions whose classes may differ (docs/MULTICLASS.md).
CLASS_NAMES_KEY = "class_names"


def _load_imagecheck():
    """The validator next to this file (in a version directory), else hoh's own module.

    Loaded by path rather than through sys.path so that no other module of that name, wherever
    the stub's sys.path points, can stand in for it.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), IMAGECHECK_FILE)
    if not os.path.exists(path):
        from hoh import imagecheck  # imported from the hoh package: tests and tools

        return imagecheck
    name = IMAGECHECK_FILE[:-3]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


imagecheck = _load_imagecheck()


class InputError(ValueError):
    """One input element is unusable; the message starts with `input <i>:`."""


# --------------------------------------------------------------------------- pure helpers


def image_format_and_size(data: bytes) -> tuple[Optional[str], Optional[tuple[int, int]]]:
    """(format, (width, height)) from the header; (None, None) if not an image we serve.

    The size is None when it cannot be established, which `check_image` rejects.
    """
    fmt = imagecheck.sniff(data)
    try:
        info = imagecheck.read_info(data)
    except imagecheck.ImageError:
        return fmt, None
    return fmt, (info.width, info.height)


def check_image(
    index: int,
    data: bytes,
    max_bytes: int,
    max_pixels: int,
    max_gif_frames: Optional[int] = None,
):
    """The image's `imagecheck.ImageInfo`, or InputError naming `index` when it cannot be served.

    `max_gif_frames` None bounds a GIF's frames by the pixel budget only.
    """
    limits = imagecheck.Limits(max_bytes, max_pixels, max_gif_frames)
    try:
        return imagecheck.check(data, limits)
    except imagecheck.ImageError as exc:
        raise InputError(f"input {index}: {exc.reason}") from None


def check_request_pixels(infos: Sequence, max_request_pixels: int) -> None:
    """InputError when the images of one request decode to more pixels than allowed together."""
    total = sum(info.decoded_pixels for info in infos)
    if total > max_request_pixels:
        raise InputError(
            f"request decodes to {total} pixels in {len(infos)} images; the limit is "
            f"{max_request_pixels} pixels per request (max_request_pixels)"
        )


def check_request(images: Sequence[bytes], max_images: int, max_bytes: int) -> None:
    """Raise InputError when a whole request is over its limits, before any image is looked at.

    The message names the limit, so the client knows how to split the request.
    """
    if len(images) > max_images:
        raise InputError(
            f"request holds {len(images)} images; the limit is {max_images} images per request "
            "(max_images_per_request)"
        )
    total = sum(len(data) for data in images)
    if total > max_bytes:
        raise InputError(
            f"request holds {total} bytes of images; the limit is {max_bytes} bytes per request "
            "(max_request_bytes)"
        )


def flatten_input(array: np.ndarray) -> list[bytes]:
    """[batch, 1] object array of bytes (Triton's TYPE_STRING) -> list of bytes."""
    return [bytes(x) for x in np.asarray(array, dtype=object).reshape(-1)]


def config_parameter(model_config: dict, key: str, default: str) -> str:
    """A `parameters { key: ... value { string_value: ... } }` entry of config.pbtxt."""
    value = model_config.get("parameters", {}).get(key, {}).get("string_value", "")
    return value if value != "" else default


def class_names_key(version) -> str:
    """The `parameters` key naming version `version`'s classes, e.g. `class_names.v2`."""
    return f"{CLASS_NAMES_KEY}.v{int(version)}"


def version_class_names(model_config: dict, version) -> Optional[list[str]]:
    """Version `version`'s class names from a config in JSON form, or None when it names none.

    The same reader for this model (its `args["model_config"]`) and for clients (the server's
    model-config API), so a name can only be wrong if the pusher wrote it wrong.
    """
    raw = config_parameter(model_config, class_names_key(version), "")
    if not raw:
        return None
    names = json.loads(raw)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{class_names_key(version)} is not a JSON list of strings: {raw[:80]!r}")
    return names


def check_width(probabilities: np.ndarray, names: Optional[Sequence[str]], version) -> None:
    """ValueError when this version answers another number of classes than its config names.

    One config serves several versions with a variable-width output, so Triton cannot catch a
    config naming the wrong classes for a version: this check does, before a client labels them.
    """
    width = probabilities.shape[-1] if probabilities.ndim == 2 else 0
    if names is not None and width != len(names):
        raise ValueError(
            f"version {version} answered {width} probabilities but config.pbtxt names "
            f"{len(names)} classes for it ({class_names_key(version)})"
        )


def thread_counts(model_config: dict, cpu_count: int) -> tuple[int, int]:
    """(intra_op, inter_op) TensorFlow threads for one model instance.

    Each instance is its own process with its own TensorFlow thread pools; left at TF's default
    (one thread per core each), N instances on a small machine oversubscribe the cores N times.
    `intra_op_threads` 0 (the default) = cores / CPU instances.
    """
    configured = int(config_parameter(model_config, "intra_op_threads", "0"))
    instances = sum(int(g.get("count", 1)) for g in model_config.get("instance_group", [])) or 1
    intra = configured if configured > 0 else max(1, cpu_count // instances)
    return intra, max(1, min(2, intra))


_TF_NOISE = ("Graph execution error", "Detected at node", "<stack traces unavailable>", "File ")


# glibc malloc tuning for a stub process (see keep_freed_memory): memory freed below this much
# at the heap's top stays in the process, and blocks below the second size come from the heap.
KEEP_FREED_BYTES = 256 << 20
HEAP_BLOCK_BYTES = 32 << 20


def keep_freed_memory() -> bool:
    """Stop glibc from handing every decoded image's memory back to the kernel.

    A stub runs `execute` on a thread of its own, whose malloc arena is trimmed back to the
    kernel as soon as its top chunk exceeds the default 128 KB threshold, so every request's
    few-hundred-KB arrays (decoded pixels, resized floats) were fresh pages: a page fault and a
    zeroed page each, 30% of the preprocessing stub's CPU (perf, docs/BENCHMARKS.md). Raising
    the trim and mmap thresholds lets those blocks be reused; a burst larger than
    KEEP_FREED_BYTES is still returned. False where the C library is not glibc (no `mallopt`).
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h> parameter numbers
        return bool(
            libc.mallopt(m_trim_threshold, KEEP_FREED_BYTES)
            and libc.mallopt(m_mmap_threshold, HEAP_BLOCK_BYTES)
        )
    except (OSError, AttributeError):
        return False


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
        keep_freed_memory()
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
        self._max_request_images = int(
            config_parameter(
                config, "max_images_per_request", str(max(1, int(config.get("max_batch_size", 1))))
            )
        )
        self._max_request_bytes = int(
            config_parameter(config, "max_request_bytes", str(DEFAULT_MAX_REQUEST_BYTES))
        )
        frames = config_parameter(config, "max_gif_frames", "")
        self._max_gif_frames = int(frames) if frames else None  # None: the pixel budget bounds them
        # Absent: no cap beyond what max_images_per_request full-size images decode to.
        self._max_request_pixels = int(
            config_parameter(
                config, "max_request_pixels", str(self._max_pixels * self._max_request_images)
            )
        )
        self._version = str(args.get("model_version", "")) or "0"
        self._names = version_class_names(config, self._version)
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), SAVED_MODEL_DIR)
        self._model = tf.saved_model.load(path)  # keep a reference: signatures need it alive
        self._serve = self._model.signatures[SIGNATURE]

    def _run(self, images: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        out = self._serve(image_bytes=self._tf.constant(list(images), dtype=self._tf.string))
        probabilities = out[PROBABILITIES_NAME].numpy().astype(np.float32)
        labels = out[LABEL_NAME].numpy().astype(object).reshape(-1, 1)
        check_width(probabilities, self._names, self._version)
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
        check_request(images, self._max_request_images, self._max_request_bytes)
        infos = [
            check_image(i, data, self._max_bytes, self._max_pixels, self._max_gif_frames)
            for i, data in enumerate(images)
        ]
        check_request_pixels(infos, self._max_request_pixels)
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
