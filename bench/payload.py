"""Request payloads: real encoded images, each request made byte-unique.

Triton's response cache (on in every hoh config) keys on the request's input bytes. A benchmark
that re-sends the same few images measures the cache, not the model. Re-encoding a fresh image per
request would instead put PIL's encoder on the same 2 cores as the server. So each request takes a
base image and gets a tiny metadata block with its sequence number (a PNG `tEXt` chunk, a JPEG
`COM` segment): different bytes, identical pixels, identical decode cost, ~30 bytes of extra work.
"""

from __future__ import annotations

import io
import itertools
import struct
import zlib
from pathlib import Path
from typing import Protocol, Sequence

FORMATS = ("png", "jpeg")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def unique_variant(image: bytes, n: int) -> bytes:
    """`image` with request number `n` embedded as metadata; decodes to the same pixels."""
    tag = b"hoh-bench\x00%d" % n
    if image.startswith(_PNG_SIGNATURE):
        end = image.rfind(b"IEND") - 4  # the IEND chunk starts with its 4-byte length
        if end < len(_PNG_SIGNATURE):
            raise ValueError("PNG without an IEND chunk")
        return image[:end] + _png_chunk(b"tEXt", tag) + image[end:]
    if image.startswith(_JPEG_SOI):
        return _JPEG_SOI + b"\xff\xfe" + struct.pack(">H", len(tag) + 2) + tag + image[2:]
    raise ValueError("unique_variant handles PNG and JPEG only")


def load_images(paths: Sequence[Path], fmt: str) -> list[bytes]:
    """The demo PNGs as request payloads, re-encoded once (up front) when JPEG is asked for."""
    if fmt not in FORMATS:
        raise ValueError(f"image format must be one of {FORMATS}, got {fmt!r}")
    out = []
    for path in paths:
        data = Path(path).read_bytes()
        if fmt == "jpeg":
            from PIL import Image

            buf = io.BytesIO()
            Image.open(io.BytesIO(data)).convert("RGB").save(buf, format="JPEG", quality=90)
            data = buf.getvalue()
        out.append(data)
    return out


class Payloads(Protocol):
    def take(self, count: int = 1) -> list[bytes]: ...


class PayloadSource:
    """Thread-safe enough for CPython: `next()` on the shared counter is atomic under the GIL."""

    def __init__(self, images: Sequence[bytes], start: int = 0):
        if not images:
            raise ValueError("no base images for the payloads")
        self._images = list(images)
        self._next = itertools.count(start).__next__

    def take(self, count: int = 1) -> list[bytes]:
        """`count` never-sent-before payloads."""
        out = []
        for _ in range(count):
            n = self._next()
            out.append(unique_variant(self._images[n % len(self._images)], n))
        return out

    @property
    def mean_bytes(self) -> float:
        return sum(map(len, self._images)) / len(self._images)


class RepeatedPayload:
    """The same payload on every `take`: what a cache-hit measurement sends."""

    def __init__(self, images: Sequence[bytes]):
        self._images = list(images)

    def take(self, count: int = 1) -> list[bytes]:
        if count != len(self._images):
            raise ValueError(f"this payload holds {len(self._images)} images, asked for {count}")
        return list(self._images)
