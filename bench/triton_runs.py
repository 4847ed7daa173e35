"""The Triton side of the benchmark: start the real server, drive it, always stop it.

The server runs on free 127.0.0.1 ports with its log in the workdir (quoted when it fails to get
ready). Each run is observed from the server's side too (bench/observe.py), so a shortfall comes
with its reason: small batches, time queued, compute, or a client eating the cores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from bench.loadgen import LoadResult, Observer, run_load
from bench.observe import cpu_seconds, process_tree, scrape, server_breakdown
from bench.payload import PayloadSource, RepeatedPayload
from bench.senders import sender_factory
from bench.stats import summarize

if TYPE_CHECKING:
    from hoh.serving.server import TritonServer

MODEL_NAME = "hoh"  # TritonPushSettings' default, which the benchmark pushes under


def _observer(server: "TritonServer", model: str) -> Observer:
    def start() -> Callable[[], dict]:
        pids = process_tree(server.pid)
        before, cpu0 = scrape(server.metrics_url, model), cpu_seconds(pids)

        def finish() -> dict:
            time.sleep(0.3)  # Triton records a request's statistics just after its response
            after = scrape(server.metrics_url, model)
            return {
                "server": server_breakdown(before, after),
                "server_cpu_s": round(cpu_seconds(pids) - cpu0, 3),
            }

        return finish

    return start


def _row(protocol: str, concurrency: int, images: int, client: str, result: LoadResult) -> dict:
    summary = summarize(
        result.latencies_s, result.wall_s, images, len(result.errors), result.capped
    )
    return {
        "protocol": protocol,
        "concurrency": concurrency,
        "images_per_request": images,
        "client": client,
        **summary.as_dict(),
        "client_cpu_s": round(result.cpu_s, 3),
        "server_cpu_s": result.observed.get("server_cpu_s"),
        "server": result.observed.get("server", {}),
        "error_samples": result.errors[:3],
    }


def measure_triton(
    args: argparse.Namespace, workdir: Path, payloads: PayloadSource, say: Callable[[str], None]
) -> tuple[list[dict], list[dict]]:
    """(throughput rows per protocol x concurrency, cache-hit rows per protocol)."""
    from hoh.serving.server import TritonServer

    server = TritonServer(
        workdir / "repository",
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        model_control_mode=args.model_control_mode,
        log_file=workdir / "triton.log",
        extra_args=args.triton_arg,
    )
    say("starting Triton (the stub imports TensorFlow and runs the warmup request)")
    started = time.perf_counter()
    server.start()
    try:
        server.wait_ready(args.ready_timeout)
        say(
            f"Triton ready in {time.perf_counter() - started:.0f}s (pid {server.pid}, "
            f"http {server.http_url}, grpc {server.grpc_url})"
        )
        observe = _observer(server, MODEL_NAME)
        rows, cache_rows = [], []
        for protocol in args.protocols:
            url = server.http_url if protocol == "http" else server.grpc_url

            def senders(source):
                return sender_factory(
                    args.client,
                    protocol,
                    url,
                    MODEL_NAME,
                    source,
                    args.images_per_request,
                    args.timeout,
                    args.http_outputs,
                )

            for concurrency in args.concurrency:
                say(f"Triton {protocol}, concurrency {concurrency}")
                result = run_load(
                    senders(payloads),
                    concurrency,
                    args.requests,
                    args.time_cap,
                    args.warmup,
                    observe,
                )
                rows.append(
                    _row(protocol, concurrency, args.images_per_request, args.client, result)
                )
            if not args.no_response_cache:
                say(f"Triton {protocol}, cache hits")
                repeated = RepeatedPayload(payloads.take(args.images_per_request))
                # The one warmup request is the miss that fills the cache.
                result = run_load(
                    senders(repeated), 1, args.cache_requests, args.time_cap, 1, observe
                )
                cache_rows.append(_row(protocol, 1, args.images_per_request, args.client, result))
        return rows, cache_rows
    finally:
        server.stop()  # by PID; SIGKILL of its process group only after the exit timeout
