"""Request bodies -> image bytes: a raw image, or a multipart form with one file per image.

The body is read with a hard cap before anything else (a declared Content-Length over the cap
is refused without reading a byte), so a client cannot make the gateway buffer more than
`max_body_bytes`. The magic bytes are checked here, with the same sniffing the importer and the
model use (hoh.imagecheck), so a non-image never reaches Triton; the model's own checks
(pixels, decoding) still run there and come back as `image <i>: ...` errors.
"""

from __future__ import annotations

from typing import AsyncIterator

from hoh import imagecheck
from hoh.serving.gateway.errors import ApiError

RAW_TYPES = ("application/octet-stream", "image/png", "image/jpeg", "image/gif", "image/bmp")
MULTIPART = "multipart/form-data"


class Disconnected(Exception):
    """The client went away before sending its whole body."""


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def check_declared_length(content_length: str | None, max_bytes: int) -> None:
    if content_length is None:
        return
    try:
        declared = int(content_length)
    except ValueError:
        raise ApiError(400, "bad_request", "Content-Length is not a number") from None
    if declared > max_bytes:
        raise ApiError(
            413, "body_too_large", f"the body is {declared} bytes; the limit is {max_bytes} bytes"
        )


async def read_capped(chunks: AsyncIterator[bytes], max_bytes: int) -> bytes:
    """The whole body, or 413 as soon as it passes `max_bytes` (the rest is never read)."""
    data = bytearray()
    async for chunk in chunks:
        data.extend(chunk)
        if len(data) > max_bytes:
            raise ApiError(
                413, "body_too_large", f"the body is over the limit of {max_bytes} bytes"
            )
    return bytes(data)


def check_images(images: list[bytes], max_images: int) -> list[bytes]:
    if not images:
        raise ApiError(400, "no_image", "the request holds no image (empty body)")
    if len(images) > max_images:
        raise ApiError(
            413,
            "too_many_images",
            f"the request holds {len(images)} images; the limit is {max_images}",
        )
    for i, data in enumerate(images):
        if not data:
            raise ApiError(400, "invalid_image", f"image {i}: empty")
        if imagecheck.sniff(data) is None:
            raise ApiError(400, "invalid_image", f"image {i}: not a PNG, JPEG, GIF or BMP image")
    return images


async def images_from_body(content_type: str, body: bytes, max_images: int) -> list[bytes]:
    """The images of a predict request, in order, or ApiError naming what is wrong."""
    kind = media_type(content_type or "")
    if kind in RAW_TYPES:
        return check_images([body] if body else [], max_images)
    if kind != MULTIPART:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type {kind or '(none)'!r} is not accepted; send one image as "
            f"{' / '.join(RAW_TYPES)} or several as {MULTIPART}",
        )
    from starlette.datastructures import Headers, UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream():
        yield body
        yield b""

    parser = MultiPartParser(
        Headers({"content-type": content_type}),
        stream(),
        max_files=max_images + 1,
        max_fields=max_images + 16,
        max_part_size=64 * 1024,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        text = str(exc)
        if "Too many files" in text:
            raise ApiError(
                413, "too_many_images", f"the request holds more than {max_images} images"
            ) from None
        raise ApiError(400, "bad_multipart", f"the multipart body is unreadable: {text}") from None
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        images = [await f.read() for f in files]
    finally:
        await form.close()
    return check_images(images, max_images)
