"""The baseline: `serving_default` called in this process, no server, no network.

This is the ceiling Triton is compared with: the same SavedModel, the same decode+resize graph,
the same payload bytes, with TensorFlow's default thread pools (one per core).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from bench.loadgen import run_load
from bench.payload import Payloads
from bench.stats import summarize


def measure(
    serving_dir: Path,
    payloads: Payloads,
    batch_sizes: Sequence[int],
    requests: int,
    warmup: int,
    time_cap_s: float,
) -> list[dict]:
    """Images/s and per-call latency for each batch size; ~`requests` images each, >= 3 calls."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(serving_dir))
    serve = loaded.signatures["serving_default"]
    rows = []
    for batch in batch_sizes:

        def send(batch: int = batch) -> None:
            serve(image_bytes=tf.constant(payloads.take(batch)))["probabilities"].numpy()

        result = run_load(
            lambda: (send, lambda: None),
            concurrency=1,
            requests=max(3, math.ceil(requests / batch)),
            time_cap_s=time_cap_s,
            warmup=max(2, math.ceil(warmup / batch)),  # the first call of a new shape retraces
        )
        summary = summarize(
            result.latencies_s, result.wall_s, batch, len(result.errors), result.capped
        )
        rows.append({"batch_size": batch, **summary.as_dict(), "error_samples": result.errors[:3]})
    return rows
