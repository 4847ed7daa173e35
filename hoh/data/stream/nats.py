"""NATS JetStream behind hoh's broker interface (nats-py).

The stream, its dead-letter stream and the durable pull consumer are created when missing, so
`hoh publish` and `hoh ingest` work against a bare `nats-server -js`. A pull consumer is what
makes backpressure work: the server sends nothing until asked, and never more than
`max_ack_pending` unacknowledged messages. The client reconnects by itself; while it is away,
fetches come back empty and acknowledgements fail, which only means a later redelivery (that the
consumer recognises by the stream sequence).
"""

from __future__ import annotations

import asyncio
from typing import Optional

import nats
import nats.errors
import nats.js.errors
from nats.js.api import ConsumerConfig, StreamConfig

from hoh.config import IngestConfig
from hoh.data.stream import contract
from hoh.data.stream.broker import Broker, BrokerUnavailable, Delivery, MessageTooLarge
from hoh.errors import RunFailed

_FIRST_CONNECT_SECONDS = 10.0
_MSG_ID = "Nats-Msg-Id"  # JetStream drops a re-published message with the same id (2 min window)


class JetStreamBroker(Broker):
    def __init__(self, url: str, stream: str, config: IngestConfig, subject: Optional[str] = None):
        self.url, self.stream, self._config = url, stream, config
        self.subject = subject or stream
        self.dead_subject = config.dead_letter or f"{stream}.dead"
        self.dead_stream = f"{stream}-dead"
        self._nc = self._js = self._sub = None
        self._pending: Optional[int] = None
        self.last_error: Optional[str] = None

    async def _error(self, exc: Exception) -> None:
        self.last_error = str(exc) or type(exc).__name__

    async def connect(self) -> None:
        async def quiet(*_args) -> None:
            return None

        try:
            # Unlimited reconnects once connected; the first connection is bounded, or a
            # wrong URL would hang the command instead of failing it.
            self._nc = await asyncio.wait_for(
                nats.connect(
                    self.url,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    connect_timeout=3,
                    allow_reconnect=True,
                    error_cb=self._error,
                    disconnected_cb=quiet,
                    reconnected_cb=quiet,
                ),
                timeout=_FIRST_CONNECT_SECONDS,
            )
        except asyncio.TimeoutError:
            raise RunFailed(
                f"cannot connect to NATS at {self.url}: nothing answered within "
                f"{_FIRST_CONNECT_SECONDS:.0f} s"
            ) from None
        except Exception as exc:  # nats-py raises several unrelated types for "not there"
            raise RunFailed(
                f"cannot connect to NATS at {self.url}: {exc or type(exc).__name__}"
            ) from None
        self._js = self._nc.jetstream()
        await self._ensure_stream(self.stream, self.subject)

    async def _ensure_stream(self, name: str, subject: str) -> None:
        try:
            await self._js.stream_info(name)
        except nats.js.errors.NotFoundError:
            await self._js.add_stream(StreamConfig(name=name, subjects=[subject]))
        except nats.js.errors.ServiceUnavailableError:
            raise RunFailed(f"NATS at {self.url} has no JetStream (start it with -js)") from None

    async def subscribe(self) -> None:
        await self._ensure_stream(self.dead_stream, self.dead_subject)
        config = ConsumerConfig(
            ack_wait=self._config.ack_wait_seconds,
            # The queue, the batch being checked and the batch being written (consumer.py).
            max_ack_pending=self._config.queue_size + 2 * self._config.batch_size,
        )
        self._sub = await self._js.pull_subscribe(
            self.subject, durable=self._config.consumer, stream=self.stream, config=config
        )

    async def fetch(self, max_messages: int, timeout: float) -> list[Delivery]:
        # While the client reconnects a fetch only times out; say so, for /healthz and the log.
        if not self._nc.is_connected:
            raise BrokerUnavailable(f"disconnected from {self.url}, reconnecting")
        if self._sub is None:
            await self.subscribe()
        try:
            msgs = await self._sub.fetch(max_messages, timeout=timeout)
        except asyncio.TimeoutError:  # nats-py raises this base class, not only its own subclass
            if not self._nc.is_connected:
                raise BrokerUnavailable(f"disconnected from {self.url}, reconnecting") from None
            return []
        except (
            nats.errors.ConnectionClosedError,
            nats.errors.ConnectionReconnectingError,
            nats.errors.StaleConnectionError,
            nats.errors.NoRespondersError,
        ) as exc:
            raise BrokerUnavailable(str(exc) or type(exc).__name__) from None
        out = []
        for msg in msgs:
            meta = msg.metadata
            self._pending = meta.num_pending
            out.append(Delivery(msg.data, dict(msg.headers or {}), str(meta.sequence.stream), msg))
        return out

    async def ack(self, deliveries: list[Delivery]) -> None:
        try:
            for d in deliveries:
                await d.handle.ack()
            await self._nc.flush(timeout=5)
        except (nats.errors.Error, asyncio.TimeoutError) as exc:
            raise BrokerUnavailable(f"acknowledgement not sent: {exc}") from None

    async def release(self, deliveries: list[Delivery], delay: float = 0.0) -> None:
        try:
            for d in deliveries:
                await d.handle.nak(delay=delay or None)
            await self._nc.flush(timeout=2)
        except (nats.errors.Error, asyncio.TimeoutError):
            pass  # not handed back: redelivered after ack_wait instead

    async def dead_letter(self, delivery: Delivery, headers: dict[str, str]) -> None:
        merged = {k: v for k, v in delivery.headers.items() if k != _MSG_ID}
        merged.update(headers)
        # A consumer killed between dead-lettering and acknowledging sees the message again:
        # the stream sequence as message id lets JetStream drop the second copy.
        merged[_MSG_ID] = f"{self.stream}:{delivery.key}"
        try:
            await self._js.publish(
                self.dead_subject, delivery.body, headers=merged, stream=self.dead_stream
            )
        except (nats.errors.Error, asyncio.TimeoutError) as exc:
            raise BrokerUnavailable(f"dead letter not stored: {exc}") from None

    async def publish(self, body: bytes, headers: dict[str, str]) -> None:
        if len(body) > self._nc.max_payload:
            raise MessageTooLarge(
                f"{len(body)} bytes is above the NATS server's max_payload "
                f"of {self._nc.max_payload} bytes"
            )
        headers = dict(headers)
        if contract.PRODUCER_ID in headers:
            headers[_MSG_ID] = headers[contract.PRODUCER_ID]
        try:
            await self._js.publish(self.subject, body, headers=headers, stream=self.stream)
        except (nats.errors.Error, asyncio.TimeoutError) as exc:
            raise BrokerUnavailable(f"not stored by {self.url}: {exc}") from None

    async def lag(self) -> Optional[int]:
        return self._pending

    async def delete_streams(self) -> None:
        """Remove this stream and its dead-letter stream (tests and benchmarks clean up)."""
        for name in (self.stream, self.dead_stream):
            try:
                await self._js.delete_stream(name)
            except nats.js.errors.NotFoundError:
                pass

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            try:
                await self._nc.close()
            except Exception:  # closing a connection to a dead server must not mask the exit
                pass
