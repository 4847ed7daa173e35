"""The monitor's figures in Prometheus text format, for node_exporter's textfile collector.

`hoh monitor` is a batch job, not a server: it leaves its latest figures in a `.prom` file that
node_exporter (`--collector.textfile.directory`) exposes on its next scrape. The file is written
beside itself and renamed into place, so the collector never reads half of it. Every series
carries the served model and version, so two models monitored into one directory stay apart
(give each run its own file name: `monitor.textfile`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Optional

VERDICTS = ("ok", "drift", "accuracy_low", "slo_breached", "insufficient_data")

_HELP = {
    "hoh_monitor_verdict": "Verdict of the last monitor run: 1 on the series of that verdict.",
    "hoh_monitor_drift_detected": "1 when the last window drifted (input or predictions).",
    "hoh_monitor_input_drift_share": "Share of image descriptors that drifted in the window.",
    "hoh_monitor_embedding_mmd": "MMD of backbone embeddings, window against reference.",
    "hoh_monitor_images": "Images the last run rests on, by side (served, reference).",
    "hoh_monitor_problems": "Captures left out of the last run, by kind.",
    "hoh_monitor_mean_confidence": "Mean top-class probability, by side.",
    "hoh_monitor_class_share": "Share of each predicted class, by side.",
    "hoh_monitor_slo_breached": "1 when the window broke the p95 latency or error objective.",
    "hoh_monitor_accuracy_low": "1 when online accuracy is below monitor.min_accuracy.",
    "hoh_monitor_requests": "Predict requests the gateway's audit log recorded in the window.",
    "hoh_monitor_request_rate": "Predict requests per second over the window.",
    "hoh_monitor_error_ratio": "Share of the window's predict requests answered 5xx.",
    "hoh_monitor_latency_seconds": "Latency of the window's successful predict requests.",
    "hoh_monitor_latency_objective_seconds": "The p95 latency objective (monitor config).",
    "hoh_monitor_feedback_labels": "Feedback labels matched to served predictions of the window.",
    "hoh_monitor_online_accuracy": "Accuracy of the served predictions on the feedback labels.",
    "hoh_monitor_class_precision": "Per-class precision on the feedback labels.",
    "hoh_monitor_class_recall": "Per-class recall on the feedback labels.",
    "hoh_monitor_window_end_timestamp_seconds": "End of the last window monitored (UTC).",
    "hoh_monitor_last_run_timestamp_seconds": "When the last monitor run finished.",
}

Sample = tuple[str, dict[str, str], Optional[float]]


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(samples: Iterable[Sample]) -> str:
    """Text exposition format; samples without a value (a test that did not run) are left out."""
    by_name: dict[str, list[str]] = {}
    for name, labels, value in samples:
        if value is None or not math.isfinite(float(value)):
            continue
        text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
        # repr: the shortest exact form; "%g" would round a timestamp to the minute.
        series = f"{name}{{{text}}}" if text else name
        by_name.setdefault(name, []).append(f"{series} {float(value)!r}")
    lines = []
    for name, series in by_name.items():
        lines += [f"# HELP {name} {_HELP[name]}", f"# TYPE {name} gauge", *series]
    return "\n".join(lines) + "\n"


def samples(summary: dict, finished: float) -> list[Sample]:
    model = summary["model"]
    base = {"model": model["name"] or "", "version": model["version"]}
    out: list[Sample] = [
        ("hoh_monitor_verdict", {**base, "verdict": v}, float(summary["verdict"] == v))
        for v in VERDICTS
    ]
    checks = summary.get("checks") or {}
    out.append(("hoh_monitor_drift_detected", base, float(bool(checks.get("drift")))))
    out.append(("hoh_monitor_slo_breached", base, float(bool(checks.get("slo_breached")))))
    out.append(("hoh_monitor_accuracy_low", base, float(bool(checks.get("accuracy_low")))))
    out += _service(summary.get("service"), base) + _accuracy(summary.get("online_accuracy"), base)
    drift = summary.get("input_drift") or {}
    out.append(("hoh_monitor_input_drift_share", base, drift.get("drifted_share")))
    out.append(("hoh_monitor_embedding_mmd", base, (drift.get("embeddings") or {}).get("value")))
    predictions = summary.get("prediction_drift") or {}
    for which in ("served", "reference"):
        figures = predictions.get(which) or {}
        images = summary["counts"]["served_images"] if which == "served" else figures.get("images")
        out.append(("hoh_monitor_images", {**base, "side": which}, images))
        out.append(
            ("hoh_monitor_mean_confidence", {**base, "side": which}, figures.get("mean_confidence"))
        )
        for name, share in (figures.get("class_share") or {}).items():
            out.append(("hoh_monitor_class_share", {**base, "side": which, "class": name}, share))
    for kind, count in summary["counts"].items():
        if kind not in ("days", "result_lines", "served_images"):
            out.append(("hoh_monitor_problems", {**base, "kind": kind}, count))
    out.append(("hoh_monitor_window_end_timestamp_seconds", base, summary["window"]["end_ts"]))
    out.append(("hoh_monitor_last_run_timestamp_seconds", base, finished))
    return out


def _service(service: Optional[dict], base: dict) -> list[Sample]:
    if not service:
        return []
    out: list[Sample] = [
        ("hoh_monitor_requests", base, service["requests"]),
        ("hoh_monitor_request_rate", base, service["request_rate"]),
        ("hoh_monitor_error_ratio", base, service["error_ratio"]),
        ("hoh_monitor_latency_objective_seconds", base, service["objective_p95_ms"] / 1000),
    ]
    for name, ms in service["latency_ms"].items():  # p50 -> quantile="0.5"
        quantile = str(int(name[1:]) / 100)
        value = None if ms is None else ms / 1000
        out.append(("hoh_monitor_latency_seconds", {**base, "quantile": quantile}, value))
    return out


def _accuracy(result: Optional[dict], base: dict) -> list[Sample]:
    if not result:
        return []
    out: list[Sample] = [
        ("hoh_monitor_feedback_labels", base, result["labels"]),
        ("hoh_monitor_online_accuracy", base, result["accuracy"]),
    ]
    for name, figures in (result.get("per_class") or {}).items():
        for which in ("precision", "recall"):
            labels = {**base, "class": name}
            out.append((f"hoh_monitor_class_{which}", labels, figures.get(which)))
    return out


def write_textfile(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # the collector reads *.prom only
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)
    return path
