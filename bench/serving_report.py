"""The serving benchmark's result document (JSON) and its Markdown rendering.

One dict is the source of truth: the JSON file is that dict, the table is rendered from it, and
the targets from issue 3 are evaluated on it here, so the lead can re-render or re-check an old
result file without re-running anything.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional

SCHEMA = "hoh.bench.serving/1"
TARGET_RATIO = 0.8  # best-concurrency Triton images/s over in-process batched images/s
TARGET_P95_MS = 150.0
TARGET_P95_CONCURRENCY = 4
BUSY_LOAD = 0.5  # 1-minute load average above which the machine was not quiet

_RUN_KEYS = ("requests", "images", "errors", "wall_s", "images_per_s", "latency_ms", "capped")
_TOP_KEYS = (
    "schema",
    "settings",
    "machine",
    "model",
    "in_process",
    "triton",
    "cache_hit",
    "comparison",
)


def _finite(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def compare(in_process: list[dict], triton: list[dict]) -> dict:
    """The issue's two targets, evaluated; None where a side was not measured."""
    baseline = max(in_process, key=lambda r: r["batch_size"], default=None)
    measured = [r for r in triton if r["requests"] > 0]
    best = max(measured, key=lambda r: r["images_per_s"], default=None)
    ratio = None
    if baseline and best and baseline["images_per_s"] > 0:
        ratio = round(best["images_per_s"] / baseline["images_per_s"], 3)
    p95 = {
        r["protocol"]: _finite(r["latency_ms"]["p95"])
        for r in measured
        if r["concurrency"] == TARGET_P95_CONCURRENCY
    }
    p95_values = [v for v in p95.values() if v is not None]
    return {
        "baseline": (
            {"batch_size": baseline["batch_size"], "images_per_s": baseline["images_per_s"]}
            if baseline
            else None
        ),
        "best": (
            {k: best[k] for k in ("protocol", "concurrency", "images_per_s")} if best else None
        ),
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "ratio_ok": None if ratio is None else ratio >= TARGET_RATIO,
        "p95_ms_at_concurrency": TARGET_P95_CONCURRENCY,
        "p95_ms": p95,
        "target_p95_ms": TARGET_P95_MS,
        "p95_ok": (all(v < TARGET_P95_MS for v in p95_values) if p95_values else None),
    }


def check_shape(result: dict) -> list[str]:
    """Problems with a result document (empty when it has every field the report relies on)."""
    problems = [f"missing key {k!r}" for k in _TOP_KEYS if k not in result]
    if result.get("schema") not in (None, SCHEMA):
        problems.append(f"schema is {result.get('schema')!r}, expected {SCHEMA!r}")

    def runs(section: str, extra: Iterable[str]) -> None:
        rows = result.get(section)
        if not isinstance(rows, list):
            problems.append(f"{section} is not a list")
            return
        for i, row in enumerate(rows):
            for key in (*_RUN_KEYS, *extra):
                if key not in row:
                    problems.append(f"{section}[{i}] has no {key!r}")
            for q in ("p50", "p95", "p99"):
                if q not in row.get("latency_ms", {}):
                    problems.append(f"{section}[{i}].latency_ms has no {q!r}")

    runs("in_process", ("batch_size",))
    runs("triton", ("protocol", "concurrency", "server"))
    runs("cache_hit", ("protocol", "server"))
    for key in ("ratio", "ratio_ok", "p95_ms", "p95_ok"):
        if key not in result.get("comparison", {}):
            problems.append(f"comparison has no {key!r}")
    return problems


# --------------------------------------------------------------------------- Markdown


def _fmt(value: Any, digits: int = 1) -> str:
    number = _finite(value)
    return "–" if number is None else f"{number:.{digits}f}"


MIN_CPU_WALL_S = 1.0  # /proc counts CPU in 10 ms ticks: shares over shorter runs are noise


def _share(cpu_s: Any, wall_s: Any) -> str:
    cpu, wall = _finite(cpu_s), _finite(wall_s)
    if cpu is None or wall is None or wall < MIN_CPU_WALL_S:
        return "–"
    return f"{100 * cpu / wall:.0f}%"


def _row(path: str, protocol: str, concurrency: Any, batch: Any, run: dict) -> str:
    server = run.get("server") or {}
    lat = run["latency_ms"]
    cells = [
        path,
        protocol,
        str(concurrency),
        str(batch),
        _fmt(run["images_per_s"]),
        _fmt(lat.get("p50")),
        _fmt(lat.get("p95")),
        _fmt(lat.get("p99")),
        _fmt(server.get("avg_batch_images"), 2),
        _fmt(server.get("queue_ms")),
        _fmt(server.get("compute_infer_ms")),
        _share(run.get("client_cpu_s"), run["wall_s"]),
        _share(run.get("server_cpu_s"), run["wall_s"]),
        str(run["errors"]) + (" (capped)" if run.get("capped") else ""),
    ]
    return "| " + " | ".join(cells) + " |"


def render_markdown(result: dict) -> str:
    head = (
        "| Path | Protocol | Concurrency | Images/request | Images/s | p50 ms | p95 ms "
        "| p99 ms | Server batch | Queue ms | Compute ms | Client CPU | Server CPU | Errors |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for run in result["in_process"]:
        lines.append(_row("in-process", "–", 1, run["batch_size"], run))
    for run in result["triton"]:
        lines.append(
            _row(
                "Triton", run["protocol"], run["concurrency"], run.get("images_per_request", 1), run
            )
        )
    for run in result["cache_hit"]:
        lines.append(
            _row("Triton cache hit", run["protocol"], 1, run.get("images_per_request", 1), run)
        )
    c = result["comparison"]

    def verdict(ok: Optional[bool]) -> str:
        return "not measured" if ok is None else ("met" if ok else "NOT met")

    if c.get("best") and c.get("baseline"):
        lines.append(
            f"\nTriton / in-process: **{_fmt(c['ratio'], 2)}x** (best: {c['best']['protocol']} "
            f"at concurrency {c['best']['concurrency']}, {_fmt(c['best']['images_per_s'])} "
            f"images/s, vs in-process batch {c['baseline']['batch_size']}, "
            f"{_fmt(c['baseline']['images_per_s'])} images/s); target >= {c['target_ratio']}x: "
            f"{verdict(c['ratio_ok'])}"
        )
    p95 = ", ".join(f"{p} {_fmt(v)} ms" for p, v in c.get("p95_ms", {}).items()) or "–"
    lines.append(
        f"p95 at concurrency {c['p95_ms_at_concurrency']}: {p95}; target < "
        f"{_fmt(c['target_p95_ms'], 0)} ms: {verdict(c['p95_ok'])}"
    )
    config = result.get("model", {}).get("triton_config")
    if config:
        settings = result.get("settings", {})
        lines.append(
            f"Config: {config['instance_count']} instance(s), intra-op threads "
            f"{config['intra_op_threads']} (0 = cores / instances), max queue delay "
            f"{config['max_queue_delay_us']} us, preferred batches "
            f"{config['preferred_batch_sizes']}, "
            f"max batch {config['max_batch_size']}, response cache "
            f"{'on' if config['response_cache'] else 'off'}; client {settings.get('client')}, "
            f"HTTP outputs {settings.get('http_outputs')}, payload "
            f"{result['model'].get('payload_format')} "
            f"~{result['model'].get('payload_mean_bytes')} B."
        )
    machine = result["machine"]
    load = machine.get("loadavg_start", [None])[0]
    note = (
        f"Machine: {machine.get('cpus')} CPUs, 1-min load average {_fmt(load, 2)} at start, "
        f"{_fmt(machine.get('loadavg_end', [None])[0], 2)} at end"
    )
    if load is not None and load > BUSY_LOAD:
        note += " — NOT quiet: these numbers are noisy"
    lines.append(
        note + ". CPU columns: % of one core over the timed run "
        "(client = this process, server = tritonserver + stubs; – under "
        f"{MIN_CPU_WALL_S:g} s)."
    )
    return "\n".join(lines)
