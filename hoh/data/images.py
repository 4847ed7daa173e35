"""Deciding whether one file is an image the pipeline can use, and why not when it is not.

Two stages, cheapest first. Pillow reads only the header (format and size) straight from the
file, so an unsupported format or a decompression bomb is refused before its bytes are read.
TensorFlow then decodes the bytes with exactly the call the pipeline's Transform makes, so a file
accepted here cannot fail later inside a Beam worker: Pillow alone is more lenient (it opens TIFF,
WebP and 1-bit BMP, which `tf.io.decode_image` refuses).
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hoh import imagecheck
from hoh.config import PushConfig

# The formats `tf.io.decode_image` understands; everything else is refused up front.
SUPPORTED_FORMATS = ("PNG", "JPEG", "BMP", "GIF")
# Pillow names that are one of those to TensorFlow: a camera's multi-picture JPEG (MPO) is a
# plain JPEG whose first picture tf.io.decode_image decodes; refusing it would lose photos.
_DECODED_AS = {"MPO": "JPEG"}
DEFAULT_MAX_PIXELS = 40_000_000


class ImageRejected(Exception):
    """One file is unusable. `kind` is stable for scripts and tests; `reason` is for people."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True)
class Header:
    format: str
    width: int
    height: int


def read_header(path: Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Header:
    """Format and size from the header only; raises ImageRejected for anything unusable.

    `path` may also be the encoded bytes themselves (a broker message has no file), so files
    and messages pass exactly the same checks.
    """
    from PIL import Image, UnidentifiedImageError

    opened = io.BytesIO(path) if isinstance(path, bytes) else open(path, "rb")
    with opened as fh:  # OSError here is the caller's: the file is unreadable
        try:
            with warnings.catch_warnings():
                # Pillow warns above its own bomb limit; ours (max_pixels) is the one that decides.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(fh) as img:
                    fmt, (width, height) = img.format or "unknown", img.size
        except Image.DecompressionBombError as exc:
            raise ImageRejected("too_large", f"too large: {exc}") from None
        except UnidentifiedImageError:
            reason = "not an image file (no known image header)"
            raise ImageRejected("not_an_image", reason) from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            # Pillow reports a damaged header with any of these, depending on the plugin.
            raise ImageRejected("corrupt", f"corrupt image header: {exc}") from None
        fh.seek(0)
        data = fh.read(_SERVING_LIMITS["max_image_bytes"] + 1)
    fmt = _DECODED_AS.get(fmt, fmt)
    if fmt not in SUPPORTED_FORMATS:
        raise ImageRejected(
            "unsupported_format",
            f"unsupported format {fmt}; supported: {', '.join(SUPPORTED_FORMATS)}",
        )
    if width * height > max_pixels:
        raise ImageRejected(
            "too_large",
            f"too large: {width}x{height} = {width * height} pixels > max {max_pixels}",
        )
    check_like_serving(data, max_pixels)
    return Header(format=fmt, width=width, height=height)


_SERVING_LIMITS = {
    k: PushConfig.model_fields[k].default for k in ("max_image_bytes", "max_gif_frames")
}


def check_like_serving(data: bytes, max_pixels: int) -> None:
    """The validator the Triton model runs (hoh/imagecheck.py), so training sees what serving does.

    Pillow's header size is not enough: it does not count GIF frames, which TensorFlow all
    decodes, and a JPEG whose size it guesses is still decoded at the size libjpeg finds.
    """
    limits = imagecheck.Limits(
        _SERVING_LIMITS["max_image_bytes"], max_pixels, _SERVING_LIMITS["max_gif_frames"]
    )
    try:
        imagecheck.check(data, limits)
    except imagecheck.ImageError as exc:
        raise ImageRejected(exc.kind, exc.reason) from None


_TF_NOISE = re.compile(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\]")


def decode_rgb(data):
    """Encoded bytes (a scalar string tensor or bytes) -> uint8 [H, W, 3]: the one decode the
    importer's check and the pipeline's Transform (`transforms/images.py`) both run. JPEGs use
    libjpeg's accurate integer IDCT, the one Pillow (the ONNX flavour's preprocessing) and most
    decoders use, not `decode_image`'s fast one (up to 5 levels apart, docs/BENCHMARKS.md)."""
    import tensorflow as tf

    return tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
    )


class TfDecodeCheck:
    """Decodes with the pipeline's own call; one instance per import keeps TF imported once."""

    def __init__(self) -> None:
        import tensorflow as tf  # lazy: the CLI must answer `--help` without loading TF

        self._tf = tf

    def __call__(self, data: bytes) -> tuple[int, int]:
        """(width, height) of the decoded first frame; raises ImageRejected if TF cannot decode."""
        tf = self._tf
        try:
            pixels: Any = decode_rgb(data)
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as exc:
            message = _TF_NOISE.sub("", exc.message).strip()
            raise ImageRejected("undecodable", f"TensorFlow cannot decode it: {message}") from None
        height, width = int(pixels.shape[0]), int(pixels.shape[1])
        return width, height


@dataclass(frozen=True)
class CheckedImage:
    id: str  # sha256 hex of the bytes: the example id and the duplicate key
    width: int
    height: int


def content_id(data: bytes) -> str:
    """An image's id: its content, so a copy under another name or from another camera is the
    same example (deduplication, split assignment, a Kafka partition key)."""
    return hashlib.sha256(data).hexdigest()


def check_image_bytes(data: bytes, max_pixels: int, decode: TfDecodeCheck) -> CheckedImage:
    """Every check an image gets before it may enter a span, on its bytes alone.

    One implementation for `hoh data import` (files) and `hoh ingest` (broker messages): the
    same bytes are accepted or refused with the same kind and reason whichever way they came.
    """
    if not data:
        raise ImageRejected("empty_file", "empty file (0 bytes)")
    read_header(data, max_pixels)
    width, height = decode(data)
    return CheckedImage(content_id(data), width, height)
