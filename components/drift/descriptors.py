"""Per-image descriptors: a few numbers per photo that move when the camera, light or pipeline does.

They are computed from the encoded bytes one image at a time and only the numbers are kept, so a
span of any size costs one row per image. Pixel statistics are measured on the image reduced to
at most ANALYSIS_MAX_SIDE pixels: decoding a 12-megapixel JPEG at full size would dominate the
run (Pillow's JPEG draft mode decodes at 1/2-1/8 scale directly), and detail finer than that is
far below what a 224-pixel classifier sees anyway. Width, height, aspect ratio and encoded size
describe the original file.
"""

from __future__ import annotations

import io
import warnings
from typing import Union

import numpy as np

ANALYSIS_MAX_SIDE = 512

# Column names of the descriptor table, in report order.
NUMERIC = (
    "brightness",  # mean luma in [0, 1] (ITU-R 601 weights, as Pillow's "L")
    "contrast",  # standard deviation of luma in [0, 1]
    "mean_r",
    "mean_g",
    "mean_b",  # channel means in [0, 1]
    "saturation",  # mean HSV saturation in [0, 1]
    "sharpness",  # variance of the 4-neighbour Laplacian of luma (0-255 scale); blur lowers it
    "width",
    "height",
    "aspect_ratio",  # width / height
    "encoded_bytes",  # file size: compression, noise and resolution all show up here
)
CATEGORICAL = ("format",)  # PNG, JPEG, BMP, GIF
COLUMNS = NUMERIC + CATEGORICAL

Descriptor = dict[str, Union[float, int, str]]


class UndecodableImage(ValueError):
    """The bytes are not an image Pillow can decode; the caller records and skips it."""


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian: the usual blur measure, 0 for a flat image."""
    if gray.shape[0] < 3 or gray.shape[1] < 3:
        return 0.0
    lap = (
        gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:] - 4.0 * gray[1:-1, 1:-1]
    )
    return float(lap.var())


def pixel_statistics(rgb: np.ndarray) -> Descriptor:
    """Statistics of an RGB uint8 array [H, W, 3]; pure, so tests can feed known arrays.

    Per-channel arithmetic on the three planes, never a reduction over the last axis of size
    3: numpy reduces such a short inner axis ~10x slower, which made these statistics the
    largest cost of describing a 300x300 image (bench/monitor.py)."""
    pixels = rgb.astype(np.float32)
    luma = _luma(pixels)
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    high = np.maximum(np.maximum(r, g), b)
    low = np.minimum(np.minimum(r, g), b)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0)
    means = [float(c.mean(dtype=np.float64)) / 255.0 for c in (r, g, b)]
    return {
        "brightness": float(luma.mean() / 255.0),
        "contrast": float(luma.std() / 255.0),
        "mean_r": float(means[0]),
        "mean_g": float(means[1]),
        "mean_b": float(means[2]),
        "saturation": float(saturation.mean()),
        "sharpness": laplacian_variance(luma),
    }


def describe_image(data: bytes) -> Descriptor:
    """All COLUMNS for one encoded image; raises UndecodableImage for anything Pillow cannot read.

    Alpha is dropped, not composited, and a GIF contributes its first frame: the same pixels
    `tf.io.decode_image(channels=3, expand_animations=False)` gives the model.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt, (width, height) = img.format or "unknown", img.size
                if fmt == "JPEG":
                    img.draft("RGB", (ANALYSIS_MAX_SIDE, ANALYSIS_MAX_SIDE))
                rgb = img.convert("RGB")
        if max(rgb.size) > ANALYSIS_MAX_SIDE:
            rgb.thumbnail((ANALYSIS_MAX_SIDE, ANALYSIS_MAX_SIDE), Image.Resampling.BILINEAR)
        pixels = np.asarray(rgb, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise UndecodableImage(f"cannot decode the image: {exc}") from None
    if width <= 0 or height <= 0:
        raise UndecodableImage(f"image has no pixels ({width}x{height})")
    return {
        **pixel_statistics(pixels),
        "width": int(width),
        "height": int(height),
        "aspect_ratio": float(width) / float(height),
        "encoded_bytes": len(data),
        "format": fmt,
    }
