"""Which unlabeled images are worth a human's time: uncertainty scores and diverse selection.

Plain numpy on purpose (see docs/ACTIVE_LEARNING.md): the maintained active-learning libraries
need torch or numpy 2, and these functions are a few lines each, so tests can check exact picks.

Every strategy gives a score where HIGHER means MORE uncertain, in [0, 1]:
- least_confidence: 1 - max_c p_c
- margin:           1 - (p_top1 - p_top2)
- entropy:          -sum_c p_c log p_c / log C (normalised, so 1 = uniform)
For two classes all three rank images identically (each is a function of max p); they differ
for three or more. Ties keep pool order, so a selection is reproducible.
"""

from __future__ import annotations

import heapq
from typing import Optional, Sequence

import numpy as np

STRATEGIES = ("least_confidence", "margin", "entropy")


def _checked(probabilities: np.ndarray) -> np.ndarray:
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must be [n, C>=2], got shape {p.shape}")
    return p


def least_confidence(probabilities: np.ndarray) -> np.ndarray:
    return 1.0 - _checked(probabilities).max(axis=1)


def margin(probabilities: np.ndarray) -> np.ndarray:
    top2 = np.sort(_checked(probabilities), axis=1)[:, -2:]
    return 1.0 - (top2[:, 1] - top2[:, 0])


def entropy(probabilities: np.ndarray) -> np.ndarray:
    p = _checked(probabilities)
    logs = np.log(np.clip(p, 1e-12, 1.0))
    return -(p * logs).sum(axis=1) / np.log(p.shape[1])


_SCORERS = {"least_confidence": least_confidence, "margin": margin, "entropy": entropy}


def uncertainty(probabilities: np.ndarray, strategy: str) -> np.ndarray:
    if strategy not in _SCORERS:
        raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    return _SCORERS[strategy](probabilities)


def top_indices(scores: Sequence[float], k: int) -> list[int]:
    """Indices of the k highest scores, highest first; equal scores keep their order."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return order[: max(0, k)]


class TopK:
    """The k most uncertain items of a stream, with their payload; memory O(k)."""

    def __init__(self, k: int):
        self.k = k
        self._heap: list[tuple[float, int, object]] = []  # (score, -position, payload): min-heap

    def push(self, score: float, position: int, payload: object) -> None:
        item = (float(score), -position, payload)
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, item)
        elif item[:2] > self._heap[0][:2]:
            heapq.heapreplace(self._heap, item)

    def items(self) -> list[tuple[float, int, object]]:
        """(score, position, payload), highest score first, earlier position first on ties."""
        return [(s, -p, x) for s, p, x in sorted(self._heap, key=lambda t: (-t[0], -t[1]))]


def k_center_greedy(embeddings: np.ndarray, k: int, first: int = 0) -> list[int]:
    """Farthest-first traversal: start at `first`, then repeatedly take the point farthest from
    everything taken so far. Near-duplicates are at distance ~0 from a taken point, so they come
    last; exact duplicates only if fewer than k distinct points exist."""
    x = np.asarray(embeddings, dtype=np.float64)
    n = len(x)
    if n == 0 or k <= 0:
        return []
    chosen = [first]
    nearest = np.linalg.norm(x - x[first], axis=1)
    while len(chosen) < min(k, n):
        nearest[chosen] = -1.0  # never re-pick
        nxt = int(np.argmax(nearest))
        chosen.append(nxt)
        nearest = np.minimum(nearest, np.linalg.norm(x - x[nxt], axis=1))
    return chosen


def select(
    scores: Sequence[float],
    k: int,
    embeddings: Optional[np.ndarray] = None,
    candidates: Optional[int] = None,
) -> list[int]:
    """The batch to label, in priority order (indices into `scores`).

    Without embeddings: the k most uncertain. With embeddings: among the `candidates` most
    uncertain (default 5k), a k-center-greedy batch that starts at the most uncertain one, so
    the batch covers the uncertain region instead of piling up near-duplicates of one image.
    """
    if embeddings is None:
        return top_indices(scores, k)
    pool = top_indices(scores, candidates if candidates is not None else 5 * k)
    picked = k_center_greedy(np.asarray(embeddings)[pool], k, first=0)
    return [pool[i] for i in picked]
