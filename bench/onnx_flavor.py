"""Flavour benchmark (issue 18): the ONNX ensemble vs the TensorFlow python-backend model vs
`serving_default` in process, plus parity of the two flavours on real images.

    .venv/bin/python -m bench.onnx_flavor --images ../shared/datasets/horse-or-human/train \\
        --json-out bench-onnx.json
    .venv/bin/python -m bench.onnx_flavor --images DIR --quick          # smoke run

One run: MobileNetV2 224 built and exported the production way (bench/model_setup.py), pushed
once per flavour into two repositories; then, on the same real PNGs:
1. parity: every PNG through ONNX preprocessing + onnxruntime vs `serving_default` (max |diff|
   of the probabilities, label agreement); JPEG (quality 90) and GIF re-encodings measured too;
2. ceilings in this process: onnxruntime on preprocessed pixels (compute only), preprocessing
   alone (decode + resize, one thread), `serving_default` at batch 32 (decoding included);
3. each flavour served by the real bundled Triton (one server at a time, free 127.0.0.1 ports,
   stopped by PID), closed loop, one image per request, at each concurrency; per-step server
   times (queue, compute) show where the time goes;
4. with `--perf-analyzer C,...`, the same servers again under Triton's own C++ load generator
   (the bundled perf_analyzer, hoh's input data from the first 64 images): hoh's Python client
   shares the 2 cores with the server (the in-process baseline has no client), perf_analyzer
   costs far less CPU per request, so its figures are closer to what the server can do.
Every request is byte-unique (bench/payload.py), so no cache answers (perf_analyzer repeats its
64 images; the response cache is off in both flavours).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import hoh  # noqa: F401,E402  (TF_USE_LEGACY_KERAS before TensorFlow)
from bench import inprocess, model_setup  # noqa: E402
from bench.loadgen import run_load  # noqa: E402
from bench.observe import cpu_seconds, process_tree, scrape, server_breakdown  # noqa: E402
from bench.payload import PayloadSource  # noqa: E402
from bench.senders import sender_factory  # noqa: E402
from bench.stats import summarize  # noqa: E402

MODEL = "hoh"
STEPS = (MODEL, MODEL + "_preprocess", MODEL + "_classifier")


def _flags(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.onnx_flavor", description=__doc__.split("\n")[0]
    )
    p.add_argument("--images", type=Path, required=True, help="directory of real PNGs (recursive)")
    p.add_argument("--max-images", type=int, default=0, help="use the first N PNGs (0 = all)")
    p.add_argument(
        "--lossy-images",
        type=int,
        default=128,
        help="PNGs re-encoded as JPEG and GIF for the lossy-format comparison",
    )
    p.add_argument("--concurrency", default="1,4,8,16")
    p.add_argument("--requests", type=int, default=320, help="timed requests per concurrency")
    p.add_argument("--warmup", type=int, default=16)
    p.add_argument("--time-cap", type=float, default=120.0)
    p.add_argument("--protocol", choices=("http", "grpc"), default="http")
    p.add_argument("--flavors", default="onnx,tensorflow")
    p.add_argument("--max-queue-delay-us", type=int, default=None)
    p.add_argument("--instance-count", type=int, default=None)
    p.add_argument("--preprocess-instance-count", type=int, default=None)
    p.add_argument(
        "--classifier-threads",
        type=int,
        default=None,
        help="intra_op_threads of the classifier's config.pbtxt (0 = cores/instances)",
    )
    p.add_argument("--weights", default="auto")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument(
        "--perf-analyzer",
        default="",
        metavar="C,...",
        help="also measure each flavour with perf_analyzer at these concurrencies",
    )
    p.add_argument("--quick", action="store_true", help="few images and requests: a smoke run")
    args = p.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.perf_analyzer = [int(c) for c in args.perf_analyzer.split(",") if c]
    args.flavors = [f for f in args.flavors.split(",") if f]
    if args.quick:
        args.max_images, args.lossy_images = args.max_images or 32, min(args.lossy_images, 8)
        args.requests, args.warmup, args.time_cap = 24, 4, 30.0
    return args


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _reencode(data: bytes, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    image = Image.open(io.BytesIO(data)).convert("RGB")
    image.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def parity(serving_dir: Path, model_onnx: bytes, images: list[bytes], lossy: int) -> dict:
    """Max |probability difference| and label agreement of the flavours, per input format."""
    import onnxruntime as ort
    import tensorflow as tf

    from hoh.serving.onnx_preprocess_model import preprocess

    serve = tf.saved_model.load(str(serving_dir)).signatures["serving_default"]
    session = ort.InferenceSession(model_onnx, providers=["CPUExecutionProvider"])
    size = session.get_inputs()[0].shape[1]
    sets = {"png": images}
    for fmt in ("JPEG", "GIF"):
        sets[fmt.lower()] = [_reencode(d, fmt) for d in images[:lossy]]
    out = {}
    for name, data in sets.items():
        diffs, same = [], 0
        for start in range(0, len(data), 32):
            chunk = data[start : start + 32]
            ref = serve(image_bytes=tf.constant(chunk))
            pixels = np.stack([preprocess(d, size) for d in chunk])
            probabilities, labels = session.run(None, {"image": pixels})
            diffs.append(np.abs(probabilities - ref["probabilities"].numpy()).max(axis=1))
            same += sum(a.encode() == b for a, b in zip(labels[:, 0], ref["label"].numpy()))
        diff = np.concatenate(diffs)
        out[name] = {
            "images": len(data),
            "max_abs_diff": float(diff.max()),
            "mean_abs_diff": float(diff.mean()),
            "labels_agree": int(same),
        }
        say(f"parity {name}: {out[name]}")
    return out


def ceilings(serving_dir: Path, model_onnx: bytes, images: list[bytes], requests: int) -> dict:
    """What one process reaches without a server: the bounds the served numbers are read against."""
    import onnxruntime as ort

    from hoh.serving.onnx_classifier_model import session_options
    from hoh.serving.onnx_preprocess_model import preprocess

    options = session_options({}, 2)  # the served classifier's options, on both cores
    session = ort.InferenceSession(model_onnx, options, providers=["CPUExecutionProvider"])
    size = session.get_inputs()[0].shape[1]
    started = time.perf_counter()
    pixels = [preprocess(d, size) for d in images[:requests]]
    decode_s = (time.perf_counter() - started) / len(pixels)
    out = {"preprocess_ms_per_image_1_thread": round(decode_s * 1000, 3)}
    for batch in (1, 32):
        stacked = np.stack((pixels * math.ceil(batch / len(pixels)))[:batch])
        session.run(None, {"image": stacked})
        calls = max(3, requests // batch)
        started = time.perf_counter()
        for _ in range(calls):
            session.run(None, {"image": stacked})
        out[f"ort_compute_images_per_s_batch{batch}"] = round(
            calls * batch / (time.perf_counter() - started), 1
        )
    rows = inprocess.measure(serving_dir, PayloadSource(images), [32], requests, 32, 120.0)
    out["tf_inprocess_batch32"] = rows[0]
    say(
        f"ceilings: {json.dumps({k: v for k, v in out.items() if k != 'tf_inprocess_batch32'})}; "
        f"TF in-process batch 32: {rows[0]['images_per_s']} images/s"
    )
    return out


def _observer(server, models: Sequence[str]) -> Callable:
    def start():
        pids = process_tree(server.pid)
        before = {m: scrape(server.metrics_url, m) for m in models}
        cpu0 = cpu_seconds(pids)

        def finish() -> dict:
            time.sleep(0.3)
            after = {m: scrape(server.metrics_url, m) for m in models}
            return {
                "server": {m: server_breakdown(before[m], after[m]) for m in models},
                "server_cpu_s": round(cpu_seconds(pids) - cpu0, 3),
            }

        return finish

    return start


def serve_flavor(flavor: str, repository: Path, images: list[bytes], args, log: Path) -> list[dict]:
    from hoh.serving.server import TritonServer

    models = STEPS if flavor == "onnx" else (MODEL,)
    server = TritonServer(
        repository,
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        model_control_mode="explicit",
        log_file=log,
    )
    rows = []
    server.start()
    try:
        server.wait_ready(300)
        url = server.http_url if args.protocol == "http" else server.grpc_url
        payloads = PayloadSource(images, start=10_000_000 * (1 + len(flavor)))
        for concurrency in args.concurrency:
            result = run_load(
                sender_factory("hoh", args.protocol, url, MODEL, payloads, 1, 60.0),
                concurrency,
                args.requests,
                args.time_cap,
                args.warmup,
                _observer(server, models),
            )
            summary = summarize(
                result.latencies_s, result.wall_s, 1, len(result.errors), result.capped
            ).as_dict()
            rows.append(
                {
                    "flavor": flavor,
                    "concurrency": concurrency,
                    **summary,
                    "server_cpu_s": result.observed.get("server_cpu_s"),
                    "client_cpu_s": round(result.cpu_s, 3),
                    "server": result.observed.get("server"),
                    "error_samples": result.errors[:3],
                }
            )
            say(
                f"{flavor} c={concurrency}: {summary['images_per_s']} images/s, "
                f"p95 {summary['latency_ms'].get('p95')} ms, errors {summary['errors']}"
            )
        for concurrency in args.perf_analyzer:
            row = perf_analyzer(server.http_url, images, concurrency, log.parent, models, server)
            rows.append({"flavor": flavor, "load": "perf_analyzer", **row})
            say(f"{flavor} perf_analyzer c={concurrency}: {row}")
    finally:
        server.stop()
    return rows


def perf_analyzer(
    url: str, images: list[bytes], concurrency: int, workdir: Path, models, server
) -> dict:
    """One perf_analyzer measurement (count windows of 320 requests, up to 6 trials): images/s,
    p50/p95 ms, and the server's CPU seconds per image over it; `error` if it gave none."""
    import csv
    import os
    import subprocess

    from hoh.serving.installation import find_installation
    from hoh.serving.perf_data import link_missing_libraries, perf_input_data

    data = workdir / "perf-data.json"
    if not data.exists():
        data.write_text(json.dumps(perf_input_data(images[:64])))
    libs = find_installation().libs
    links = link_missing_libraries(libs, workdir / "perf-libs")
    report = workdir / f"perf-{concurrency}.csv"
    report.unlink(missing_ok=True)
    observe = _observer(server, models)()
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("perf_analyzer")),
            *("-m", MODEL, "-u", url.split("://", 1)[-1], "--input-data", str(data)),
            *("--concurrency-range", str(concurrency), "-f", str(report)),
            *("--measurement-mode", "count_windows", "--measurement-request-count", "320"),
            *("--stability-percentage", "20", "--max-trials", "6", "--percentile", "95"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "LD_LIBRARY_PATH": f"{links}:{libs}"},
    )
    observed = observe()
    if done.returncode != 0 or not report.exists():
        return {"concurrency": concurrency, "error": (done.stdout + done.stderr)[-500:]}
    with report.open() as f:
        (row,) = list(csv.DictReader(f))[:1]
    rate = float(row["Inferences/Second"])
    return {
        "concurrency": concurrency,
        "images_per_s": round(rate, 1),
        "latency_ms": {q: round(float(row[f"{q} latency"]) / 1000, 1) for q in ("p50", "p95")},
        "server_cpu_s": observed.get("server_cpu_s"),
        "server": observed.get("server"),
    }


def _set_threads(config_path: Path, threads: int) -> None:
    """The hand edit docs/SERVING.md describes: read by onnx_classifier_model.py at load."""
    from hoh.components.triton_pusher.model_config import parse_model_config, render_model_config

    config = parse_model_config(config_path.read_text())
    config.parameters["intra_op_threads"].string_value = str(threads)
    config_path.write_text(render_model_config(config))


def markdown(result: dict) -> str:
    base = result["ceilings"]["tf_inprocess_batch32"]["images_per_s"]
    lines = [
        "| flavour | concurrency | images/s | x TF in-process b32 | p50 ms | p95 ms | err |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["served"]:
        if "error" in row:
            lines.append(f"| {row['flavor']} | {row['concurrency']} | failed | | | | |")
            continue
        lat = row["latency_ms"]
        load = " (perf_analyzer)" if row.get("load") == "perf_analyzer" else ""
        lines.append(
            f"| {row['flavor']}{load} | {row['concurrency']} | {row['images_per_s']:.1f} | "
            f"{row['images_per_s'] / base:.2f} | {lat.get('p50')} | {lat.get('p95')} | "
            f"{row.get('errors', '')} |"
        )
    lines.append(f"| in-process TF serving_default | batch 32 | {base:.1f} | 1.00 | | | |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from hoh.components.triton_pusher.flavors import push_model
    from hoh.components.triton_pusher.repository import TritonPushSettings

    args = _flags(argv)
    paths = sorted(args.images.rglob("*.png"))
    if args.max_images:
        paths = paths[: args.max_images]
    if not paths:
        raise SystemExit(f"--images {args.images}: no PNG files found")
    images = [p.read_bytes() for p in paths]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hoh-bench-onnx-"))
    started = time.perf_counter()
    try:
        tuned = {
            k: v
            for k, v in {
                "max_queue_delay_us": args.max_queue_delay_us,
                "instance_count": args.instance_count,
                "preprocess_instance_count": args.preprocess_instance_count,
            }.items()
            if v is not None
        }
        settings = TritonPushSettings(flavor="tensorflow", **tuned)
        say("building MobileNetV2 224 the production way (Transform, export, TF-flavour push)")
        model = model_setup.build_and_push(
            workdir,
            settings,
            image_size=224,
            alpha=1.0,
            weights=args.weights,
            images_per_class=4,
            source_size=300,
        )
        onnx_repo = workdir / "repository-onnx"
        say("pushing the ONNX flavour (tf2onnx export)")
        t0 = time.perf_counter()
        push_model(
            str(model.serving_dir), str(onnx_repo), TritonPushSettings(flavor="onnx", **tuned)
        )
        export_s = round(time.perf_counter() - t0, 1)
        if args.classifier_threads is not None:
            config = onnx_repo / f"{MODEL}_classifier" / "config.pbtxt"
            _set_threads(config, args.classifier_threads)
        model_onnx = (onnx_repo / f"{MODEL}_classifier" / "1" / "model.onnx").read_bytes()
        result = {
            "command": "python -m bench.onnx_flavor " + " ".join(argv or sys.argv[1:]),
            "images": len(images),
            "image_dir": str(args.images),
            "weights": model.weights,
            "onnx_push_s": export_s,
            "settings": {k: str(v) for k, v in vars(settings).items()},
            "classifier_threads": args.classifier_threads,
            "parity": parity(model.serving_dir, model_onnx, images, args.lossy_images),
            "ceilings": ceilings(model.serving_dir, model_onnx, images, args.requests),
            "served": [],
        }
        repos = {"onnx": onnx_repo, "tensorflow": workdir / "repository"}
        for flavor in args.flavors:
            say(f"serving the {flavor} flavour")
            result["served"] += serve_flavor(
                flavor, repos[flavor], images, args, workdir / f"triton-{flavor}.log"
            )
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    result["duration_s"] = round(time.perf_counter() - started, 1)
    print(markdown(result))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
