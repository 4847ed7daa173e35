"""Service health of a window: request rate, error rate and latency percentiles of predict calls.

Read from the gateway's audit log, not from the capture folder: the audit log has one line per
request, allowed or refused, with its status and latency, while captures are a sample of the
successful ones only (an error rate cannot be computed from them). The live figures are in
Prometheus (deploy/prometheus/); these are the same figures for exactly the monitored window,
so a monitor run can say whether that window met the objective. With `monitor.prometheus_url`
set, `prometheus.py` reads the window's figures from there instead, and this is the fallback
when Prometheus cannot answer (`source` in the result says which one it was).

Percentiles are nearest-rank (the smallest observed latency at or above which p % of requests
finished): an observed value, reproducible by hand, unlike a histogram's interpolation. Latency
is taken over successful requests (2xx), so a fast 401 never lowers it; 5xx count against the
error ratio, 4xx are the client's and counted apart.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Optional

from hoh.errors import UsageError
from hoh.serving.gateway.audit import audit_files

ROUTE = "predict"
QUANTILES = (50, 95, 99)


@dataclass
class Requests:
    """Predict requests of the window, as (status, latency in ms) pairs."""

    calls: list[tuple[int, float]] = field(default_factory=list)
    bad_lines: int = 0
    files: int = 0


def _when(text: object) -> Optional[float]:
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def read_requests(
    directories: Iterable[str | Path], start: float, end: float, model: Optional[str]
) -> Requests:
    """Predict requests in [start, end) (UNIX seconds) of `model` (None: any) from one or more
    audit directories (one per gateway replica). Files last written before `start` are not
    opened; a line that is not a well-formed decision is counted, never fatal."""
    out = Requests()
    for directory in map(Path, directories):
        files = audit_files(directory)
        if not files:
            raise UsageError(
                f"audit directory {directory} holds no audit-NNNNNN.jsonl files "
                "(the gateway's --audit-dir)"
            )
        for path in files:
            if path.stat().st_mtime < start:
                continue
            out.files += 1
            with open(path, encoding="utf-8", errors="replace") as lines:
                for text in lines:
                    _read_line(text, start, end, model, out)
    return out


def _read_line(text: str, start: float, end: float, model: Optional[str], out: Requests) -> None:
    try:
        record = json.loads(text)
    except ValueError:
        out.bad_lines += 1
        return
    if not isinstance(record, dict) or record.get("kind") != "decision":
        return  # anchors, rotations
    if record.get("route") != ROUTE or (model is not None and record.get("model") != model):
        return
    when = _when(record.get("time"))
    status, latency = record.get("status"), record.get("latency_ms")
    if when is None or not isinstance(status, int) or not isinstance(latency, (int, float)):
        out.bad_lines += 1
        return
    if start <= when < end:
        out.calls.append((status, float(latency)))


def nearest_rank(values: list[float], percent: float) -> Optional[float]:
    """The p-th percentile by nearest rank of sorted `values`; None when there are none."""
    if not values:
        return None
    rank = max(1, math.ceil(percent / 100 * len(values)))
    return values[rank - 1]


def health(
    requests: Requests, seconds: float, objective_p95_ms: float, max_error_rate: float
) -> dict:
    """The window's figures and whether they broke the objective (no requests: not judged)."""
    calls = requests.calls
    total = len(calls)
    server_errors = sum(1 for status, _ in calls if status >= 500)
    client_errors = sum(1 for status, _ in calls if 400 <= status < 500)
    ok = sorted(ms for status, ms in calls if status < 400)
    latency = {f"p{q}": nearest_rank(ok, q) for q in QUANTILES}
    result = {
        "requests": total,
        "successful": len(ok),
        "server_errors": server_errors,
        "client_errors": client_errors,
        "request_rate": total / seconds if seconds > 0 else None,
        "error_ratio": server_errors / total if total else None,
        "latency_ms": latency,
        "bad_lines": requests.bad_lines,
        "files": requests.files,
    }
    result = judge(result, objective_p95_ms, max_error_rate, f"{len(ok)} successful requests")
    return {**result, "source": "audit_log"}


def judge(figures: dict, objective_p95_ms: float, max_error_rate: float, basis: str) -> dict:
    """`figures` with the objectives and whether they were broken (no figure: not judged);
    `basis` names what the p95 rests on. One judgement for every source of the figures."""
    p95, error_ratio = figures["latency_ms"]["p95"], figures["error_ratio"]
    reasons = []
    if p95 is not None and p95 > objective_p95_ms:
        reasons.append(
            f"p95 latency {p95:.0f} ms is above the {objective_p95_ms:.0f} ms objective ({basis})"
        )
    if error_ratio is not None and error_ratio > max_error_rate:
        reasons.append(
            f"{error_ratio:.1%} of {figures['requests']} predict requests failed with 5xx "
            f"(objective: at most {max_error_rate:.1%})"
        )
    return {
        **figures,
        "objective_p95_ms": objective_p95_ms,
        "max_error_rate": max_error_rate,
        "slo_breached": bool(reasons),
        "reasons": reasons,
    }
