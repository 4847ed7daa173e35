"""`hoh ingest`, `hoh ingest seal` and `hoh publish`: argument parsing and printing only.

The work is in hoh.data.stream (tests call it directly). Defaults come from the `ingest`
section of the config (hoh/config.py); `--config` / `--set ingest.key=value` override them, and
the dedicated flags override those.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from hoh.data.cli import _ratio  # the --eval-ratio check of `hoh data import`, shared
from hoh.data.images import DEFAULT_MAX_PIXELS
from hoh.errors import HohError, UsageError


def _config(args: argparse.Namespace):
    from hoh.config import load_config

    config = load_config(args.config, args.set).ingest
    for flag in ("batch_size", "seal_count", "seal_age_seconds", "queue_size", "consumer"):
        value = getattr(args, flag, None)
        if value is not None:
            setattr(config, flag, value)
    return config


def _stream(args: argparse.Namespace) -> str:
    name = args.stream or args.topic
    if not name:
        raise UsageError("give --stream NAME (NATS) or --topic NAME (Kafka)")
    return name


def _broker(args: argparse.Namespace, config):
    from hoh.data.stream.factory import open_broker

    if not args.broker:
        raise UsageError("--broker URL is required (nats://HOST:PORT or kafka://HOST:PORT)")
    return open_broker(args.broker, _stream(args), config, subject=args.subject)


def _local_out(out: str) -> None:
    from hoh.fileio import is_remote

    if is_remote(out):
        raise UsageError(
            f"--out {out}: the open span needs a local (POSIX) directory, for "
            "rename, fsync and flock; upload sealed spans to object storage "
            "afterwards (docs/INGESTION.md, 'Scaling out')"
        )


def _run_ingest(args: argparse.Namespace) -> int:
    if getattr(args, "ingest_command", None) == "seal":
        return _run_seal(args)
    if not args.out:
        raise UsageError("--out DIR is required")
    _local_out(args.out)
    from hoh.data.importer import DEFAULT_EVAL_RATIO
    from hoh.data.stream.consumer import Ingestor
    from hoh.data.stream.openspan import OpenSpan

    config = _config(args)
    broker = _broker(args, config)
    span = OpenSpan(
        args.out,
        unlabeled=args.unlabeled,
        eval_ratio=args.eval_ratio or DEFAULT_EVAL_RATIO,
        dedup_spans=config.dedup_spans,
        source=broker.describe(),
        gzip_level=config.gzip_level,
    )
    span.open()

    async def main():
        await broker.connect()
        try:
            ingestor = Ingestor(
                broker,
                span,
                config,
                unlabeled=args.unlabeled,
                max_pixels=args.max_pixels,
                exit_when_idle=args.exit_when_idle,
                health_port=args.health_port,
            )
            return await ingestor.run()
        finally:
            await broker.close()

    stats = asyncio.run(main())
    print(
        f"consumed {stats.consumed} in {stats.busy_seconds:.1f} s ({stats.rate:.0f}/s): "
        f"written {stats.written}, rejected {stats.rejected} "
        f"(dead-lettered), duplicates {stats.duplicates}, redelivered {stats.redelivered}; "
        f"sealed spans {stats.sealed or 'none'}; open span {span.images} images; "
        f"{stats.cpu_ms_per_message:.2f} ms CPU per message"
    )
    if args.seal_on_exit:
        _seal(span)
    return 0


def _seal(span) -> None:
    report = span.seal()
    if report is None:
        print(f"nothing to seal in {span.dir}")
        return
    from hoh.data.importer import REPORT_NAME

    print("\n".join(report.summary_lines((str(Path(report.span_dir) / REPORT_NAME),))))


def _run_seal(args: argparse.Namespace) -> int:
    from hoh.data.stream.openspan import OPEN_DIR, OpenSpan

    _local_out(args.out)
    if not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is not a directory (the data root of `hoh ingest`)")
    if not (Path(args.out) / OPEN_DIR).is_dir():
        print(f"nothing to seal: {args.out} has no open span")
        return 0
    span = OpenSpan(args.out)
    span.open(adopt=True)
    _seal(span)
    return 0


def _run_publish(args: argparse.Namespace) -> int:
    from hoh.data.stream.publisher import publish_folder

    config = _config(args)
    broker = _broker(args, config)

    async def main():
        await broker.connect()
        try:
            return await publish_folder(broker, args.src, unlabeled=args.unlabeled)
        finally:
            await broker.close()

    try:
        done = asyncio.run(main())
    except OSError as exc:
        raise HohError(f"publish failed: {exc}") from None
    print(f"published {done.messages} messages ({done.bytes / 1e6:.1f} MB) to {broker.describe()}")
    for skipped in done.skipped:
        print(f"not sent: {skipped.path}: {skipped.reason}", file=sys.stderr)
    return 0


def _broker_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", metavar="URL", help="nats://HOST:PORT or kafka://HOST:PORT")
    parser.add_argument("--stream", help="JetStream stream (created when missing)")
    parser.add_argument("--topic", help="Kafka topic")
    parser.add_argument("--subject", help="NATS subject (default: the stream name)")
    parser.add_argument("--config", metavar="FILE", help="YAML config (its `ingest:` section)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="ingest.KEY=VALUE",
        help="override one config value (repeatable)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    ing = subparsers.add_parser(
        "ingest",
        help="consume images from NATS JetStream or Kafka into sealed spans",
        description="Consume the message contract of docs/INGESTION.md, check every image as "
        "`hoh data import` does, write micro-batches durably into DIR/.open-span and seal it "
        "into DIR/span-N by count, age or `hoh ingest seal`. Bad messages are dead-lettered.",
    )
    _broker_args(ing)
    ing.add_argument("--out", metavar="DIR", help="data root holding the spans")
    ing.add_argument(
        "--unlabeled", action="store_true", help="images without labels: written to span-N/pool/"
    )
    ing.add_argument(
        "--eval-ratio",
        type=_ratio,
        help="share of eval images (default: 0.2, as `hoh data import`)",
    )
    ing.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="reject images with more pixels (default: %(default)s)",
    )
    ing.add_argument("--batch-size", type=int, help="messages per micro-batch (ingest.batch_size)")
    ing.add_argument("--queue-size", type=int, help="messages held in memory (ingest.queue_size)")
    ing.add_argument("--seal-count", type=int, help="seal at this many images (ingest.seal_count)")
    ing.add_argument(
        "--seal-age-seconds",
        type=float,
        help="seal this long after the first image (ingest.seal_age_seconds)",
    )
    ing.add_argument("--consumer", help="durable consumer / group id (ingest.consumer)")
    ing.add_argument(
        "--health-port",
        type=int,
        help="serve /healthz and /metrics on 127.0.0.1:PORT (0 = any free port)",
    )
    ing.add_argument(
        "--exit-when-idle",
        type=float,
        metavar="SECONDS",
        help="stop after no message for this long (replays, tests)",
    )
    ing.add_argument("--seal-on-exit", action="store_true", help="seal the open span at exit")
    ing.set_defaults(handler=_run_ingest)
    commands = ing.add_subparsers(dest="ingest_command", metavar="SUBCOMMAND")
    seal = commands.add_parser(
        "seal",
        help="seal the open span of DIR now",
        description="Publish DIR/.open-span as the next span-N, with its "
        "import_report.json; safe while consumers run.",
    )
    seal.add_argument("--out", required=True, metavar="DIR", help="data root")
    seal.set_defaults(handler=_run_ingest)

    pub = subparsers.add_parser(
        "publish",
        help="send a folder of images to a broker as ingest messages",
        description="Publish SRC/<class>/<image> (labels from class folders) with the headers of "
        "the message contract (docs/INGESTION.md).",
    )
    pub.add_argument("src", metavar="SRC", help="folder with one subfolder per class")
    _broker_args(pub)
    pub.add_argument("--unlabeled", action="store_true", help="send without labels")
    pub.set_defaults(handler=_run_publish)
