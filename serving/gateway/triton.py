"""Triton over gRPC with one persistent asyncio channel, and its answers as gateway results.

Every request is its own `infer` call on the shared channel, issued as soon as it arrives: N
concurrent gateway requests are N concurrent Triton requests, which is what lets Triton's
dynamic batcher put them into one model execution. Nothing is queued or batched here.

Which version answers matters for the cache key, so the gateway asks for an explicit version:
the newest ready one from the model's metadata, refreshed every `info_ttl_s`. Class names and
limits come from the model config (`class_names.v<N>` per served version, written by the
TritonPusher), read with the same parser as the hoh client; an answer is labelled with the
names of the version Triton says gave it.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from hoh.serving.client import (
    INPUT_NAME,
    LABEL_NAME,
    PROBABILITIES_NAME,
    ModelInfo,
    model_info_from_config,
    response_version,
)
from hoh.serving.gateway.errors import ApiError

_INPUT_RE = re.compile(r"\binput (\d+): (.*)", re.DOTALL)


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: str  # the version that answers (explicit in every infer call)
    versions: tuple[str, ...]  # all ready versions
    info: ModelInfo


def newest(versions: Sequence[str]) -> str:
    numeric = [v for v in versions if str(v).isdigit()]
    return max(numeric, key=int) if numeric else (versions[-1] if versions else "")


def map_triton_error(exc: Exception, model: str, indices: Sequence[int] = ()) -> ApiError:
    """A Triton failure as the client's error: a bad image is the client's (400, naming the
    image by its index in the client's request), a missing model 404, the rest 502-504."""
    status = str(getattr(exc, "status", lambda: "")() or "")
    message_fn = getattr(exc, "message", None)
    text = str(message_fn() if callable(message_fn) else exc)
    match = _INPUT_RE.search(text)
    if "INVALID_ARGUMENT" in status and match:
        index = int(match.group(1))
        index = indices[index] if index < len(indices) else index
        return ApiError(400, "invalid_image", f"image {index}: {match.group(2).strip()[:300]}")
    if "INVALID_ARGUMENT" in status and "request holds" in text:
        return ApiError(413, "request_too_large", text[:300])
    lowered = text.lower()
    if "unknown model" in lowered or "not found" in lowered or "unavailable model" in lowered:
        return ApiError(404, "model_not_found", f"model {model!r} (that version) is not served")
    if "DEADLINE_EXCEEDED" in status:
        return ApiError(504, "triton_timeout", "Triton did not answer in time")
    if "UNAVAILABLE" in status or "failed to connect" in lowered:
        return ApiError(503, "triton_unavailable", "Triton is not reachable")
    if "INVALID_ARGUMENT" in status:
        return ApiError(400, "invalid_request", text[:300])
    return ApiError(502, "triton_error", f"Triton failed: {text[:200]}")


class TritonBackend:
    def __init__(self, url: str, timeout_s: float, info_ttl_s: float):
        import tritonclient.grpc as grpcclient
        import tritonclient.grpc.aio as aio

        self._grpc = grpcclient
        self.url = url
        self.timeout_s = timeout_s
        self.info_ttl_s = info_ttl_s
        self._client = aio.InferenceServerClient(url)
        self._models: dict[tuple[str, str], tuple[float, ServedModel]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def ready(self) -> Optional[str]:
        """None when Triton says it is ready, else why not."""
        try:
            if await self._client.is_server_ready(client_timeout=2.0):
                return None
            return "Triton is up but not ready"
        except Exception as exc:  # noqa: BLE001 - any failure: not ready
            return map_triton_error(exc, "").message

    async def served(self, model: str, version: str = "", refresh: bool = False) -> ServedModel:
        """The model's ready versions and classes, reused for `info_ttl_s`."""
        key = (model, version)
        cached = self._models.get(key)
        if cached and not refresh and time.monotonic() - cached[0] < self.info_ttl_s:
            return cached[1]
        async with self._locks.setdefault(model, asyncio.Lock()):
            cached = self._models.get(key)
            if cached and not refresh and time.monotonic() - cached[0] < self.info_ttl_s:
                return cached[1]
            try:
                meta = await self._client.get_model_metadata(
                    model, version, as_json=True, client_timeout=self.timeout_s
                )
                versions = tuple(str(v) for v in meta.get("versions", []))
                chosen = version or newest(versions)
                config = await self._client.get_model_config(
                    model, chosen, as_json=True, client_timeout=self.timeout_s
                )
            except Exception as exc:  # noqa: BLE001 - classified for the client
                raise map_triton_error(exc, model) from None
            served = ServedModel(model, chosen, versions, model_info_from_config(config))
            self._models[key] = (time.monotonic(), served)
            return served

    async def infer(
        self, model: str, version: str, images: Sequence[bytes], indices: Sequence[int] = ()
    ) -> tuple[np.ndarray, list[str], str]:
        """One Triton request: (probabilities, labels, the version that answered); `indices`
        are the images' positions in the client's request, so an error names the image the
        client sent."""
        batch = np.empty((len(images), 1), dtype=np.object_)
        for i, data in enumerate(images):
            batch[i, 0] = data
        inp = self._grpc.InferInput(INPUT_NAME, list(batch.shape), "BYTES")
        inp.set_data_from_numpy(batch)
        outputs = [self._grpc.InferRequestedOutput(n) for n in (PROBABILITIES_NAME, LABEL_NAME)]
        try:
            result = await self._client.infer(
                model, [inp], model_version=version, outputs=outputs, client_timeout=self.timeout_s
            )
        except Exception as exc:  # noqa: BLE001 - classified for the client
            raise map_triton_error(exc, model, indices) from None
        probabilities = result.as_numpy(PROBABILITIES_NAME)
        labels = result.as_numpy(LABEL_NAME)
        if probabilities is None or labels is None:
            raise ApiError(
                502,
                "triton_error",
                f"model {model!r} answered without "
                "probabilities/label outputs (Triton's response cache replaying a "
                "failure, or not a hoh model)",
            )
        names = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in labels.reshape(-1)]
        return probabilities, names, response_version(result) or version

    async def close(self) -> None:
        try:
            await self._client.close()
        except Exception:  # noqa: BLE001 - closing a dead channel is not an error
            pass
