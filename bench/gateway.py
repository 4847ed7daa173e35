"""Gateway benchmark (issue 13): direct Triton gRPC vs `hoh gateway` (TLS 1.3 + JWT) miss vs hit.

    .venv/bin/python -m bench.gateway --json-out bench-gateway.json            # tiny model
    .venv/bin/python -m bench.gateway --model mobilenet --requests 200          # MobileNetV2 224

Same images, same run: one Triton (free 127.0.0.1 ports), one gateway subprocess in front of it
(TLS 1.3 with a throw-away CA, ES256/RS256 tokens checked against a JWKS file, a Redis cache on
a Redis started here, the audit log on, no rate limit), one closed-loop load generator
(bench/loadgen.py). For each concurrency:

- direct: hoh's gRPC client straight to Triton (both outputs, as the gateway asks);
- miss: byte-unique images (bench/payload.py) through the gateway, so neither cache can answer;
- hit: one image, already cached, through the gateway.

Then the failure run: misses and hits at the highest concurrency while the Redis is killed
(SIGKILL) a third of the way in (by request count); every request must still succeed. The load
generator runs on the same cores as the servers (as the issue asks: 2 cores), so its CPU is
reported per row.
The tiny model (tests/tiny_model.py) makes Triton cheap, which shows the gateway's own cost at
its largest; `--model mobilenet` (or `--model-repository DIR`) measures what users of the real
model get.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/gateway.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hoh  # noqa: F401,E402  (TF_USE_LEGACY_KERAS before TensorFlow)
from bench.loadgen import run_load  # noqa: E402
from bench.observe import cpu_seconds, process_tree  # noqa: E402
from bench.payload import PayloadSource, RepeatedPayload, load_images  # noqa: E402
from bench.senders import hoh_sender  # noqa: E402
from bench.stats import summarize  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_IMAGES = REPO_ROOT.parent / "shared" / "datasets" / "horse-or-human"
MODEL = "hoh"


def _tests_on_path() -> None:
    """The tests' model and PKI helpers (one implementation, as bench/model_setup.py does)."""
    tests_dir = str(REPO_ROOT / "tests")
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, process: subprocess.Popen, what: str, timeout: float = 90) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout:.0f} s")


def _stop(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def build_repository(workdir: Path, model: str) -> Path:
    """A repository with one version of `hoh` pushed: the tiny model through the real
    TritonPusher, or MobileNetV2 224 built the production way (bench/model_setup.py)."""
    repository = workdir / "repository"
    if model == "mobilenet":
        from bench import model_setup
        from hoh.components.triton_pusher.repository import TritonPushSettings

        model_setup.build_and_push(
            workdir,
            TritonPushSettings().validate(),
            image_size=224,
            alpha=1.0,
            weights="auto",
            images_per_class=8,
            source_size=300,
        )
        return repository
    _tests_on_path()
    from tiny_model import build_model_artifact_dir, run_pusher_executor

    build_model_artifact_dir(workdir / "model", class_names=("horses", "humans"), seed=0)
    run_pusher_executor(
        workdir / "model",
        repository,
        workdir / "pushed",
        blessed=1,
        max_batch_size=32,
        preferred_batch_sizes=[8, 16, 32],
        max_queue_delay_us=2000,
    )
    return repository


def base_images(count: int) -> list[bytes]:
    """The shared horse-or-human PNGs when present (real photos), else generated ones."""
    paths = sorted(SHARED_IMAGES.rglob("*.png"))[:count] if SHARED_IMAGES.is_dir() else []
    if paths:
        return load_images(paths, "png")
    _tests_on_path()
    from tiny_model import make_image

    return [make_image(i, size=(300, 300)) for i in range(count)]


class Edge:
    """The gateway under test, with its PKI, token and Redis."""

    def __init__(self, workdir: Path, triton_grpc: str):
        _tests_on_path()
        from gateway_support import ISSUER, Keys, issue, make_ca, write_pair

        pki = workdir / "pki"
        pki.mkdir()
        ca = make_ca("bench CA")
        self.ca, _ = write_pair(pki, "ca", ca)
        cert, key = write_pair(pki, "server", issue(ca, "localhost", server=True))
        keys = Keys()
        jwks = keys.write_jwks(workdir / "jwks.json")
        self.token = keys.token(alg="ES256", sub="bench", scope="predict", exp_in=3600)
        self.redis_port = _free_port()
        self.redis = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.redis_port),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            start_new_session=True,
        )
        _wait_port(self.redis_port, self.redis, "redis-server")
        self.port = _free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "HOH_GATEWAY_RATE_LIMIT_PER_S": "0",
            "HOH_GATEWAY_CACHE_RETRY_S": "1",
            "HOH_GATEWAY_CACHE_TIMEOUT_S": "0.25",
        }
        self.log = workdir / "gateway.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hoh.cli",
                    "gateway",
                    "--triton",
                    triton_grpc,
                    "--port",
                    str(self.port),
                    "--tls-cert",
                    str(cert),
                    "--tls-key",
                    str(key),
                    "--jwks-file",
                    str(jwks),
                    "--issuer",
                    ISSUER,
                    "--audit-dir",
                    str(workdir / "audit"),
                    "--cache-url",
                    f"redis://127.0.0.1:{self.redis_port}/0",
                    "--log-level",
                    "warning",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        _wait_port(self.port, self.process, "hoh gateway")

    def sender(self, payloads, timeout: float):
        """One thread's client: TLS verified against the bench CA, the bearer token."""
        import ssl

        import httpx

        client = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            verify=ssl.create_default_context(cafile=str(self.ca)),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "image/png"},
        )

        def send() -> None:
            r = client.post(f"/v1/models/{MODEL}/predict", content=payloads.take(1)[0])
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")

        return send, client.close

    def readiness(self) -> dict:
        import ssl

        import httpx

        with httpx.Client(verify=ssl.create_default_context(cafile=str(self.ca))) as c:
            return c.get(f"{self.url}/readyz").json()

    def kill_redis(self) -> None:
        self.redis.kill()
        self.redis.wait(10)

    def close(self) -> None:
        _stop(self.process)
        _stop(self.redis)


def _cpu_observer(processes: dict[str, int]):
    """CPU seconds of the gateway and of Triton (+ its stubs) over exactly the timed requests."""

    def start():
        trees = {name: process_tree(pid) for name, pid in processes.items()}
        before = {name: cpu_seconds(pids) for name, pids in trees.items()}
        return lambda: {
            f"{name}_cpu_s": round(cpu_seconds(trees[name]) - before[name], 3) for name in trees
        }

    return start


def _row(name: str, concurrency: int, result) -> dict:
    summary = summarize(result.latencies_s, result.wall_s, 1, len(result.errors), result.capped)
    return {
        "path": name,
        "concurrency": concurrency,
        **summary.as_dict(),
        "client_cpu_s": round(result.cpu_s, 3),
        **result.observed,
        "error_samples": result.errors[:3],
    }


def measure(args: argparse.Namespace, workdir: Path, say) -> dict:
    from hoh.serving.server import TritonServer

    repository = args.model_repository or build_repository(workdir, args.model)
    images = base_images(args.images)
    server = TritonServer(
        repository,
        http_port=_free_port(),
        grpc_port=_free_port(),
        metrics_port=_free_port(),
        log_file=workdir / "triton.log",
    )
    edge = None
    rows, failure = [], {}
    try:
        server.start()
        server.wait_ready(args.ready_timeout)
        edge = Edge(workdir, server.grpc_url)
        misses = PayloadSource(images)  # never-seen bytes for both the direct and miss paths
        hot = RepeatedPayload(images[:1])
        paths = (
            (
                "direct Triton gRPC",
                lambda: hoh_sender("grpc", server.grpc_url, MODEL, misses, 1, args.timeout),
            ),
            ("gateway miss (TLS+JWT)", lambda: edge.sender(misses, args.timeout)),
            ("gateway hit (TLS+JWT)", lambda: edge.sender(hot, args.timeout)),
        )
        observe = _cpu_observer({"gateway": edge.process.pid, "triton": server.pid})
        for c in args.concurrency:
            for name, make in paths:
                count = args.hit_requests if "hit" in name else args.requests
                say(f"{name}, concurrency {c}: {count} requests")
                result = run_load(
                    make, c, count, args.time_cap, warmup=args.warmup, observe=observe
                )
                rows.append(_row(name, c, result))
        c = max(args.concurrency)
        total = args.requests * 2
        say(
            f"Redis killed mid-run: concurrency {c}, {total} misses and hits, SIGKILL at "
            f"request {total // 3}"
        )
        mixed = _Alternate(misses, hot, kill_at=total // 3, kill=edge.kill_redis)
        result = run_load(lambda: edge.sender(mixed, args.timeout), c, total, args.time_cap)
        failure = {
            **_row("Redis killed mid-run", c, result),
            "killed_at_request": total // 3,
            "killed": mixed.killed,
            "readyz_after": edge.readiness(),
        }
    finally:
        if edge is not None:
            edge.close()
        server.stop()
    return {"rows": rows, "redis_killed": failure}


class _Alternate:
    """Misses and hits in turn (so the kill hits both paths); kills Redis at request `kill_at`
    (counted by payloads taken, so the kill lands mid-run whatever the speed)."""

    def __init__(self, *sources, kill_at: int, kill):
        import itertools

        self._sources, self._kill_at, self._kill = sources, kill_at, kill
        self._next = itertools.count().__next__
        self.killed = False

    def take(self, count: int = 1) -> list[bytes]:
        n = self._next()
        if n == self._kill_at:
            self._kill()
            self.killed = True
        return self._sources[n % len(self._sources)].take(count)


def markdown(result: dict) -> str:
    rows = result["rows"]
    direct = {r["concurrency"]: r["requests_per_s"] for r in rows if r["path"].startswith("dir")}
    lines = [
        "| path | concurrency | req/s | vs direct | p50 ms | p95 ms | errors | CPU s: "
        "client / gateway / Triton |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows + ([result["redis_killed"]] if result["redis_killed"] else []):
        base = direct.get(r["concurrency"]) or 0
        ratio = f"{r['requests_per_s'] / base:.2f}x" if base else "-"
        lat = r["latency_ms"]
        lines.append(
            f"| {r['path']} | {r['concurrency']} | {r['requests_per_s']:.1f} | {ratio} "
            f"| {lat['p50']} | {lat['p95']} | {r['errors']} | {r['client_cpu_s']} / "
            f"{r.get('gateway_cpu_s', '-')} / {r.get('triton_cpu_s', '-')} |"
        )
    return "\n".join(lines)


def _ints(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__.split("\n")[0])
    p.add_argument(
        "--model",
        choices=("tiny", "mobilenet"),
        default="tiny",
        help="tiny: Triton nearly free, the gateway's cost at its largest; mobilenet: "
        "MobileNetV2 224 with the offline ImageNet weights when present",
    )
    p.add_argument(
        "--model-repository",
        type=Path,
        metavar="DIR",
        help="serve this pushed repository (model `hoh`, e.g. a pipeline's or "
        "bench.serving's --keep workdir) instead of the tiny model",
    )
    p.add_argument("--concurrency", type=_ints, default=(1, 4, 8, 16), metavar="N,N,...")
    p.add_argument("--requests", type=int, default=400, help="timed requests per miss/direct run")
    p.add_argument("--hit-requests", type=int, default=2000, help="timed requests per hit run")
    p.add_argument("--warmup", type=int, default=16)
    p.add_argument("--images", type=int, default=16, help="base images (byte-unique per request)")
    p.add_argument("--time-cap", type=float, default=120.0, metavar="SECONDS")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--ready-timeout", type=float, default=600.0)
    p.add_argument("--json-out", type=Path)
    p.add_argument("--keep", action="store_true", help="keep the workdir (logs)")
    args = p.parse_args(argv)
    if shutil.which("redis-server") is None:
        print("bench.gateway: needs redis-server on PATH (it kills its own Redis)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="hoh-bench-gateway-"))

    def say(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    load_before = os.getloadavg()
    try:
        result = measure(args, workdir, say)
    finally:
        if args.keep:
            say(f"workdir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    result["meta"] = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "model": str(args.model_repository or args.model),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "command": " ".join(["python -m bench.gateway", *(argv or sys.argv[1:])]),
    }
    print(markdown(result))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result["redis_killed"].get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
