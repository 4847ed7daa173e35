"""Which broker implementation a URL means; apart so implementations never import each other."""

from __future__ import annotations

from typing import Optional
from urllib.parse import urlsplit

from hoh.config import IngestConfig
from hoh.data.stream.broker import Broker
from hoh.errors import UsageError


def open_broker(
    url: str, stream: str, config: IngestConfig, subject: Optional[str] = None
) -> Broker:
    """The broker for `url` (nats://host:port or kafka://host:port[,host:port])."""
    scheme = urlsplit(url).scheme
    if scheme in ("nats", "tls"):
        from hoh.data.stream.nats import JetStreamBroker

        return JetStreamBroker(url, stream, config, subject)
    if scheme == "kafka":
        from hoh.data.stream.kafka import KafkaBroker

        return KafkaBroker(url, stream, config)
    raise UsageError(f"--broker {url!r}: expected nats://HOST:PORT or kafka://HOST:PORT")
