"""Small, distinct image files for tests, made on the fly so no test depends on shared data."""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image


def pattern(seed: int, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> Image.Image:
    """A noisy image unique to `seed`, so every file has different bytes (and content hash)."""
    rng = random.Random(seed)
    width, height = size
    image = Image.frombytes("RGB", size, rng.randbytes(width * height * 3))
    return image.convert(mode)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def animated_gif(seed: int, size: tuple[int, int] = (40, 30), frames: int = 3) -> bytes:
    images = [pattern(seed + i, size).convert("P") for i in range(frames)]
    return encode(images[0], "GIF", save_all=True, append_images=images[1:], duration=50, loop=0)


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_classes(root: Path, counts: dict[str, int], seed: int = 0) -> dict[str, list[Path]]:
    """root/<class>/<i>.png with distinct PNGs; returns the files per class."""
    files: dict[str, list[Path]] = {}
    for c, (label, n) in enumerate(sorted(counts.items())):
        files[label] = [
            write(root / label / f"{i}.png", encode(pattern(seed * 1000 + c * 100 + i), "PNG"))
            for i in range(n)
        ]
    return files
