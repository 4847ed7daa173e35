"""Kafka behind hoh's broker interface (confluent-kafka). Tested on Tansu, not Apache Kafka.

Offsets are committed by hand, synchronously, after the micro-batch holding the messages is
durable: auto-commit would acknowledge messages that a crash then loses. A Kafka commit is a
position, not a set: it covers every earlier offset of the partition. So a partition is only
committed up to its lowest delivered offset not yet acknowledged, and `release` seeks back to
it; the messages after it come again and are recognised by their partition:offset key.

Parallelism is the topic's partitions: consumers sharing `ingest.consumer` as group id split
them, one consumer per partition at most. The client library blocks, so its calls run in a
worker thread to keep the consumer's event loop (signals, health endpoint, queue) responsive.
"""

from __future__ import annotations

import asyncio
from typing import Optional
from urllib.parse import urlsplit

from hoh.config import IngestConfig
from hoh.data.images import content_id
from hoh.data.stream.broker import Broker, BrokerUnavailable, Delivery
from hoh.errors import RunFailed


def _servers(url: str) -> str:
    return urlsplit(url).netloc


class KafkaBroker(Broker):
    def __init__(self, url: str, topic: str, config: IngestConfig):
        self.url, self.stream, self._config = url, topic, config
        self.dead_topic = config.dead_letter or f"{topic}.dead"
        self._consumer = self._producer = None
        self._lag: Optional[int] = None
        self._open: dict[tuple[str, int], set[int]] = {}  # delivered, not acknowledged
        self._next: dict[tuple[str, int], int] = {}  # one past the highest offset delivered
        self._down: Optional[str] = None  # why the client lost every broker, until one answers
        self._committed: dict[tuple[str, int], int] = {}  # the last offset this client committed

    async def connect(self) -> None:
        from confluent_kafka import Producer

        self._producer = Producer(
            {
                "bootstrap.servers": _servers(self.url),
                "enable.idempotence": True,  # retried sends are not written twice
                "acks": "all",
            }
        )
        try:
            await asyncio.to_thread(self._producer.list_topics, timeout=10)
        except Exception as exc:
            raise RunFailed(f"cannot reach Kafka at {self.url}: {exc}") from None

    def _subscribe(self) -> None:
        from confluent_kafka import Consumer

        self._consumer = Consumer(
            {
                "bootstrap.servers": _servers(self.url),
                "group.id": self._config.consumer,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
                # A consumer killed without leaving the group holds its partitions until this
                # expires: 10 s instead of librdkafka's 45 s before a restarted consumer (or a
                # peer) takes them over. Heartbeats come from the client's own thread, so a long
                # shard write does not count against it.
                "session.timeout.ms": 10_000,
                # Backpressure: the client's own prefetch stays small next to ours.
                "queued.max.messages.kbytes": 16384,
                "error_cb": self._client_error,
            }
        )
        self._consumer.subscribe([self.stream])

    def _client_error(self, error) -> None:
        """librdkafka reports a lost cluster here and then only times out: remember it."""
        from confluent_kafka import KafkaError

        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._down = f"all brokers of {self.url} down: {error.str()}"

    def _probe(self) -> None:
        """While down, ask for the topic's metadata: an answer means a broker is back."""
        try:
            self._consumer.list_topics(self.stream, timeout=1)
        except Exception as exc:
            raise BrokerUnavailable(f"{self._down} ({exc})") from None
        self._down = None

    async def fetch(self, max_messages: int, timeout: float) -> list[Delivery]:
        if self._consumer is None:
            self._subscribe()
        if self._down is not None:  # an empty consume would otherwise look like a quiet topic
            await asyncio.to_thread(self._probe)
        try:
            msgs = await asyncio.to_thread(self._consumer.consume, max_messages, timeout)
        except Exception as exc:
            raise BrokerUnavailable(str(exc)) from None
        out = []
        for msg in msgs:
            if msg.error():
                if msg.error().fatal():
                    raise RunFailed(f"Kafka consumer failed: {msg.error()}")
                continue  # transient (e.g. broker down): the client retries by itself
            headers = {k: (v or b"").decode("utf-8", "replace") for k, v in msg.headers() or []}
            at = (f"{msg.topic()}:{msg.partition()}", msg.offset())
            out.append(Delivery(msg.value() or b"", headers, f"{at[0]}:{at[1]}", msg, at))
            part = (msg.topic(), msg.partition())
            self._open.setdefault(part, set()).add(msg.offset())
            self._next[part] = max(self._next.get(part, 0), msg.offset() + 1)
        if msgs:
            await asyncio.to_thread(self._update_lag, msgs[-1])
        return out

    def _update_lag(self, msg) -> None:
        from confluent_kafka import TopicPartition

        try:
            _, high = self._consumer.get_watermark_offsets(
                TopicPartition(msg.topic(), msg.partition()), timeout=1, cached=True
            )
            self._lag = max(0, high - msg.offset() - 1)
        except Exception:
            self._lag = None

    async def check_positions(self, positions: dict[str, int]) -> None:
        """A recorded position past a partition's end means the topic was deleted and made
        again (offsets restart at 0): its new messages would all look stored. Refuse to start."""
        from confluent_kafka import TopicPartition

        mine = {p: o for p, o in positions.items() if p.rsplit(":", 1)[0] == self.stream}
        if not mine:
            return
        if self._consumer is None:
            self._subscribe()
        for part, stored in sorted(mine.items()):
            tp = TopicPartition(self.stream, int(part.rsplit(":", 1)[1]))
            try:
                _, end = await asyncio.to_thread(self._consumer.get_watermark_offsets, tp, 10)
            except Exception as exc:
                raise RunFailed(f"cannot read the end of {part} on {self.url}: {exc}") from None
            if end < stored:
                raise RunFailed(
                    f"{part} on {self.url} ends at offset {end}, but this data root stored its "
                    f"messages up to offset {stored}: the topic was deleted and created again, "
                    "so its new messages would be taken for stored ones. Ingest it into a new "
                    "data root, or remove the topic's entries from .open-span/positions.json"
                )

    def positions_after(self, deliveries: list[Delivery]) -> dict[str, int]:
        done: dict[tuple[str, int], set[int]] = {}
        for d in deliveries:
            done.setdefault((d.handle.topic(), d.handle.partition()), set()).add(d.handle.offset())
        return {f"{t}:{p}": self._commit_point((t, p), frozenset(o)) for (t, p), o in done.items()}

    async def ack(self, deliveries: list[Delivery]) -> None:
        from confluent_kafka import TopicPartition

        parts = set()
        for d in deliveries:
            part = (d.handle.topic(), d.handle.partition())
            self._open.get(part, set()).discard(d.handle.offset())
            parts.add(part)
        offsets = [
            TopicPartition(t, p, offset)
            for t, p in sorted(parts)
            if (offset := self._commit_point((t, p))) > self._committed.get((t, p), -1)
        ]
        if not offsets:
            return
        try:
            await asyncio.to_thread(self._consumer.commit, offsets=offsets, asynchronous=False)
        except Exception as exc:
            raise BrokerUnavailable(f"offsets not committed: {exc}") from None
        for tp in offsets:
            self._committed[(tp.topic, tp.partition)] = tp.offset

    def _commit_point(self, part: tuple[str, int], acked: frozenset[int] = frozenset()) -> int:
        """The partition's lowest offset delivered and not acknowledged, else one past the last,
        but never below this client's last commit.

        Kafka accepts a commit below an earlier one, and a consumer started after it would get
        everything after it again. Offsets below this client's last commit come back when the
        partition's fetch position is reset below it (a rebalance hands the partition back at
        the broker's committed offset, older if a commit was lost on the way); acknowledging
        those refetched messages would commit the old point again. A commit means everything
        before it is stored, so staying at the highest one is always safe (`ack` then commits
        nothing). `acked`: offsets to count as acknowledged already.
        """
        open_ = self._open.get(part, set()) - acked
        point = min(open_) if open_ else self._next[part]
        return max(point, self._committed.get(part, -1))

    async def release(self, deliveries: list[Delivery], delay: float = 0.0) -> None:
        # Kafka has no delayed redelivery: the seek is immediate, `delay` is not applied.
        from confluent_kafka import TopicPartition

        first: dict[tuple[str, int], int] = {}
        for d in deliveries:
            part = (d.handle.topic(), d.handle.partition())
            first[part] = min(first.get(part, d.handle.offset()), d.handle.offset())
        for (topic, partition), offset in first.items():
            try:
                await asyncio.to_thread(
                    self._consumer.seek, TopicPartition(topic, partition, offset)
                )
            except Exception:  # partition revoked meanwhile: its new owner starts at the commit
                pass

    async def _produce(
        self, topic: str, body: bytes, headers: dict[str, str], key: Optional[str] = None
    ) -> None:
        errors: list = []

        def delivered(err, _msg) -> None:
            if err is not None:
                errors.append(err)

        def send() -> int:
            self._producer.produce(
                topic, value=body, key=key, headers=list(headers.items()), on_delivery=delivered
            )
            return self._producer.flush(30)

        try:
            left = await asyncio.to_thread(send)
        except Exception as exc:
            raise BrokerUnavailable(f"not stored by {self.url}: {exc}") from None
        if left or errors:
            raise BrokerUnavailable(f"not stored by {self.url}: {errors or 'timeout'}")

    async def dead_letter(self, delivery: Delivery, headers: dict[str, str]) -> None:
        await self._produce(self.dead_topic, delivery.body, {**delivery.headers, **headers})

    async def publish(self, body: bytes, headers: dict[str, str]) -> None:
        # Kafka orders messages within a partition only. Keyed by content, every copy of an image
        # lands in one partition in the order it was sent, so the consumer keeps the first copy
        # (the name an import of the folder keeps), not whichever partition it reads first.
        await self._produce(self.stream, body, headers, key=content_id(body))

    async def lag(self) -> Optional[int]:
        return self._lag

    async def close(self) -> None:
        if self._consumer is not None:
            await asyncio.to_thread(self._consumer.close)
        if self._producer is not None:
            await asyncio.to_thread(self._producer.flush, 10)
