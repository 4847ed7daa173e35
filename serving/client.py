"""A small image-classification client for a hoh model on Triton, over HTTP or gRPC.

It hides the three things every caller otherwise gets wrong with `tritonclient`: images go as
`np.object_` arrays of raw encoded bytes (not `np.bytes_`, which strips trailing NULs), HTTP must
send them as binary data (JSON cannot carry non-UTF-8 bytes), and a request may hold at most the
model's limits (`max_batch_size`, and the `max_images_per_request` / `max_request_bytes`
parameters the TritonPusher writes). Class names come from the model config's `class_names`
parameter. Failures become HohErrors that say what went wrong: nothing at the URL, something
that is not Triton's API at the URL (the metrics port, the other protocol's port), model not
ready, or which input image was rejected and why.

Triton 2.51's response cache stores *failed* responses too (the dynamic batcher inserts every
response without looking at its status) and replays them, to any client, as successes without
outputs. hoh pushes models with the cache off; for a model that has it on, the client treats an
answer without any output as that replay: it re-sends the images of that request one by one
(good ones still get their results) and reports the rejected one as InvalidImage.
"""

from __future__ import annotations

import http.client
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Optional, Sequence, Union

import numpy as np

from hoh.errors import HohError, RunFailed

INPUT_NAME = "image_bytes"
PROBABILITIES_NAME = "probabilities"
LABEL_NAME = "label"
PROTOCOLS = ("http", "grpc")
DEFAULT_URLS = {"http": "127.0.0.1:8000", "grpc": "127.0.0.1:8001"}
_INPUT_INDEX_RE = re.compile(r"\binput (\d+): (.*)", re.DOTALL)
CACHED_REJECTION = (
    "the server answered without outputs: Triton's response cache replays a failure of these "
    "exact bytes (sent earlier by some client) as an empty answer, without the reason; turn the "
    "model's response cache off (push.response_cache) to get the reason"
)
_DEFAULT_PORTS = "by default HTTP is port 8000, gRPC 8001 and metrics 8002"

ImageLike = Union[bytes, bytearray, str, Path]


class ClientError(HohError):
    """Base of the errors below; also used for unexpected server answers."""


class ServerUnavailable(ClientError, RunFailed):
    """Nothing answers at the URL."""


class ModelNotReady(ClientError, RunFailed):
    """The server answers but the model (version) is not loaded."""


class _EmptyResponse(ClientError):
    """A success without outputs: Triton's response cache replaying an earlier failure."""


class InvalidImage(ClientError):
    """The server rejected one input; `source` names it (a path, or `#i` for raw bytes)."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float  # of `label`
    probabilities: dict[str, float]  # class name -> probability, in class-id order


@dataclass(frozen=True)
class ModelInfo:
    name: str
    max_batch_size: int
    class_names: tuple[str, ...]
    max_images_per_request: int = 0  # 0: max_batch_size (a model pushed before the limits)
    max_request_bytes: int = 0  # 0: no limit announced

    @property
    def images_per_request(self) -> int:
        return min(self.max_images_per_request or self.max_batch_size, self.max_batch_size)


def plan_requests(sizes: Sequence[int], max_images: int, max_bytes: int = 0) -> list[slice]:
    """Consecutive chunks of at most `max_images` images and `max_bytes` bytes (0: no limit).

    An image bigger than `max_bytes` by itself goes alone, so the server names it and the limit.
    """
    chunks, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        full = i - start >= max_images or (max_bytes and i > start and total + size > max_bytes)
        if full:
            chunks.append(slice(start, i))
            start, total = i, 0
        total += size
    if start < len(sizes):
        chunks.append(slice(start, len(sizes)))
    return chunks


def normalize_url(url: Optional[str], protocol: str) -> str:
    """tritonclient wants host:port; accept `http://host:port/` too."""
    if not url:
        return DEFAULT_URLS[protocol]
    return re.sub(r"^[a-z]+://", "", url).rstrip("/")


def load_images(images: Sequence[ImageLike]) -> tuple[list[bytes], list[str]]:
    """(bytes, source names): paths are read, raw bytes are named `#<index>`."""
    data, sources = [], []
    for i, image in enumerate(images):
        if isinstance(image, (bytes, bytearray)):
            data.append(bytes(image))
            sources.append(f"#{i}")
        else:
            path = Path(image)
            try:
                data.append(path.read_bytes())
            except OSError as exc:
                raise ClientError(f"cannot read image {path}: {exc.strerror or exc}") from None
            sources.append(str(path))
    return data, sources


def model_info_from_config(config: dict) -> ModelInfo:
    """Class names and batch limit from a model config as the server returns it (JSON form)."""
    config = config.get("config", config)  # gRPC's as_json wraps it
    parameters = config.get("parameters", {})
    raw = parameters.get("class_names", {}).get("string_value", "")

    def number(key: str) -> int:
        value = parameters.get(key, {}).get("string_value", "")
        return int(value) if value.isdigit() else 0

    outputs = {o.get("name"): o for o in config.get("output", [])}
    dims = outputs.get(PROBABILITIES_NAME, {}).get("dims", [])
    num_classes = int(dims[-1]) if dims else 0
    names = tuple(json.loads(raw)) if raw else tuple(f"class_{i}" for i in range(num_classes))
    return ModelInfo(
        name=str(config.get("name", "")),
        max_batch_size=max(1, int(config.get("max_batch_size", 1) or 1)),
        class_names=names,
        max_images_per_request=number("max_images_per_request"),
        max_request_bytes=number("max_request_bytes"),
    )


def predictions_from_outputs(
    probabilities: np.ndarray, labels: Optional[Sequence[str]], class_names: Sequence[str]
) -> list[Prediction]:
    """Rows of probabilities (+ the model's own labels, when it returns them) -> Predictions."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    width = probabilities.shape[1] if probabilities.ndim == 2 else 0
    names = list(class_names) if len(class_names) == width else [f"class_{j}" for j in range(width)]
    out = []
    for i, row in enumerate(probabilities):
        best = int(np.argmax(row))
        label = labels[i] if labels is not None else names[best]
        out.append(Prediction(label, float(row[best]), {n: float(p) for n, p in zip(names, row)}))
    return out


def _message(exc: Exception) -> str:
    msg = getattr(exc, "message", None)
    text = msg() if callable(msg) else (msg or str(exc))
    return str(text)


def _is_timeout(exc: Exception) -> bool:
    text = _message(exc).lower()
    return isinstance(exc, TimeoutError) or "deadline exceeded" in text or "timed out" in text


def _is_connection_error(exc: Exception) -> bool:
    if isinstance(exc, OSError):  # refused, reset, unreachable (timeouts are caught before)
        return True
    text = _message(exc).lower()
    return any(
        s in text
        for s in (
            "connection refused",
            "failed to connect",
            "connect failed",
            "name resolution",
            "dns resolution",
            "errors resolving",
            "domain name not found",
            "name or service not known",
        )
    )


def _is_foreign_answer(exc: Exception) -> bool:
    """Something answered, but not in Triton's protocol: another port, another server."""
    if isinstance(exc, (ValueError, http.client.HTTPException)):  # bad JSON, not HTTP at all
        return True
    text = _message(exc).lower()
    return any(
        s in text
        for s in (
            "expected http/",
            "http2 header with status",
            "statuscode.unimplemented",
            "not a triton",
        )
    )


class TritonImageClient:
    """Classify images with a hoh model served by Triton.

    client = TritonImageClient("127.0.0.1:8000")            # or protocol="grpc", port 8001
    [p.label for p in client.predict(["cat.jpg", "dog.png"])]
    """

    def __init__(
        self,
        url: Optional[str] = None,
        protocol: str = "http",
        model_name: str = "hoh",
        model_version: str = "",
        timeout: float = 60.0,
    ):
        if protocol not in PROTOCOLS:
            raise ClientError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.protocol = protocol
        self.url = normalize_url(url, protocol)
        self.model_name = model_name
        self.model_version = str(model_version or "")
        self.timeout = float(timeout)
        self._info: Optional[ModelInfo] = None
        if protocol == "http":
            import tritonclient.http as tc

            self._tc = tc
            self._client = tc.InferenceServerClient(
                self.url, connection_timeout=self.timeout, network_timeout=self.timeout
            )
        else:
            import tritonclient.grpc as tc

            self._tc = tc
            self._client = tc.InferenceServerClient(self.url)

    # ---- status
    def _call(self, fn, *args, **kwargs) -> Any:
        """Run a tritonclient call, turning "nobody there" into ServerUnavailable."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tritonclient raises many kinds
            if _is_timeout(exc):
                raise ClientError(
                    f"Triton at {self.url} did not answer within {self.timeout:g}s"
                ) from None
            if _is_connection_error(exc):
                raise ServerUnavailable(
                    f"no Triton server at {self.url} ({self.protocol}): {_message(exc)}"
                ) from None
            if _is_foreign_answer(exc):
                raise ServerUnavailable(self._not_triton(_message(exc))) from None
            raise

    def _not_triton(self, detail: str) -> str:
        return (
            f"{self.url} answers, but not as Triton's {self.protocol.upper()} inference API "
            f"({detail}); is it the metrics port or the other protocol's port? "
            f"({_DEFAULT_PORTS})"
        )

    def _timeout_kwargs(self) -> dict:
        return {"client_timeout": self.timeout} if self.protocol == "grpc" else {}

    def is_ready(self, version: Optional[str] = None) -> bool:
        """Server reachable and the model (version) ready; never raises."""
        try:
            return bool(
                self._client.is_model_ready(
                    self.model_name, str(version if version is not None else self.model_version)
                )
            )
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return False

    def check_ready(self) -> None:
        """Raise ServerUnavailable or ModelNotReady with the reason, else return."""
        if not self._call(self._client.is_server_live):
            raise ServerUnavailable(self._not_triton("its liveness check failed"))
        kwargs = {"as_json": True} if self.protocol == "grpc" else {}
        metadata = self._call(self._client.get_server_metadata, **kwargs)
        if not isinstance(metadata, dict) or "version" not in metadata:
            raise ServerUnavailable(self._not_triton(f"server metadata {metadata!r}"))
        if not self._call(self._client.is_model_ready, self.model_name, self.model_version):
            version = f" version {self.model_version}" if self.model_version else ""
            raise ModelNotReady(
                f"model {self.model_name!r}{version} is not ready on {self.url}"
                f"{self._repository_states()}"
            )

    def _repository_states(self) -> str:
        try:
            index = self._client.get_model_repository_index(
                **({"as_json": True} if self.protocol == "grpc" else {})
            )
        except Exception:  # noqa: BLE001 - best effort, only for the message
            return ""
        models = index.get("models", index) if isinstance(index, dict) else index
        states = [
            f"{m.get('name')} v{m.get('version', '?')} {m.get('state', '?')}"
            + (f" ({m['reason']})" if m.get("reason") else "")
            for m in models
            if m.get("name") == self.model_name
        ]
        return f" (repository: {'; '.join(states)})" if states else " (not in the repository)"

    def model_info(self, refresh: bool = False) -> ModelInfo:
        if self._info is None or refresh:
            self.check_ready()
            kwargs = {"as_json": True} if self.protocol == "grpc" else {}
            config = self._call(
                self._client.get_model_config, self.model_name, self.model_version, **kwargs
            )
            self._info = model_info_from_config(config)
        return self._info

    # ---- inference
    def _infer_once(self, images: Sequence[bytes]) -> tuple[np.ndarray, list[str]]:
        """One request, errors as tritonclient raises them."""
        batch = np.empty((len(images), 1), dtype=np.object_)
        for i, data in enumerate(images):
            batch[i, 0] = bytes(data)
        inp = self._tc.InferInput(INPUT_NAME, list(batch.shape), "BYTES")
        if self.protocol == "http":
            inp.set_data_from_numpy(batch, binary_data=True)
            outputs = [
                self._tc.InferRequestedOutput(n, binary_data=True)
                for n in (PROBABILITIES_NAME, LABEL_NAME)
            ]
        else:
            inp.set_data_from_numpy(batch)
            outputs = [self._tc.InferRequestedOutput(n) for n in (PROBABILITIES_NAME, LABEL_NAME)]
        result = self._call(
            self._client.infer,
            self.model_name,
            [inp],
            model_version=self.model_version,
            outputs=outputs,
            **self._timeout_kwargs(),
        )
        probabilities = result.as_numpy(PROBABILITIES_NAME)
        raw_labels = result.as_numpy(LABEL_NAME)
        if probabilities is None and raw_labels is None:
            raise _EmptyResponse(f"{self.url}: {CACHED_REJECTION}")
        if probabilities is None or raw_labels is None:
            missing = PROBABILITIES_NAME if probabilities is None else LABEL_NAME
            raise ClientError(
                f"model {self.model_name!r} on {self.url} answered without its {missing!r} "
                "output; is it a model pushed by hoh?"
            )
        labels = [
            x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in raw_labels.reshape(-1)
        ]
        return probabilities, labels

    def _raise_for(self, exc: Exception, sources: Sequence[str]) -> NoReturn:
        text = _message(exc)
        match = _INPUT_INDEX_RE.search(text)
        if match and int(match.group(1)) < len(sources):
            raise InvalidImage(sources[int(match.group(1))], match.group(2).strip()) from None
        lowered = text.lower()
        if "unknown model" in lowered or "not ready" in lowered or "unavailable model" in lowered:
            raise ModelNotReady(f"model {self.model_name!r} on {self.url}: {text}") from None
        raise ClientError(
            f"inference on {self.url} failed for {', '.join(sources)}: {text}"
        ) from None

    def _infer_chunk(
        self, data: Sequence[bytes], sources: Sequence[str]
    ) -> tuple[np.ndarray, list[str]]:
        """One request; an empty answer (a replayed failure) is retried image by image."""
        try:
            return self._infer_once(data)
        except _EmptyResponse:
            if len(data) == 1:
                raise InvalidImage(sources[0], CACHED_REJECTION) from None
            parts = [self._infer_chunk([d], [s]) for d, s in zip(data, sources)]
            return np.concatenate([p for p, _ in parts]), [label for _, ls in parts for label in ls]
        except ClientError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified into a HohError
            self._raise_for(exc, sources)

    def infer(self, images: Sequence[bytes]) -> tuple[np.ndarray, list[str]]:
        """One request (len(images) <= max_batch_size): raw probabilities [N, C] and labels."""
        return self._infer_chunk(list(images), [f"#{i}" for i in range(len(images))])

    def predict(self, images: Sequence[ImageLike]) -> list[Prediction]:
        """Predictions in input order, in as many requests as the model's limits require."""
        data, sources = load_images(images)
        if not data:
            return []
        info = self.model_info()
        out: list[Prediction] = []
        sizes = [len(d) for d in data]
        for chunk in plan_requests(sizes, info.images_per_request, info.max_request_bytes):
            probabilities, labels = self._infer_chunk(data[chunk], sources[chunk])
            if probabilities.shape[-1] != len(info.class_names):
                info = self.model_info(refresh=True)  # a new version changed the classes
            out.extend(predictions_from_outputs(probabilities, labels, info.class_names))
        return out

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # noqa: BLE001 - closing a dead connection is not an error
            pass

    def __enter__(self) -> "TritonImageClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
