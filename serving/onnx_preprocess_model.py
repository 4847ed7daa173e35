"""Triton python-backend model `<name>_preprocess` of the ONNX flavour: bytes -> model pixels.

Copied by the pusher into every version directory as `model.py`; it must run in a stock
`nvcr.io/nvidia/tritonserver` image with only numpy and Pillow added (serving/Dockerfile.serving),
so it imports nothing else: no TensorFlow, no hoh. The request limits and their messages are the
TensorFlow flavour's, from the same code: the pusher copies `serving/triton_model.py` next to this
file as `hoh_triton_model.py` (its module level needs only numpy; TensorFlow is imported in
its `initialize`, which this model never calls), and that module loads `hoh_imagecheck.py`.

Pixels must be the ones training saw (`transforms/images.py decode_and_resize`):
`tf.io.decode_image(channels=3, expand_animations=False)` = Pillow's first frame converted to
RGB (alpha dropped, not composited; grey replicated), then `tf.image.resize(bilinear)` =
half-pixel centres, no antialiasing, float32, then /255. `resize_bilinear` below follows
TensorFlow's kernel (tensorflow/core/kernels/image/resize_bilinear_op.cc) operation by
operation in float32. PNG, BMP and GIF decoding is lossless, so those match to float rounding;
JPEGs match too because training decodes them with libjpeg's accurate integer IDCT, the one
Pillow uses (`decode_and_resize`).
Images are resized one by one, before they are batched: they differ in size.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import sys

import numpy as np

INPUT_NAME = "image_bytes"
OUTPUT_NAME = "image"
COMMON_FILE = "hoh_triton_model.py"


def _load_common():
    """The TensorFlow flavour's limit checks: next to this file in a version directory, else
    hoh's own module (tests, tools). Loaded by path, like hoh_imagecheck, so no other module of
    that name on the stub's sys.path can stand in for it."""
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), COMMON_FILE)
    if os.path.exists(here):
        spec = importlib.util.spec_from_file_location(COMMON_FILE[:-3], here)
        sys.modules[spec.name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    from hoh.serving import triton_model

    return triton_model


common = _load_common()
InputError = common.InputError
pb_utils = common.pb_utils  # None outside Triton's stub; the pure helpers need no Triton


# --------------------------------------------------------------------------- pure helpers


def _axis_weights(in_size: int, out_size: int):
    """TF's `compute_interpolation_weights` with the half-pixel scaler, in float32."""
    scale = np.float32(in_size) / np.float32(out_size)
    position = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(position)
    lower = np.maximum(floor, 0).astype(np.int64)
    upper = np.minimum(np.ceil(position), in_size - 1).astype(np.int64)
    return lower, upper, (position - floor).astype(np.float32)


def resize_bilinear(pixels: np.ndarray, size: int, channels=(0, 1, 2)) -> np.ndarray:
    """uint8/float [H, W, C] -> float32 [size, size, len(channels)], as
    `tf.image.resize(..., "bilinear")` of the image made of those channels of `pixels`.

    TF computes top = tl + (tr - tl) * x_lerp, bottom likewise, then top + (bottom - top) *
    y_lerp. The horizontal step of an input row is the same whichever output rows use it, so it
    is done once per input row (columns first), on rows flattened to W*C values so each gather
    moves whole rows: the same arithmetic, 2.7x faster than gathering the four corners per
    output pixel. The gathers pick `channels` out of the decoded layout, so RGBA's alpha is
    dropped and grey is replicated to RGB without converting the whole image first, and they
    run on the uint8 values (a quarter of the bytes) before the float conversion TF does first:
    the same numbers either way.
    """
    height, width, stride = pixels.shape
    top, bottom, y_lerp = _axis_weights(height, size)
    left, right, x_lerp = _axis_weights(width, size)
    picked = np.asarray(channels)
    left = (left[:, None] * stride + picked).reshape(-1)
    right = (right[:, None] * stride + picked).reshape(-1)
    image = pixels.reshape(height, width * stride)
    lefts = np.take(image, left, axis=1).astype(np.float32)
    rows = np.take(image, right, axis=1).astype(np.float32)
    rows -= lefts
    rows *= np.repeat(x_lerp, len(picked))
    rows += lefts
    upper = np.take(rows, top, axis=0)
    out = np.take(rows, bottom, axis=0)
    out -= upper
    out *= y_lerp[:, None]
    out += upper
    return out.reshape(size, size, len(picked))


# Pillow modes whose decoded values are what `tf.io.decode_image(channels=3)` makes RGB from
# by picking channels: alpha dropped (not composited), grey replicated.
_RGB_CHANNELS = {"RGB": (0, 1, 2), "RGBA": (0, 1, 2), "L": (0, 0, 0), "LA": (0, 0, 0)}


def decode_for_rgb(data: bytes) -> tuple[np.ndarray, tuple]:
    """The first frame as uint8 [H, W, C] and the channels that make it RGB."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.seek(0)
        channels = _RGB_CHANNELS.get(image.mode)
        if channels is None:  # palette, CMYK, 16-bit...: Pillow's conversion, as TF's
            image, channels = image.convert("RGB"), _RGB_CHANNELS["RGB"]
        pixels = np.asarray(image, dtype=np.uint8)
    return (pixels if pixels.ndim == 3 else pixels[:, :, None]), channels


def preprocess(data: bytes, size: int) -> np.ndarray:
    """Encoded bytes -> float32 [size, size, 3] in [0, 1], the classifier's input."""
    pixels, channels = decode_for_rgb(data)
    out = resize_bilinear(pixels, size, channels)
    out /= np.float32(255.0)
    return out


def read_limits(model_config: dict) -> dict:
    """The request limits the pusher wrote into `parameters` (absent: the TF model's defaults)."""
    get = common.config_parameter
    images = int(
        get(
            model_config,
            "max_images_per_request",
            str(max(1, int(model_config.get("max_batch_size", 1)))),
        )
    )
    pixels = int(get(model_config, "max_image_pixels", str(common.DEFAULT_MAX_IMAGE_PIXELS)))
    frames = get(model_config, "max_gif_frames", "")
    return {
        "max_bytes": int(get(model_config, "max_image_bytes", str(common.DEFAULT_MAX_IMAGE_BYTES))),
        "max_pixels": pixels,
        "max_images": images,
        "max_request_bytes": int(
            get(model_config, "max_request_bytes", str(common.DEFAULT_MAX_REQUEST_BYTES))
        ),
        "max_gif_frames": int(frames) if frames else None,
        "max_request_pixels": int(get(model_config, "max_request_pixels", str(pixels * images))),
        "image_size": int(get(model_config, "image_size", "0")),
    }


def preprocess_request(images: list[bytes], limits: dict) -> np.ndarray:
    """One request's images -> float32 [n, S, S, 3], or InputError naming the bad element."""
    common.check_request(images, limits["max_images"], limits["max_request_bytes"])
    infos = [
        common.check_image(
            i, data, limits["max_bytes"], limits["max_pixels"], limits["max_gif_frames"]
        )
        for i, data in enumerate(images)
    ]
    common.check_request_pixels(infos, limits["max_request_pixels"])
    out = np.empty((len(images), limits["image_size"], limits["image_size"], 3), np.float32)
    for i, data in enumerate(images):
        try:
            out[i] = preprocess(data, limits["image_size"])
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad data
            raise InputError(f"input {i}: could not be decoded as an image: {exc}") from None
    return out


# --------------------------------------------------------------------------- Triton model


class TritonPythonModel:
    """Decodes, validates and resizes; the classifier step of the ensemble does the rest."""

    def initialize(self, args: dict) -> None:
        from PIL import Image

        common.keep_freed_memory()
        self._limits = read_limits(json.loads(args["model_config"]))
        if self._limits["image_size"] < 1:
            raise ValueError("config.pbtxt parameter image_size is missing")
        # The header checks bound every image first; Pillow's own bomb guard agrees with them.
        Image.MAX_IMAGE_PIXELS = self._limits["max_pixels"]

    def execute(self, requests):
        """One response per request, in order; a request's bad input never fails the others."""
        responses = []
        for request in requests:
            images = common.flatten_input(
                pb_utils.get_input_tensor_by_name(request, INPUT_NAME).as_numpy()
            )
            try:
                pixels = preprocess_request(images, self._limits)
            except InputError as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            responses.append(
                pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(OUTPUT_NAME, pixels)])
            )
        return responses
