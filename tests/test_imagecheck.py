"""The shared image validator (hoh/imagecheck.py), tested with the decompression bombs themselves.

Each bomb is built at its header level (what the validator reads) from a real Pillow image, so
the bytes are the attack TensorFlow would be fed; the decoder is only run on the small, legal
variants to show the size read here is the size TensorFlow decodes.
"""

from __future__ import annotations

import struct

import pytest
from imagegen import animated_gif, encode, pattern, write

from hoh import imagecheck
from hoh.data.images import ImageRejected, read_header
from hoh.serving import triton_model as tm

LIMITS = imagecheck.Limits(max_bytes=10**7, max_pixels=10**6, max_gif_frames=50)


def _sof_offset(jpeg: bytes) -> int:
    return next(
        i for i in range(2, len(jpeg) - 1) if jpeg[i] == 0xFF and jpeg[i + 1] in (0xC0, 0xC2)
    )


def jpeg_bomb_behind_stray_byte(width: int = 20000, height: int = 20000) -> bytes:
    """A real JPEG whose SOF claims width x height, hidden behind a byte libjpeg skips.

    libjpeg discards stray bytes between segments ("extraneous bytes before marker") and decodes
    at the SOF's size; the old marker walk stopped at the stray byte and let the file through.
    """
    jpeg = encode(pattern(1, (16, 16), mode="L"), "JPEG")
    sof = _sof_offset(jpeg)
    body = bytearray(jpeg)
    body[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(body[:sof]) + b"\x00" + bytes(body[sof:])


def gif_frame_bomb(frames: int = 200, size: int = 100) -> bytes:
    """A GIF whose logical screen is small but whose frames add up: giflib decodes every one."""
    return animated_gif(3, size=(size, size), frames=frames)


def test_jpeg_bomb_behind_a_stray_byte_is_rejected():
    bomb = jpeg_bomb_behind_stray_byte()
    with pytest.raises(imagecheck.ImageError, match=r"JPEG image of 20000x20000 pixels") as exc:
        imagecheck.check(bomb, LIMITS)
    assert exc.value.kind == "too_large"
    with pytest.raises(tm.InputError, match="input 2: JPEG image of 20000x20000 pixels is above"):
        tm.check_image(2, bomb, 10**7, 10**6)


def test_stray_byte_jpeg_decodes_at_the_size_read_here():
    tf = pytest.importorskip("tensorflow")
    small = jpeg_bomb_behind_stray_byte(width=24, height=8)
    assert imagecheck.check(small, LIMITS).decoded_pixels == 24 * 8
    decoded = tf.io.decode_image(small, channels=3, expand_animations=False)
    assert tuple(decoded.shape) == (8, 24, 3)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\xff\xd8\xff\xe0\x00\x04ab\xff\xd9", "no frame header|marker 0xD9 before any frame"),
        (b"\xff\xd8\xff\xda\x00\x02" + b"\x12" * 40, "marker 0xDA before any frame header"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "no frame header"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDX" + b"\x00" * 20, "no IHDR"),
        (b"BM" + b"\x00" * 12 + struct.pack("<I", 99) + b"\x00" * 20, "DIB header size 99"),
        (
            b"GIF89a\x00\x00\x00\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x00;",
            "declared size 0x0",
        ),
    ],
)
def test_an_image_whose_size_cannot_be_established_is_rejected(data, reason):
    with pytest.raises(imagecheck.ImageError, match=reason):
        imagecheck.check(data, LIMITS)


def test_progressive_and_exif_jpegs_report_their_size():
    image = pattern(2, (41, 17))
    exif = image.getexif()
    exif[0x010E] = "x" * 5000
    for data in (encode(image, "JPEG", progressive=True), encode(image, "JPEG", exif=exif)):
        assert imagecheck.check(data, LIMITS).decoded_pixels == 41 * 17


def test_gif_frames_count_against_the_pixel_budget():
    bomb = gif_frame_bomb()
    info = imagecheck.read_info(bomb)
    assert (info.width, info.height, info.frames) == (100, 100, 200)
    assert tm.image_format_and_size(bomb) == ("GIF", (100, 100))  # all the old check looked at
    with pytest.raises(imagecheck.ImageError, match="more than 50 frames"):
        imagecheck.check(bomb, LIMITS)
    few_frames = imagecheck.Limits(10**7, 10**6, max_gif_frames=1000)
    with pytest.raises(imagecheck.ImageError, match=r"with 200 frames \(2010000 pixels decoded\)"):
        imagecheck.check(bomb, few_frames)


def test_gif_frame_larger_than_its_screen_counts_at_its_own_size():
    gif = bytearray(animated_gif(4, size=(10, 10), frames=1))
    at = gif.index(b"\x2c", 13)  # the first image descriptor
    gif[at + 5 : at + 9] = struct.pack("<HH", 5000, 5000)
    with pytest.raises(imagecheck.ImageError, match="above the limit"):
        imagecheck.check(bytes(gif), LIMITS)


def test_animated_gif_decodes_every_frame_counted_here():
    tf = pytest.importorskip("tensorflow")
    gif = animated_gif(5, size=(30, 20), frames=4)
    info = imagecheck.check(gif, LIMITS)
    frames = tf.io.decode_image(gif, channels=3, expand_animations=True)
    assert (info.frames, info.height, info.width) == tuple(frames.shape[:3])


def _bmp(width: int, height: int, header_size: int = 40) -> bytes:
    """A Pillow BMP with its header's size fields rewritten (pixels of the real 12x7 image)."""
    data = bytearray(encode(pattern(6, (12, 7)), "BMP"))
    data[14:18] = struct.pack("<I", header_size)
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def test_bmp_sizes_follow_tensorflow():
    tf = pytest.importorskip("tensorflow")
    top_down = _bmp(12, -7)
    assert imagecheck.check(top_down, LIMITS).decoded_pixels == 12 * 7
    assert tuple(tf.io.decode_image(top_down, channels=3).shape) == (7, 12, 3)
    with pytest.raises(imagecheck.ImageError, match="BMP with width -12"):
        imagecheck.check(_bmp(-12, 7), LIMITS)
    with pytest.raises(imagecheck.ImageError, match="height -2147483648"):
        imagecheck.check(_bmp(12, -(2**31)), LIMITS)
    with pytest.raises(imagecheck.ImageError, match="OS/2 1.x"):
        imagecheck.check(_bmp(12, 7, header_size=12), LIMITS)
    with pytest.raises(imagecheck.ImageError, match="BMP image of 5000x5000"):
        imagecheck.check(_bmp(5000, -5000), LIMITS)


def test_request_pixels_add_up():
    infos = [
        tm.check_image(i, encode(pattern(i, (100, 100)), "PNG"), 10**7, 10**6) for i in range(3)
    ]
    tm.check_request_pixels(infos, 30_000)
    with pytest.raises(
        tm.InputError,
        match="request decodes to 30000 pixels in 3 images; the limit is 29999 pixels",
    ):
        tm.check_request_pixels(infos, 29_999)


def test_the_importer_refuses_what_the_server_refuses(tmp_path):
    """Same validator: no image is trained on that the server would refuse (and vice versa)."""
    gif = write(tmp_path / "frames.gif", gif_frame_bomb(frames=120, size=100))
    jpeg = write(tmp_path / "bomb.jpg", jpeg_bomb_behind_stray_byte())
    with pytest.raises(ImageRejected) as exc:
        read_header(gif, max_pixels=10**6)
    assert exc.value.kind == "too_large" and "frames" in exc.value.reason
    with pytest.raises(ImageRejected) as exc:
        read_header(jpeg, max_pixels=10**6)
    assert exc.value.kind in ("too_large", "corrupt")
    assert (
        read_header(write(tmp_path / "ok.gif", animated_gif(1)), max_pixels=10**6).format == "GIF"
    )


def test_decoded_size_matches_for_every_format():
    tf = pytest.importorskip("tensorflow")
    for fmt in ("PNG", "JPEG", "GIF", "BMP"):
        data = encode(pattern(9, (33, 21)), fmt)
        info = imagecheck.check(data, LIMITS)
        decoded = tf.io.decode_image(data, channels=3, expand_animations=False)
        assert (info.format, info.height, info.width) == (fmt, *decoded.shape[:2])


def _gif_with_frame_sizes(sizes) -> bytes:
    """A real two-frame GIF whose image descriptors are rewritten to `sizes` (w, h)."""
    gif = bytearray(animated_gif(8, size=(8, 8), frames=len(sizes)))
    at = 13 + (3 << ((gif[10] & 7) + 1) if gif[10] & 0x80 else 0)
    for size in sizes:
        while gif[at] == 0x21:  # extensions: label, then sub-blocks
            at += 2
            while gif[at]:
                at += 1 + gif[at]
            at += 1
        assert gif[at] == 0x2C
        gif[at + 5 : at + 9] = struct.pack("<HH", *size)
        flags = gif[at + 9]
        at += 11 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
        while gif[at]:
            at += 1 + gif[at]
        at += 1
    return bytes(gif)


def test_gif_canvas_is_the_widest_frame_by_the_tallest_one():
    """Found by fuzzing: TF ignores the logical screen and sizes its canvas from the frames.

    Two thin frames (65535x1 and 1x65535) are 131070 pixels together, but TensorFlow's canvas
    for them is 65535x65535: 4.3 gigapixels, 12.9 GB as RGB.
    """
    bomb = _gif_with_frame_sizes([(65535, 1), (1, 65535)])
    info = imagecheck.read_info(bomb)
    assert (info.width, info.height) == (65535, 65535)
    with pytest.raises(imagecheck.ImageError, match="GIF image of 65535x65535 pixels"):
        imagecheck.check(bomb, imagecheck.Limits(10**7, 50_000_000, 100))


def test_gif_decodes_to_the_canvas_counted_here_whatever_its_screen_says():
    tf = pytest.importorskip("tensorflow")
    gif = bytearray(animated_gif(9, size=(30, 20), frames=3))
    gif[6:10] = struct.pack("<HH", 500, 400)  # a logical screen TF does not use
    info = imagecheck.check(bytes(gif), LIMITS)
    decoded = tf.io.decode_image(bytes(gif), channels=3, expand_animations=False)
    assert (info.width, info.height) == (30, 20) and tuple(decoded.shape) == (20, 30, 3)
