"""The `hoh ingest` loop: fetch, check, write, acknowledge, seal; nothing lost, nothing doubled.

Two tasks share a bounded queue. The fetcher asks the broker only for as many messages as the
queue has room for, so a slow disk pauses consumption instead of growing memory (the broker
keeps the rest). The writer takes micro-batches from the queue: every message is checked with
`hoh data import`'s own image checks (`check_message`, a pure function, on a few threads since
TensorFlow's decoder releases the GIL), refused ones are dead-lettered with the reason, and the
batch is committed to the open span (hoh.data.stream.openspan) before any of its messages is
acknowledged; the next batch is checked while one is being committed. A message the broker
delivers again after a crash is recognised by its broker key (or its content hash) and only
acknowledged.

SIGTERM/SIGINT stop the fetcher; the writer drains what was fetched, commits, acknowledges and
returns. A failure to write (disk full, permissions) stops the consumer with one error naming
the output and hands the batch back to the broker unacknowledged.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional, TextIO, Union

from hoh.config import IngestConfig
from hoh.data.images import ImageRejected, TfDecodeCheck, check_image_bytes
from hoh.data.report import Duplicate, Rejected
from hoh.data.stream import contract
from hoh.data.stream.broker import Broker, BrokerUnavailable, Delivery
from hoh.data.stream.openspan import Accepted, Batch, OpenSpan

_THREADS = 2


def check_message(
    delivery: Delivery,
    *,
    unlabeled: bool,
    max_pixels: int,
    max_message_bytes: int,
    decode: Callable[[bytes], tuple[int, int]],
) -> Union[Accepted, Rejected]:
    """The verdict on one message: an image to write, or a rejection with kind and reason."""
    source = next(
        (v for k, v in delivery.headers.items() if k.lower() == contract.SOURCE.lower()), None
    )
    where = source if source and source.isprintable() else f"message {delivery.key}"
    try:
        envelope = contract.parse(
            delivery.body,
            delivery.headers,
            unlabeled=unlabeled,
            max_message_bytes=max_message_bytes,
        )
        checked = check_image_bytes(delivery.body, max_pixels, decode)
    except ImageRejected as exc:
        return Rejected(where, exc.kind, exc.reason)
    return Accepted(
        checked.id,
        envelope.label,
        envelope.source,
        envelope.capture_time,
        checked.width,
        checked.height,
        delivery.body,
    )


@dataclass
class Stats:
    consumed: int = 0
    bytes: int = 0
    written: int = 0
    rejected: int = 0
    duplicates: int = 0
    redelivered: int = 0
    batches: int = 0
    sealed: list[int] = field(default_factory=list)
    lag: Optional[int] = None
    broker_down: bool = False
    busy_seconds: float = 0.0  # first message fetched to last batch acknowledged
    busy_cpu_seconds: float = 0.0  # CPU time of this process (all threads) over busy_seconds

    @property
    def rate(self) -> float:
        """Messages per second while there was work: what one consumer sustains."""
        return self.consumed / self.busy_seconds if self.busy_seconds else 0.0

    @property
    def cpu_ms_per_message(self) -> float:
        """What a message costs in CPU: on a shared machine, steadier than the rate."""
        return self.busy_cpu_seconds / self.consumed * 1e3 if self.consumed else 0.0


class Metrics:
    """Prometheus metrics in a registry of their own (several consumers may share a process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()

        def counter(name: str, doc: str) -> Counter:
            return Counter(f"hoh_ingest_{name}", doc, registry=self.registry)

        self.consumed = counter("consumed", "Messages taken from the broker")
        self.consumed_bytes = counter("consumed_bytes", "Message body bytes taken")
        self.written = counter("written", "Images written to the open span")
        self.rejected = counter("rejected", "Messages refused (and dead-lettered)")
        self.dead_lettered = counter("dead_lettered", "Messages stored on the dead-letter subject")
        self.duplicates = counter("duplicates", "Images already stored (same content hash)")
        self.redelivered = counter("redelivered", "Deliveries of messages already written")
        self.sealed = counter("sealed_spans", "Spans sealed")
        self.lag = Gauge("hoh_ingest_lag", "Messages waiting at the broker", registry=self.registry)
        self.open_span = Gauge(
            "hoh_ingest_open_span_images", "Images in the open span", registry=self.registry
        )
        self.write_seconds = Histogram(
            "hoh_ingest_shard_write_seconds",
            "Micro-batch write + fsync latency",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )


class HealthServer:
    """`/healthz` (200 while the loop turns and the broker answers, else 503) and `/metrics`."""

    def __init__(self, port: int, stats: Stats, metrics: Metrics, stale_after: float = 30.0):
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        self.beat = time.monotonic()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body, ctype, code = generate_latest(metrics.registry), CONTENT_TYPE_LATEST, 200
                elif self.path == "/healthz":
                    stale = time.monotonic() - outer.beat > stale_after
                    ok = not stale and not stats.broker_down
                    doc = {"status": "ok" if ok else "unhealthy", "stalled": stale, **asdict(stats)}
                    body, ctype = json.dumps(doc).encode(), "application/json"
                    code = 200 if ok else 503
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Ingestor:
    def __init__(
        self,
        broker: Broker,
        span: OpenSpan,
        config: IngestConfig,
        *,
        unlabeled: bool = False,
        max_pixels: int,
        exit_when_idle: Optional[float] = None,
        out: TextIO = sys.stderr,
        health_port: Optional[int] = None,
    ):
        self.broker, self.span, self.config = broker, span, config
        self.unlabeled, self.max_pixels = unlabeled, max_pixels
        self.exit_when_idle, self.out = exit_when_idle, out
        self.stats, self.metrics = Stats(), Metrics()
        self.health_port = health_port
        self.health: Optional[HealthServer] = None
        self._stop = asyncio.Event()
        self._last_message = time.monotonic()
        self._first_message: Optional[float] = None
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue(maxsize=config.queue_size)
        self._seal_refused: Optional[str] = None
        self._fetcher: Optional[asyncio.Task] = None
        self._first_cpu = 0.0

    def stop(self) -> None:
        self._stop.set()

    def _say(self, text: str) -> None:
        print(f"ingest: {text}", file=self.out, flush=True)

    async def run(self) -> Stats:
        await self.broker.check_positions(self.span.positions)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError):  # not the main thread
                pass
        if self.health_port is not None:
            self.health = HealthServer(self.health_port, self.stats, self.metrics)
            self._say(f"health on http://127.0.0.1:{self.health.port}/healthz and /metrics")
        decode = TfDecodeCheck()
        fetcher = self._fetcher = asyncio.create_task(self._fetch())
        progress = asyncio.create_task(self._progress())
        try:
            with ThreadPoolExecutor(_THREADS) as pool:
                await self._write(pool, decode)
        except BaseException:
            await self._end_fetcher(fetcher)
            left = []
            while not self._queue.empty():
                left.append(self._queue.get_nowait())
            await self.broker.release(left)
            raise
        finally:
            await self._end_fetcher(fetcher)
            progress.cancel()
            if self.health is not None:
                self.health.close()
        self._report_progress()
        return self.stats

    async def _end_fetcher(self, fetcher: asyncio.Task) -> None:
        """Stop fetching before the connection closes, so shutdown is not reported as an outage."""
        self._stop.set()
        fetcher.cancel()
        await asyncio.wait([fetcher], timeout=5)

    async def _fetch(self) -> None:
        while not self._stop.is_set():
            room = self._queue.maxsize - self._queue.qsize()
            if room <= 0:
                await asyncio.sleep(0.01)  # backpressure: the broker keeps the rest
                continue
            try:
                got = await self.broker.fetch(
                    min(room, self.config.batch_size), self.config.batch_wait_seconds
                )
            except BrokerUnavailable as exc:
                if self._stop.is_set():
                    return
                if not self.stats.broker_down:
                    self.stats.broker_down = True  # before the line: /healthz agrees with it
                    self._say(f"broker unavailable ({exc}); retrying")
                await asyncio.sleep(0.5)
                continue
            if self.stats.broker_down:
                self.stats.broker_down = False
                self._say("broker back")
            for delivery in got:
                self._queue.put_nowait(delivery)
            if got:
                self._last_message = time.monotonic()
                if self._first_message is None:
                    self._first_message = self._last_message
                    self._first_cpu = time.process_time()
                self.stats.lag = await self.broker.lag()

    async def _next_batch(self) -> list[Delivery]:
        batch: list[Delivery] = []
        deadline = time.monotonic() + self.config.batch_wait_seconds
        while len(batch) < self.config.batch_size:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), timeout=left))
            except asyncio.TimeoutError:
                break
        return batch

    def _idle(self) -> bool:
        return (
            self.exit_when_idle is not None
            and self._queue.empty()
            and time.monotonic() - self._last_message > self.exit_when_idle
        )

    async def _write(self, pool: ThreadPoolExecutor, decode: TfDecodeCheck) -> None:
        """Check batch N+1 while batch N is written, fsynced and acknowledged.

        The checks (mostly TensorFlow decoding, off the GIL) and the commit (serializing,
        writing, fsync) use different resources, so overlapping them is most of what one
        consumer can gain on a few cores. Batches are still stored one at a time and in order:
        a batch is classified against the open span only after the previous one is committed,
        so duplicates across neighbouring batches are caught as before.
        """
        loop = asyncio.get_running_loop()
        storing: Optional[asyncio.Task] = None
        try:
            while True:
                if self.health is not None:
                    self.health.beat = time.monotonic()
                if self._fetcher is not None and self._fetcher.done() and not self._stop.is_set():
                    self._fetcher.result()  # what killed it, rather than idling on an empty queue
                if self._stop.is_set():
                    if self._queue.empty():
                        if storing is not None:
                            previous, storing = storing, None
                            await previous
                        await self._maybe_seal()
                        break
                    batch = [
                        self._queue.get_nowait()
                        for _ in range(min(self._queue.qsize(), self.config.batch_size))
                    ]
                else:
                    batch = await self._next_batch()
                if batch:
                    checked = await self._check(batch, pool, loop, decode)
                    if storing is not None:
                        previous, storing = storing, None
                        try:
                            await previous
                        except BaseException:
                            await self.broker.release(batch)  # checked, never stored
                            raise
                    storing = asyncio.create_task(self._store(batch, checked))
                if storing is not None and (not batch or self._seal_due()):
                    previous, storing = storing, None
                    await previous  # a seal takes committed batches only
                if storing is None:
                    await self._maybe_seal()
                if not batch and self._idle():
                    self._stop.set()
        finally:
            if storing is not None:
                await storing  # its own failure releases its batch and propagates

    async def _check(self, deliveries: list[Delivery], pool, loop, decode) -> list:
        """Verdicts of the messages not already in the open span (None for those)."""

        def check(d: Delivery):
            return check_message(
                d,
                unlabeled=self.unlabeled,
                max_pixels=self.max_pixels,
                max_message_bytes=self.config.max_message_bytes,
                decode=decode,
            )

        async def none() -> None:
            return None

        return await asyncio.gather(
            *(
                none()
                if self.span.known(d.key, d.position)
                else loop.run_in_executor(pool, check, d)
                for d in deliveries
            )
        )

    async def _store(self, deliveries: list[Delivery], verdicts: list) -> None:
        stats, metrics, span = self.stats, self.metrics, self.span
        # Known keys are looked up again: the previous batch may have committed a redelivery.
        fresh: list[tuple[Delivery, Union[Accepted, Rejected]]] = []
        redelivered: list[Delivery] = []
        for delivery, verdict in zip(deliveries, verdicts):
            if verdict is None or span.known(delivery.key, delivery.position):
                redelivered.append(delivery)
            else:
                fresh.append((delivery, verdict))
        batch = Batch(redelivered=len(redelivered))
        acks = list(redelivered)
        unsent: list[Delivery] = []
        held: dict[str, Accepted] = {}
        for delivery, verdict in fresh:
            stats.consumed += 1
            stats.bytes += len(delivery.body)
            if isinstance(verdict, Rejected):
                headers = {
                    contract.REJECT_KIND: verdict.kind,
                    contract.REJECT_REASON: contract.header_text(verdict.reason),
                }
                try:
                    await self.broker.dead_letter(delivery, headers)
                except BrokerUnavailable as exc:
                    self._say(f"{verdict.path}: not dead-lettered ({exc}); redelivered later")
                    unsent.append(delivery)  # neither recorded nor acknowledged
                    continue
                batch.rejected.append(verdict)
                metrics.dead_lettered.inc()
            else:
                kept = held.get(verdict.id)
                kept_copy = (kept.source, kept.label) if kept else span.kept_copy(verdict.id)
                if kept_copy is not None:
                    batch.duplicates.append(
                        Duplicate(
                            verdict.source, kept_copy[0], verdict.id, verdict.label, kept_copy[1]
                        )
                    )
                else:
                    held[verdict.id] = verdict
                    batch.images.append(verdict)
            batch.keys.append(delivery.key)
            acks.append(delivery)
        if batch.keys:
            batch.positions = self.broker.positions_after(acks)
            started = time.monotonic()
            try:
                await asyncio.to_thread(span.commit, batch)
            except BaseException:
                await self.broker.release(deliveries)
                raise
            metrics.write_seconds.observe(time.monotonic() - started)
            stats.batches += 1
        stats.written += len(batch.images)
        stats.rejected += len(batch.rejected)
        stats.duplicates += len(batch.duplicates)
        stats.redelivered += len(redelivered)
        metrics.consumed.inc(len(fresh))
        metrics.consumed_bytes.inc(sum(len(d.body) for d, _ in fresh))
        metrics.written.inc(len(batch.images))
        metrics.rejected.inc(len(batch.rejected))
        metrics.duplicates.inc(len(batch.duplicates))
        metrics.redelivered.inc(len(redelivered))
        metrics.open_span.set(span.images)
        if stats.lag is not None:
            metrics.lag.set(stats.lag)
        try:
            await self.broker.ack(acks)
        except BrokerUnavailable as exc:  # written: a redelivery is recognised and dropped
            self._say(f"{len(acks)} acknowledgement(s) lost ({exc}); they will be redelivered")
        if unsent:  # later, not at once: the dead-letter store may need a while to recover
            await self.broker.release(unsent, self.config.retry_seconds)
        if self._first_message is not None:
            stats.busy_seconds = time.monotonic() - self._first_message
            stats.busy_cpu_seconds = time.process_time() - self._first_cpu

    def _seal_due(self) -> bool:
        span, config = self.span, self.config
        return span.images >= config.seal_count or (
            span.images > 0 and span.age_seconds() >= config.seal_age_seconds
        )

    async def _maybe_seal(self) -> None:
        if not self._seal_due():
            return
        span = self.span
        from hoh.errors import HohError

        try:
            report = await asyncio.to_thread(span.seal)
        except HohError as exc:
            if str(exc) != self._seal_refused:
                self._say(f"not sealed: {exc}")
            self._seal_refused = str(exc)
            return
        self._seal_refused = None
        if report is not None:
            self.stats.sealed.append(report.span)
            self.metrics.sealed.inc()
            self.metrics.open_span.set(span.images)
            self._say(
                f"sealed span {report.span}: {report.written} images "
                f"({report.split_counts}) -> {report.span_dir}"
            )

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(self.config.progress_seconds)
            self._report_progress()

    def _report_progress(self) -> None:
        now = time.monotonic()
        last = getattr(self, "_last_progress", None)
        s = self.stats
        if last is None:
            rate = mbps = 0.0
        else:
            t0, n0, b0 = last
            dt = max(now - t0, 1e-9)
            rate, mbps = (s.consumed - n0) / dt, (s.bytes - b0) / dt / 1e6
        self._last_progress = (now, s.consumed, s.bytes)
        lag = "?" if s.lag is None else s.lag
        self._say(
            f"{s.consumed} messages ({rate:.0f}/s, {mbps:.1f} MB/s), written {s.written}, "
            f"rejected {s.rejected}, duplicates {s.duplicates}, lag {lag}, "
            f"open span {self.span.images} images"
        )
