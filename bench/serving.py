"""Serving benchmark (issue 3): in-process `serving_default` vs the bundled Triton, one model.

    .venv/bin/python -m bench.serving --json-out bench-serving.json     # full run, quiet machine
    .venv/bin/python -m bench.serving --quick                           # smoke run, ~1-2 min

One run builds MobileNetV2 (default 224 px, alpha 1.0) through the production path (real
Transform graph, `export_model`, `push_model`), measures `serving_default` in this process at
batch 1 and 32, then starts the real server (`TritonServer`) on free 127.0.0.1 ports and drives
it over HTTP and gRPC at concurrency 1, 4 and 8 with a closed-loop load generator, plus a
cache-hit latency (one request repeated). Every throughput request is byte-unique so Triton's
response cache cannot answer it (bench/payload.py). The server is always stopped by PID.

Everything that plausibly decides whether Triton keeps up is a flag, so the lead can tune on a
quiet machine: batcher delay, preferred/max batch sizes, instance count, TensorFlow intra-op
threads inside the stub, response cache on/off, extra tritonserver arguments, client kind and
HTTP output encoding, images per request, payload format. Results: a Markdown table on stdout
and `--json-out`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

if __package__ in (None, ""):  # `python bench/serving.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hoh  # noqa: F401,E402  (TF_USE_LEGACY_KERAS before TensorFlow)
from bench import serving_report as report  # noqa: E402

if TYPE_CHECKING:
    from hoh.components.triton_pusher.repository import TritonPushSettings

# Defaults of the full measurement, and of --quick; explicit flags override either.
FULL = {
    "requests": 400,
    "warmup": 16,
    "cache_requests": 100,
    "time_cap": 180.0,
    "images_per_class": 8,
}
QUICK = {"requests": 24, "warmup": 4, "cache_requests": 8, "time_cap": 20.0, "images_per_class": 2}


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _protocols(text: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values or set(values) - {"http", "grpc"}:
        raise argparse.ArgumentTypeError(f"protocols are http and/or grpc, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.serving",
        description="In-process serving_default vs Triton (HTTP, gRPC) on one MobileNetV2.",
    )
    run = p.add_argument_group("run size")
    run.add_argument(
        "--quick",
        action="store_true",
        help="smoke mode: few requests and base images, short time cap (~1-2 min)",
    )
    run.add_argument(
        "--requests",
        type=int,
        help="timed requests per Triton run, and images per in-process batch size "
        f"(default {FULL['requests']}; quick {QUICK['requests']})",
    )
    run.add_argument(
        "--warmup",
        type=int,
        help="untimed requests before each run "
        f"(default {FULL['warmup']}; quick {QUICK['warmup']})",
    )
    run.add_argument(
        "--cache-requests",
        type=int,
        help="repeats of one request for the cache-hit "
        f"latency (default {FULL['cache_requests']}; quick {QUICK['cache_requests']})",
    )
    run.add_argument(
        "--time-cap",
        type=float,
        metavar="SECONDS",
        help="no new request after this long in one run "
        f"(default {FULL['time_cap']:g}; quick {QUICK['time_cap']:g})",
    )
    run.add_argument("--json-out", type=Path, metavar="PATH", help="write the result JSON here")
    run.add_argument(
        "--workdir",
        type=Path,
        help="where model, repository and log go "
        "(default: a temp dir, removed afterwards unless --keep)",
    )
    run.add_argument(
        "--keep", action="store_true", help="keep the workdir (server log, repository)"
    )

    model = p.add_argument_group("model")
    model.add_argument("--image-size", type=int, default=224)
    model.add_argument("--alpha", type=float, default=1.0)
    model.add_argument(
        "--weights",
        default="auto",
        help="auto (offline ImageNet file if present, else random), none, or a path",
    )
    model.add_argument(
        "--source-size",
        type=int,
        default=300,
        help="pixel size of the demo images sent (horse-or-human files are 300)",
    )
    model.add_argument(
        "--images-per-class",
        type=int,
        help="demo images per class: the Transform data and the payload pool",
    )
    model.add_argument(
        "--image-format",
        choices=("png", "jpeg"),
        default="png",
        help="payload encoding (decode cost differs; PNG is what the data set has)",
    )

    triton = p.add_argument_group("Triton model config (written by push_model, then tuned)")
    triton.add_argument(
        "--instance-count",
        type=int,
        default=1,
        help="python-backend stub processes (each a TensorFlow)",
    )
    triton.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=2000,
        help="how long the dynamic batcher waits to fill a preferred batch",
    )
    triton.add_argument("--max-batch-size", type=int, default=32)
    triton.add_argument(
        "--preferred-batch-sizes", type=_ints, default=(8, 16, 32), metavar="N,N,..."
    )
    triton.add_argument(
        "--intra-op-threads",
        type=int,
        default=None,
        metavar="N",
        help="TensorFlow intra-op threads per stub (default: the pushed 0 = "
        "cores / instances; inter-op is min(2, intra))",
    )
    triton.add_argument(
        "--no-response-cache",
        action="store_true",
        help="disable the response cache (shows its cost on misses; no cache-hit rows)",
    )
    triton.add_argument("--model-control-mode", choices=("poll", "explicit"), default="poll")
    triton.add_argument("--ready-timeout", type=float, default=600.0, metavar="SECONDS")
    triton.add_argument(
        "--triton-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra tritonserver argument, repeatable, e.g. "
        "--triton-arg=--backend-config=python,shm-default-byte-size=67108864",
    )

    load = p.add_argument_group("load")
    load.add_argument("--protocols", type=_protocols, default=("http", "grpc"), metavar="P,P")
    load.add_argument("--concurrency", type=_ints, default=(1, 4, 8), metavar="N,N,...")
    load.add_argument(
        "--images-per-request",
        type=int,
        default=1,
        help="images in each client request (1 = one user, one image)",
    )
    load.add_argument(
        "--in-process-batches",
        type=_ints,
        default=(1, 32),
        metavar="N,N,...",
        help="in-process batch sizes; the largest is the Triton baseline",
    )
    load.add_argument(
        "--client",
        choices=("hoh", "raw"),
        default="hoh",
        help="hoh = TritonImageClient (what users get); raw = bare tritonclient",
    )
    load.add_argument(
        "--http-outputs",
        choices=("binary", "json"),
        default="binary",
        help="HTTP output encoding (json needs --client raw)",
    )
    load.add_argument("--timeout", type=float, default=60.0, help="client timeout per request")
    return p


def resolve_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.http_outputs == "json" and args.client != "raw":
        parser.error("--http-outputs json needs --client raw")
    if args.images_per_request > args.max_batch_size:
        parser.error("--images-per-request must not exceed --max-batch-size")
    if min(args.requests, args.images_per_class, args.instance_count) < 1 or args.warmup < 0:
        parser.error("--requests, --images-per-class and --instance-count must be >= 1")
    if args.workdir and args.workdir.exists() and any(args.workdir.iterdir()):
        parser.error(f"--workdir {args.workdir} is not empty (each run builds a fresh model)")
    return args


def _settings(args: argparse.Namespace) -> "TritonPushSettings":
    from hoh.components.triton_pusher.repository import TritonPushSettings

    return TritonPushSettings(
        flavor="tensorflow",  # its knobs (TensorFlow threads in the stub) are this flavour's
        max_batch_size=args.max_batch_size,
        preferred_batch_sizes=tuple(args.preferred_batch_sizes),
        max_queue_delay_us=args.max_queue_delay_us,
        instance_count=args.instance_count,
    ).validate()


def _jsonable(value):
    if isinstance(value, tuple):
        return list(value)
    return str(value) if isinstance(value, Path) else value


def _machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "loadavg_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = resolve_args(argv)
    started = time.perf_counter()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hoh-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args, workdir)
    finally:
        if not (args.keep or args.workdir):
            shutil.rmtree(workdir, ignore_errors=True)
    result["duration_s"] = round(time.perf_counter() - started, 1)
    problems = report.check_shape(result)
    if problems:  # a bug in this file, not a slow server: say so loudly
        print("bench: result document is incomplete: " + "; ".join(problems), file=sys.stderr)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    print(report.render_markdown(result))
    if args.json_out:
        print(f"\nJSON: {args.json_out}")
    return 1 if problems else 0


def say(message: str) -> None:
    """Progress on stderr, so stdout is only the table (pipe it into a file or a PR)."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace, workdir: Path) -> dict:
    from bench import inprocess, model_setup
    from bench.payload import PayloadSource, load_images
    from bench.triton_runs import measure_triton

    machine = _machine()
    say(
        f"building {args.image_size}px alpha {args.alpha} model, exporting and pushing "
        f"(workdir {workdir})"
    )
    settings = _settings(args)
    bench_model = model_setup.build_and_push(
        workdir,
        settings,
        image_size=args.image_size,
        alpha=args.alpha,
        weights=args.weights,
        images_per_class=args.images_per_class,
        source_size=args.source_size,
    )
    config = model_setup.tune_config(
        bench_model.model_dir, args.intra_op_threads, not args.no_response_cache
    )
    payloads = PayloadSource(load_images(bench_model.image_paths, args.image_format))
    say(f"in-process serving_default at batch {', '.join(map(str, args.in_process_batches))}")
    in_process = inprocess.measure(
        bench_model.serving_dir,
        payloads,
        args.in_process_batches,
        args.requests,
        args.warmup,
        args.time_cap,
    )
    triton, cache_hit = measure_triton(args, workdir, payloads, say)
    machine["loadavg_end"] = list(os.getloadavg())
    return {
        "schema": report.SCHEMA,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "settings": {k: _jsonable(v) for k, v in sorted(vars(args).items())},
        "machine": machine,
        "model": {
            "image_size": args.image_size,
            "alpha": args.alpha,
            "weights": bench_model.weights,
            "class_names": bench_model.class_names,
            "pushed_version": bench_model.version,
            "triton_config": config,
            "payload_format": args.image_format,
            "payload_source_px": args.source_size,
            "payload_mean_bytes": round(payloads.mean_bytes),
            "setup_seconds": bench_model.seconds,
        },
        "in_process": in_process,
        "triton": triton,
        "cache_hit": cache_hit,
        "comparison": report.compare(in_process, triton),
    }


if __name__ == "__main__":
    sys.exit(main())
