"""Per-thread request senders for the load generator: hoh's client, or bare tritonclient.

`hoh` (default) measures what users get: `TritonImageClient.infer`, which asks for both outputs
and checks for the cache's empty replays. `raw` is the least a client can do (one output, no
checks) and, over HTTP, lets the outputs come back as JSON instead of binary, so the client's
share of the latency can be told apart from the server's. Inputs are always binary: raw PNG/JPEG
bytes are not valid UTF-8, so the JSON form cannot carry them at all.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from bench.loadgen import Sender
from bench.payload import Payloads
from hoh.serving.client import INPUT_NAME, PROBABILITIES_NAME, TritonImageClient

CLIENTS = ("hoh", "raw")
HTTP_OUTPUTS = ("binary", "json")


def hoh_sender(
    protocol: str, url: str, model: str, payloads: Payloads, images: int, timeout: float
) -> Sender:
    client = TritonImageClient(url, protocol=protocol, model_name=model, timeout=timeout)

    def send() -> None:
        client.infer(payloads.take(images))

    return send, client.close


def raw_sender(
    protocol: str,
    url: str,
    model: str,
    payloads: Payloads,
    images: int,
    timeout: float,
    http_outputs: str = "binary",
) -> Sender:
    if protocol == "http":
        import tritonclient.http as tc

        client = tc.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)
        extra: dict = {}
    else:
        import tritonclient.grpc as tc

        client = tc.InferenceServerClient(url)
        extra = {"client_timeout": timeout}

    def send() -> None:
        batch = np.empty((images, 1), dtype=np.object_)
        batch[:, 0] = payloads.take(images)
        inp = tc.InferInput(INPUT_NAME, [images, 1], "BYTES")
        if protocol == "http":
            inp.set_data_from_numpy(batch, binary_data=True)
            out = tc.InferRequestedOutput(PROBABILITIES_NAME, binary_data=http_outputs == "binary")
        else:
            inp.set_data_from_numpy(batch)
            out = tc.InferRequestedOutput(PROBABILITIES_NAME)
        result = client.infer(model, [inp], outputs=[out], **extra)
        if result.as_numpy(PROBABILITIES_NAME) is None:
            raise RuntimeError("answer without outputs (a cached failure replayed)")

    return send, client.close


def sender_factory(
    kind: str,
    protocol: str,
    url: str,
    model: str,
    payloads: Payloads,
    images: int,
    timeout: float,
    http_outputs: str = "binary",
) -> Callable[[], Sender]:
    """What `run_load` calls once per thread."""
    if kind == "hoh":
        if http_outputs != "binary":
            raise ValueError("--http-outputs json needs --client raw (hoh's client wants binary)")
        return lambda: hoh_sender(protocol, url, model, payloads, images, timeout)
    if kind == "raw":
        return lambda: raw_sender(protocol, url, model, payloads, images, timeout, http_outputs)
    raise ValueError(f"client must be one of {CLIENTS}, got {kind!r}")
