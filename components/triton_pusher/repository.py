"""Writes a hoh SavedModel into a Triton model repository: the side effects of TritonPusher.

Layout of one model (`REPO/MODEL_NAME/`):

    config.pbtxt            python backend, KIND_CPU, dynamic batching, warmup, response cache
    configs/gpu.pbtxt       the same with KIND_GPU (`tritonserver --model-config-name=gpu`)
    labels.txt              class names in class-id order (`label_filename` of `probabilities`)
    warmup/image_bytes      4-byte little-endian length + the encoded sample image
    N/model.py              copy of hoh/serving/triton_model.py
    N/__pycache__/          model.py precompiled (see below)
    N/model.savedmodel/     the Trainer's serving SavedModel
    N/hoh_push.json         where version N came from (source model, time, classes)

Why it is written this way:
- A server in poll mode may scan the directory at any moment, so nothing it can see is ever
  half-written. A version is assembled in `.hoh-staging-*` (Triton only loads subdirectories whose
  names parse as integers, and `.` does not) on the same filesystem, fsynced, then renamed to `N`
  in one step. Model-level files are replaced by rename too, and only when their content changed,
  because any change in the model directory makes a polling server reload the model.
- Model-level files are written after staging and just before the rename (so the first version
  never appears without its config); if anything fails before the version is published, they are
  put back as they were, so the served versions keep the config they were loaded with.
- `version_policy { latest { num_versions: versions_to_serve } }` makes Triton unload older
  versions by itself; deleting versions beyond `versions_to_keep` only stops the disk from growing
  (and keeps a few for rollback: delete the newest directory and the server falls back).
- A push that leaves config.pbtxt unchanged (a retrained model, same classes) switches versions
  without downtime in poll mode: Triton loads N, then unloads N-1. A push that changes it (other
  classes, other batching settings) makes Triton reload the whole model, which unloads the old
  version before the new one is ready: a few seconds without a ready version.
- `model.py` is precompiled into a hash-checked .pyc: the python-backend stub runs Python with
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
import socket
import struct
import time
import uuid
from importlib import resources
from typing import Iterable, Optional

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from hoh.errors import HohError

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
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_log = logging.getLogger(__name__)


class PushError(HohError):
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
    max_image_bytes: int = 16 * 1024 * 1024
    max_image_pixels: int = 50_000_000

    def validate(self) -> "TritonPushSettings":
        """Return self, or raise PushError listing every problem (checked before any write)."""
        problems = []
        if not _NAME_RE.fullmatch(self.model_name) or self.model_name in (".", ".."):
            problems.append(f"model_name {self.model_name!r} must be a plain name [A-Za-z0-9_.-]")
        for name in ("max_batch_size", "instance_count", "versions_to_serve", "versions_to_keep",
                     "max_image_bytes", "max_image_pixels"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
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
) -> mc.ModelConfig:
    """The ModelConfig proto of the served model (built as a proto, so it always parses)."""
    config = mc.ModelConfig(
        name=settings.model_name,
        backend="python",
        max_batch_size=settings.max_batch_size,
        version_policy=mc.ModelVersionPolicy(
            latest=mc.ModelVersionPolicy.Latest(num_versions=settings.versions_to_serve)
        ),
        input=[mc.ModelInput(name=INPUT_NAME, data_type=mc.TYPE_STRING, dims=[1])],
        output=[
            mc.ModelOutput(
                name=PROBABILITIES_NAME,
                data_type=mc.TYPE_FP32,
                dims=[info.num_classes],
                label_filename=LABELS_FILE,
            ),
            mc.ModelOutput(name=LABEL_NAME, data_type=mc.TYPE_STRING, dims=[1]),
        ],
        dynamic_batching=mc.ModelDynamicBatching(
            preferred_batch_size=sorted(set(settings.preferred_batch_sizes)),
            max_queue_delay_microseconds=settings.max_queue_delay_us,
        ),
        instance_group=[mc.ModelInstanceGroup(kind=kind, count=settings.instance_count)],
        response_cache=mc.ModelResponseCache(enable=True),
    )
    parameters = {
        # Read by clients through the model-config API to name the probability columns.
        "class_names": json.dumps(list(info.class_names)),
        # Read by model.py; edit config.pbtxt to change them without a new push.
        "max_image_bytes": str(settings.max_image_bytes),
        "max_image_pixels": str(settings.max_image_pixels),
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


def model_level_files(settings: TritonPushSettings, info: ServingModelInfo) -> dict[str, bytes]:
    """Relative path -> content of every file shared by the versions of one model."""
    files = {
        LABELS_FILE: "".join(f"{name}\n" for name in info.class_names).encode("utf-8"),
        GPU_CONFIG_FILE: render_model_config(
            build_model_config(settings, info, mc.ModelInstanceGroup.KIND_GPU)
        ).encode("utf-8"),
    }
    if info.sample_image is not None:
        files[WARMUP_FILE] = warmup_data(info.sample_image)
    # Last: config.pbtxt references labels.txt and the warmup file, which must already exist.
    files[CONFIG_FILE] = render_model_config(build_model_config(settings, info)).encode("utf-8")
    return files


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


def list_versions(model_dir: str) -> list[int]:
    fs = _fs_for(model_dir)
    if not fs.isdir(model_dir):
        return []
    return version_numbers(n for n in fs.listdir(model_dir) if fs.isdir(_join(model_dir, n)))


def clean_stale_temps(model_dir: str) -> list[str]:
    """Remove leftovers of crashed pushes; returns their names."""
    fs = _fs_for(model_dir)
    host = socket.gethostname()
    removed = []
    for name in fs.listdir(model_dir) if fs.isdir(model_dir) else []:
        path = _join(model_dir, name)
        if name.startswith(_TEMP_PREFIX) and is_stale_temp(name, fs.age_s(path), host, _pid_alive):
            fs.rmtree(path)
            removed.append(name)
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
    fs.makedirs(staging)
    template = resources.files("hoh.serving").joinpath("triton_model.py").read_bytes()
    fs.write_bytes(_join(staging, MODEL_FILE), template)
    if not _is_remote(staging):
        source = _join(staging, MODEL_FILE)
        py_compile.compile(
            source,
            cfile=importlib.util.cache_from_source(source),
            doraise=True,
            invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
        )
    _copy_tree(saved_model_dir, _join(staging, SAVED_MODEL_DIR))
    fs.write_bytes(_join(staging, PUSH_INFO_FILE), json.dumps(meta, indent=2).encode("utf-8"))
    fs.sync_tree(staging)


def _publish(fs, staging: str, model_dir: str) -> int:
    """Rename the staged version to the next free number; retried if another pusher won a race."""
    for _ in range(5):
        versions = list_versions(model_dir)
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


def _retire(fs, model_dir: str, keep: int) -> tuple[int, ...]:
    removed = versions_to_delete(list_versions(model_dir), keep)
    for version in removed:
        trash = _join(model_dir, _temp_name(_TRASH, f"-{version}"))
        fs.rename_dir(_join(model_dir, str(version)), trash)  # disappears from Triton at once
        fs.rmtree(trash)
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
    }
    staging = _join(model_dir, _temp_name(_STAGING))
    written: list[tuple[str, object]] = []
    try:
        _stage_version(fs, staging, saved_model_dir, info, meta)
        for rel, data in model_level_files(settings, info).items():
            path = _join(model_dir, rel)
            previous = write_if_changed(path, data)
            if previous is not None:
                written.append((path, previous))
        version = _publish(fs, staging, model_dir)
    except BaseException:
        fs.rmtree(staging)
        _restore(written)  # the served versions keep the config they were loaded with
        raise
    try:
        removed = _retire(fs, model_dir, settings.versions_to_keep)
    except OSError as exc:  # the new version is live; failing the push now would mislead
        _log.warning("could not delete old versions in %s: %s", model_dir, exc)
        removed = ()
    return PushResult(model_dir, version, _join(model_dir, str(version)), True, removed)
