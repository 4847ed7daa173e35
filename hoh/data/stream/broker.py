"""The little a consumer needs from a message broker, so NATS JetStream and Kafka are one loop.

Both give at-least-once delivery: a message comes back until it is acknowledged (JetStream ack,
Kafka offset commit), which the consumer does only once the message is durably in the open
span or dead-lettered. Each delivery carries a `key` naming the message itself (JetStream stream
sequence, Kafka partition:offset), so a redelivery of a message already written is recognised
without looking at its bytes.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Optional


class BrokerUnavailable(Exception):
    """The broker cannot be reached right now; the caller waits and tries again."""


class MessageTooLarge(Exception):
    """The broker refuses a message of this size whatever happens; sending it again is useless."""


@dataclass
class Delivery:
    body: bytes
    headers: dict[str, str]
    key: str  # the message's identity at the broker (not its content)
    handle: Any = None  # the client's own message object, for ack
    # (partition, offset), for brokers that redeliver by position (Kafka)
    position: Optional[tuple[str, int]] = None


class Broker(abc.ABC):
    """One stream (NATS) or topic (Kafka), consumed by a durable consumer / group."""

    url: str
    stream: str

    @abc.abstractmethod
    async def connect(self) -> None: ...

    @abc.abstractmethod
    async def fetch(self, max_messages: int, timeout: float) -> list[Delivery]:
        """Up to `max_messages`, [] after `timeout`; BrokerUnavailable when disconnected."""

    @abc.abstractmethod
    async def ack(self, deliveries: list[Delivery]) -> None:
        """Acknowledge (commit) these; only called once they are durably written."""

    def positions_after(self, deliveries: list[Delivery]) -> dict[str, int]:
        """{partition: offset below which all is stored} once `deliveries` are acknowledged.

        Only for brokers that redeliver by position (Kafka); written with the batch, so a
        message re-read after a lost commit is known however late it comes (OpenSpan).
        """
        return {}

    async def check_positions(self, positions: dict[str, int]) -> None:
        """Refuse (RunFailed) positions the stream cannot have: it was made again."""
        return None

    async def release(self, deliveries: list[Delivery], delay: float = 0.0) -> None:
        """Hand back messages that will not be acknowledged, redelivered after `delay` s."""
        return None

    @abc.abstractmethod
    async def dead_letter(self, delivery: Delivery, headers: dict[str, str]) -> None:
        """Publish a copy with `headers` to the dead-letter subject/topic; raises if not stored."""

    @abc.abstractmethod
    async def publish(self, body: bytes, headers: dict[str, str]) -> None:
        """Publish one message to the stream/topic; raises if the broker did not take it."""

    @abc.abstractmethod
    async def lag(self) -> Optional[int]:
        """Messages waiting for this consumer, when the broker says."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    def describe(self) -> str:
        return f"{self.url} {self.stream}"
