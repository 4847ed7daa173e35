"""`hoh publish`: a folder becomes messages of the contract (for cameras' replays and tests).

Labels come from class folders exactly as `hoh data import` reads them (hoh.data.layout), and
each file's path relative to the folder is its source, so ingesting the messages gives the same
examples an import of the folder gives. Nothing is validated here: the consumer does that, with
the import's checks, so a bad file is dead-lettered with its reason instead of vanishing. The
producer id (sha256 of source and bytes) lets JetStream drop a re-sent copy within its duplicate
window. Kafka has no such key: its idempotent producer only covers the client's own retries, so
a file sent again is a second message, and the consumer drops it by content hash if it comes
within the open span or the last `ingest.dedup_spans` sealed spans (the Kafka message key, the
content hash too, keeps the copies in one partition, in the order they were sent).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from hoh.data.layout import scan_source
from hoh.data.report import Rejected
from hoh.data.stream import contract
from hoh.data.stream.broker import Broker, BrokerUnavailable, MessageTooLarge
from hoh.errors import HohError, RunFailed


@dataclass
class Published:
    messages: int = 0
    bytes: int = 0
    skipped: list[Rejected] = field(default_factory=list)  # not sent, with the reason


def producer_id(source: str, data: bytes) -> str:
    return hashlib.sha256(source.encode("utf-8") + b"\0" + data).hexdigest()[:40]


async def publish_folder(
    broker: Broker,
    src: str | Path,
    *,
    unlabeled: bool = False,
    progress: Optional[Callable[[int, int], None]] = None,
) -> Published:
    """Send every candidate file of `src` (SRC/<class>/<image>, or any layout if unlabeled)."""
    src = Path(src)
    if not src.is_dir():
        raise HohError(f"publish source {src} is not a directory (expected SRC/<class>/<image>)")
    scan = scan_source(src, unlabeled)
    if not unlabeled and not scan.class_dirs:
        raise HohError(
            f"publish source {src} has no class folders: expected SRC/<class>/<image>"
            " (for images without labels use --unlabeled)"
        )
    done = Published(skipped=list(scan.rejected))
    for index, file in enumerate(scan.files, 1):
        try:
            data = file.path.read_bytes()
            mtime = file.path.stat().st_mtime
        except OSError as exc:
            done.skipped.append(
                Rejected(file.source, "unreadable", f"cannot read it: {exc.strerror or exc}")
            )
            continue
        captured = _dt.datetime.fromtimestamp(mtime, _dt.timezone.utc)
        headers = contract.headers_for(
            data, file.source, captured, file.label, producer_id(file.source, data)
        )
        try:
            await broker.publish(data, headers)
        except MessageTooLarge as exc:
            done.skipped.append(Rejected(file.source, "too_large", str(exc)))
            continue
        except BrokerUnavailable as exc:
            raise RunFailed(
                f"{broker.describe()} did not store {file.source}: {exc}. {done.messages} of "
                f"{len(scan.files)} messages were sent; publishing again is safe (`hoh ingest` "
                "stores an image once per span, by content hash)"
            ) from None
        done.messages += 1
        done.bytes += len(data)
        if progress:
            progress(index, len(scan.files))
    return done
