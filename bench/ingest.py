"""`hoh ingest` end to end against the raw JetStream consume rate of the same messages.

    .venv/bin/python -m bench.ingest                 # 1x and 4x the horse-or-human train split
    .venv/bin/python -m bench.ingest --scales 1 --json-out /tmp/ingest.json

Starts its own `nats-server -js` on a free loopback port (store in a temporary folder, removed
at the end), so the shared server's load and disk are not part of the numbers. For each scale
it publishes the real 300x300 PNGs of ../shared/datasets/horse-or-human/train as contract
messages (scale k sends k distinct copies of each image: a `tEXt` chunk is added to the PNG, so
the bytes and content hash differ while decoding costs the same), then, in the same run:

- raw: a second durable consumer fetches and acknowledges every message, nothing else (in
  this process, whose CPU time over it is measured too);
- ingest: `hoh ingest` (the real command, a child process; its peak RSS is measured) checks,
  writes, fsyncs and acknowledges every message; its own `busy` time (first message fetched to
  last batch acknowledged) gives the rate, without TensorFlow's start-up, and its CPU time over
  that span the CPU per message (steadier than the rate on a machine other work shares);
- seal: `hoh ingest seal` publishes the span.

Both consumers start from the same stored stream, so the ratio ingest/raw is the cost of the
work hoh does per message on this machine. Prints a Markdown table; `--json-out` keeps the data.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.measure import run_measured  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "horse-or-human" / "train"
_SUMMARY = re.compile(
    r"^consumed (\d+) in ([\d.]+) s \((\d+)/s\): written (\d+).* ([\d.]+) ms CPU per message$"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def variant(png: bytes, copy: int) -> bytes:
    """The same image with a `tEXt` chunk naming the copy: new bytes, same pixels."""
    if copy == 0:
        return png
    body = b"Comment\0copy " + str(copy).encode()
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + body))
    return png[:33] + chunk + png[33:]  # after the signature and IHDR


def load_images(data: Path) -> list[tuple[str, str, bytes]]:
    out = []
    for label_dir in sorted(p for p in data.iterdir() if p.is_dir()):
        for path in sorted(label_dir.glob("*.png")):
            out.append((label_dir.name, path.name, path.read_bytes()))
    return out


async def _publish(url: str, stream: str, images, scale: int) -> tuple[int, int, float]:
    from hoh.config import IngestConfig
    from hoh.data.stream import contract
    from hoh.data.stream.factory import open_broker

    broker = open_broker(url, stream, IngestConfig())
    await broker.connect()
    now = dt.datetime.now(dt.timezone.utc)
    count = size = 0
    started = time.monotonic()
    try:
        for copy in range(scale):
            for label, name, png in images:
                body = variant(png, copy)
                await broker.publish(
                    body, contract.headers_for(body, f"cam-{copy}/{label}/{name}", now, label)
                )
                count, size = count + 1, size + len(body)
    finally:
        await broker.close()
    return count, size, time.monotonic() - started


async def _raw_consume(url: str, stream: str, expected: int, batch: int) -> tuple[float, float]:
    """Seconds from the first message to the last acknowledgement, fetching as ingest does, and
    the CPU seconds this process spent meanwhile."""
    from hoh.config import IngestConfig
    from hoh.data.stream.factory import open_broker

    config = IngestConfig(consumer="bench-raw", batch_size=batch)
    broker = open_broker(url, stream, config)
    await broker.connect()
    got, first, first_cpu = 0, None, 0.0
    try:
        while got < expected:
            deliveries = await broker.fetch(batch, 5.0)
            if not deliveries:
                raise SystemExit(f"raw consumer stalled at {got} of {expected} messages")
            if first is None:
                first, first_cpu = time.monotonic(), time.process_time()
            await broker.ack(deliveries)
            got += len(deliveries)
        return time.monotonic() - first, time.process_time() - first_cpu
    finally:
        await broker.close()


async def _delete(url: str, stream: str) -> None:
    from hoh.config import IngestConfig
    from hoh.data.stream.factory import open_broker

    broker = open_broker(url, stream, IngestConfig())
    await broker.connect()
    try:
        await broker.delete_streams()
    finally:
        await broker.close()


def check_cost(images, sample: int = 200) -> dict:
    """CPU ms per image of the shared image checks, and of their TensorFlow decode alone.

    This is the floor of what `hoh ingest` spends per message besides the broker and the disk,
    measured in this process on the same PNGs, so the table's ratio can be read against it.
    """
    import hoh  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
    from hoh.data.images import DEFAULT_MAX_PIXELS, TfDecodeCheck, check_image_bytes

    decode = TfDecodeCheck()
    bodies = [png for _, _, png in images[:sample]]
    decode(bodies[0])  # the first call sets TensorFlow's kernel up

    def cpu_ms(check) -> float:
        started = time.process_time()
        for body in bodies:
            check(body)
        return (time.process_time() - started) / len(bodies) * 1e3

    return {
        "check_cpu_ms": cpu_ms(lambda body: check_image_bytes(body, DEFAULT_MAX_PIXELS, decode)),
        "decode_cpu_ms": cpu_ms(decode),
    }


def run_scale(url: str, images, scale: int, work: Path, batch: int) -> dict:
    stream = f"bench-ingest-{scale}x-{os.getpid()}"
    count, size, publish_s = asyncio.run(_publish(url, stream, images, scale))
    raw_s, raw_cpu_s = asyncio.run(_raw_consume(url, stream, count, batch))
    out = work / f"data-{scale}x"
    hoh = str(Path(sys.executable).with_name("hoh"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    ingest = run_measured(
        [
            hoh,
            "ingest",
            "--broker",
            url,
            "--stream",
            stream,
            "--out",
            str(out),
            "--batch-size",
            str(batch),
            "--exit-when-idle",
            "3",
        ],
        work / f"ingest-{scale}x.log",
        env,
    ).check()
    summary = next((m for line in ingest.stdout.splitlines() if (m := _SUMMARY.match(line))), None)
    if summary is None or int(summary.group(1)) != count or int(summary.group(4)) != count:
        raise SystemExit(f"hoh ingest did not write all {count} messages:\n{ingest.stdout[-2000:]}")
    busy_s = float(summary.group(2))
    seal = run_measured(
        [hoh, "ingest", "seal", "--out", str(out)], work / f"seal-{scale}x.log", env
    ).check()
    asyncio.run(_delete(url, stream))
    shutil.rmtree(out, ignore_errors=True)
    return {
        "scale": scale,
        "messages": count,
        "mb": size / 1e6,
        "publish_per_s": count / publish_s,
        "raw_per_s": count / raw_s,
        "raw_cpu_ms_per_message": raw_cpu_s / count * 1e3,
        "ingest_per_s": count / busy_s,
        "ingest_cpu_ms_per_message": float(summary.group(5)),
        "ingest_mb_per_s": size / 1e6 / busy_s,
        "ratio": raw_s / busy_s,
        "ingest_wall_s": ingest.seconds,
        "ingest_peak_rss_mb": ingest.peak_rss_mb,
        "seal_s": seal.seconds,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| stream | messages (MB) | publish /s | raw consume /s | `hoh ingest` /s (MB/s) | "
        "ingest / raw | CPU ms/message raw, ingest | ingest wall s (incl. start-up) | "
        "ingest peak RSS | seal s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['scale']}x | {r['messages']} ({r['mb']:.0f}) | {r['publish_per_s']:.0f} | "
            f"{r['raw_per_s']:.0f} | {r['ingest_per_s']:.0f} ({r['ingest_mb_per_s']:.1f}) | "
            f"{r['ratio']:.2f} | {r['raw_cpu_ms_per_message']:.2f}, "
            f"{r['ingest_cpu_ms_per_message']:.2f} | "
            f"{r['ingest_wall_s']:.1f} | {r['ingest_peak_rss_mb']:.0f} MB | "
            f"{r['seal_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--scales", default="1,4", help="stream sizes, in copies of --data")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"no data at {args.data}: nothing measured", file=sys.stderr)
        return 1
    if shutil.which("nats-server") is None:
        print("nats-server is not on PATH: nothing measured", file=sys.stderr)
        return 1
    images = load_images(args.data)
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="hoh-bench-ingest-"))
    port = _free_port()
    server = subprocess.Popen(
        ["nats-server", "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(work / "jetstream")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"nats://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("nats-server did not start") from None
                time.sleep(0.1)
        rows = [
            run_scale(url, images, int(s), work, args.batch_size) for s in args.scales.split(",")
        ]
        cost = check_cost(images)
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    load = (load_before, os.getloadavg()[0])
    print(table(rows))
    print(
        f"\nShared image checks (hoh.data.images.check_image_bytes), in this process: "
        f"{cost['check_cpu_ms']:.2f} ms CPU per image, of which the TensorFlow decode "
        f"{cost['decode_cpu_ms']:.2f} ms"
    )
    print(
        f"\n1-minute load average: {load[0]:.1f} at start, {load[1]:.1f} at end "
        f"({os.cpu_count()} CPUs)"
    )
    if args.json_out:
        args.json_out.write_text(
            json.dumps({"load_average": load, "check_cost": cost, "rows": rows}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
