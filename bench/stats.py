"""Latency and throughput summaries: the only arithmetic the benchmark report depends on.

Kept pure (lists of floats in, plain dicts out) so it is unit-tested without TensorFlow or a
server, and so every number in the JSON and the Markdown table comes from one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

PERCENTILES = (50, 95, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile with linear interpolation between order statistics.

    Same definition as numpy's default (`method="linear"`), written out so the report does not
    silently change if numpy's default does, and so an empty run gives NaN instead of raising.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class RunSummary:
    """One measured run: `requests` calls carrying `images` images in `wall_s` seconds."""

    requests: int
    images: int
    errors: int
    wall_s: float
    images_per_s: float
    requests_per_s: float
    latency_ms: dict[str, float]
    capped: bool  # stopped by the time cap before the requested count

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "images": self.images,
            "errors": self.errors,
            "wall_s": round(self.wall_s, 4),
            "images_per_s": round(self.images_per_s, 3),
            "requests_per_s": round(self.requests_per_s, 3),
            "latency_ms": {k: _json_number(v) for k, v in self.latency_ms.items()},
            "capped": self.capped,
        }


def _json_number(value: float, digits: int = 3):
    """NaN (an empty run) becomes null: JSON has no NaN and strict parsers reject it."""
    return None if math.isnan(value) else round(value, digits)


def summarize(
    latencies_s: Sequence[float],
    wall_s: float,
    images_per_request: int,
    errors: int = 0,
    capped: bool = False,
) -> RunSummary:
    """Throughput counts successful requests only: a failing server must not look fast."""
    ok = len(latencies_s)
    ms = [x * 1000.0 for x in latencies_s]
    latency = {
        "mean": sum(ms) / ok if ok else math.nan,
        "min": min(ms) if ok else math.nan,
        "max": max(ms) if ok else math.nan,
        **{f"p{q}": percentile(ms, q) for q in PERCENTILES},
    }
    rate = (lambda n: n / wall_s) if wall_s > 0 else (lambda n: 0.0)
    return RunSummary(
        requests=ok,
        images=ok * images_per_request,
        errors=errors,
        wall_s=wall_s,
        images_per_s=rate(ok * images_per_request),
        requests_per_s=rate(ok),
        latency_ms=latency,
        capped=capped,
    )
