"""`hoh data demo`: a built-in image set, so the pipeline runs without downloading anything.

Images are procedural silhouettes (hoh.data.figures) on procedural scenes (hoh.data.scenes),
drawn with Pillow. The set is meant to be learnable by a small CNN in minutes yet not trivial:
the figure's size, position, rotation, pose and colours and the whole background are drawn from
the same distributions for every class, so only shape separates them.

Every image has its own random stream seeded by (seed, class, index). The same seed therefore
gives byte-identical files, and a smaller `per_class` gives a prefix of a larger set, so a test
that needs 10 images sees the first 10 of the 150 the demo run uses.
"""

from __future__ import annotations

import random
import secrets
import shutil
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageStat

from hoh.data.figures import FIGURES
from hoh.data.scenes import add_clutter, add_noise, background, contrasting_colour, random_colour
from hoh.errors import HohError

DEFAULT_CLASSES = ("horses", "humans")
DEFAULT_PER_CLASS = 150
DEFAULT_SIZE = 300
MIN_SIZE, MAX_SIZE = 32, 2048
PNG_LEVEL = 1  # grain makes pixels incompressible: level 6 is 3x slower for no smaller files
RGBA_SHARE = 0.5  # the real horse-or-human files are RGBA; the pipeline must handle both


def known_classes() -> tuple[str, ...]:
    return tuple(FIGURES)


def _place(
    rng: random.Random, figure: Image.Image, size: int
) -> tuple[Image.Image, tuple[int, int]]:
    """Scale, mirror, tilt and position a figure; up to ~10% of it may leave the frame."""
    figure = figure.crop(figure.getbbox())
    if rng.random() < 0.5:
        figure = figure.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    scale = rng.uniform(0.45, 0.9) * size / max(figure.size)
    scaled = (max(1, round(figure.width * scale)), max(1, round(figure.height * scale)))
    figure = figure.resize(scaled, Image.Resampling.LANCZOS)
    figure = figure.rotate(rng.uniform(-12, 12), resample=Image.Resampling.BICUBIC, expand=True)

    def offset(extent: int) -> int:
        low, high = -0.1 * extent, size - 0.9 * extent
        return round(rng.uniform(min(low, high), max(low, high)))

    return figure, (offset(figure.width), offset(figure.height))


def render_image(cls: str, index: int, size: int = DEFAULT_SIZE, seed: int = 0) -> Image.Image:
    """Image `index` of class `cls`; a pure function of its arguments."""
    _, draw_figure = FIGURES[cls]
    rng = random.Random(f"hoh-demo:{seed}:{cls}:{index}")
    scene = background(rng, size)
    add_clutter(rng, scene, rng.randint(0, 4), max_frac=0.35)
    scene_colour = tuple(round(c) for c in ImageStat.Stat(scene).mean)
    primary = contrasting_colour(rng, scene_colour)  # type: ignore[arg-type]
    figure = draw_figure(rng, size * 2, primary, random_colour(rng))  # 2x: antialiased on resize
    figure, position = _place(rng, figure, size)
    scene.paste(figure, position, figure)
    add_clutter(rng, scene, rng.choice((0, 0, 1, 2)), max_frac=0.15)  # small occluders in front
    scene = add_noise(rng, scene)
    return scene.convert("RGBA") if rng.random() < RGBA_SHARE else scene


def _check_arguments(classes: Sequence[str], per_class: int, size: int) -> None:
    unknown = [c for c in classes if c not in FIGURES]
    if unknown:
        raise HohError(f"unknown demo class(es) {', '.join(unknown)}; known: {', '.join(FIGURES)}")
    if not classes or len(set(classes)) != len(classes):
        raise HohError(f"demo classes must be distinct and at least one, got {list(classes)}")
    if per_class < 1:
        raise HohError(f"--per-class must be at least 1, got {per_class}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise HohError(f"--size must be between {MIN_SIZE} and {MAX_SIZE}, got {size}")


def make_demo_dataset(
    out_dir: str | Path,
    per_class: int = DEFAULT_PER_CLASS,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    classes: Sequence[str] = DEFAULT_CLASSES,
) -> dict[str, int]:
    """Write OUT/<class>/<prefix>-0001.png ...; returns the number of images per class.

    OUT must not exist or be empty: mixing demo images into other data would be silent damage.
    The set is drawn in a hidden sibling directory and renamed into place when complete, so a
    caller that generates it "on first use" can take the existence of OUT as proof it is whole.
    """
    classes = tuple(classes)
    _check_arguments(classes, per_class, size)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise HohError(f"demo output {out_dir} already exists and is not empty; choose a new path")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{secrets.token_hex(4)}"
    digits = max(4, len(str(per_class)))
    try:
        for cls in classes:
            prefix, _ = FIGURES[cls]
            (tmp / cls).mkdir(parents=True)
            for index in range(1, per_class + 1):
                image = render_image(cls, index, size, seed)
                path = tmp / cls / f"{prefix}-{index:0{digits}d}.png"
                image.save(path, format="PNG", compress_level=PNG_LEVEL)
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {cls: per_class for cls in classes}
