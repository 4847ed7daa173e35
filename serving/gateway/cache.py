"""Result cache: the same image bytes for the same served model version get the stored answer.

The key hashes the image bytes with the model name, the version Triton actually serves and the
preprocessing version, so a new model version (or a change of how images are prepared) can
never serve an old answer. Only successes are stored.

Redis is optional and may fail at any moment: every Redis call has a short deadline, an error
or timeout counts as a miss (the request goes on to Triton), marks the cache degraded for
`/readyz`, and Redis is left alone for `retry_s` before the next try, so a dead Redis costs
nothing per request; when it answers again caching resumes by itself.

`SingleFlight` makes identical concurrent misses call Triton once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from typing import Any, Awaitable, Callable, Optional

log = logging.getLogger("hoh.gateway")

# Bump when the gateway changes what it sends for the same bytes (none today: raw bytes go to
# the model, which decodes them itself), so old cached answers stop matching.
PREPROCESSING_VERSION = "raw-bytes-1"


def cache_key(image_digest: str, model: str, version: str) -> str:
    """SHA-256 over (preprocessing version, model, version, image SHA-256): fixed length, and no
    name can make two different tuples collide (the parts are length-prefixed)."""
    h = hashlib.sha256()
    for part in (PREPROCESSING_VERSION, model, str(version), image_digest):
        data = part.encode("utf-8")
        h.update(len(data).to_bytes(4, "big") + data)
    return h.hexdigest()


class LruCache:
    """In-process LRU with a TTL: the embedded default, and always healthy."""

    name = "memory"

    def __init__(self, entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.entries, self.ttl_s, self._clock = entries, ttl_s, clock
        self._data: "OrderedDict[str, tuple[float, bytes]]" = OrderedDict()
        self.degraded: Optional[str] = None

    async def get(self, key: str) -> Optional[bytes]:
        item = self._data.get(key)
        if item is None:
            return None
        if item[0] < self._clock():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return item[1]

    async def set(self, key: str, value: bytes) -> None:
        if self.entries <= 0:
            return
        self._data[key] = (self._clock() + self.ttl_s, value)
        self._data.move_to_end(key)
        while len(self._data) > self.entries:
            self._data.popitem(last=False)

    async def ping(self) -> Optional[str]:
        return None

    async def close(self) -> None:
        self._data.clear()


class RedisCache:
    """Redis (redis-py asyncio, one connection pool) that never fails a request."""

    name = "redis"

    def __init__(
        self,
        url: str,
        ttl_s: int,
        timeout_s: float,
        retry_s: float,
        prefix: str,
        password: Optional[str] = None,
        on_error: Callable[[str], None] = lambda _: None,
        clock: Callable[[], float] = time.monotonic,
    ):
        import redis.asyncio as redis

        self._redis = redis.from_url(
            url,
            password=password,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            health_check_interval=0,
            retry_on_timeout=False,
            max_connections=64,
        )
        self.ttl_s, self.timeout_s, self.retry_s, self.prefix = ttl_s, timeout_s, retry_s, prefix
        self._on_error = on_error
        self._clock = clock
        self._skip_until = 0.0
        self.degraded: Optional[str] = None  # why Redis is not used right now

    async def _call(self, op: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        if self._clock() < self._skip_until:
            return None
        try:
            result = await asyncio.wait_for(fn(), self.timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - redis raises many kinds; all mean "no cache"
            reason = (
                "timeout"
                if isinstance(exc, (TimeoutError, asyncio.TimeoutError))
                else (type(exc).__name__)
            )
            if self.degraded is None:
                log.warning("result cache: Redis %s failed (%s); serving uncached", op, reason)
            self.degraded = f"redis {op} failed: {reason}"
            self._skip_until = self._clock() + self.retry_s
            self._on_error(reason)
            return None
        if self.degraded is not None:
            log.warning("result cache: Redis answers again; caching resumed")
            self.degraded = None
        return result

    async def get(self, key: str) -> Optional[bytes]:
        return await self._call("get", lambda: self._redis.get(self.prefix + key))

    async def set(self, key: str, value: bytes) -> None:
        await self._call("set", lambda: self._redis.set(self.prefix + key, value, ex=self.ttl_s))

    async def ping(self) -> Optional[str]:
        """None when Redis answers now, else why not (for /readyz); ignores the back-off."""
        self._skip_until = 0.0
        await self._call("ping", self._redis.ping)
        return self.degraded

    async def close(self) -> None:
        try:
            await self._redis.aclose()
        except Exception:  # noqa: BLE001 - closing a dead connection is not an error
            pass


def encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def decode(data: Optional[bytes]) -> Optional[Any]:
    """A stored value, or None for a missing or unreadable one (treated as a miss)."""
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


class SingleFlight:
    """Identical concurrent work runs once: followers await the leader's future.

    A leader's failure is not shared: followers get None and do the work themselves, because
    the failure may belong to another image of the leader's request (and failures are never
    cached, so they must not spread either).
    """

    def __init__(self):
        self._inflight: dict[str, asyncio.Future] = {}

    def lead(self, key: str) -> Optional[asyncio.Future]:
        """None when this caller leads (it must `finish`); else the leader's future to await."""
        future = self._inflight.get(key)
        if future is not None:
            return future
        self._inflight[key] = asyncio.get_running_loop().create_future()
        return None

    def finish(self, key: str, value: Any) -> None:
        """Hand `value` (None on failure) to the followers and end the flight."""
        future = self._inflight.pop(key, None)
        if future is not None and not future.done():
            future.set_result(value)

    def __len__(self) -> int:
        return len(self._inflight)
