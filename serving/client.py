"""A small image-classification client for a hoh model on Triton, over HTTP or gRPC.

It hides the three things every caller otherwise gets wrong with `tritonclient`: images go as
`np.object_` arrays of raw encoded bytes (not `np.bytes_`, which strips trailing NULs), HTTP must
send them as binary data (JSON cannot carry non-UTF-8 bytes), and a request may hold at most the
model's limits (`max_batch_size`, and the `max_images_per_request` / `max_request_bytes`
parameters the TritonPusher writes). Class names come from the model config: one config serves
every pinned version, so each version's names are under `class_names.v<N>` and an answer is
labelled with the names of the version Triton says answered it (`model_version` of the
response), never with another version's. Failures become HohErrors that say what went wrong:
nothing at the URL, something that is not Triton's API at the URL (the metrics port, the other
protocol's port), model not ready, or which input image was rejected and why.

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
from hoh.serving.triton_model import CLASS_NAMES_KEY, class_names_key, version_class_names

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
    version: str = ""  # the model version that answered ("" when the server did not say)


class ClassNamesMissing(ClientError):
    """The config names no classes (or other ones) for the version that answered."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    max_batch_size: int
    class_names: tuple[str, ...]  # the newest served version's (`class_names`)
    max_images_per_request: int = 0  # 0: max_batch_size (a model pushed before the limits)
    max_request_bytes: int = 0  # 0: no limit announced
    # version -> its class names (`class_names.v<N>`); empty for a config written before them
    versions: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # a fixed probabilities width the config declares (0: variable), for `class_<j>` names
    declared_width: int = 0

    @property
    def images_per_request(self) -> int:
        return min(self.max_images_per_request or self.max_batch_size, self.max_batch_size)

    def names_for(self, version: str, width: int) -> tuple[str, ...]:
        """The class names of `version`'s answer of `width` probabilities, or ClassNamesMissing.

        A config with per-version names must name the answering version. A config from before
        them (one served version, fixed width) gives `class_names`; one without any names (not
        pushed by hoh) gives `class_<j>`, but only for the width it declares.
        """
        by_version = dict(self.versions)
        if by_version:
            names = by_version.get(str(version))
            if names is None:
                raise ClassNamesMissing(
                    f"model {self.name!r} answered with version {version or '?'}, whose classes "
                    f"its config does not name ({class_names_key(version or 0)} missing; named: "
                    f"{', '.join(sorted(by_version, key=int))}); push it again with this hoh"
                )
        elif self.class_names:
            names = self.class_names
        elif width and width == self.declared_width:
            names = tuple(f"class_{j}" for j in range(width))
        else:
            raise ClassNamesMissing(
                f"model {self.name!r} has no {CLASS_NAMES_KEY!r} parameter and no fixed "
                f"probabilities width ({width} answered): its classes cannot be named"
            )
        if len(names) != width:
            raise ClassNamesMissing(
                f"model {self.name!r} version {version or '?'} answered {width} probabilities "
                f"but its config names {len(names)} classes ({', '.join(names)})"
            )
        return names


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
    raw = parameters.get(CLASS_NAMES_KEY, {}).get("string_value", "")

    def number(key: str) -> int:
        value = parameters.get(key, {}).get("string_value", "")
        return int(value) if value.isdigit() else 0

    prefix = class_names_key(0)[:-1]  # "class_names.v"
    versions = []
    for key in sorted(parameters):
        if key.startswith(prefix) and key[len(prefix) :].isdigit():
            version = key[len(prefix) :]
            try:
                names = version_class_names(config, version)
            except ValueError as exc:
                raise ClientError(f"model {config.get('name')!r}: {exc}") from None
            versions.append((str(int(version)), tuple(names or ())))
    outputs = {o.get("name"): o for o in config.get("output", [])}
    dims = outputs.get(PROBABILITIES_NAME, {}).get("dims", [])
    return ModelInfo(
        name=str(config.get("name", "")),
        max_batch_size=max(1, int(config.get("max_batch_size", 1) or 1)),
        class_names=tuple(json.loads(raw)) if raw else (),
        max_images_per_request=number("max_images_per_request"),
        max_request_bytes=number("max_request_bytes"),
        versions=tuple(versions),
        declared_width=max(0, int(dims[-1])) if dims else 0,
    )


def response_version(result) -> str:
    """The version that answered an infer call (HTTP or gRPC result), "" when not said."""
    response = result.get_response()
    if isinstance(response, dict):
        return str(response.get("model_version", "") or "")
    return str(getattr(response, "model_version", "") or "")


def predictions_from_outputs(
    probabilities: np.ndarray,
    labels: Optional[Sequence[str]],
    class_names: Sequence[str],
    version: str = "",
) -> list[Prediction]:
    """Rows of probabilities (+ the model's own labels, when it returns them) -> Predictions.

    `class_names` must be those of `version`, the one that answered (`ModelInfo.names_for`).
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    width = probabilities.shape[1] if probabilities.ndim == 2 else 0
    if len(class_names) != width:
        raise ClassNamesMissing(
            f"{width} probabilities but {len(class_names)} class names ({', '.join(class_names)})"
        )
    out = []
    for i, row in enumerate(probabilities):
        best = int(np.argmax(row))
        label = labels[i] if labels is not None else class_names[best]
        probs = {n: float(p) for n, p in zip(class_names, row)}
        out.append(Prediction(label, float(row[best]), probs, version))
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


_Part = tuple[np.ndarray, list[str], str]  # probabilities, labels, the version that answered


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
    def _infer_once(self, images: Sequence[bytes]) -> _Part:
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
        return probabilities, labels, response_version(result)

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

    def _infer_chunk(self, data: Sequence[bytes], sources: Sequence[str]) -> list[_Part]:
        """One request, as one answer; an empty answer (a replayed failure) is retried image by
        image, as one answer each (they may come from different versions)."""
        try:
            return [self._infer_once(data)]
        except _EmptyResponse:
            if len(data) == 1:
                raise InvalidImage(sources[0], CACHED_REJECTION) from None
            return [part for d, s in zip(data, sources) for part in self._infer_chunk([d], [s])]
        except ClientError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified into a HohError
            self._raise_for(exc, sources)

    def infer(self, images: Sequence[bytes]) -> tuple[np.ndarray, list[str]]:
        """One request (len(images) <= max_batch_size): raw probabilities [N, C] and labels."""
        parts = self._infer_chunk(list(images), [f"#{i}" for i in range(len(images))])
        if len({p.shape[-1] for p, _, _ in parts}) > 1:
            raise ClientError("the answers came from versions with different class counts")
        return np.concatenate([p for p, _, _ in parts]), [x for _, ls, _ in parts for x in ls]

    def _names(self, info: ModelInfo, version: str, width: int) -> tuple[ModelInfo, tuple]:
        """(info, the answering version's names); the config is read again once when it does
        not name that version (pushed since it was read), then ClassNamesMissing."""
        try:
            return info, info.names_for(version, width)
        except ClassNamesMissing:
            info = self.model_info(refresh=True)
            return info, info.names_for(version, width)

    def predict(self, images: Sequence[ImageLike]) -> list[Prediction]:
        """Predictions in input order, in as many requests as the model's limits require, each
        labelled with the class names of the version that answered it."""
        data, sources = load_images(images)
        if not data:
            return []
        info = self.model_info()
        out: list[Prediction] = []
        sizes = [len(d) for d in data]
        for chunk in plan_requests(sizes, info.images_per_request, info.max_request_bytes):
            for probabilities, labels, version in self._infer_chunk(data[chunk], sources[chunk]):
                version = version or self.model_version
                info, names = self._names(info, version, int(probabilities.shape[-1]))
                out.extend(predictions_from_outputs(probabilities, labels, names, version))
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
