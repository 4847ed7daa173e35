"""The serving benchmark (bench/serving.py): its arithmetic, its result document, one smoke run.

No assertion here depends on how fast anything is: the machine running the tests is shared, and
the benchmark's numbers are for the lead to read on a quiet machine, not for CI to judge.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import hoh  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # bench/ lives in the checkout, not in the installed package
    sys.path.insert(0, str(REPO))

from tiny_model import make_image  # noqa: E402

from bench import observe, serving  # noqa: E402
from bench import serving_report as report  # noqa: E402
from bench.loadgen import run_load  # noqa: E402
from bench.payload import PayloadSource, RepeatedPayload, unique_variant  # noqa: E402
from bench.stats import percentile, summarize  # noqa: E402

# ====================================================================== statistics


@pytest.mark.parametrize("values", [[3.0], [5.0, 1.0], [0.4, 9.0, 2.5, 7.0, 7.0, 1.0, 3.3]])
@pytest.mark.parametrize("q", [0, 25, 50, 95, 99, 100])
def test_percentile_is_numpy_linear(values, q):
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_edges():
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summary_counts_successes_only_and_converts_to_ms():
    s = summarize([0.010, 0.020, 0.030, 0.040], wall_s=2.0, images_per_request=8, errors=3)
    assert (s.requests, s.images, s.errors) == (4, 32, 3)
    assert s.images_per_s == pytest.approx(16.0) and s.requests_per_s == pytest.approx(2.0)
    assert s.latency_ms["p50"] == pytest.approx(25.0)
    assert s.latency_ms["mean"] == pytest.approx(25.0)
    assert (s.latency_ms["min"], s.latency_ms["max"]) == (pytest.approx(10.0), pytest.approx(40.0))
    assert s.latency_ms["p99"] == pytest.approx(float(np.percentile([10, 20, 30, 40], 99)))


def test_empty_run_serializes_as_strict_json():
    d = summarize([], wall_s=0.0, images_per_request=1, errors=5, capped=True).as_dict()
    assert d["images_per_s"] == 0 and d["latency_ms"]["p95"] is None and d["capped"]
    json.dumps(d, allow_nan=False)


# ====================================================================== payloads


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_unique_variants_differ_in_bytes_not_in_pixels(fmt):
    import tensorflow as tf
    from PIL import Image

    image = make_image(3, size=(40, 30), fmt=fmt)
    a, b = unique_variant(image, 1), unique_variant(image, 2)
    assert len({image, a, b}) == 3
    for variant in (a, b):
        Image.open(io.BytesIO(variant)).load()  # PIL checks PNG chunk CRCs
        np.testing.assert_array_equal(
            tf.io.decode_image(variant, channels=3).numpy(),
            tf.io.decode_image(image, channels=3).numpy(),
        )
    with pytest.raises(ValueError):
        unique_variant(b"GIF89a....", 1)


def test_payload_source_never_repeats_and_repeated_payload_does():
    source = PayloadSource([make_image(1), make_image(2)])
    taken = source.take(5) + source.take(3)
    assert len(set(taken)) == 8
    fixed = RepeatedPayload(source.take(2))
    assert fixed.take(2) == fixed.take(2)


# ====================================================================== load generator


def test_run_load_sends_exactly_n_each_thread_using_its_own_sender():
    sent, wrong_thread, closed = [], [], []
    lock = threading.Lock()

    def make_sender():
        owner = threading.get_ident()  # tritonclient.http breaks if used from another thread

        def send():
            if threading.get_ident() != owner:
                wrong_thread.append(1)
            with lock:
                sent.append(len(sent))
            if len(sent) % 7 == 0:
                raise RuntimeError("every 7th fails")

        return send, lambda: closed.append(owner)

    observed = []

    def observer():
        observed.append("start")
        return lambda: {"server_cpu_s": 1.5}

    result = run_load(
        make_sender, concurrency=4, requests=30, time_cap_s=60, warmup=5, observe=observer
    )
    assert len(sent) == 35 and not wrong_thread and len(closed) == 4
    assert len(result.latencies_s) + len(result.errors) == 30
    assert result.errors and all("every 7th fails" in e for e in result.errors)
    assert observed == ["start"] and result.observed == {"server_cpu_s": 1.5}
    assert not result.capped


def test_run_load_stops_at_the_time_cap():
    result = run_load(
        lambda: (lambda: time.sleep(0.02), lambda: None),
        concurrency=2,
        requests=10**6,
        time_cap_s=0.2,
    )
    assert result.capped and 0 < len(result.latencies_s) < 10**6


def test_run_load_reports_a_sender_that_cannot_be_made():
    def broken():
        raise ConnectionError("no server")

    with pytest.raises(ConnectionError, match="no server"):
        run_load(broken, concurrency=3, requests=5, time_cap_s=5)


# ====================================================================== server observation

METRICS = """\
# HELP nv_inference_request_success Number of successful inference requests
nv_inference_request_success{model="hoh",version="1"} 110
nv_inference_request_success{model="hoh",version="2"} 10
nv_inference_request_success{model="other",version="1"} 999
nv_inference_count{model="hoh",version="1"} 120
nv_inference_exec_count{model="hoh",version="1"} 30
nv_inference_queue_duration_us{model="hoh",version="1"} 240000
nv_inference_compute_infer_duration_us{model="hoh",version="1"} 1200000
nv_cache_num_hits_per_model{model="hoh"} 4
nv_gpu_utilization{gpu_uuid="x"} NaN
"""


def test_metrics_are_summed_over_versions_and_turned_into_per_request_times():
    after = observe.parse_metrics(METRICS, "hoh")
    assert after["nv_inference_request_success"] == 120
    before = {
        "nv_inference_request_success": 20,
        "nv_inference_count": 20,
        "nv_inference_exec_count": 5,
        "nv_inference_queue_duration_us": 40000,
        "nv_inference_compute_infer_duration_us": 200000,
    }
    b = observe.server_breakdown(before, after)
    assert (b["requests_ok"], b["executions"], b["avg_batch_images"]) == (100, 25, 4.0)
    assert (b["queue_ms"], b["compute_infer_ms"], b["cache_hits"]) == (2.0, 10.0, 4)
    assert observe.server_breakdown({}, {})["avg_batch_images"] is None


def test_process_cpu_accounting_sees_this_process():
    assert os.getpid() in observe.process_tree(os.getpid())
    assert observe.cpu_seconds([os.getpid()]) > 0
    assert observe.cpu_seconds([2**22 + 12345]) == 0  # gone (or never was): ignored


# ====================================================================== result document


def _run(**fields):
    base = {
        "requests": 10,
        "images": 10,
        "errors": 0,
        "wall_s": 1.0,
        "images_per_s": 10.0,
        "requests_per_s": 10.0,
        "capped": False,
        "latency_ms": {"mean": 1.0, "min": 1.0, "max": 1.0, "p50": 1.0, "p95": 2.0, "p99": 3.0},
    }
    return {**base, **fields}


def _result():
    in_process = [_run(batch_size=1, images_per_s=40.0), _run(batch_size=32, images_per_s=100.0)]
    triton = [
        _run(
            protocol=p,
            concurrency=c,
            server={"avg_batch_images": 2.0},
            images_per_s=ips,
            latency_ms={"p50": 50.0, "p95": p95, "p99": 200.0},
            client_cpu_s=0.2,
            server_cpu_s=1.5,
        )
        for p, c, ips, p95 in [
            ("http", 1, 30.0, 40.0),
            ("http", 4, 70.0, 120.0),
            ("grpc", 4, 85.0, 160.0),
            ("grpc", 8, 82.0, 300.0),
        ]
    ]
    cache = [_run(protocol="grpc", server={"cache_hits": 10})]
    return {
        "schema": report.SCHEMA,
        "settings": {},
        "model": {},
        "machine": {"cpus": 2, "loadavg_start": [3.0, 2.0, 1.0], "loadavg_end": [3.0, 2.0, 1.0]},
        "in_process": in_process,
        "triton": triton,
        "cache_hit": cache,
        "comparison": report.compare(in_process, triton),
    }


def test_comparison_uses_best_concurrency_and_largest_in_process_batch():
    c = _result()["comparison"]
    assert c["best"] == {"protocol": "grpc", "concurrency": 4, "images_per_s": 85.0}
    assert c["baseline"] == {"batch_size": 32, "images_per_s": 100.0}
    assert (c["ratio"], c["ratio_ok"]) == (0.85, True)
    assert c["p95_ms"] == {"http": 120.0, "grpc": 160.0} and c["p95_ok"] is False
    assert report.compare([], [])["ratio_ok"] is None


def test_result_shape_check_and_markdown():
    result = _result()
    assert report.check_shape(result) == []
    json.dumps(result, allow_nan=False)
    text = report.render_markdown(result)
    assert "| Triton | grpc | 4 | 1 | 85.0 | 50.0 | 160.0 | 200.0 | 2.00 |" in text
    assert "**0.85x**" in text and "target >= 0.8x: met" in text
    assert "target < 150 ms: NOT met" in text and "noisy" in text  # load 3.0 at start
    broken = {k: v for k, v in result.items() if k != "cache_hit"}
    broken["triton"] = [{"protocol": "http"}]
    problems = report.check_shape(broken)
    assert "missing key 'cache_hit'" in problems and "triton[0] has no 'images_per_s'" in problems


def test_quick_defaults_and_explicit_flags():
    quick = serving.resolve_args(["--quick", "--requests", "5"])
    assert (quick.requests, quick.warmup, quick.time_cap) == (
        5,
        serving.QUICK["warmup"],
        serving.QUICK["time_cap"],
    )
    full = serving.resolve_args(["--concurrency", "2,6", "--protocols", "grpc"])
    assert (full.requests, full.concurrency, full.protocols) == (
        serving.FULL["requests"],
        (2, 6),
        ("grpc",),
    )
    for bad in (
        ["--http-outputs", "json"],
        ["--concurrency", "0"],
        ["--protocols", "udp"],
        ["--images-per-request", "64"],
    ):
        with pytest.raises(SystemExit):
            serving.resolve_args(bad)


# ====================================================================== smoke run


@pytest.mark.e2e
def test_quick_run_end_to_end_writes_valid_json(tmp_path):
    """Tiny model, few requests: the whole path (transform, export, push, real server) works."""
    out = tmp_path / "bench.json"
    requests, cache_requests = 6, 4
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.serving",
            "--quick",
            "--image-size",
            "32",
            "--alpha",
            "0.35",
            "--source-size",
            "64",
            "--requests",
            str(requests),
            "--warmup",
            "2",
            "--cache-requests",
            str(cache_requests),
            "--concurrency",
            "1,4",
            "--json-out",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"JSON has {c}"))
    assert report.check_shape(result) == []
    assert [(r["protocol"], r["concurrency"]) for r in result["triton"]] == [
        ("http", 1),
        ("http", 4),
        ("grpc", 1),
        ("grpc", 4),
    ]
    for row in result["triton"]:
        assert (row["requests"], row["errors"]) == (requests, 0), row["error_samples"]
        assert row["server"]["requests_ok"] == requests
        assert row["server"]["cache_hits"] == 0  # every throughput request was byte-unique
    for row in result["cache_hit"]:
        assert row["server"]["cache_hits"] == cache_requests and row["errors"] == 0
    assert [r["batch_size"] for r in result["in_process"]] == [1, 32]
    assert result["comparison"]["ratio"] > 0
    assert result["model"]["weights"] == "none" and result["model"]["pushed_version"] == 1
    assert "| Triton | grpc | 4 |" in proc.stdout
