"""Procedural silhouettes for the demo data set, one drawing function per class.

A class is defined by shape and articulation only: every function draws on a transparent square
canvas in the two colours it is given, and placement, size, rotation, colours and background are
chosen by hoh.data.demo from distributions shared by all classes. That keeps the task about
shape, as with the real photos, instead of a shortcut a model could learn from colour.

Angles are in degrees from straight down, positive towards the way the figure faces (right);
the caller mirrors half the figures to face left.
"""

from __future__ import annotations

import math
import random
from typing import Callable, Sequence

from PIL import Image, ImageDraw

Point = tuple[float, float]
Colour = tuple[int, int, int]
FigureFn = Callable[[random.Random, int, Colour, Colour], Image.Image]


def shade(colour: Colour, factor: float) -> Colour:
    """Darker (factor < 1) copy of a colour, for limbs on the far side of the body."""
    return tuple(max(0, min(255, round(c * factor))) for c in colour)  # type: ignore[return-value]


def _step(start: Point, angle: float, length: float) -> Point:
    rad = math.radians(angle)
    return start[0] + length * math.sin(rad), start[1] + length * math.cos(rad)


def _chain(start: Point, angles: Sequence[float], lengths: Sequence[float]) -> list[Point]:
    points = [start]
    for angle, length in zip(angles, lengths):
        points.append(_step(points[-1], angle, length))
    return points


def _limb(draw: ImageDraw.ImageDraw, points: Sequence[Point], width: float, fill: Colour) -> None:
    """A jointed limb: thick segments with round joints and ends."""
    w = max(1, round(width))
    draw.line(points, fill=fill, width=w, joint="curve")
    for x, y in points:
        draw.ellipse((x - w / 2, y - w / 2, x + w / 2, y + w / 2), fill=fill)


def _oval(cx: float, cy: float, rx: float, ry: float, angle: float, n: int = 28) -> list[Point]:
    """Polygon of an ellipse rotated by `angle` degrees (counter-clockwise on screen)."""
    rad = math.radians(angle)
    cos_a, sin_a = math.cos(rad), math.sin(rad)
    points = []
    for i in range(n):
        t = 2 * math.pi * i / n
        x, y = rx * math.cos(t), ry * math.sin(t)
        points.append((cx + x * cos_a + y * sin_a, cy - x * sin_a + y * cos_a))
    return points


def _canvas(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    return layer, ImageDraw.Draw(layer)


def draw_horse(rng: random.Random, size: int, coat: Colour, mane: Colour) -> Image.Image:
    """Horizontal body on four jointed legs, neck and head raised or grazing, swinging tail."""
    layer, draw = _canvas(size)
    length = size * 0.4 * rng.uniform(0.9, 1.1)
    cx, cy = size * 0.48, size * 0.45
    body_h = length * rng.uniform(0.34, 0.46)
    leg_len = length * rng.uniform(0.33, 0.42)
    leg_w = length * rng.uniform(0.07, 0.1)
    gait = rng.choice(("stand", "walk", "gallop"))

    def leg_angles(front: bool, phase: float) -> tuple[float, float]:
        if gait == "stand":
            upper = rng.uniform(-8, 8)
        elif gait == "walk":
            upper = 22 * math.sin(phase) + rng.uniform(-5, 5)
        else:
            upper = (rng.uniform(25, 50) if front else rng.uniform(-50, -25)) * math.cos(phase)
        knee = rng.uniform(0, 15) if gait == "stand" else rng.uniform(0, 60)
        # Front knees bend backwards, hind hocks forwards, as in the animal.
        return upper, upper - knee if front else upper + knee * 0.6

    hips = [(cx - length * 0.32, False), (cx + length * 0.3, True)]
    for far in (True, False):  # far-side legs first, darker, so the near ones overlap them
        for hip_x, front in hips:
            x = hip_x + (length * 0.05 if far else 0)
            phase = rng.uniform(0, 2 * math.pi)
            upper, lower = leg_angles(front, phase)
            points = _chain((x, cy + body_h * 0.2), (upper, lower), (leg_len, leg_len))
            colour = shade(coat, 0.7) if far else coat
            _limb(draw, points, leg_w, colour)
            hx, hy = points[-1]
            draw.ellipse(
                (hx - leg_w * 0.6, hy - leg_w * 0.4, hx + leg_w * 0.6, hy + leg_w * 0.5),
                fill=shade(mane, 0.6),
            )

    tail_root = (cx - length * 0.48, cy - body_h * 0.25)
    swing = rng.uniform(-20, 50)
    tail = _chain(tail_root, (-60 + swing, -20 + swing * 0.5, -5), (length * 0.18,) * 3)
    _limb(draw, tail, length * rng.uniform(0.05, 0.09), mane)

    draw.polygon(_oval(cx, cy, length / 2, body_h / 2, rng.uniform(-6, 6)), fill=coat)

    neck_angle = rng.choice((rng.uniform(120, 160), rng.uniform(40, 80)))  # head up or grazing
    neck_len = length * rng.uniform(0.4, 0.55)
    neck_base = (cx + length * 0.38, cy - body_h * 0.15)
    neck_end = _step(neck_base, neck_angle, neck_len)
    neck_w = length * rng.uniform(0.18, 0.24)
    _limb(draw, (neck_base, neck_end), neck_w, coat)
    # The mane runs along the upper edge of the neck: offset perpendicular, towards the sky.
    dx, dy = math.sin(math.radians(neck_angle)), math.cos(math.radians(neck_angle))
    px, py = (dy, -dx) if -dx < 0 else (-dy, dx)
    mane_base = (neck_base[0] + px * neck_w * 0.4, neck_base[1] + py * neck_w * 0.4)
    _limb(draw, (mane_base, _step(mane_base, neck_angle, neck_len * 0.9)), length * 0.06, mane)

    head_angle = neck_angle - rng.uniform(70, 110)  # the muzzle points forward-down
    head_len = length * rng.uniform(0.26, 0.34)
    muzzle = _step(neck_end, head_angle, head_len)
    hx, hy = (neck_end[0] + muzzle[0]) / 2, (neck_end[1] + muzzle[1]) / 2
    draw.polygon(_oval(hx, hy, head_len * 0.6, length * 0.075, head_angle - 90), fill=coat)
    ear = _step(neck_end, neck_angle + 15, length * 0.13)
    _limb(draw, (neck_end, ear), length * 0.04, coat)
    return layer


def draw_human(rng: random.Random, size: int, clothes: Colour, skin: Colour) -> Image.Image:
    """Upright torso with head, jointed arms and legs in standing, walking or waving poses."""
    layer, draw = _canvas(size)
    height = size * 0.8 * rng.uniform(0.9, 1.05)
    cx, top = size * 0.5, size * 0.5 - height / 2
    head_r = height * rng.uniform(0.06, 0.075)
    shoulder_y = top + head_r * 2 + height * 0.04
    hip_y = top + height * rng.uniform(0.5, 0.56)
    shoulder_w = height * rng.uniform(0.1, 0.13)
    hip_w = height * rng.uniform(0.07, 0.1)
    leg_len = (top + height - hip_y) / 2 * rng.uniform(0.95, 1.05)
    arm_len = height * rng.uniform(0.15, 0.18)
    pose = rng.choice(("stand", "walk", "run", "wave", "arms_out"))
    lean = rng.uniform(-6, 6) + (10 if pose == "run" else 0)
    trousers = rng.choice((clothes, shade(clothes, 0.6), skin))

    def arm(side: int, far: bool) -> None:
        if pose == "wave" and side > 0:
            upper, lower = rng.uniform(120, 170), rng.uniform(150, 200)
        elif pose == "arms_out":
            upper, lower = side * rng.uniform(60, 100), side * rng.uniform(60, 120)
        elif pose in ("walk", "run"):
            swing = (40 if pose == "run" else 22) * side
            upper, lower = swing, swing + rng.uniform(10, 70 if pose == "run" else 30)
        else:
            upper, lower = side * rng.uniform(5, 20), side * rng.uniform(0, 30)
        start = (cx + side * shoulder_w * 0.85, shoulder_y + height * 0.02)
        points = _chain(start, (upper, lower), (arm_len, arm_len * 0.95))
        colour = shade(clothes, 0.75) if far else clothes
        _limb(draw, points[:2], height * 0.05, colour)
        _limb(draw, points[1:], height * 0.042, shade(skin, 0.8) if far else skin)

    def leg(side: int, far: bool) -> None:
        if pose in ("walk", "run"):
            stride = (35 if pose == "run" else 18) * side
            upper, lower = -stride, -stride - (rng.uniform(20, 70) if side < 0 else 0)
        else:
            upper = side * rng.uniform(2, 14)
            lower = upper + rng.uniform(-5, 5)
        start = (cx + side * hip_w * 0.55, hip_y)
        points = _chain(start, (upper, lower), (leg_len, leg_len))
        _limb(draw, points, height * 0.065, shade(trousers, 0.75) if far else trousers)
        fx, fy = points[-1]
        foot = height * 0.02
        draw.ellipse((fx - foot, fy - foot, fx + 3 * foot, fy + foot), fill=shade(trousers, 0.5))

    arm(-1, far=True)
    leg(-1, far=True)
    leg(1, far=False)
    torso = [
        (cx - shoulder_w, shoulder_y),
        (cx + shoulder_w, shoulder_y),
        (cx + hip_w, hip_y + height * 0.03),
        (cx - hip_w, hip_y + height * 0.03),
    ]
    draw.polygon(torso, fill=clothes)
    _limb(draw, ((cx, shoulder_y), (cx, shoulder_y - height * 0.03)), head_r * 0.8, skin)
    head_x = cx + math.sin(math.radians(lean)) * head_r
    draw.ellipse((head_x - head_r, top, head_x + head_r, top + head_r * 2.2), fill=skin)
    if rng.random() < 0.5:  # hair or a hat
        draw.chord(
            (head_x - head_r, top - head_r * 0.1, head_x + head_r, top + head_r * 1.6),
            180,
            360,
            fill=shade(clothes, 0.5),
        )
    arm(1, far=False)
    return layer.rotate(-lean, resample=Image.Resampling.BICUBIC, center=(cx, hip_y))


def draw_bird(rng: random.Random, size: int, plumage: Colour, accent: Colour) -> Image.Image:
    """Small body with head, beak and tail fan; wings spread at any flap angle, or folded."""
    layer, draw = _canvas(size)
    span = size * 0.8 * rng.uniform(0.85, 1.05)
    cx, cy = size * 0.5, size * 0.52
    body_len = span * rng.uniform(0.32, 0.42)
    body_h = body_len * rng.uniform(0.35, 0.48)
    perched = rng.random() < 0.3
    pitch = rng.uniform(-15, 15)

    tail_root = _step((cx, cy), -90 + pitch, body_len * 0.45)
    fan = rng.uniform(15, 35)
    tail_len = body_len * rng.uniform(0.35, 0.6)
    tail_tip = [_step(tail_root, -90 + pitch + d, tail_len) for d in (-fan, fan)]
    draw.polygon([tail_root, *tail_tip], fill=shade(plumage, 0.8))

    if perched:
        for dx in (-0.08, 0.06):
            hip = (cx + body_len * dx, cy + body_h * 0.35)
            _limb(
                draw,
                _chain(hip, (rng.uniform(-10, 10), 20), (body_h * 0.6, body_h * 0.3)),
                max(2.0, span * 0.012),
                shade(accent, 0.6),
            )

    def wing(flap: float, colour: Colour) -> None:
        root = (cx + body_len * 0.05, cy - body_h * 0.1)
        reach = span * 0.5 * (0.55 if perched else 1.0)
        tip = _step(root, 180 - flap if not perched else -100 + pitch, reach)
        elbow = _step(root, 180 - flap * 0.7 if not perched else -95 + pitch, reach * 0.5)
        trailing = _step(elbow, -90 if not perched else -80, body_len * 0.35)
        draw.polygon([root, elbow, tip, trailing, (cx - body_len * 0.2, cy)], fill=colour)

    flap = rng.uniform(-60, 80)  # negative = wings below the body (down-stroke)
    wing(flap + rng.uniform(-15, 15), shade(plumage, 0.7))
    draw.polygon(_oval(cx, cy, body_len / 2, body_h / 2, -pitch), fill=plumage)
    head_c = _step((cx, cy), 90 + pitch - rng.uniform(15, 40), body_len * 0.5)
    head_r = body_h * rng.uniform(0.38, 0.5)
    draw.ellipse(
        (head_c[0] - head_r, head_c[1] - head_r, head_c[0] + head_r, head_c[1] + head_r),
        fill=plumage,
    )
    beak_dir = 90 + pitch + rng.uniform(-20, 30)
    beak_len = head_r * rng.uniform(0.9, 1.8)
    beak = [
        _step(head_c, beak_dir - 35, head_r * 0.8),
        _step(head_c, beak_dir + 35, head_r * 0.8),
        _step(head_c, beak_dir, head_r + beak_len),
    ]
    draw.polygon(beak, fill=accent)
    if not perched or rng.random() < 0.5:
        wing(flap, plumage)
    return layer


# Folder name -> (file prefix, drawing). Add a class here and it is available to the demo.
FIGURES: dict[str, tuple[str, FigureFn]] = {
    "horses": ("horse", draw_horse),
    "humans": ("human", draw_human),
    "birds": ("bird", draw_bird),
}
