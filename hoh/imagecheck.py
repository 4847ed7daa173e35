"""Decide from the bytes alone how much memory decoding an image will take, before decoding it.

One implementation for training and serving: the importer (`hoh.data.images`) and the Triton
model (`serving/triton_model.py`) call this module, so an image the server refuses is never
trained on and the other way round. The pusher copies this file next to `model.py` as
`hoh_imagecheck.py`, which is why it imports nothing but the standard library.

Why each rule (the attacks are in tests/test_imagecheck.py; fuzzing in docs/BENCHMARKS.md):
- A size that cannot be read from the header is a rejection, not a pass: TensorFlow would decide
  by decoding, and a 1.5 MB JPEG can decode to 400 Mpx. The parsers follow the decoders TF uses
  (libjpeg-turbo, libpng, giflib, TF's own BMP reader) so that the size read here is the size
  they allocate: JPEG markers are walked the way libjpeg does (fill bytes, stray bytes between
  segments, the first SOF of any kind, SOS before any SOF is an error).
- GIF: `tf.io.decode_image(..., expand_animations=False)` returns the first frame, but giflib's
  DGifSlurp decodes every frame first (measured: 200 frames of 2000x2000 took 3.7 s and 1.1 GB
  for one 0.9 MB request). So every image descriptor is read and all frames together must fit
  in the pixel budget, and the frame count is capped so the scan itself stays cheap. TF ignores
  the logical screen: its canvas is the widest frame's width by the tallest frame's height
  (found by fuzzing), so a 65535x1 frame plus a 1x65535 frame would ask for a 4-gigapixel
  canvas; that canvas is what is reported as the size and counted.
- BMP: TF reads width and height as int32 at offsets 18 and 22 whatever the header version, so
  an OS/2 1.x core header (16-bit fields at the same offsets) would be decoded with other
  dimensions than it declares: refused.
"""

from __future__ import annotations

import dataclasses
import struct

FORMATS = ("PNG", "JPEG", "GIF", "BMP")

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_GIF_MAGICS = (b"GIF87a", b"GIF89a")
# Every SOFn: baseline, extended, progressive, lossless; Huffman or arithmetic coded.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset((0x01, *range(0xD0, 0xD8)))  # TEM, RST0-7: no length field
_JPEG_SOS, _JPEG_EOI = 0xDA, 0xD9
# BITMAPINFOHEADER and its successors (V2, V3, V4, V5) and OS/2 2.x: int32 width/height at 18/22.
_BMP_INFO_SIZES = frozenset((40, 52, 56, 64, 108, 124))
_BMP_CORE_SIZE = 12


class ImageError(ValueError):
    """The bytes are not an image this project decodes; `kind` is stable, `reason` is for people."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Limits:
    """Bounds per image; the defaults live in `hoh.config.PushConfig` (one source of truth)."""

    max_bytes: int
    max_pixels: int  # per image; for a GIF, all its frames together plus the returned canvas
    max_gif_frames: int | None  # None: a GIF's frames are bounded by max_pixels only


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    frames: int = 1
    # What the decoder allocates in pixels: width*height, or for a GIF every frame plus the
    # canvas it returns. A GIF's width and height are that canvas (see the module docstring).
    decoded_pixels: int = 0


# --------------------------------------------------------------------------- format parsers


def sniff(data: bytes) -> str | None:
    """The format TF's decode_image will pick for these bytes, if it is one we accept."""
    if data.startswith(_PNG_MAGIC):
        return "PNG"
    if data.startswith(_JPEG_MAGIC):
        return "JPEG"
    if data[:6] in _GIF_MAGICS:
        return "GIF"
    if data.startswith(b"BM"):
        return "BMP"
    return None


def _unknown(fmt: str, why: str) -> ImageError:
    return ImageError("unknown_size", f"{fmt} image whose size cannot be established: {why}")


def _png(data: bytes) -> ImageInfo:
    # libpng refuses a file whose first chunk is not a complete 13-byte IHDR.
    if len(data) < 24 or data[8:16] != b"\x00\x00\x00\x0dIHDR":
        raise _unknown("PNG", "no IHDR chunk at the start")
    width, height = struct.unpack(">II", data[16:24])
    return ImageInfo("PNG", width, height)


def _jpeg(data: bytes) -> ImageInfo:
    """Walk the segments up to the first SOF, the way libjpeg's marker reader does."""
    i, n = 2, len(data)
    while True:
        while i < n and data[i] != 0xFF:  # libjpeg skips stray bytes before a marker
            i += 1
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            raise _unknown("JPEG", "no frame header (SOF) before the end of the data")
        marker = data[i]
        i += 1
        if marker in _JPEG_STANDALONE or marker == 0x00:
            continue
        if marker in (_JPEG_SOS, _JPEG_EOI, 0xD8):
            raise _unknown("JPEG", f"marker 0x{marker:02X} before any frame header (SOF)")
        if i + 2 > n:
            raise _unknown("JPEG", "truncated segment length")
        length = struct.unpack(">H", data[i : i + 2])[0]
        if length < 2:
            raise ImageError("corrupt", f"JPEG segment 0x{marker:02X} has length {length} < 2")
        if marker in _JPEG_SOF:
            if length < 8 or i + 8 > n:
                raise _unknown("JPEG", "truncated frame header (SOF)")
            height, width = struct.unpack(">HH", data[i + 3 : i + 7])
            components = data[i + 7]
            if components not in (1, 3, 4):
                raise ImageError(
                    "corrupt", f"JPEG with {components} colour components (1, 3 or 4 decode)"
                )
            if height == 0:  # the height would come from a DNL marker after the first scan
                raise _unknown("JPEG", "height 0 in the frame header (DNL)")
            return ImageInfo("JPEG", width, height)
        i += length


def _gif(data: bytes, max_frames: int | None) -> ImageInfo:
    """Logical screen plus every image descriptor, as giflib's DGifSlurp reads them."""
    if len(data) < 13:
        raise _unknown("GIF", "truncated logical screen descriptor")
    screen_w, screen_h, flags = struct.unpack("<HHB", data[6:11])
    if screen_w == 0 or screen_h == 0:
        raise _unknown("GIF", f"declared size {screen_w}x{screen_h}")
    i = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames, frame_pixels, width, height, n = 0, 0, 0, 0, len(data)

    def skip_sub_blocks(at: int) -> int:
        while at < n:
            size = data[at]
            at += 1 + size
            if size == 0:
                return at
        return n  # truncated: giflib stops here too

    while i < n:
        block = data[i]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: label, then sub-blocks
            i = skip_sub_blocks(i + 2)
            continue
        if block != 0x2C:
            raise ImageError("corrupt", f"GIF block type 0x{block:02X} at byte {i}")
        if i + 10 > n:
            break  # giflib cannot read this descriptor: no frame allocated
        fw, fh, fflags = struct.unpack("<HHB", data[i + 5 : i + 10])
        if fw == 0 or fh == 0:
            raise ImageError("corrupt", f"GIF frame {frames} has size {fw}x{fh}")
        frames += 1
        frame_pixels += fw * fh
        width, height = max(width, fw), max(height, fh)
        if max_frames is not None and frames > max_frames:
            raise ImageError(
                "too_large", f"GIF with more than {max_frames} frames (every frame is decoded)"
            )
        i += 10 + (3 << ((fflags & 7) + 1) if fflags & 0x80 else 0)
        i = skip_sub_blocks(i + 1)  # LZW minimum code size, then the image data
    if frames == 0:
        raise ImageError("corrupt", "GIF without any image frame")
    # giflib's frames, then the one canvas-sized frame TF returns.
    return ImageInfo("GIF", width, height, frames, frame_pixels + width * height)


def _bmp(data: bytes) -> ImageInfo:
    if len(data) < 26:
        raise _unknown("BMP", "truncated header")
    header_size = struct.unpack("<I", data[14:18])[0]
    if header_size == _BMP_CORE_SIZE:
        raise ImageError(
            "corrupt", "OS/2 1.x BMP (12-byte core header): TensorFlow would misread its size"
        )
    if header_size not in _BMP_INFO_SIZES:
        raise _unknown("BMP", f"unknown DIB header size {header_size}")
    width, height = struct.unpack("<ii", data[18:26])
    if width <= 0 or height in (0, -(2**31)):
        raise ImageError("corrupt", f"BMP with width {width} and height {height}")
    return ImageInfo("BMP", width, abs(height))


# --------------------------------------------------------------------------- checks


def read_info(data: bytes, max_gif_frames: int | None = None) -> ImageInfo:
    """Format, size and decoded pixels from the bytes; ImageError when they cannot be known.

    `max_gif_frames` stops the GIF frame scan early (None scans every frame).
    """
    fmt = sniff(data)
    if fmt is None:
        raise ImageError(
            "not_an_image", f"not a PNG, JPEG, GIF or BMP image (starts with {data[:8]!r})"
        )
    if fmt == "GIF":
        info = _gif(data, max_gif_frames)
    else:
        info = {"PNG": _png, "JPEG": _jpeg, "BMP": _bmp}[fmt](data)
        info = dataclasses.replace(info, decoded_pixels=info.width * info.height)
    if info.width == 0 or info.height == 0:
        raise _unknown(fmt, f"declared size {info.width}x{info.height}")
    return info


def check(data: bytes, limits: Limits) -> ImageInfo:
    """The image's info if it may be decoded under `limits`, else ImageError saying why not."""
    if not data:
        raise ImageError("empty", "empty image bytes")
    if len(data) > limits.max_bytes:
        raise ImageError(
            "too_large", f"{len(data)} bytes is above the limit of {limits.max_bytes} bytes"
        )
    info = read_info(data, limits.max_gif_frames)
    if info.decoded_pixels > limits.max_pixels:
        what = f"{info.format} image of {info.width}x{info.height} pixels"
        if info.frames > 1:
            what += f" with {info.frames} frames ({info.decoded_pixels} pixels decoded)"
        raise ImageError("too_large", f"{what} is above the limit of {limits.max_pixels} pixels")
    return info
