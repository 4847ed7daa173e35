"""Coverage-guided fuzzing (atheris) of the image validators that stand before TensorFlow.

    python -m bench.fuzz_images --seconds 300      # the run reported in docs/BENCHMARKS.md
    python -m bench.fuzz_images --runs 3000        # the short run `make test` does

Both entry points are fuzzed with every input: the Triton model's `check_image` and the
importer's `check_like_serving` (the same `hoh/imagecheck.py` under different limits). The
property: an input either is rejected, or TensorFlow decodes it (with the pipeline's own call)
within what the validator accounted for: exactly its height and width for PNG, JPEG and BMP, no
more than its canvas for a GIF (a truncated GIF decodes fewer frames). A violation raises,
and libFuzzer writes the input to `--out/findings/`. The process also runs under libFuzzer's
RSS limit, so an input that passed the checks and still made the decoder balloon is a finding
too. The seed corpus is generated here with Pillow (real PNG/JPEG/GIF/BMP headers, tiny images
so each accepted input decodes in well under a millisecond); nothing binary is committed.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

# Small limits keep every accepted input cheap to decode; the property does not depend on them.
MAX_BYTES = 1 << 16
MAX_PIXELS = 1 << 20
MAX_GIF_FRAMES = 16
RSS_LIMIT_MB = 3072


def seed_images() -> dict[str, bytes]:
    """name -> bytes: each format in the variants whose headers the validator parses."""
    from PIL import Image

    def enc(image, fmt, **options) -> bytes:
        buf = io.BytesIO()
        image.save(buf, fmt, **options)
        return buf.getvalue()

    rgb = Image.frombytes("RGB", (9, 7), bytes(range(189)))
    exif = rgb.getexif()
    exif[0x010E] = "seed"
    frames = [rgb.convert("P"), rgb.rotate(90, expand=True).convert("P")]
    bmp = bytearray(enc(rgb, "BMP"))
    bmp[22:26] = (-7).to_bytes(4, "little", signed=True)  # top-down rows
    return {
        "rgb.png": enc(rgb, "PNG"),
        "palette.png": enc(rgb.convert("P"), "PNG"),
        "gray16.png": enc(rgb.convert("I;16"), "PNG"),
        "rgba.png": enc(rgb.convert("RGBA"), "PNG"),
        "baseline.jpg": enc(rgb, "JPEG"),
        "progressive.jpg": enc(rgb, "JPEG", progressive=True),
        "exif.jpg": enc(rgb, "JPEG", exif=exif),
        "gray.jpg": enc(rgb.convert("L"), "JPEG"),
        "static.gif": enc(rgb.convert("P"), "GIF"),
        "animated.gif": enc(frames[0], "GIF", save_all=True, append_images=frames[1:], loop=0),
        "rgb.bmp": enc(rgb, "BMP"),
        "rgba.bmp": enc(rgb.convert("RGBA"), "BMP"),
        "top-down.bmp": bytes(bmp),
    }


class Violation(AssertionError):
    """An input passed a validator but decoded to more than it accounted for."""


def make_target(rejections, check_server, check_importer, decode):
    """The function libFuzzer calls with each input (pure: every collaborator is passed in).

    `rejections` are the exceptions with which the checks refuse an input.
    """

    def one_input(data: bytes) -> None:
        infos = []
        for name, check in (("server", check_server), ("importer", check_importer)):
            try:
                infos.append((name, check(data)))
            except rejections:
                continue
        if not infos:
            return
        shape = decode(data)
        if shape is None:  # TensorFlow refused it: safe
            return
        height, width = shape
        for name, info in infos:
            exact = (height, width) == (info.height, info.width)
            within = height <= info.height and width <= info.width
            if not (within if info.format == "GIF" else exact):
                raise Violation(
                    f"{name} check accepted {info} but TensorFlow decoded {width}x{height}"
                )

    return one_input


def _tf_decode():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    def decode(data: bytes):
        try:
            pixels = tf.io.decode_image(data, channels=3, expand_animations=False)
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
            return None
        return tuple(pixels.shape[:2])

    return decode


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--seconds", type=int, default=300, help="fuzzing time (default 300)")
    when.add_argument("--runs", type=int, help="number of inputs instead of a time budget")
    parser.add_argument(
        "--out",
        default="hoh-output/fuzz-images",
        help="corpus and findings directory (kept between runs)",
    )
    args = parser.parse_args(argv)
    try:
        import atheris
    except ImportError:
        sys.exit("atheris is not installed: uv pip install atheris (dev requirements)")

    with atheris.instrument_imports(include=["hoh.imagecheck"]):
        from hoh import imagecheck
    from hoh.data.images import ImageRejected, check_like_serving
    from hoh.serving import triton_model as tm

    out = Path(args.out)
    corpus, findings = out / "corpus", out / "findings"
    corpus.mkdir(parents=True, exist_ok=True)
    findings.mkdir(parents=True, exist_ok=True)
    for name, data in seed_images().items():
        (corpus / f"seed-{name}").write_bytes(data)

    target = make_target(
        (tm.InputError, ImageRejected),
        check_server=lambda d: tm.check_image(0, d, MAX_BYTES, MAX_PIXELS, MAX_GIF_FRAMES),
        check_importer=lambda d: (
            check_like_serving(d, MAX_PIXELS),
            imagecheck.read_info(d, MAX_GIF_FRAMES),
        )[1],
        decode=_tf_decode(),
    )
    budget = f"-runs={args.runs}" if args.runs is not None else f"-max_total_time={args.seconds}"
    atheris.Setup(
        [
            sys.argv[0],
            str(corpus),
            budget,
            f"-max_len={MAX_BYTES}",
            f"-rss_limit_mb={RSS_LIMIT_MB}",
            "-timeout=20",
            f"-artifact_prefix={findings}/",
            "-print_final_stats=1",
            "-seed=1",
        ],
        target,
    )
    atheris.Fuzz()


if __name__ == "__main__":
    main()
