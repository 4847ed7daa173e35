"""Deciding whether one file is an image the pipeline can use, and why not when it is not.

Two stages, cheapest first. Pillow reads only the header (format and size) straight from the
file, so an unsupported format or a decompression bomb is refused before its bytes are read.
TensorFlow then decodes the bytes with exactly the call the pipeline's Transform makes, so a file
accepted here cannot fail later inside a Beam worker: Pillow alone is more lenient (it opens TIFF,
WebP and 1-bit BMP, which `tf.io.decode_image` refuses).
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The formats `tf.io.decode_image` understands; everything else is refused up front.
SUPPORTED_FORMATS = ("PNG", "JPEG", "BMP", "GIF")
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


def read_header(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Header:
    """Format and size from the file header only; raises ImageRejected for anything unusable."""
    from PIL import Image, UnidentifiedImageError

    with open(path, "rb") as fh:  # OSError here is the caller's: the file is unreadable
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
    return Header(format=fmt, width=width, height=height)


_TF_NOISE = re.compile(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\]")


class TfDecodeCheck:
    """Decodes with the pipeline's own call; one instance per import keeps TF imported once."""

    def __init__(self) -> None:
        import tensorflow as tf  # lazy: the CLI must answer `--help` without loading TF

        self._tf = tf

    def __call__(self, data: bytes) -> tuple[int, int]:
        """(width, height) of the decoded first frame; raises ImageRejected if TF cannot decode."""
        tf = self._tf
        try:
            pixels: Any = tf.io.decode_image(data, channels=3, expand_animations=False)
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as exc:
            message = _TF_NOISE.sub("", exc.message).strip()
            raise ImageRejected("undecodable", f"TensorFlow cannot decode it: {message}") from None
        height, width = int(pixels.shape[0]), int(pixels.shape[1])
        return width, height
