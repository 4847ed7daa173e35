"""A bounded closed-loop load generator: C threads, a fixed request count, a time cap.

Closed loop (each thread sends its next request when the previous one answered) is how the
issue's "concurrency N" is defined and what perf_analyzer's concurrency mode does; the bundled
perf_analyzer needs hand-found libraries on this machine (see STACK_NOTES), so this is plain
Python. Threads rather than asyncio because tritonclient's synchronous clients are what hoh's
client uses. Each thread creates, uses and closes its own client: the clients are not
thread-safe, and tritonclient.http's gevent connection pool fails ("cannot switch to a different
thread") when used from any thread other than the one that first used it, so the same threads run
the warmup and the timed phase. Requests are numbered from one shared counter per phase, so the
total is exact however the threads interleave, and no request starts after the time cap, so a
slow or stuck server cannot hold the benchmark hostage.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

Send = Callable[[], None]  # one request, raising on failure
Sender = tuple[Send, Callable[[], None]]  # (send, close)
# Called when the clock starts (after warmup); returns what to call when it stops, whose dict
# lands in LoadResult.observed (server counters and CPU over exactly the timed requests).
Observer = Callable[[], Callable[[], dict]]


@dataclass
class LoadResult:
    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float = 0.0  # this process (all threads): the client's share of the 2 cores
    capped: bool = False
    observed: dict = field(default_factory=dict)


class _Phase:
    """One batch of numbered requests shared by all threads, with its own deadline."""

    def __init__(self, requests: int, time_cap_s: float):
        self.requests, self.time_cap_s = requests, time_cap_s
        self.result = LoadResult()
        self._ticket = itertools.count().__next__  # atomic under the GIL
        self._lock = threading.Lock()
        self.deadline = time.perf_counter() + time_cap_s

    def restart_clock(self) -> None:
        self.deadline = time.perf_counter() + self.time_cap_s

    def work(self, send: Send) -> None:
        while self._ticket() < self.requests:
            if time.perf_counter() > self.deadline:
                self.result.capped = True
                return
            start = time.perf_counter()
            error: Optional[str] = None
            try:
                send()
            except Exception as exc:  # noqa: BLE001 - counted, the run goes on
                error = f"{type(exc).__name__}: {exc}"[:300]
            elapsed = time.perf_counter() - start
            with self._lock:
                if error is None:
                    self.result.latencies_s.append(elapsed)
                else:
                    self.result.errors.append(error)


def run_load(
    make_sender: Callable[[], Sender],
    concurrency: int,
    requests: int,
    time_cap_s: float,
    warmup: int = 0,
    observe: Optional[Observer] = None,
) -> LoadResult:
    """Send `warmup` untimed then `requests` timed requests from `concurrency` threads.

    `make_sender()` runs once in each thread. Warmup runs at the same concurrency, so connections
    are open and the server's batcher has seen this load before the clock starts.
    """
    if concurrency < 1 or requests < 0 or warmup < 0:
        raise ValueError("concurrency must be >= 1 and request counts >= 0")
    warm, timed = _Phase(warmup, time_cap_s), _Phase(requests, time_cap_s)
    warmed = threading.Barrier(concurrency + 1)  # every thread done warming up
    go = threading.Barrier(concurrency + 1)  # the clock has started
    setup_errors: list[BaseException] = []

    def worker() -> None:
        try:
            send, close = make_sender()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            setup_errors.append(exc)
            warmed.abort()
            return
        try:
            warm.work(send)
            warmed.wait()
            go.wait()
            timed.work(send)
        except threading.BrokenBarrierError:
            pass
        finally:
            close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    try:
        warmed.wait()
    except threading.BrokenBarrierError:
        go.abort()
        for t in threads:
            t.join()
        raise setup_errors[0] if setup_errors else RuntimeError("load generator setup failed")
    finish = observe() if observe else None
    timed.restart_clock()
    cpu0, t0 = time.process_time(), time.perf_counter()
    go.wait()
    for t in threads:
        # A request in flight at the cap may still finish; its client timeout bounds the wait.
        t.join()
    result = timed.result
    result.wall_s = time.perf_counter() - t0
    result.cpu_s = time.process_time() - cpu0
    if finish:
        result.observed = finish()
    return result
