"""Triton's Prometheus metrics (`/metrics` on the metrics port) as numbers per model.

Triton exports counters such as `nv_inference_request_success`, `nv_inference_count` (images)
and `nv_inference_exec_count` (batches actually executed, so count/exec = the dynamic batcher's
average batch) per model and version. A notebook or a test wants them for one model, summed over
its versions; this reads the text format with prometheus_client's parser and does that.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass

from hoh.errors import HohError

# The Triton metric families hoh's deploy files query (deploy/prometheus/, deploy/grafana/,
# deploy/k8s/hpa.yaml), by the names Prometheus stores them under. Kept here, beside the code
# that reads Triton's metrics, so the structural tests of those files have one list to check
# against, and an e2e test checks this list against a real Triton's /metrics (CPU build, model
# pushed with the response cache): a renamed metric in a Triton upgrade fails there, not on a
# dashboard. GPU families (nv_gpu_*) appear only on a GPU host and are not listed.
TRITON_METRICS = {
    "nv_inference_request_success": ("model", "version"),
    "nv_inference_request_failure": ("model", "version", "reason"),
    "nv_inference_count": ("model", "version"),
    "nv_inference_exec_count": ("model", "version"),
    "nv_inference_request_duration_us": ("model", "version"),
    "nv_inference_queue_duration_us": ("model", "version"),
    "nv_inference_compute_infer_duration_us": ("model", "version"),
    "nv_inference_pending_request_count": ("model", "version"),
    "nv_cache_num_hits_per_model": ("model", "version"),
    "nv_cache_num_misses_per_model": ("model", "version"),
    "nv_cpu_utilization": (),
    "nv_cpu_memory_used_bytes": (),
    "nv_cpu_memory_total_bytes": (),
}


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse(text: str) -> list[Sample]:
    """Samples of a Prometheus text exposition, read by prometheus_client's own parser.

    The parser renames counter samples to OpenMetrics' `<family>_total`; Triton's counters are
    queried in Prometheus by their exposed names (`nv_inference_count`), so a counter sample is
    reported under its family name.
    """
    from prometheus_client.parser import text_string_to_metric_families

    def name(family, sample) -> str:
        counter = family.type == "counter" and sample.name == family.name + "_total"
        return family.name if counter else sample.name

    try:
        return [
            Sample(name(family, s), dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]
    except ValueError as exc:
        raise HohError(f"not a Prometheus text exposition: {exc}") from None


def fetch(url: str, timeout: float = 10.0) -> list[Sample]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return parse(response.read().decode("utf-8", "replace"))


def model_totals(
    samples: list[Sample], model: str, prefixes=("nv_inference_", "nv_cache_")
) -> dict[str, float]:
    """{metric: value summed over the model's versions} for the metrics starting with `prefixes`."""
    totals: dict[str, float] = {}
    for s in samples:
        if s.labels.get("model") == model and s.name.startswith(tuple(prefixes)):
            totals[s.name] = totals.get(s.name, 0.0) + s.value
    return dict(sorted(totals.items()))
