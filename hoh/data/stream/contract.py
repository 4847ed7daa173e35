"""The message contract of `hoh publish` / `hoh ingest`, version 1 (docs/INGESTION.md).

The body is the encoded image, untouched; everything else travels in headers so a camera can
produce messages without knowing anything of TFRecords. Header names are matched without regard
to case because brokers and proxies disagree on it. A message that breaks the contract is
refused with a stable `kind` (dead-lettered by the consumer), never guessed at: a missing
capture time or an unknown contract version is as much a bad message as a truncated PNG.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Mapping, Optional

from hoh import imagecheck
from hoh.data.images import ImageRejected
from hoh.data.layout import class_name_problem

VERSION = "1"
CONTRACT = "Hoh-Contract"
CONTENT_TYPE = "Content-Type"
SOURCE = "Hoh-Source"
CAPTURE_TIME = "Hoh-Capture-Time"
LABEL = "Hoh-Label"
PRODUCER_ID = "Hoh-Producer-Id"
REQUIRED = (CONTRACT, CONTENT_TYPE, SOURCE, CAPTURE_TIME)
# Added by the consumer to a dead-lettered copy of the message.
REJECT_KIND = "Hoh-Reject-Kind"
REJECT_REASON = "Hoh-Reject-Reason"

CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "BMP": "image/bmp"}
MAX_SOURCE_CHARS = 1024


@dataclass(frozen=True)
class Envelope:
    """What the headers of one valid message say."""

    source: str
    capture_time: str  # ISO 8601, UTC, as stored in the span's report
    content_type: str
    label: Optional[str]
    producer_id: Optional[str]


def headers_for(
    data: bytes,
    source: str,
    capture_time: _dt.datetime,
    label: Optional[str],
    producer_id: Optional[str] = None,
) -> dict[str, str]:
    """The headers a producer sends with `data` (the content type is read from the bytes)."""
    fmt = imagecheck.sniff(data)
    headers = {
        CONTRACT: VERSION,
        CONTENT_TYPE: CONTENT_TYPES.get(fmt or "", "application/octet-stream"),
        SOURCE: source,
        CAPTURE_TIME: _iso(capture_time),
    }
    if label is not None:
        headers[LABEL] = label
    if producer_id is not None:
        headers[PRODUCER_ID] = producer_id
    return headers


def _iso(moment: _dt.datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("capture time must carry a time zone")
    return (
        moment.astimezone(_dt.timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def header_text(value: str) -> str:
    """A value safe in any broker's header: one line, bounded (reasons can quote user input)."""
    return " ".join(str(value).split())[:1000]


def _bad(kind: str, reason: str) -> ImageRejected:
    return ImageRejected(kind, reason)


def parse(
    body: bytes, headers: Mapping[str, str], *, unlabeled: bool, max_message_bytes: int
) -> Envelope:
    """The envelope of a message whose headers keep the contract; ImageRejected otherwise.

    Only the headers and the size are checked here; the image itself is checked by
    `hoh.data.images.check_image_bytes`, exactly as an imported file is.
    """
    if len(body) > max_message_bytes:
        raise _bad(
            "too_large",
            f"message of {len(body)} bytes is above the limit of "
            f"{max_message_bytes} bytes (ingest.max_message_bytes)",
        )
    if not body:
        raise _bad("empty_file", "empty message body (0 bytes)")
    lower = {k.lower(): v for k, v in headers.items()}
    missing = [h for h in REQUIRED if not lower.get(h.lower())]
    if missing:
        raise _bad("missing_header", "missing header(s): " + ", ".join(missing))
    if lower[CONTRACT.lower()] != VERSION:
        raise _bad(
            "bad_header",
            f"{CONTRACT} {lower[CONTRACT.lower()]!r} is not a version "
            f"this consumer reads ({VERSION})",
        )
    source = lower[SOURCE.lower()]
    if len(source) > MAX_SOURCE_CHARS or not source.isprintable():
        raise _bad(
            "bad_header", f"{SOURCE} must be printable and at most {MAX_SOURCE_CHARS} characters"
        )
    try:
        captured = _dt.datetime.fromisoformat(lower[CAPTURE_TIME.lower()])
        capture_time = _iso(captured)
    except ValueError:
        raise _bad(
            "bad_header",
            f"{CAPTURE_TIME} {lower[CAPTURE_TIME.lower()]!r} is not an "
            "ISO 8601 time with a time zone",
        ) from None
    content_type = lower[CONTENT_TYPE.lower()].split(";")[0].strip().lower()
    fmt = imagecheck.sniff(body)
    # A body of no accepted format is left to the image checks, so it is refused with the kind
    # and reason an imported file gets (not_an_image, unsupported_format, ...).
    if fmt is not None and CONTENT_TYPES[fmt] != content_type:
        raise _bad(
            "content_type_mismatch",
            f"{CONTENT_TYPE} says {content_type} but the body is a {fmt} image",
        )
    label = lower.get(LABEL.lower())
    if unlabeled:
        label = None
    elif label is None:
        raise _bad(
            "missing_header",
            f"missing header {LABEL} (a labelled stream needs it; "
            "run `hoh ingest --unlabeled` for an unlabelled pool)",
        )
    else:
        problem = class_name_problem(label)
        if problem:
            raise _bad("invalid_label", f"label {label!r} {problem}")
    return Envelope(source, capture_time, content_type, label, lower.get(PRODUCER_ID.lower()))
