"""`hoh publish` / `hoh ingest` on a real broker: the contract suite every broker kind passes.

Each test runs on NATS JetStream (the machine's server, else `nats-server -js` on a free port,
else skipped with the reason; failing under CI) and on Kafka: KAFKA_BOOTSTRAP_SERVERS, else
Tansu, a Kafka-protocol broker, started from PATH or .tools/ on a free port (`make tansu`; not
Apache Kafka, which no registry reachable here carries). Crashes, broker outages and full disks
are in test_ingest_faults.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import threading
import urllib.request
from pathlib import Path

import pytest
from imagegen import encode, pattern, write, write_classes
from services import free_port, service, stop, unique_name
from tests_support.ingest import (
    BROKERS,
    Target,
    ingest_config,
    kafka_service,
    kafka_target,
    png_bomb,
    read_spans,
    wait_for,
)

from hoh import features
from hoh.data.images import DEFAULT_MAX_PIXELS, ImageRejected, TfDecodeCheck
from hoh.data.importer import import_images
from hoh.data.report import Rejected
from hoh.data.stream import contract
from hoh.data.stream.broker import Delivery
from hoh.data.stream.consumer import Ingestor, check_message
from hoh.data.stream.openspan import OpenSpan
from hoh.data.stream.publisher import publish_folder
from hoh.errors import RunFailed

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def nats_url():
    url, started = service("nats")
    yield url
    stop(started)


@pytest.fixture(scope="module")
def kafka_servers():
    servers, started = kafka_service()
    yield servers
    stop(started)


@pytest.fixture(params=BROKERS)
def target(request):
    if request.param == "nats":
        made = Target("nats", request.getfixturevalue("nats_url"), unique_name("hoh-test-ingest"))
    else:
        made = kafka_target(request.getfixturevalue("kafka_servers"))
    yield made
    made.cleanup()


def _idle(target: Target) -> float:
    """How long without a message means the stream is drained (a Kafka group joins slowly)."""
    return 2.0 if target.kind == "nats" else 15.0


def publish(target: Target, src: Path, unlabeled: bool = False):
    async def main():
        broker = target.broker()
        await broker.connect()
        try:
            return await publish_folder(broker, src, unlabeled=unlabeled)
        finally:
            await broker.close()

    return asyncio.run(main())


def send(target: Target, messages: list[tuple[bytes, dict]]) -> None:
    async def main():
        broker = target.broker()
        await broker.connect()
        try:
            for body, headers in messages:
                await broker.publish(body, headers)
        finally:
            await broker.close()

    asyncio.run(main())


def ingest(
    target: Target,
    out: Path,
    config=None,
    *,
    unlabeled: bool = False,
    span=None,
    idle=None,
    on_start=None,
):
    """Run the consumer in this process until the stream is idle; (stats, progress text)."""
    config = config or ingest_config()
    log = io.StringIO()
    if span is None:
        span = OpenSpan(
            out,
            unlabeled=unlabeled,
            dedup_spans=config.dedup_spans,
            source=f"{target.url} {target.stream}",
            gzip_level=config.gzip_level,
        )
        span.open()

    async def main():
        broker = target.broker(config)
        await broker.connect()
        try:
            ingestor = Ingestor(
                broker,
                span,
                config,
                unlabeled=unlabeled,
                max_pixels=DEFAULT_MAX_PIXELS,
                exit_when_idle=idle or _idle(target),
                out=log,
                health_port=0 if on_start else None,
            )
            if on_start:
                on_start(ingestor, asyncio.get_running_loop())
            return await ingestor.run()
        finally:
            await broker.close()

    return asyncio.run(main()), log.getvalue()


def _records(root: Path) -> dict[str, tuple]:
    got = read_spans(root)
    assert all(len(copies) == 1 for copies in got.values()), "an image is stored twice"
    return {i: copies[0][1:] for i, copies in got.items()}


def _report(root: Path, span: int = 1) -> dict:
    return json.loads((root / f"span-{span}" / "import_report.json").read_text())


# ------------------------------------------------------------------------ the contract itself


def _headers(data: bytes, **changes) -> dict[str, str]:
    headers = contract.headers_for(data, "cam-1/0001.png", NOW, "cats")
    for name, value in changes.items():
        key = getattr(contract, name)
        if value is None:
            headers.pop(key)
        else:
            headers[key] = value
    return headers


def test_headers_round_trip_and_are_read_without_regard_to_case():
    data = encode(pattern(1), "PNG")
    headers = {k.lower(): v for k, v in _headers(data).items()}
    envelope = contract.parse(data, headers, unlabeled=False, max_message_bytes=10**6)
    assert envelope.source == "cam-1/0001.png"
    assert envelope.label == "cats"
    assert envelope.content_type == "image/png"
    assert envelope.capture_time == "2026-12-04T12:00:00.000Z"


@pytest.mark.parametrize(
    "changes, kind, words",
    [
        ({"SOURCE": None}, "missing_header", "Hoh-Source"),
        ({"LABEL": None}, "missing_header", "--unlabeled"),
        ({"CONTRACT": "2"}, "bad_header", "version"),
        ({"CAPTURE_TIME": "yesterday"}, "bad_header", "ISO 8601"),
        ({"CAPTURE_TIME": "2026-12-04T12:00:00"}, "bad_header", "time zone"),
        ({"CONTENT_TYPE": "image/jpeg"}, "content_type_mismatch", "PNG"),
        ({"LABEL": "../etc"}, "invalid_label", "'/'"),
        ({"LABEL": ".hidden"}, "invalid_label", "starts with '.'"),
        ({"LABEL": ""}, "invalid_label", "is empty"),
        ({"SOURCE": "cam\n1"}, "bad_header", "printable"),
    ],
)
def test_a_message_breaking_the_contract_is_refused_with_its_kind(changes, kind, words):
    data = encode(pattern(1), "PNG")
    with pytest.raises(ImageRejected) as caught:
        contract.parse(data, _headers(data, **changes), unlabeled=False, max_message_bytes=10**6)
    assert caught.value.kind == kind
    assert words in caught.value.reason


def test_messages_get_the_import_checks_and_the_import_verdicts():
    decode = TfDecodeCheck()
    good = encode(pattern(2), "PNG")

    def verdict(body: bytes, **changes):
        headers = _headers(body if body else good, **changes)
        return check_message(
            Delivery(body, headers, "7"),
            unlabeled=False,
            max_pixels=DEFAULT_MAX_PIXELS,
            max_message_bytes=10**6,
            decode=decode,
        )

    accepted = verdict(good)
    assert (accepted.label, accepted.source, accepted.width, accepted.height) == (
        "cats",
        "cam-1/0001.png",
        40,
        30,
    )
    assert isinstance(verdict(b"hello, not an image"), Rejected)
    assert verdict(b"hello, not an image").kind == "not_an_image"  # as `hoh data import` says
    assert verdict(png_bomb()).kind == "too_large"
    assert verdict(encode(pattern(3), "PNG")[:60]).kind in {"undecodable", "corrupt"}
    assert verdict(b"").kind == "empty_file"


# ------------------------------------------------------------------ the suite, on each broker


@pytest.mark.parametrize("unlabeled", [False, True], ids=["labeled", "unlabeled"])
def test_a_published_folder_seals_into_the_span_an_import_makes(target, tmp_path, unlabeled):
    src = tmp_path / "src"
    write_classes(src, {"cats": 14, "dogs": 9})
    write(src / "cats" / "zz-copy.png", (src / "cats" / "3.png").read_bytes())  # duplicate
    write(src / "dogs" / "empty.png", b"")
    write(src / "dogs" / "notes.png", b"not an image at all")
    imported = tmp_path / "imported"
    import_images(src, imported, unlabeled=unlabeled)

    sent = publish(target, src, unlabeled=unlabeled)
    assert sent.messages == 26 and not sent.skipped
    streamed = tmp_path / "streamed"
    stats, _ = ingest(target, streamed, unlabeled=unlabeled)
    assert (stats.consumed, stats.written, stats.rejected, stats.duplicates) == (26, 23, 2, 1)
    assert OpenSpan(streamed).seal() is not None

    assert _records(streamed) == _records(imported)  # same ids, splits, labels, sources
    a, b = _report(imported), _report(streamed)
    for key in (
        "classes",
        "counts",
        "split_counts",
        "seen",
        "written",
        "unlabeled",
        "rejected_by_kind",
        "eval_ratio",
    ):
        assert a[key] == b[key], key
    assert [(r["path"], r["kind"]) for r in a["rejected"]] == [
        (r["path"], r["kind"]) for r in b["rejected"]
    ]
    assert [(d["path"], d["duplicate_of"]) for d in a["duplicates"]] == [
        (d["path"], d["duplicate_of"]) for d in b["duplicates"]
    ]
    assert b["stream"]["sources"] == {"cats": 14, "dogs": 9}
    assert b["stream"]["dead_lettered"] == 2
    assert len(target.dead_letters(2)) == 2


def test_bad_messages_are_dead_lettered_with_the_reason_and_the_consumer_goes_on(target, tmp_path):
    def good(seed: int, label: str):
        body = encode(pattern(seed), "PNG")
        return body, contract.headers_for(body, f"cam-{seed}/f.png", NOW, label)

    image = encode(pattern(50), "PNG")
    big = encode(pattern(51, (120, 120)), "PNG")  # valid, but above max_message_bytes below
    no_source = contract.headers_for(image, "x", NOW, "cats")
    del no_source[contract.SOURCE]
    bad = [
        (b"", contract.headers_for(b"", "cam-9/empty", NOW, "cats")),
        (b"GET / HTTP/1.1\r\n", contract.headers_for(b"GET", "cam-9/text", NOW, "cats")),
        (png_bomb(), contract.headers_for(png_bomb(), "cam-9/bomb.png", NOW, "cats")),
        (image, no_source),
        (image, contract.headers_for(image, "cam-9/label.png", NOW, "../../etc")),
        (big, contract.headers_for(big, "cam-9/big.png", NOW, "cats")),
    ]
    expected_kinds = [
        "empty_file",
        "not_an_image",
        "too_large",
        "missing_header",
        "invalid_label",
        "too_large",
    ]
    messages = [good(1, "cats"), good(2, "dogs")] + bad + [good(3, "cats"), good(4, "dogs")]
    send(target, messages)
    out = tmp_path / "data"
    config = ingest_config(max_message_bytes=len(big) - 1)
    stats, _ = ingest(target, out, config)

    assert (stats.consumed, stats.written, stats.rejected) == (10, 4, 6)
    dead = target.dead_letters(6)
    assert [h[contract.REJECT_KIND] for h, _ in dead] == expected_kinds
    assert [body for _, body in dead] == [body for body, _ in bad]  # the message, untouched
    for headers, _ in dead:
        assert headers[contract.REJECT_REASON]
        assert "\n" not in headers[contract.REJECT_REASON]
    assert "max_message_bytes" in dead[-1][0][contract.REJECT_REASON]
    if target.kind == "nats":
        assert target.pending(config.consumer) == (0, 0)  # all acknowledged: none retried
    report = OpenSpan(out).seal()
    assert report.written == 4 and len(report.rejected) == 6 and report.adds_up
    assert {r.path for r in report.rejected} >= {"cam-9/empty", "cam-9/bomb.png"}


def test_a_resent_image_is_stored_once_in_the_span_and_after_a_seal(target, tmp_path):
    images = [encode(pattern(seed), "PNG") for seed in range(6)]
    first = [
        (b, contract.headers_for(b, f"cam-a/{i}.png", NOW, ("cats", "dogs")[i % 2]))
        for i, b in enumerate(images)
    ]
    again = [(images[0], contract.headers_for(images[0], "cam-b/0.png", NOW, "cats"))]
    send(target, first + again)
    out, config = tmp_path / "data", ingest_config()
    stats, _ = ingest(target, out, config)
    assert (stats.written, stats.duplicates) == (6, 1)
    report = OpenSpan(out).seal()
    assert [(d.path, d.duplicate_of) for d in report.duplicates] == [("cam-b/0.png", "cam-a/0.png")]
    # After the seal the span is gone from the open span; the last sealed span still counts.
    send(
        target,
        [(images[1], contract.headers_for(images[1], "cam-c/1.png", NOW, "dogs"))]
        + [
            (b, contract.headers_for(b, f"cam-d/{i}.png", NOW, ("cats", "dogs")[i % 2]))
            for i, b in enumerate(encode(pattern(100 + s), "PNG") for s in range(4))
        ],
    )
    stats, _ = ingest(target, out, config)  # the same durable consumer / group goes on
    assert (stats.written, stats.duplicates) == (4, 1)
    OpenSpan(out).seal()
    copies = read_spans(out)
    assert len(copies) == 10 and all(len(c) == 1 for c in copies.values())


def test_consumption_pauses_when_writing_stalls_and_reports_health_and_metrics(nats_url, tmp_path):
    target = Target("nats", nats_url, unique_name("hoh-test-ingest"))
    try:
        _pause_and_observe(target, tmp_path)
    finally:
        target.cleanup()


class _StalledSpan(OpenSpan):
    """An open span whose disk is slow: commit waits until the test opens the gate."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate, self.entered = threading.Event(), threading.Event()

    def commit(self, batch):
        self.entered.set()
        if not self.gate.wait(120):
            raise AssertionError("the test never opened the gate")
        super().commit(batch)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _pause_and_observe(target: Target, tmp_path: Path) -> None:
    total = 60
    send(
        target,
        [
            (
                encode(pattern(s), "PNG"),
                contract.headers_for(
                    encode(pattern(s), "PNG"), f"cam/{s}.png", NOW, ("cats", "dogs")[s % 2]
                ),
            )
            for s in range(total)
        ],
    )
    config = ingest_config(queue_size=10, batch_size=5, ack_wait_seconds=120, progress_seconds=0.2)
    span = _StalledSpan(tmp_path / "data", source="test")
    span.open()
    running: dict = {}

    def on_start(ingestor, loop):
        running.update(ingestor=ingestor, loop=loop)

    result: dict = {}
    thread = threading.Thread(
        target=lambda: result.update(
            run=ingest(target, tmp_path / "data", config, span=span, idle=60, on_start=on_start)
        )
    )
    thread.start()
    try:
        wait_for(span.entered.is_set, "the first micro-batch")
        ingestor = running["ingestor"]
        wait_for(lambda: ingestor._queue.full(), "the queue to fill while the disk stalls")
        # The broker holds the rest: at most the queue, the batch being checked and the batch
        # being written are out.
        wait_for(lambda: target.pending(config.consumer)[0] == 20, "20 unacknowledged")
        assert target.pending(config.consumer) == (20, total - 20)
        wait_for(lambda: ingestor.health is not None, "the health server")
        base = f"http://127.0.0.1:{ingestor.health.port}"
        status, body = _get(base + "/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        span.gate.set()
        wait_for(lambda: ingestor.stats.written == total, "every image written")
        status, metrics = _get(base + "/metrics")
        assert status == 200
        for line in (
            f"hoh_ingest_consumed_total {total}.0",
            f"hoh_ingest_written_total {total}.0",
            "hoh_ingest_rejected_total 0.0",
            "hoh_ingest_duplicates_total 0.0",
            "hoh_ingest_dead_lettered_total 0.0",
            f"hoh_ingest_open_span_images {total}.0",
            "hoh_ingest_lag 0.0",
            "hoh_ingest_shard_write_seconds_count",
        ):
            assert line in metrics, line
    finally:
        span.gate.set()
        if "loop" in running:
            running["loop"].call_soon_threadsafe(running["ingestor"].stop)
        thread.join(120)
    stats, log = result["run"]
    assert stats.written == total
    assert target.pending(config.consumer) == (0, 0)
    progress = [line for line in log.splitlines() if "messages (" in line]
    assert progress and "/s, " in progress[-1] and "MB/s" in progress[-1]
    assert "lag 0" in progress[-1] and f"open span {total} images" in progress[-1]


def test_the_commands_refuse_bad_arguments_in_one_line(tmp_path, capsys):
    from hoh.cli import main

    src = tmp_path / "src"
    write_classes(src, {"cats": 1, "dogs": 1})
    closed = f"nats://127.0.0.1:{free_port()}"
    cases = [
        (["ingest", "--stream", "s", "--out", str(tmp_path / "d")], 2, "--broker URL is required"),
        (["ingest", "--broker", closed, "--out", str(tmp_path / "d")], 2, "--stream NAME"),
        (
            ["publish", str(src), "--broker", "redis://127.0.0.1:6379", "--stream", "s"],
            2,
            "expected nats://HOST:PORT or kafka://HOST:PORT",
        ),
        (
            ["publish", str(tmp_path / "missing"), "--broker", closed, "--stream", "s"],
            1,
            f"cannot connect to NATS at {closed}",
        ),
        (["ingest", "seal", "--out", str(tmp_path / "missing")], 2, "is not a directory"),
        (
            ["ingest", "--broker", closed, "--stream", "s", "--out", "gs://bucket/data"],
            2,
            "needs a local (POSIX) directory",
        ),
        (["ingest", "seal", "--out", str(src)], 0, "nothing to seal"),
    ]
    for argv, code, words in cases:
        assert main(argv) == code, argv
        printed = capsys.readouterr()
        assert words in printed.err + printed.out, (argv, printed)
        assert "Traceback" not in printed.err
    assert not (src / ".open-span").exists()  # a seal with nothing to seal writes nothing


def test_scratch_space_of_a_dead_writer_is_removed_and_a_live_one_kept(tmp_path):
    """A writer killed mid-batch leaves its scratch folder; the next start removes only that."""
    import subprocess
    import sys

    out = tmp_path / "data"
    live = OpenSpan(out)
    live.open()
    live._claim_tmp()
    live._tmp.mkdir()
    script = (
        "import os, sys; from hoh.data.stream.openspan import OpenSpan;"
        " s = OpenSpan(sys.argv[1]); s.open(); s._claim_tmp(); s._tmp.mkdir();"
        " (s._tmp / 'partial').write_bytes(b'x'); print(s._tmp, flush=True);"
        " os.kill(os.getpid(), 9)"
    )
    dead = subprocess.run(
        [sys.executable, "-c", script, str(out)], capture_output=True, text=True
    ).stdout.strip()
    assert Path(dead).is_dir()
    OpenSpan(out).open()
    assert not Path(dead).exists() and not Path(dead + ".lock").exists()
    assert live._tmp.is_dir()


@pytest.mark.e2e  # waits out a redelivery delay
def test_a_message_whose_dead_letter_is_not_stored_is_not_acknowledged(nats_url, tmp_path):
    """The dead-letter stream refuses (full): the message stays at the broker, then goes there."""
    import nats
    from nats.js.api import DiscardPolicy, StreamConfig

    target = Target("nats", nats_url, unique_name("hoh-test-ingest"))

    async def dead_stream(max_msgs: int, create: bool) -> None:
        nc = await nats.connect(nats_url)
        config = StreamConfig(
            name=f"{target.stream}-dead",
            subjects=[f"{target.stream}.dead"],
            max_msgs=max_msgs,
            discard=DiscardPolicy.NEW,
        )
        try:
            js = nc.jetstream()
            await (js.add_stream(config) if create else js.update_stream(config))
        finally:
            await nc.close()

    try:
        asyncio.run(dead_stream(1, create=True))
        good = encode(pattern(1), "PNG")
        send(
            target,
            [
                (b"not an image", contract.headers_for(b"x", "cam/a", NOW, "cats")),
                (b"nor this", contract.headers_for(b"x", "cam/b", NOW, "cats")),
                (good, contract.headers_for(good, "cam/c.png", NOW, "dogs")),
            ],
        )
        config = ingest_config(retry_seconds=3)
        out = tmp_path / "data"
        stats, log = ingest(target, out, config, idle=1.5)
        assert (stats.written, stats.rejected) == (1, 1)
        assert "cam/b: not dead-lettered" in log
        assert target.pending(config.consumer) == (1, 0)  # handed back, not acknowledged
        asyncio.run(dead_stream(-1, create=False))  # the dead-letter store recovers
        rejected = 0
        for _ in range(6):  # until redelivered (after retry_seconds, or ack_wait if missed)
            rejected += ingest(target, out, config, idle=5)[0].rejected
            if target.pending(config.consumer) == (0, 0):
                break
        assert rejected == 1
        assert target.pending(config.consumer) == (0, 0)
        assert [h[contract.REJECT_KIND] for h, _ in target.dead_letters(2)] == ["not_an_image"] * 2
    finally:
        target.cleanup()


@pytest.mark.e2e  # a whole pipeline run (tiny profile)
def test_hoh_run_trains_on_a_span_sealed_from_the_stream(nats_url, tmp_path):
    """README's streaming path: `hoh publish`, `hoh ingest` seals a span, `hoh run` trains on it."""
    import subprocess

    from tests_support.ingest import HOH, REPO, cli_env

    from hoh.config import builtin_config_path, load_config
    from hoh.data.demo import make_demo_dataset
    from hoh.pipeline.runners.local import run_local

    images, data = tmp_path / "images", tmp_path / "data"
    make_demo_dataset(images, per_class=24, size=64, classes=("horses", "humans"))
    target = Target("nats", nats_url, unique_name("hoh-test-train"))

    def hoh(*args: str) -> str:
        done = subprocess.run(
            [*HOH, *args], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    try:
        assert "published 48 messages" in hoh("publish", str(images), *target.cli_args())
        hoh(
            "ingest",
            *target.cli_args(),
            "--out",
            str(data),
            "--consumer",
            unique_name("hoh-test"),
            "--exit-when-idle",
            "3",
            "--seal-on-exit",
        )
    finally:
        target.cleanup()
    report = json.loads((data / "span-1" / "import_report.json").read_text())
    assert report["written"] == 48 and report["stream"]["dead_lettered"] == 0
    cfg = load_config(
        builtin_config_path("tiny"),
        [],
        **{"data.root": str(data), "output_dir": str(tmp_path / "out")},
    )
    lines: list[str] = []
    summary = run_local(cfg, echo=lines.append)
    assert all(c.status == "done" for c in summary.components), summary.failures
    assert {"ImportExampleGen", "Transform", "Trainer", "Evaluator"} <= {
        c.component_id for c in summary.components
    }
    assert summary.example_counts == report["split_counts"]  # exactly the sealed span's images
    assert any(line.strip().startswith("epoch 1:") for line in lines)


def test_a_lost_kafka_cluster_is_an_outage_until_a_broker_answers():
    """librdkafka reports losing every broker once (error_cb) and then only times out, which the
    consumer would read as a quiet topic: the broker stays unavailable (so `/healthz` says 503)
    until the topic's metadata comes back. No broker needed: the client is replaced."""
    from confluent_kafka import KafkaError

    from hoh.config import IngestConfig
    from hoh.data.stream.broker import BrokerUnavailable
    from hoh.data.stream.kafka import KafkaBroker

    class Client:
        reachable, consumed = False, 0

        def list_topics(self, topic, timeout):
            if not self.reachable:
                raise RuntimeError("Local: Timed out")

        def consume(self, n, timeout):
            self.consumed += 1
            return []

    broker = KafkaBroker("kafka://127.0.0.1:9", "images", IngestConfig())
    broker._consumer = client = Client()
    assert asyncio.run(broker.fetch(8, 0.01)) == [] and client.consumed == 1  # healthy: quiet
    broker._client_error(KafkaError(KafkaError._TRANSPORT))  # one broker hiccup: not an outage
    assert asyncio.run(broker.fetch(8, 0.01)) == []
    broker._client_error(KafkaError(KafkaError._ALL_BROKERS_DOWN))
    for _ in range(2):  # stays down while nothing answers, and nothing is consumed meanwhile
        with pytest.raises(BrokerUnavailable, match=r"all brokers of kafka://127.0.0.1:9 down"):
            asyncio.run(broker.fetch(8, 0.01))
    assert client.consumed == 2
    client.reachable = True
    assert asyncio.run(broker.fetch(8, 0.01)) == [] and client.consumed == 3


class _KafkaMessage:
    """What confluent-kafka's consumer hands out, for a stand-in client."""

    def __init__(self, partition: int, offset: int, body: bytes = b"image", headers=None):
        self._partition, self._offset, self._body = partition, offset, body
        self._headers = [(k, v.encode()) for k, v in (headers or {}).items()]

    def error(self):
        return None

    def headers(self):
        return self._headers

    def value(self):
        return self._body

    def topic(self):
        return "images"

    def partition(self):
        return self._partition

    def offset(self):
        return self._offset


class _KafkaClient:
    """A confluent-kafka consumer stand-in: hands out `pending` in order, records commits."""

    def __init__(self, ends: dict[int, int] | None = None):
        self.commits, self.pending, self.lose_commits = [], [], False
        self.ends = ends or {}  # partition -> end offset, else 100

    def consume(self, n, timeout):
        out, self.pending = self.pending[:n], self.pending[n:]
        if not out:
            threading.Event().wait(min(timeout, 0.05))
        return out

    def get_watermark_offsets(self, partition, timeout=None, cached=False):
        return 0, self.ends.get(partition.partition, 100)

    def commit(self, offsets, asynchronous):
        if self.lose_commits:  # the process dies before its commit reaches the broker
            raise RuntimeError("Local: Broker transport failure")
        self.commits.append([(tp.partition, tp.offset) for tp in offsets])

    def close(self):
        pass


def _stand_in_kafka(client: _KafkaClient):
    from hoh.config import IngestConfig
    from hoh.data.stream.kafka import KafkaBroker

    broker = KafkaBroker("kafka://127.0.0.1:9", "images", IngestConfig())
    broker._consumer = client
    return broker


def _ingest_from(client: _KafkaClient, out: Path, config=None, **kw):
    """The real consumer, open span and seals, fed by a stand-in Kafka client until idle."""
    broker = _stand_in_kafka(client)
    broker.connect = lambda: asyncio.sleep(0)  # no Producer: nothing is published
    stand_in = Target("kafka", broker.url, broker.stream)
    stand_in.broker = lambda _config: broker
    return ingest(stand_in, out, config, idle=0.5, **kw)


def test_kafka_commits_never_go_back_when_old_offsets_come_again():
    """A fetch position reset below the last commit (a rebalance after a lost commit) redelivers
    old offsets: acknowledging them must not commit the old point again, or the next consumer of
    the partition re-reads everything after it. No broker needed: the client is replaced, and
    messages arrive through the consumer's own `fetch`."""

    def delivered(*offsets, partition=0):
        client.pending = [_KafkaMessage(partition, o) for o in offsets]
        return asyncio.run(broker.fetch(len(offsets), 0.01))

    broker = _stand_in_kafka(client := _KafkaClient())
    first, in_flight = delivered(0, 1, 2, 3), delivered(4, 5)
    asyncio.run(broker.ack(first))
    assert client.commits == [[(0, 4)]]  # 4 and 5 are not stored yet
    again = delivered(2, 3)  # the position went back to 2 while 4 and 5 were in flight
    asyncio.run(broker.ack(in_flight))
    asyncio.run(broker.ack(again))
    assert client.commits == [[(0, 4)], [(0, 6)]]  # 2 is not committed again
    asyncio.run(broker.ack(delivered(6, partition=0) + delivered(0, partition=1)))
    assert client.commits[-1] == [(0, 7), (1, 1)]


def test_a_kafka_message_re_read_seals_later_is_still_known_as_stored(tmp_path):
    """The attack: a consumer stores a batch and dies before its offset commit; the partition's
    next reader reaches it only after other partitions filled several spans, beyond both the
    open span's keys and the `dedup_spans` content window. The positions each batch records
    (kept across seals) still know it. No broker needed: the client is replaced, the consumer,
    open span and seals are the real ones."""

    def messages(partition: int, seeds: range) -> list[_KafkaMessage]:
        return [
            _KafkaMessage(
                partition,
                offset,
                body := encode(pattern(seed), "PNG"),
                contract.headers_for(body, f"cam-{partition}/{seed}.png", NOW, "cd"[seed % 2]),
            )
            for offset, seed in enumerate(seeds)
        ]

    out = tmp_path / "data"
    config = ingest_config(batch_size=4, seal_count=4, dedup_spans=1)

    def run(client: _KafkaClient):
        return _ingest_from(client, out, config)

    dying = _KafkaClient()
    dying.pending, dying.lose_commits = messages(0, range(4)), True
    stats, log = run(dying)
    assert stats.written == 4 and "acknowledgement(s) lost" in log
    later = _KafkaClient()
    later.pending = messages(1, range(100, 112)) + messages(0, range(4))  # p0 from its old commit
    stats, _ = run(later)
    assert (stats.written, stats.redelivered, stats.duplicates) == (12, 4, 0)
    assert features.list_spans(out) == [1, 2, 3]  # the copy in span 1, two seals before the re-read
    copies = read_spans(out)
    assert len(copies) == 16 and all(len(c) == 1 for c in copies.values()), copies
    assert [0, 4] in [list(c) for commit in later.commits for c in commit]  # moved past them
    assert json.loads((out / ".open-span" / "positions.json").read_text()) == {
        "images:0": 4,
        "images:1": 12,
    }
    # The topic deleted and made again: offsets restart, and its new messages are not stored ones.
    remade = _KafkaClient(ends={0: 2})
    remade.pending = messages(0, range(200, 202))
    with pytest.raises(RunFailed, match=r"images:0 on kafka://127.0.0.1:9 ends at offset 2, but"):
        run(remade)
    # A hand-edited record of positions stops the consumer by name instead of guessing.
    for garbage in ("{not json", '{"images:0": "4"}', "[4]"):
        (out / ".open-span" / "positions.json").write_text(garbage)
        with pytest.raises(RunFailed, match=r"positions.json is not a JSON object of partition"):
            OpenSpan(out).open()


class _KafkaProducer:
    """A confluent-kafka producer stand-in that places messages the way librdkafka's default
    partitioner does: by a hash of the key, and without a key wherever it likes (here in turn)."""

    def __init__(self, partitions: int):
        self.logs: list[list[tuple[bytes, dict]]] = [[] for _ in range(partitions)]
        self._turn = 0

    def produce(self, topic, value, key=None, headers=(), on_delivery=None):
        import zlib

        if key is None:
            partition, self._turn = self._turn % len(self.logs), self._turn + 1
        else:
            partition = zlib.crc32(key.encode()) % len(self.logs)
        self.logs[partition].append((value, dict(headers)))

    def flush(self, timeout):
        return 0


def test_the_first_copy_of_an_image_is_kept_whichever_kafka_partition_is_read_first(tmp_path):
    """Kafka orders messages within a partition only. An image published twice under two names
    must be kept under the first, as an import keeps it, whatever order the consumer reads the
    partitions in; published without a key, the copies land in different partitions and the
    later name won when its partition was read first (seen on Tansu)."""
    src = tmp_path / "src"
    write_classes(src, {"cats": 6, "dogs": 5})
    write(src / "cats" / "zz-copy.png", (src / "cats" / "3.png").read_bytes())
    import_images(src, tmp_path / "imported", unlabeled=True)
    broker = _stand_in_kafka(_KafkaClient())
    broker._producer = producer = _KafkaProducer(partitions=4)
    assert asyncio.run(publish_folder(broker, src, unlabeled=True)).messages == 12

    for order in ([0, 1, 2, 3], [3, 2, 1, 0]):
        client = _KafkaClient()
        client.pending = [
            _KafkaMessage(p, offset, body, headers)
            for p in order
            for offset, (body, headers) in enumerate(producer.logs[p])
        ]
        out = tmp_path / f"read-{order[0]}"
        stats, _ = _ingest_from(client, out, unlabeled=True)
        assert (stats.written, stats.duplicates) == (11, 1), order
        assert OpenSpan(out, unlabeled=True).seal() is not None
        assert _records(out) == _records(tmp_path / "imported"), order
