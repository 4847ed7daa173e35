"""What the server did during a run: Prometheus counter deltas and CPU time, client vs server.

Client latency alone cannot say *why* Triton falls short. The counters split a request's time
into queueing (batcher delay), compute (the python backend + TensorFlow) and the rest, and give
the batch sizes the dynamic batcher actually formed. CPU seconds of the server process tree vs
this process show whether the client is eating the cores the model needs.
"""

from __future__ import annotations

import os
import re
import urllib.request
from typing import Mapping, Optional

# nv_<name>{labels} value
_LINE_RE = re.compile(r"^(nv_[a-z_]+)\{([^}]*)\} ([-+0-9.eE]+|NaN)$", re.MULTILINE)
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def parse_metrics(text: str, model: str) -> dict[str, float]:
    """Sum of every `nv_*` series of `model` over its versions (Prometheus text format)."""
    totals: dict[str, float] = {}
    needle = f'model="{model}"'
    for name, labels, value in _LINE_RE.findall(text):
        if needle in labels and value != "NaN":
            totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def scrape(metrics_url: str, model: str, timeout: float = 10.0) -> dict[str, float]:
    with urllib.request.urlopen(metrics_url, timeout=timeout) as resp:
        return parse_metrics(resp.read().decode("utf-8", errors="replace"), model)


def _delta(after: Mapping[str, float], before: Mapping[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def server_breakdown(before: Mapping[str, float], after: Mapping[str, float]) -> dict:
    """Per-request averages over the run (Triton's durations are cumulative microseconds)."""
    success = _delta(after, before, "nv_inference_request_success")
    executions = _delta(after, before, "nv_inference_exec_count")
    inferences = _delta(after, before, "nv_inference_count")

    def per_request_ms(name: str) -> Optional[float]:
        return round(_delta(after, before, name) / success / 1000.0, 3) if success else None

    return {
        "requests_ok": int(success),
        "requests_failed": int(_delta(after, before, "nv_inference_request_failure")),
        "executions": int(executions),
        "avg_batch_images": round(inferences / executions, 2) if executions else None,
        "request_ms": per_request_ms("nv_inference_request_duration_us"),
        "queue_ms": per_request_ms("nv_inference_queue_duration_us"),
        "compute_input_ms": per_request_ms("nv_inference_compute_input_duration_us"),
        "compute_infer_ms": per_request_ms("nv_inference_compute_infer_duration_us"),
        "compute_output_ms": per_request_ms("nv_inference_compute_output_duration_us"),
        "cache_hits": int(_delta(after, before, "nv_cache_num_hits_per_model")),
        "cache_misses": int(_delta(after, before, "nv_cache_num_misses_per_model")),
    }


def _stat_fields(pid: int) -> Optional[list[str]]:
    """Fields of /proc/PID/stat after the command name (which may hold spaces and parens)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants (tritonserver + one python-backend stub per instance).

    Found by parent pid over /proc rather than /proc/PID/task/*/children: the stubs are forked
    by backend threads, and that file exists only on kernels built with CONFIG_PROC_CHILDREN.
    """
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields:
                parents.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """user + system CPU time of live processes, from /proc (0 for ones that are gone)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / _CLOCK_TICKS
