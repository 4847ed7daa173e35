"""Writes a hoh SavedModel into a Triton model repository: the side effects of TritonPusher.

Layout of one model (`REPO/MODEL_NAME/`):

    config.pbtxt            python backend, KIND_CPU, dynamic batching, warmup; pins the served
                            versions (`version_policy { specific }`): the publishing file
    configs/gpu.pbtxt       the same with KIND_GPU (`tritonserver --model-config-name=gpu`)
    warmup/image_bytes      4-byte little-endian length + the encoded sample image
    N/model.py              copy of hoh/serving/triton_model.py
    N/hoh_imagecheck.py     copy of hoh/imagecheck.py, the image validator model.py loads
    N/__pycache__/          both precompiled (see below)
    N/labels.txt            class names in class-id order (`label_filename: "N/labels.txt"`)
    N/model.savedmodel/     the Trainer's serving SavedModel
    N/hoh_push.json         where version N came from (source model, time, classes, pusher)

Why it is written this way:
- A push is published by ONE atomic step, the rename that replaces config.pbtxt. Triton reads a
  model from two places, config.pbtxt and the version directories, and no single rename can
  change both; so the config pins the versions it serves and everything that depends on the
  version (its labels, its class count) lives in that version's immutable directory or in the
  config itself. Before the config is replaced, the new version directory may already be there:
  the old config does not serve it. Killed at any step, the repository serves the old model or
  the new one, never a mix (tests/test_triton_repository.py kills a pusher at every step).
  The GPU config is written just before and is consistent on its own the same way. The warmup
  sample is shared: any image warms any version.
- A version is assembled in `.hoh-staging-*` (Triton only loads subdirectories whose names
  parse as integers, and `.` does not) on the same filesystem, fsynced, then renamed to `N`.
  Model-level files are replaced by rename too, and only when their content changed. A version
  directory no config serves (its pusher was killed) is not a version for `list_versions` and
  is deleted by a later push once its pusher is gone.
- If anything fails before config.pbtxt is replaced, the files written so far are put back and
  the new version directory is removed, so the served versions keep the config they were
  loaded with.
- Deleting versions beyond `versions_to_keep` only stops the disk from growing and keeps a few
  for rollback: edit `specific { versions: [...] }` in config.pbtxt (and the `N/labels.txt` it
  names) to serve an older one.
- Each push changes config.pbtxt (the pinned version). Triton loads the new version in the
  background and unloads the old one once it is ready, so the switch has no downtime in poll
  mode (tests/test_triton_serving.py checks it with a client asking throughout).
- The .py files are precompiled into hash-checked .pyc: the python-backend stub runs Python with
  the environment ignored (PYTHONDONTWRITEBYTECODE has no effect) and would otherwise write
  `N/__pycache__/` on its first import, a change that makes a polling server reload the model
  right after loading it. (A server on another Python version still writes its own .pyc once.)
- Local paths (including mounted volumes) get the atomic guarantees above. `gs://` and other
  `tf.io.gfile` schemes work too, but object stores cannot rename a directory atomically.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib.util
import json
import logging
import os
import py_compile
import re
import shutil
import signal
import socket
import struct
import time
import uuid
from importlib import resources
from typing import Iterable, Optional, Sequence

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from hoh.config import PushConfig
from hoh.errors import RunFailed
from hoh.serving.triton_model import IMAGECHECK_FILE

CONFIG_FILE = "config.pbtxt"
GPU_CONFIG_FILE = "configs/gpu.pbtxt"
LABELS_FILE = "labels.txt"
WARMUP_FILE = "warmup/image_bytes"
MODEL_FILE = "model.py"
SAVED_MODEL_DIR = "model.savedmodel"
PUSH_INFO_FILE = "hoh_push.json"
INPUT_NAME = "image_bytes"
PROBABILITIES_NAME = "probabilities"
LABEL_NAME = "label"

_ASSETS_EXTRA = "assets.extra"
_TEMP_PREFIX = ".hoh-"
_STAGING = f"{_TEMP_PREFIX}staging-"
_TRASH = f"{_TEMP_PREFIX}trash-"
_WRITING = f"{_TEMP_PREFIX}write-"
_STALE_AFTER_S = 24 * 3600
# Copied into every version directory: the Triton model and the image validator it imports.
_VERSION_SOURCES = {MODEL_FILE: ("hoh.serving", "triton_model.py"),
                    IMAGECHECK_FILE: ("hoh", "imagecheck.py")}
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_log = logging.getLogger(__name__)
# Serving limits and the cache switch default to the typed config's values (one source of truth).
_PUSH_DEFAULTS = PushConfig.model_fields


class PushError(RunFailed):
    """The model or the push settings cannot produce a servable Triton model."""


# --------------------------------------------------------------------------- settings & inputs


@dataclasses.dataclass(frozen=True)
class TritonPushSettings:
    """How the model is served; mirrors `hoh.config.PushConfig` plus serving limits."""

    model_name: str = "hoh"
    max_batch_size: int = 32
    preferred_batch_sizes: tuple[int, ...] = (8, 16, 32)
    max_queue_delay_us: int = 2000
    instance_count: int = 1
    versions_to_serve: int = 1
    versions_to_keep: int = 2
    max_image_bytes: int = _PUSH_DEFAULTS["max_image_bytes"].default
    max_image_pixels: int = _PUSH_DEFAULTS["max_image_pixels"].default
    max_images_per_request: Optional[int] = _PUSH_DEFAULTS["max_images_per_request"].default
    max_request_bytes: int = _PUSH_DEFAULTS["max_request_bytes"].default
    max_gif_frames: int = _PUSH_DEFAULTS["max_gif_frames"].default
    max_request_pixels: int = _PUSH_DEFAULTS["max_request_pixels"].default
    response_cache: bool = _PUSH_DEFAULTS["response_cache"].default

    @property
    def images_per_request(self) -> int:
        """The effective limit: None means a request may fill a whole batch."""
        return self.max_images_per_request or self.max_batch_size

    def validate(self) -> "TritonPushSettings":
        """Return self, or raise PushError listing every problem (checked before any write)."""
        problems = []
        if not _NAME_RE.fullmatch(self.model_name) or self.model_name in (".", ".."):
            problems.append(f"model_name {self.model_name!r} must be a plain name [A-Za-z0-9_.-]")
        for name in ("max_batch_size", "instance_count", "versions_to_serve", "versions_to_keep",
                     "max_image_bytes", "max_image_pixels", "max_request_bytes",
                     "images_per_request", "max_gif_frames", "max_request_pixels"):
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
        if self.max_queue_delay_us < 0:
            problems.append(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
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
            raise PushError(f"{where}/{_ASSETS_EXTRA}/hoh_model.json is not JSON: {exc}") from None
    from_json = [str(c) for c in meta.get("class_names") or []]
    if from_labels and from_json and from_labels != from_json:
        raise PushError(
            f"{where}: labels.txt {from_labels} and hoh_model.json class_names {from_json} differ"
        )
    names = from_labels or from_json
    if not names:
        raise PushError(
            f"{where}/{_ASSETS_EXTRA} has no class names (labels.txt or hoh_model.json); "
            "is this a hoh Trainer export?"
        )
    num_classes = meta.get("num_classes")
    if num_classes is not None and int(num_classes) != len(names):
        raise PushError(f"{where}: num_classes={num_classes} but {len(names)} class names")
    if len(set(names)) != len(names):
        raise PushError(f"{where}: duplicate class names in {names}")
    return ServingModelInfo(tuple(names), sample_image or None)


def read_model_info(saved_model_dir: str) -> ServingModelInfo:
    fs = _fs_for(saved_model_dir)
    if not fs.exists(_join(saved_model_dir, "saved_model.pb")):
        raise PushError(f"{saved_model_dir} holds no saved_model.pb; expected the serving model")
    extra = _join(saved_model_dir, _ASSETS_EXTRA)

    def read(name: str) -> Optional[bytes]:
        path = _join(extra, name)
        return fs.read_bytes(path) if fs.exists(path) else None

    labels, meta = read("labels.txt"), read("hoh_model.json")
    return parse_model_info(
        labels.decode("utf-8") if labels is not None else None,
        meta.decode("utf-8") if meta is not None else None,
        read("sample_image"),
        saved_model_dir,
    )


# --------------------------------------------------------------------------- pure config


def sniff_image(data: bytes) -> bool:
    """True for PNG/JPEG/GIF/BMP magic bytes: a warmup sample that fails would fail the load."""
    return data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM"))


def warmup_data(image: bytes) -> bytes:
    """Triton's `input_data_file` format for one TYPE_STRING element: uint32 LE length + bytes."""
    return struct.pack("<I", len(image)) + image


def build_model_config(
    settings: TritonPushSettings,
    info: ServingModelInfo,
    kind: int = mc.ModelInstanceGroup.KIND_CPU,
    served: Sequence[int] = (),
) -> mc.ModelConfig:
    """The ModelConfig proto of the served model (built as a proto, so it always parses).

    `served` pins the versions Triton serves, which makes config.pbtxt the one file whose
    replacement publishes a push (see the module docstring); the labels are those of the newest
    of them, read from inside its version directory. Without `served` (a config rendered for
    inspection only) the newest `versions_to_serve` versions are served.
    """
    if served:
        policy = mc.ModelVersionPolicy(
            specific=mc.ModelVersionPolicy.Specific(versions=sorted(served))
        )
        labels = f"{max(served)}/{LABELS_FILE}"
    else:
        policy = mc.ModelVersionPolicy(
            latest=mc.ModelVersionPolicy.Latest(num_versions=settings.versions_to_serve)
        )
        labels = LABELS_FILE
    config = mc.ModelConfig(
        name=settings.model_name,
        backend="python",
        max_batch_size=settings.max_batch_size,
        version_policy=policy,
        input=[mc.ModelInput(name=INPUT_NAME, data_type=mc.TYPE_STRING, dims=[1])],
        output=[
            mc.ModelOutput(
                name=PROBABILITIES_NAME,
                data_type=mc.TYPE_FP32,
                dims=[info.num_classes],
                label_filename=labels,
            ),
            mc.ModelOutput(name=LABEL_NAME, data_type=mc.TYPE_STRING, dims=[1]),
        ],
        dynamic_batching=mc.ModelDynamicBatching(
            preferred_batch_size=sorted(set(settings.preferred_batch_sizes)),
            max_queue_delay_microseconds=settings.max_queue_delay_us,
        ),
        instance_group=[mc.ModelInstanceGroup(kind=kind, count=settings.instance_count)],
        response_cache=mc.ModelResponseCache(enable=settings.response_cache),
    )
    parameters = {
        # Read by clients through the model-config API to name the probability columns.
        "class_names": json.dumps(list(info.class_names)),
        # Read by model.py; edit config.pbtxt to change them without a new push.
        "max_image_bytes": str(settings.max_image_bytes),
        "max_image_pixels": str(settings.max_image_pixels),
        "max_images_per_request": str(settings.images_per_request),
        "max_request_bytes": str(settings.max_request_bytes),
        "max_gif_frames": str(settings.max_gif_frames),
        "max_request_pixels": str(settings.max_request_pixels),
        "intra_op_threads": "0",
    }
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    if info.sample_image is not None:
        warmup = config.model_warmup.add(name="sample_image", batch_size=1)
        warmup_input = warmup.inputs[INPUT_NAME]
        warmup_input.data_type = mc.TYPE_STRING
        warmup_input.dims.append(1)
        warmup_input.input_data_file = os.path.basename(WARMUP_FILE)
    return config


def render_model_config(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse_model_config(text: str) -> mc.ModelConfig:
    """Parse config.pbtxt the way Triton does (raises text_format.ParseError when invalid)."""
    return text_format.Parse(text, mc.ModelConfig())


def model_level_files(
    settings: TritonPushSettings, info: ServingModelInfo, served: Sequence[int]
) -> dict[str, bytes]:
    """The configs pinning `served`, in write order: replacing config.pbtxt publishes a push.

    Each of them is consistent on its own (its versions, their labels), so a push killed between
    the two leaves a GPU server on the new model and a CPU server on the old one, never a mix.
    """
    return {
        rel: render_model_config(build_model_config(settings, info, kind, served)).encode("utf-8")
        for rel, kind in ((GPU_CONFIG_FILE, mc.ModelInstanceGroup.KIND_GPU),
                          (CONFIG_FILE, mc.ModelInstanceGroup.KIND_CPU))
    }


def version_numbers(names: Iterable[str]) -> list[int]:
    """Directory names Triton loads as versions, ascending (Triton skips names with leading 0s)."""
    return sorted(int(n) for n in names if n.isdigit() and (n == "0" or not n.startswith("0")))


def versions_to_delete(versions: Iterable[int], keep: int) -> list[int]:
    return sorted(versions, reverse=True)[keep:]


def is_stale_temp(name: str, age_s: float, host: str, pid_alive) -> bool:
    """Whether a `.hoh-*` leftover in a model directory may be removed.

    Trash is always stale. Staging and write temps are stale when their owner process (encoded in
    the name) is gone from this host, or when they are a day old (owner on another host/pod).
    """
    if name.startswith(_TRASH):
        return True
    for prefix in (_STAGING, _WRITING):
        if name.startswith(prefix):
            parts = name[len(prefix):].rsplit("-", 2)
            if len(parts) == 3 and parts[0] == host and parts[1].isdigit():
                if not pid_alive(int(parts[1])):
                    return True
            return age_s > _STALE_AFTER_S
    return False


# --------------------------------------------------------------------------- filesystem


def _join(*parts: str) -> str:
    return "/".join([parts[0].rstrip("/"), *(p.strip("/") for p in parts[1:])])


def _is_remote(path: str) -> bool:
    return "://" in path


class _LocalFS:
    """os/shutil operations, with fsync so a renamed version survives a power cut intact."""

    exists = staticmethod(os.path.exists)
    isdir = staticmethod(os.path.isdir)
    listdir = staticmethod(os.listdir)

    @staticmethod
    def makedirs(path: str) -> None:
        os.makedirs(path, exist_ok=True)

    @staticmethod
    def read_bytes(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    @staticmethod
    def write_bytes(path: str, data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    @staticmethod
    def replace(src: str, dst: str) -> None:
        os.replace(src, dst)

    @staticmethod
    def rename_dir(src: str, dst: str) -> None:
        if os.path.exists(dst):  # os.rename would silently replace an empty directory
            raise FileExistsError(dst)
        os.rename(src, dst)

    @staticmethod
    def rmtree(path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)
        if os.path.isfile(path):
            os.remove(path)

    @staticmethod
    def age_s(path: str) -> float:
        return time.time() - os.stat(path).st_mtime

    @staticmethod
    def sync_tree(path: str) -> None:
        for root, _, files in os.walk(path):
            for name in files:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            _LocalFS.sync_dir(root)

    @staticmethod
    def sync_dir(path: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _GFileFS:
    """tf.io.gfile for gs:// and friends; imported lazily so local pushes never load TF here."""

    def __init__(self):
        import tensorflow as tf

        self._g = tf.io.gfile

    def exists(self, path: str) -> bool:
        return self._g.exists(path)

    def isdir(self, path: str) -> bool:
        return self._g.isdir(path)

    def listdir(self, path: str) -> list[str]:
        return [n.rstrip("/") for n in self._g.listdir(path)]

    def makedirs(self, path: str) -> None:
        self._g.makedirs(path)

    def read_bytes(self, path: str) -> bytes:
        with self._g.GFile(path, "rb") as f:
            return f.read()

    def write_bytes(self, path: str, data: bytes) -> None:
        with self._g.GFile(path, "wb") as f:
            f.write(data)

    def replace(self, src: str, dst: str) -> None:
        self._g.rename(src, dst, overwrite=True)

    def rename_dir(self, src: str, dst: str) -> None:
        if self._g.exists(dst):
            raise FileExistsError(dst)
        self._g.rename(src, dst, overwrite=False)

    def rmtree(self, path: str) -> None:
        if self._g.isdir(path):
            self._g.rmtree(path)
        elif self._g.exists(path):
            self._g.remove(path)

    def age_s(self, path: str) -> float:
        return time.time() - self._g.stat(path).mtime_nsec / 1e9

    def sync_tree(self, path: str) -> None:  # object stores are durable once a write returns
        pass

    def sync_dir(self, path: str) -> None:
        pass


def _fs_for(path: str):
    return _GFileFS() if _is_remote(path) else _LocalFS()


def _copy_tree(src: str, dst: str) -> None:
    """Copy a SavedModel directory; saved_model.pb last, as the stock Pusher does."""
    if not (_is_remote(src) or _is_remote(dst)):
        shutil.copytree(src, dst)
        return
    import tensorflow as tf

    g = tf.io.gfile
    g.makedirs(dst)
    last = None
    for root, _, files in g.walk(src):
        rel = root[len(src):].strip("/")
        g.makedirs(_join(dst, rel) if rel else dst)
        for name in files:
            pair = (_join(root, name), _join(dst, rel, name) if rel else _join(dst, name))
            if not rel and name == "saved_model.pb":
                last = pair
                continue
            g.copy(*pair, overwrite=True)
    if last:
        g.copy(*last, overwrite=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _temp_name(prefix: str, suffix: str = "") -> str:
    return f"{prefix}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


def _file_sha256(fs, path: str) -> str:
    return hashlib.sha256(fs.read_bytes(path)).hexdigest() if fs.exists(path) else ""


# --------------------------------------------------------------------------- side effects


@dataclasses.dataclass(frozen=True)
class PushResult:
    model_dir: str
    version: int
    version_dir: str
    pushed: bool  # False when the same model was already the latest version (an idempotent retry)
    removed_versions: tuple[int, ...] = ()


def _version_dirs(fs, model_dir: str) -> list[int]:
    """Every version directory on disk, published or left behind by a killed push."""
    if not fs.isdir(model_dir):
        return []
    return version_numbers(n for n in fs.listdir(model_dir) if fs.isdir(_join(model_dir, n)))


def served_versions(model_dir: str) -> Optional[list[int]]:
    """The versions config.pbtxt pins, or None when it pins none (no config, `latest` policy)."""
    fs = _fs_for(model_dir)
    path = _join(model_dir, CONFIG_FILE)
    if not fs.exists(path):
        return None
    try:
        config = parse_model_config(fs.read_bytes(path).decode("utf-8"))
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise PushError(f"{path} is not a valid model config: {exc}") from None
    if config.version_policy.WhichOneof("policy_choice") != "specific":
        return None
    return sorted(config.version_policy.specific.versions)


def list_versions(model_dir: str) -> list[int]:
    """Published versions: none newer than the newest one config.pbtxt serves.

    A version directory newer than that was renamed in by a push killed before it replaced
    config.pbtxt: Triton never served it, so it is no version of the model (and no baseline).
    """
    versions = _version_dirs(_fs_for(model_dir), model_dir)
    served = served_versions(model_dir)
    return [v for v in versions if v <= max(served)] if served else versions


def _unpublished_is_stale(fs, version_dir: str, host: str) -> bool:
    """A version dir no config serves: stale once the push that renamed it in is gone."""
    info_path = _join(version_dir, PUSH_INFO_FILE)
    try:
        pusher = json.loads(fs.read_bytes(info_path)).get("pusher", "")
    except (OSError, ValueError):
        pusher = ""
    return is_stale_temp(_STAGING + str(pusher), fs.age_s(version_dir), host, _pid_alive)


def clean_stale_temps(model_dir: str) -> list[str]:
    """Remove leftovers of crashed pushes (temps, unpublished versions); returns their names."""
    fs = _fs_for(model_dir)
    host = socket.gethostname()
    removed = []
    for name in fs.listdir(model_dir) if fs.isdir(model_dir) else []:
        path = _join(model_dir, name)
        if name.startswith(_TEMP_PREFIX) and is_stale_temp(name, fs.age_s(path), host, _pid_alive):
            fs.rmtree(path)
            removed.append(name)
    published = set(list_versions(model_dir))
    for version in _version_dirs(fs, model_dir):
        path = _join(model_dir, str(version))
        if version not in published and _unpublished_is_stale(fs, path, host):
            _discard_version(fs, model_dir, version)
            removed.append(str(version))
    return removed


_ABSENT = object()


def write_if_changed(path: str, data: bytes):
    """Atomically replace `path` with `data` unless it already holds exactly that.

    Returns None when nothing was written, else the previous content (`_ABSENT` if there was
    none), so that a push failing later can put the file back.
    """
    fs = _fs_for(path)
    previous = fs.read_bytes(path) if fs.exists(path) else _ABSENT
    if previous == data:
        return None
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent)
    temp = _join(parent, _temp_name(_WRITING))
    try:
        fs.write_bytes(temp, data)
        _checkpoint(f"wrote temp for {path}")
        fs.replace(temp, path)
    except BaseException:
        fs.rmtree(temp)
        raise
    return previous


def _restore(written: list[tuple[str, object]]) -> None:
    """Undo `write_if_changed` calls, newest first (config.pbtxt goes back before its labels)."""
    for path, previous in reversed(written):
        if previous is _ABSENT:
            _fs_for(path).rmtree(path)
        else:
            write_if_changed(path, previous)


def _latest_push_matches(fs, model_dir: str, versions: list[int], source: str, pb_sha: str) -> bool:
    if not versions or not source:
        return False
    info_path = _join(model_dir, str(versions[-1]), PUSH_INFO_FILE)
    if not fs.exists(info_path):
        return False
    try:
        info = json.loads(fs.read_bytes(info_path))
    except json.JSONDecodeError:
        return False
    return info.get("source") == source and info.get("saved_model_sha256") == pb_sha


def _stage_version(fs, staging: str, saved_model_dir: str, info: ServingModelInfo, meta: dict):
    """Everything specific to one version goes inside its directory, which is immutable."""
    fs.makedirs(staging)
    for name, (package, module) in _VERSION_SOURCES.items():
        fs.write_bytes(_join(staging, name), resources.files(package).joinpath(module).read_bytes())
        if not _is_remote(staging):
            source = _join(staging, name)
            py_compile.compile(
                source,
                cfile=importlib.util.cache_from_source(source),
                doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
            )
    fs.write_bytes(
        _join(staging, LABELS_FILE),
        "".join(f"{name}\n" for name in info.class_names).encode("utf-8"),
    )
    _copy_tree(saved_model_dir, _join(staging, SAVED_MODEL_DIR))
    fs.write_bytes(_join(staging, PUSH_INFO_FILE), json.dumps(meta, indent=2).encode("utf-8"))
    fs.sync_tree(staging)


def _publish(fs, staging: str, model_dir: str) -> int:
    """Rename the staged version to the next free number; retried if another pusher won a race."""
    for _ in range(5):
        versions = _version_dirs(fs, model_dir)  # unpublished ones too: never reuse a number
        version = (versions[-1] + 1) if versions else 1
        try:
            fs.rename_dir(staging, _join(model_dir, str(version)))
        except (FileExistsError, OSError) as exc:
            if not fs.exists(_join(model_dir, str(version))):
                raise PushError(
                    f"could not publish version {version} in {model_dir}: {exc}"
                ) from exc
            continue
        fs.sync_dir(model_dir)
        return version
    raise PushError(f"could not find a free version number in {model_dir} (concurrent pushes?)")


def _discard_version(fs, model_dir: str, version: int) -> None:
    trash = _join(model_dir, _temp_name(_TRASH, f"-{version}"))
    fs.rename_dir(_join(model_dir, str(version)), trash)  # disappears from Triton at once
    fs.rmtree(trash)


def _retire(fs, model_dir: str, keep: int, served: Sequence[int]) -> tuple[int, ...]:
    removed = [v for v in versions_to_delete(list_versions(model_dir), keep) if v not in served]
    for version in removed:
        _discard_version(fs, model_dir, version)
        _checkpoint(f"deleted version {version}")
    return tuple(removed)


def push_model(
    saved_model_dir: str,
    model_repository: str,
    settings: TritonPushSettings,
    source: Optional[str] = None,
) -> PushResult:
    """Add `saved_model_dir` as the next version of `settings.model_name` in the repository.

    `source` identifies the model (the Model artifact uri) for provenance and so that a retried
    execution that already published this very model does not publish it twice.
    """
    settings.validate()
    info = read_model_info(saved_model_dir)
    if info.sample_image is not None and not sniff_image(info.sample_image):
        info = dataclasses.replace(info, sample_image=None)  # a failing warmup would block loading
    fs = _fs_for(model_repository)
    model_dir = _join(model_repository, settings.model_name)
    fs.makedirs(model_dir)
    clean_stale_temps(model_dir)

    source = source or saved_model_dir
    pb_sha = _file_sha256(_fs_for(saved_model_dir), _join(saved_model_dir, "saved_model.pb"))
    versions = list_versions(model_dir)
    if _latest_push_matches(fs, model_dir, versions, source, pb_sha):
        version = versions[-1]
        return PushResult(model_dir, version, _join(model_dir, str(version)), pushed=False)

    meta = {
        "source": source,
        "saved_model_sha256": pb_sha,
        "pushed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "class_names": list(info.class_names),
        "pusher": _temp_name(""),  # host-pid-id: lets a later push tell a dead push's leftovers
    }
    staging = _join(model_dir, _temp_name(_STAGING))
    written: list[tuple[str, object]] = []
    version = None
    try:
        _stage_version(fs, staging, saved_model_dir, info, meta)
        _checkpoint("staged")
        # Nothing Triton serves changes until config.pbtxt is replaced: the old config pins the
        # old versions and reads the labels inside the newest of them.
        if info.sample_image is not None:  # any image warms any version: no mix
            _write_tracked(_join(model_dir, WARMUP_FILE), warmup_data(info.sample_image), written)
        version = _publish(fs, staging, model_dir)
        _checkpoint("renamed version in")
        served = (versions + [version])[-settings.versions_to_serve:]
        for rel, data in model_level_files(settings, info, served).items():
            _write_tracked(_join(model_dir, rel), data, written)  # config.pbtxt last: published
    except BaseException:
        fs.rmtree(staging)
        _restore(written)  # config.pbtxt first: the served versions keep their config
        if version is not None:
            _discard_version(fs, model_dir, version)
        raise
    try:
        removed = _retire(fs, model_dir, settings.versions_to_keep, served)
    except OSError as exc:  # the new version is live; failing the push now would mislead
        _log.warning("could not delete old versions in %s: %s", model_dir, exc)
        removed = ()
    return PushResult(model_dir, version, _join(model_dir, str(version)), True, removed)


def _write_tracked(path: str, data: bytes, written: list[tuple[str, object]]) -> None:
    previous = write_if_changed(path, data)
    if previous is not None:
        written.append((path, previous))
    _checkpoint(f"wrote {path}")


# --------------------------------------------------------------------------- test hook

KILL_AT_STEP_ENV = "HOH_TEST_KILL_AT_STEP"
_steps = [0]


def _checkpoint(step: str) -> None:
    """Test-only crash hook between two writes of a push: SIGKILL at the Nth checkpoint.

    tests/test_triton_repository.py kills a pushing subprocess at every step in turn and checks
    that the repository still serves one whole model. Costs one environment lookup per step.
    """
    _steps[0] += 1
    if os.environ.get(KILL_AT_STEP_ENV) == str(_steps[0]):
        os.kill(os.getpid(), signal.SIGKILL)
