"""Train/eval assignment by content hash.

An image's split depends on its bytes, not on file names or import order, so re-importing the
same images (renamed, reorganised, or together with new ones) never moves an image from train to
eval: evaluation numbers stay comparable across spans and nothing leaks between splits.

The rule: eval iff int(sha256_hex[:8], 16) / 2**32 < eval_ratio. One correction keeps tiny classes
usable: a class with at least one image has one in train (otherwise the label vocabulary, learnt
from train, would not know it), and a class with at least two has one in eval (otherwise it is
never evaluated). The image moved is the one whose hash is closest to the boundary, so the
correction is itself deterministic.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Optional

TRAIN, EVAL, POOL = "train", "eval", "pool"


def eval_fraction(image_id: str) -> float:
    """Uniform in [0, 1) for a sha256 hex digest."""
    return int(image_id[:8], 16) / 2**32


def assign_splits(items: Iterable[tuple[str, Optional[str]]], eval_ratio: float) -> dict[str, str]:
    """Map each image id to its split; `items` are (id, label) with unique ids."""
    by_label: dict[Optional[str], list[str]] = defaultdict(list)
    for image_id, label in items:
        by_label[label].append(image_id)
    splits: dict[str, str] = {}
    for ids in by_label.values():
        ids.sort(key=eval_fraction)
        for image_id in ids:
            splits[image_id] = EVAL if eval_fraction(image_id) < eval_ratio else TRAIN
        if splits[ids[-1]] == EVAL:  # all in eval: the highest hash goes to train
            splits[ids[-1]] = TRAIN
        if len(ids) >= 2 and splits[ids[0]] == TRAIN:  # none in eval: the lowest goes to eval
            splits[ids[0]] = EVAL
    return splits
