"""Backgrounds, clutter and noise for the demo images, identical in distribution for every class.

Nothing here knows the class being drawn: that is the point. Whatever a model can learn from
the scene (brightness, hue, texture, horizon, stray shapes) carries no information about the
label, so the demo set can only be solved from the figure's shape.
"""

from __future__ import annotations

import colorsys
import random

from PIL import Image, ImageDraw, ImageFilter

Colour = tuple[int, int, int]


def random_colour(rng: random.Random) -> Colour:
    """Any hue; saturation and brightness spread wide so no class owns a region of colour space."""
    h, s, v = rng.random(), rng.uniform(0.0, 0.9), rng.uniform(0.12, 0.98)
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return round(r * 255), round(g * 255), round(b * 255)


def luminance(colour: Colour) -> float:
    r, g, b = colour
    return 0.299 * r + 0.587 * g + 0.114 * b


def contrasting_colour(rng: random.Random, against: Colour, min_delta: float = 45) -> Colour:
    """A figure colour that stays visible on the background; a few tries, then the best one."""

    def delta(colour: Colour) -> float:
        return abs(luminance(colour) - luminance(against))

    best = random_colour(rng)
    for _ in range(8):
        if delta(best) >= min_delta:
            return best
        best = max(best, random_colour(rng), key=delta)
    return best


def _vertical_gradient(size: tuple[int, int], top: Colour, bottom: Colour) -> Image.Image:
    mask = Image.linear_gradient("L").resize(size, Image.Resampling.BILINEAR)
    return Image.composite(Image.new("RGB", size, bottom), Image.new("RGB", size, top), mask)


def _sky_and_ground(rng: random.Random, size: int) -> Image.Image:
    horizon = round(size * rng.uniform(0.4, 0.85))
    image = _vertical_gradient((size, horizon), random_colour(rng), random_colour(rng))
    ground = _vertical_gradient((size, size - horizon), random_colour(rng), random_colour(rng))
    canvas = Image.new("RGB", (size, size))
    canvas.paste(image, (0, 0))
    canvas.paste(ground, (0, horizon))
    return canvas


def _angled_gradient(rng: random.Random, size: int) -> Image.Image:
    big = _vertical_gradient((size * 2, size * 2), random_colour(rng), random_colour(rng))
    big = big.rotate(rng.uniform(0, 360), resample=Image.Resampling.BILINEAR)
    offset = size // 2
    return big.crop((offset, offset, offset + size, offset + size))


def _blotches(rng: random.Random, size: int) -> Image.Image:
    canvas = Image.new("RGB", (size, size), random_colour(rng))
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.randint(4, 12)):
        x, y, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.05, 0.3) * size
        draw.ellipse((x - r, y - r * rng.uniform(0.4, 1), x + r, y + r), fill=random_colour(rng))
    return canvas.filter(ImageFilter.GaussianBlur(size * 0.03))


def background(rng: random.Random, size: int) -> Image.Image:
    kind = rng.choices(("sky", "flat", "gradient", "blotches"), weights=(4, 2, 2, 2))[0]
    if kind == "sky":
        return _sky_and_ground(rng, size)
    if kind == "gradient":
        return _angled_gradient(rng, size)
    if kind == "blotches":
        return _blotches(rng, size)
    return Image.new("RGB", (size, size), random_colour(rng))


def add_clutter(rng: random.Random, image: Image.Image, count: int, max_frac: float) -> None:
    """Random posts, bars, discs and polygons: shapes that share parts with every figure."""
    size = image.width
    draw = ImageDraw.Draw(image)
    for _ in range(count):
        colour = random_colour(rng)
        x, y = rng.uniform(0, size), rng.uniform(0, size)
        extent = rng.uniform(0.04, max_frac) * size
        half = extent / 2
        kind = rng.choice(("disc", "box", "bar", "polygon"))
        if kind == "disc":
            draw.ellipse((x - half, y - half, x + half, y + half), fill=colour)
        elif kind == "box":
            draw.rectangle((x, y, x + extent, y + extent * rng.uniform(0.2, 1.5)), fill=colour)
        elif kind == "bar":
            end = (x + rng.uniform(-1, 1) * extent, y + rng.uniform(-1, 1) * extent)
            width = max(1, round(extent * rng.uniform(0.05, 0.2)))
            draw.line(((x, y), end), fill=colour, width=width)
        else:
            points = [
                (x + rng.uniform(-1, 1) * half, y + rng.uniform(-1, 1) * half)
                for _ in range(rng.randint(3, 6))
            ]
            draw.polygon(points, fill=colour)


def add_noise(rng: random.Random, image: Image.Image) -> Image.Image:
    """Film grain and a low-frequency texture, from seeded bytes so the output is reproducible."""
    size = image.size
    grain_strength = rng.uniform(0.0, 0.18)
    if grain_strength > 0.01:
        grain = Image.frombytes("L", size, rng.randbytes(size[0] * size[1])).convert("RGB")
        image = Image.blend(image, grain, grain_strength)
    cells = rng.randint(4, 24)
    texture = Image.frombytes("RGB", (cells, cells), rng.randbytes(cells * cells * 3))
    texture = texture.resize(size, Image.Resampling.BICUBIC)
    return Image.blend(image, texture, rng.uniform(0.0, 0.25))
