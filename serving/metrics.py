"""Triton's Prometheus metrics (`/metrics` on the metrics port) as numbers per model.

Triton exports counters such as `nv_inference_request_success`, `nv_inference_count` (images)
and `nv_inference_exec_count` (batches actually executed, so count/exec = the dynamic batcher's
average batch) per model and version. A notebook or a test wants them for one model, summed over
its versions; this parses the text format (no Prometheus client needed) and does that.
"""
from __future__ import annotations

import re
import urllib.request
from dataclasses import dataclass

_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse(text: str) -> list[Sample]:
    """Samples of a Prometheus text exposition; comments and unparsable lines are skipped."""
    samples = []
    for line in text.splitlines():
        match = _LINE.match(line.strip())
        if not match or line.startswith("#"):
            continue
        try:
            value = float(match["value"])
        except ValueError:
            continue
        labels = {k: v.replace('\\"', '"').replace("\\\\", "\\")
                  for k, v in _LABEL.findall(match["labels"] or "")}
        samples.append(Sample(match["name"], labels, value))
    return samples


def fetch(url: str, timeout: float = 10.0) -> list[Sample]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return parse(response.read().decode("utf-8", "replace"))


def model_totals(samples: list[Sample], model: str, prefixes=("nv_inference_", "nv_cache_")) -> dict[str, float]:
    """{metric: value summed over the model's versions} for the metrics starting with `prefixes`."""
    totals: dict[str, float] = {}
    for s in samples:
        if s.labels.get("model") == model and s.name.startswith(tuple(prefixes)):
            totals[s.name] = totals.get(s.name, 0.0) + s.value
    return dict(sorted(totals.items()))
