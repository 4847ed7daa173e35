"""What a push needs to know before it writes anything: the serving settings (from the typed
config's `push:` section, validated together so a bad combination fails before any write) and
the class names and warmup sample the Trainer left in the SavedModel's `assets.extra/`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Optional

from hoh.components.triton_pusher.filesystem import fs_for, join
from hoh.config import PushConfig, served_versions_problem
from hoh.errors import RunFailed

ASSETS_EXTRA = "assets.extra"
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
# Every default is the typed config's (one source of truth).
_PUSH_DEFAULTS = PushConfig.model_fields


class PushError(RunFailed):
    """The model or the push settings cannot produce a servable Triton model."""


@dataclasses.dataclass(frozen=True)
class TritonPushSettings:
    """How the model is served; mirrors `hoh.config.PushConfig` plus serving limits."""

    model_name: str = _PUSH_DEFAULTS["model_name"].default
    max_batch_size: int = _PUSH_DEFAULTS["max_batch_size"].default
    preferred_batch_sizes: tuple[int, ...] = tuple(
        _PUSH_DEFAULTS["preferred_batch_sizes"].default_factory()
    )
    max_queue_delay_us: int = _PUSH_DEFAULTS["max_queue_delay_us"].default
    instance_count: int = _PUSH_DEFAULTS["instance_count"].default
    versions_to_serve: int = _PUSH_DEFAULTS["versions_to_serve"].default
    versions_to_keep: int = _PUSH_DEFAULTS["versions_to_keep"].default
    max_image_bytes: int = _PUSH_DEFAULTS["max_image_bytes"].default
    max_image_pixels: int = _PUSH_DEFAULTS["max_image_pixels"].default
    max_images_per_request: Optional[int] = _PUSH_DEFAULTS["max_images_per_request"].default
    max_request_bytes: int = _PUSH_DEFAULTS["max_request_bytes"].default
    max_gif_frames: int = _PUSH_DEFAULTS["max_gif_frames"].default
    max_request_pixels: int = _PUSH_DEFAULTS["max_request_pixels"].default
    response_cache: bool = _PUSH_DEFAULTS["response_cache"].default
    flavor: str = _PUSH_DEFAULTS["flavor"].default
    preprocess_instance_count: int = _PUSH_DEFAULTS["preprocess_instance_count"].default
    classifier_instance_count: int = _PUSH_DEFAULTS["classifier_instance_count"].default
    cpu_step_queue_delay_us: int = _PUSH_DEFAULTS["cpu_step_queue_delay_us"].default
    gpu_fp16: bool = _PUSH_DEFAULTS["gpu_fp16"].default

    @classmethod
    def from_config(cls, push: PushConfig) -> "TritonPushSettings":
        """The serving fields of a `push:` section (where and whether to push are the runner's)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = push.model_dump(include=fields)
        values["preferred_batch_sizes"] = tuple(values["preferred_batch_sizes"])
        return cls(**values).validate()

    @property
    def images_per_request(self) -> int:
        """The effective limit: None means a request may fill a whole batch."""
        return self.max_images_per_request or self.max_batch_size

    def validate(self) -> "TritonPushSettings":
        """Return self, or raise PushError listing every problem (checked before any write)."""
        problems = []
        if not _NAME_RE.fullmatch(self.model_name) or self.model_name in (".", ".."):
            problems.append(f"model_name {self.model_name!r} must be a plain name [A-Za-z0-9_.-]")
        for name in (
            "max_batch_size",
            "instance_count",
            "preprocess_instance_count",
            "classifier_instance_count",
            "versions_to_serve",
            "versions_to_keep",
            "max_image_bytes",
            "max_image_pixels",
            "max_request_bytes",
            "images_per_request",
            "max_gif_frames",
            "max_request_pixels",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.images_per_request > self.max_batch_size:
            problems.append(
                f"max_images_per_request ({self.images_per_request}) must be <= max_batch_size "
                f"({self.max_batch_size}): Triton refuses larger requests itself"
            )
        if self.max_image_bytes > self.max_request_bytes:
            problems.append(
                f"max_image_bytes ({self.max_image_bytes}) must be <= max_request_bytes "
                f"({self.max_request_bytes}): an image that fits no request cannot be served"
            )
        for name in ("max_queue_delay_us", "cpu_step_queue_delay_us"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            problems.append(
                f"preferred_batch_sizes {bad} must lie in 1..max_batch_size ({self.max_batch_size})"
            )
        if self.versions_to_keep < self.versions_to_serve:
            problems.append(
                f"versions_to_keep ({self.versions_to_keep}) must be >= versions_to_serve "
                f"({self.versions_to_serve}): a served version must not be deleted"
            )
        if self.flavor not in ("tensorflow", "onnx"):
            problems.append(f"flavor must be 'tensorflow' or 'onnx', got {self.flavor!r}")
        served = served_versions_problem(self.flavor, self.versions_to_serve)
        if served:
            problems.append(served)
        if problems:
            raise PushError("invalid Triton push settings: " + "; ".join(problems))
        return self


@dataclasses.dataclass(frozen=True)
class ServingModelInfo:
    """What the pusher needs from the Trainer's `assets.extra/`."""

    class_names: tuple[str, ...]
    sample_image: Optional[bytes]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def parse_model_info(
    labels_txt: Optional[str], model_json: Optional[str], sample_image: Optional[bytes], where: str
) -> ServingModelInfo:
    """Check the `assets.extra/` contents against each other; `where` names the model in errors."""
    from_labels = [line for line in (labels_txt or "").splitlines() if line.strip()]
    meta = {}
    if model_json:
        try:
            meta = json.loads(model_json)
        except json.JSONDecodeError as exc:
            raise PushError(f"{where}/{ASSETS_EXTRA}/hoh_model.json is not JSON: {exc}") from None
    from_json = [str(c) for c in meta.get("class_names") or []]
    if from_labels and from_json and from_labels != from_json:
        raise PushError(
            f"{where}: labels.txt {from_labels} and hoh_model.json class_names {from_json} differ"
        )
    names = from_labels or from_json
    if not names:
        raise PushError(
            f"{where}/{ASSETS_EXTRA} has no class names (labels.txt or hoh_model.json); "
            "is this a hoh Trainer export?"
        )
    num_classes = meta.get("num_classes")
    if num_classes is not None and int(num_classes) != len(names):
        raise PushError(f"{where}: num_classes={num_classes} but {len(names)} class names")
    if len(set(names)) != len(names):
        raise PushError(f"{where}: duplicate class names in {names}")
    return ServingModelInfo(tuple(names), sample_image or None)


def read_model_info(saved_model_dir: str) -> ServingModelInfo:
    fs = fs_for(saved_model_dir)
    if not fs.exists(join(saved_model_dir, "saved_model.pb")):
        raise PushError(f"{saved_model_dir} holds no saved_model.pb; expected the serving model")
    extra = join(saved_model_dir, ASSETS_EXTRA)

    def read(name: str) -> Optional[bytes]:
        path = join(extra, name)
        return fs.read_bytes(path) if fs.exists(path) else None

    labels, meta = read("labels.txt"), read("hoh_model.json")
    return parse_model_info(
        labels.decode("utf-8") if labels is not None else None,
        meta.decode("utf-8") if meta is not None else None,
        read("sample_image"),
        saved_model_dir,
    )
