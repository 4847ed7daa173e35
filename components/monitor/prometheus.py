"""Service health of a window from Prometheus: the gateway's and Triton's metrics as scraped.

Used when `monitor.prometheus_url` is set (else the audit log, `service.py`). Counts are exact,
not PromQL `increase()`'s extrapolation, which turns 12 requests into 11.4 at a window's edge:
the raw samples of each counter over the window (a range-vector query at the window's end) are
added up from the value just before the window (an instant query at its start). A series with
no value there was created in the window (the gateway and Triton make a series on its first
event) and counts from zero; a drop is a restart and counts from zero again. Latency
percentiles are interpolated within the gateway histogram's buckets the way PromQL's
`histogram_quantile` does, over the buckets' increase: estimates at the buckets' resolution, and
over every predict request (the histogram has no status label), where the audit log's are
observed latencies of the successful ones.

Query building and the arithmetic are pure functions; `query` is the one HTTP call.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Optional

from hoh.components.monitor.service import QUANTILES, ROUTE, judge

# The series read, by what they stand for (names as Prometheus stores them).
GATEWAY_REQUESTS = "hoh_gateway_requests_total"
GATEWAY_LATENCY = "hoh_gateway_request_seconds_bucket"
GATEWAY_ALIVE = "hoh_gateway_in_flight"  # a gauge every gateway exports from its start
TRITON = {
    "successes": "nv_inference_request_success",
    "failures": "nv_inference_request_failure",
    "queue_us": "nv_inference_queue_duration_us",
    "compute_us": "nv_inference_compute_infer_duration_us",
}
TIMEOUT_S = 10.0

Series = list[tuple[dict[str, str], list[float]]]  # (labels, values in time order)
Query = Callable[[str, float], dict]  # (PromQL, evaluation time) -> the API's "data"


class PrometheusError(Exception):
    """Prometheus did not answer a query usably; the message says where and why."""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def selectors(model: Optional[str]) -> dict[str, str]:
    """{key: series selector} of the window's figures; `model` None: any model."""
    served = "" if model is None else f'model="{_escape(model)}"'
    gateway = ",".join(m for m in (f'route="{ROUTE}"', served) if m)
    out = {
        "requests": f"{GATEWAY_REQUESTS}{{{gateway}}}",
        "latency": f'{GATEWAY_LATENCY}{{route="{ROUTE}"}}',
    }
    out.update({key: f"{name}{{{served}}}" if served else name for key, name in TRITON.items()})
    return out


def range_seconds(start: float, end: float) -> int:
    """The window as a PromQL range (whole seconds, at least one)."""
    return max(1, math.ceil(end - start))


def query(url: str, promql: str, at: float, timeout: float = TIMEOUT_S) -> dict:
    """`data` of Prometheus's /api/v1/query for `promql` evaluated at `at` (UNIX seconds)."""
    params = urllib.parse.urlencode({"query": promql, "time": f"{at:.3f}"})
    address = f"{url.rstrip('/')}/api/v1/query?{params}"
    try:
        with urllib.request.urlopen(address, timeout=timeout) as response:
            body = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:  # a 400 carries the API's own error text
        text = exc.read().decode("utf-8", errors="replace")[:300]
        raise PrometheusError(
            f"Prometheus at {url} answered {exc.code} to {promql}: {text}"
        ) from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PrometheusError(f"Prometheus at {url} is not reachable: {reason}") from None
    if not isinstance(body, dict) or body.get("status") != "success":
        raise PrometheusError(f"Prometheus at {url} refused {promql}: {body}")
    return body["data"]


def series(data: dict) -> Series:
    """(labels, values) of each series of a query result, vector or matrix."""
    out: Series = []
    for item in data.get("result", []):
        if "values" in item:
            values = [float(v) for _, v in item["values"]]
        else:
            values = [float(item["value"][1])]
        out.append((item["metric"], values))
    return out


def increase(values: list[float], before: Optional[float]) -> float:
    """How much a counter grew over its samples `values`, from `before` (its value before the
    window; None: created in the window, from zero). A drop is a restart: counts from zero."""
    total, last = 0.0, before or 0.0
    for value in values:
        total += value - last if value >= last else value
        last = value
    return total


def increases(window: Series, before: Series) -> list[tuple[dict[str, str], float]]:
    """(labels, increase) of each series seen in the window."""
    baseline = {frozenset(labels.items()): values[-1] for labels, values in before if values}
    return [
        (labels, increase(values, baseline.get(frozenset(labels.items()))))
        for labels, values in window
    ]


def bucket_quantile(q: float, buckets: dict[float, float]) -> Optional[float]:
    """PromQL's histogram_quantile on {upper bound: cumulative count}: linear within the bucket
    the rank falls in, from 0 for the first; in the +Inf bucket, the highest finite bound.
    None without observations."""
    bounds = sorted(buckets)
    if not bounds or not math.isinf(bounds[-1]) or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    below, lower = 0.0, 0.0
    for i, bound in enumerate(bounds):
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return bounds[i - 1] if i else None
            if i == 0 and bound <= 0:
                return bound
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        below, lower = count, bound
    return None


def figures(
    grown: dict[str, list[tuple[dict[str, str], float]]],
    seconds: float,
    objective_p95_ms: float,
    max_error_rate: float,
) -> dict:
    """The window's health from the counters' increases (`grown`, by `selectors` key), in the
    shape of `service.health`, judged against the same objectives."""
    by_class = {"2": 0.0, "3": 0.0, "4": 0.0, "5": 0.0}
    for labels, grew in grown.get("requests", []):
        key = str(labels.get("status", "?"))[:1]
        by_class[key] = by_class.get(key, 0.0) + grew
    total = round(sum(by_class.values()))
    buckets: dict[float, float] = {}
    for labels, grew in grown.get("latency", []):
        bound = float(labels["le"])
        buckets[bound] = buckets.get(bound, 0.0) + grew
    latency = {}
    for q in QUANTILES:
        seconds_q = bucket_quantile(q / 100, buckets)
        latency[f"p{q}"] = None if seconds_q is None else seconds_q * 1000
    server_errors = round(by_class["5"])
    result = {
        "requests": total,
        "successful": round(by_class["2"] + by_class["3"]),
        "server_errors": server_errors,
        "client_errors": round(by_class["4"]),
        "request_rate": total / seconds if seconds > 0 else None,
        "error_ratio": server_errors / total if total else None,
        "latency_ms": latency,
        "latency_requests": round(buckets.get(math.inf, 0.0)),
        "triton": _triton(grown),
    }
    basis = f"{result['latency_requests']} predict requests, gateway histogram"
    return judge(result, objective_p95_ms, max_error_rate, basis)


def _triton(grown: dict[str, list[tuple[dict[str, str], float]]]) -> dict:
    """Triton's side of the window: requests it answered or failed, mean queue and compute time
    per successful request (where a slow window spent its time)."""
    total = {key: sum(g for _, g in grown.get(key, [])) for key in TRITON}
    per = total["successes"]
    return {
        "successes": round(total["successes"]),
        "failures": round(total["failures"]),
        "queue_ms_mean": total["queue_us"] / per / 1000 if per else None,
        "compute_ms_mean": total["compute_us"] / per / 1000 if per else None,
    }


def unavailable(url: str, error: str, objective_p95_ms: float, max_error_rate: float) -> dict:
    """Health that could not be read: every figure None, not judged, the error named."""
    empty = {
        "requests": None,
        "successful": None,
        "server_errors": None,
        "client_errors": None,
        "request_rate": None,
        "error_ratio": None,
        "latency_ms": {f"p{q}": None for q in QUANTILES},
    }
    result = judge(empty, objective_p95_ms, max_error_rate, "")
    return {**result, "source": "prometheus", "url": url, "error": error}


def health(
    url: str,
    start: float,
    end: float,
    model: Optional[str],
    objective_p95_ms: float,
    max_error_rate: float,
    run: Optional[Query] = None,
) -> dict:
    """Service health of predict requests in [start, end] (UNIX seconds) of `model` (None: any)
    from the Prometheus at `url`. Unreachable, or without any gateway series in the window: a
    result with `error` set and no figures, never an exception. `run` replaces the HTTP call."""
    run = run or (lambda promql, at: query(url, promql, at))
    span = f"[{range_seconds(start, end)}s]"
    try:
        if not series(run(f"count_over_time({GATEWAY_ALIVE}{span})", end)):
            raise PrometheusError(
                f"Prometheus at {url} has no {GATEWAY_ALIVE} samples in the window: it does not "
                "scrape the gateway (deploy/prometheus/prometheus.yml), or not for that long"
            )
        grown = {
            key: increases(series(run(selector + span, end)), series(run(selector, start)))
            for key, selector in selectors(model).items()
        }
    except PrometheusError as exc:
        return unavailable(url, str(exc), objective_p95_ms, max_error_rate)
    result = figures(grown, end - start, objective_p95_ms, max_error_rate)
    return {**result, "source": "prometheus", "url": url}
