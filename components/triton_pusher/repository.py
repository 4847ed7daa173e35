"""Writes a hoh SavedModel into a Triton model repository: the side effects of TritonPusher.

Layout of one model (`REPO/MODEL_NAME/`):

    config.pbtxt            python backend, KIND_CPU, dynamic batching, warmup; pins the served
                            versions (`version_policy { specific }`) and names the classes of
                            each (`class_names.v<N>`): the publishing file
    configs/gpu.pbtxt       the same with KIND_GPU (`tritonserver --model-config-name=gpu`)
    warmup/image_bytes      4-byte little-endian length + the encoded sample image
    N/model.py              copy of hoh/serving/triton_model.py
    N/hoh_imagecheck.py     copy of hoh/imagecheck.py, the image validator model.py loads
    N/__pycache__/          both precompiled (see below)
    N/labels.txt            class names in class-id order (`label_filename: "N/labels.txt"`)
    N/model.savedmodel/     the Trainer's serving SavedModel
    N/hoh_push.json         where version N came from (source model, time, classes, pusher)
    N/eval_predictions.json the model's predictions on its eval split, when the pusher was given
                            the examples: `hoh monitor`'s prediction-drift baseline

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
  for rollback (`rollback.republish`, a push of the old model).
- The served versions may have different classes (a class was added): the config names each
  version's classes from its own `N/labels.txt`, so a client labels an answer with the names of
  the version that gave it (docs/MULTICLASS.md).
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
import importlib.util
import json
import logging
import os
import py_compile
import signal
import socket
import uuid
from importlib import resources
from typing import Iterable, Optional, Sequence

from google.protobuf import text_format

from hoh.components.triton_pusher.filesystem import (  # noqa: F401  (LocalFS: tests patch it)
    LocalFS,
    copy_tree,
    file_sha256,
    fs_for,
    join,
    pid_alive,
)
from hoh.components.triton_pusher.model_config import (  # noqa: F401  (re-exported)
    CONFIG_FILE,
    GPU_CONFIG_FILE,
    LABELS_FILE,
    WARMUP_FILE,
    build_model_config,
    model_level_files,
    parse_model_config,
    render_model_config,
    sniff_image,
    warmup_data,
)
from hoh.components.triton_pusher.settings import (  # noqa: F401  (re-exported)
    PushError,
    ServingModelInfo,
    TritonPushSettings,
    parse_model_info,
    read_model_info,
)
from hoh.fileio import is_remote
from hoh.serving.triton_model import IMAGECHECK_FILE

MODEL_FILE = "model.py"
SAVED_MODEL_DIR = "model.savedmodel"
PUSH_INFO_FILE = "hoh_push.json"

_TEMP_PREFIX = ".hoh-"
_STAGING = f"{_TEMP_PREFIX}staging-"
_TRASH = f"{_TEMP_PREFIX}trash-"
_WRITING = f"{_TEMP_PREFIX}write-"
_STALE_AFTER_S = 24 * 3600
# Copied into every version directory: the Triton model and the image validator it imports.
_VERSION_SOURCES = {
    MODEL_FILE: ("hoh.serving", "triton_model.py"),
    IMAGECHECK_FILE: ("hoh", "imagecheck.py"),
}
_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- version names


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
            parts = name[len(prefix) :].rsplit("-", 2)
            if len(parts) == 3 and parts[0] == host and parts[1].isdigit():
                if not pid_alive(int(parts[1])):
                    return True
            return age_s > _STALE_AFTER_S
    return False


def _temp_name(prefix: str, suffix: str = "") -> str:
    return f"{prefix}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


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
    return version_numbers(n for n in fs.listdir(model_dir) if fs.isdir(join(model_dir, n)))


def served_versions(model_dir: str) -> Optional[list[int]]:
    """The versions config.pbtxt pins, or None when it pins none (no config, `latest` policy)."""
    fs = fs_for(model_dir)
    path = join(model_dir, CONFIG_FILE)
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
    versions = _version_dirs(fs_for(model_dir), model_dir)
    served = served_versions(model_dir)
    return [v for v in versions if v <= max(served)] if served else versions


def version_class_names(model_dir: str, version: int) -> Optional[list[str]]:
    """The class names in version `version`'s own labels.txt, or None when it has none."""
    fs = fs_for(model_dir)
    path = join(model_dir, str(version), LABELS_FILE)
    if not fs.exists(path):
        return None
    return [line for line in fs.read_bytes(path).decode("utf-8").splitlines() if line.strip()]


def served_class_names(
    model_dir: str, served: Sequence[int], known: dict[int, Sequence[str]]
) -> dict[int, Sequence[str]]:
    """Class names of every version in `served`: `known`, else each version's labels.txt.

    Versions that keep being served beside a new one keep their own names in the new config.
    """
    names = dict(known)
    for version in served:
        if version not in names:
            found = version_class_names(model_dir, version)
            if found is not None:
                names[version] = found
    return names


def _unpublished_is_stale(fs, version_dir: str, host: str) -> bool:
    """A version dir no config serves: stale once the push that renamed it in is gone."""
    info_path = join(version_dir, PUSH_INFO_FILE)
    try:
        pusher = json.loads(fs.read_bytes(info_path)).get("pusher", "")
    except (OSError, ValueError):
        pusher = ""
    return is_stale_temp(_STAGING + str(pusher), fs.age_s(version_dir), host, pid_alive)


def clean_stale_temps(model_dir: str) -> list[str]:
    """Remove leftovers of crashed pushes (temps, unpublished versions); returns their names."""
    fs = fs_for(model_dir)
    host = socket.gethostname()
    removed = []
    for name in fs.listdir(model_dir) if fs.isdir(model_dir) else []:
        path = join(model_dir, name)
        if name.startswith(_TEMP_PREFIX) and is_stale_temp(name, fs.age_s(path), host, pid_alive):
            fs.rmtree(path)
            removed.append(name)
    published = set(list_versions(model_dir))
    for version in _version_dirs(fs, model_dir):
        path = join(model_dir, str(version))
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
    fs = fs_for(path)
    previous = fs.read_bytes(path) if fs.exists(path) else _ABSENT
    if previous == data:
        return None
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent)
    temp = join(parent, _temp_name(_WRITING))
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
            fs_for(path).rmtree(path)
        else:
            write_if_changed(path, previous)


def _latest_push_matches(
    fs, model_dir: str, versions: list[int], source: str, pb_sha: str, flavor: str = "tensorflow"
) -> bool:
    if not versions or not source:
        return False
    info_path = join(model_dir, str(versions[-1]), PUSH_INFO_FILE)
    if not fs.exists(info_path):
        return False
    try:
        info = json.loads(fs.read_bytes(info_path))
    except json.JSONDecodeError:
        return False
    return (
        info.get("source") == source
        and info.get("saved_model_sha256") == pb_sha
        and info.get("flavor", "tensorflow") == flavor
    )


def write_sources(fs, directory: str, sources: dict[str, tuple[str, str]]) -> None:
    """Copy package files into a version directory, precompiled (see the module docstring)."""
    fs.makedirs(directory)
    for name, (package, module) in sources.items():
        data = resources.files(package).joinpath(module).read_bytes()
        fs.write_bytes(join(directory, name), data)
        if not is_remote(directory):
            source = join(directory, name)
            py_compile.compile(
                source,
                cfile=importlib.util.cache_from_source(source),
                doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
            )


def _stage_version(
    fs,
    staging: str,
    saved_model_dir: str,
    info: ServingModelInfo,
    meta: dict,
    extra_files: Optional[dict[str, bytes]] = None,
):
    """Everything specific to one version goes inside its directory, which is immutable."""
    write_sources(fs, staging, _VERSION_SOURCES)
    for name, data in (extra_files or {}).items():
        fs.write_bytes(join(staging, name), data)
    fs.write_bytes(
        join(staging, LABELS_FILE),
        "".join(f"{name}\n" for name in info.class_names).encode("utf-8"),
    )
    copy_tree(saved_model_dir, join(staging, SAVED_MODEL_DIR))
    fs.write_bytes(join(staging, PUSH_INFO_FILE), json.dumps(meta, indent=2).encode("utf-8"))
    fs.sync_tree(staging)


def _publish(fs, staging: str, model_dir: str) -> int:
    """Rename the staged version to the next free number; retried if another pusher won a race."""
    for _ in range(5):
        versions = _version_dirs(fs, model_dir)  # unpublished ones too: never reuse a number
        version = (versions[-1] + 1) if versions else 1
        try:
            fs.rename_dir(staging, join(model_dir, str(version)))
        except (FileExistsError, OSError) as exc:
            if not fs.exists(join(model_dir, str(version))):
                raise PushError(
                    f"could not publish version {version} in {model_dir}: {exc}"
                ) from exc
            continue
        fs.sync_dir(model_dir)
        return version
    raise PushError(f"could not find a free version number in {model_dir} (concurrent pushes?)")


def _discard_version(fs, model_dir: str, version: int) -> None:
    trash = join(model_dir, _temp_name(_TRASH, f"-{version}"))
    fs.rename_dir(join(model_dir, str(version)), trash)  # disappears from Triton at once
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
    extra_files: Optional[dict[str, bytes]] = None,
) -> PushResult:
    """Add `saved_model_dir` as the next version of `settings.model_name` in the repository.

    `source` identifies the model (the Model artifact uri) for provenance and so that a retried
    execution that already published this very model does not publish it twice. `extra_files`
    (name -> bytes) go into the version directory before it is published: a file added to a
    served version later would make a polling Triton reload it.
    """
    settings.validate()
    if settings.flavor != "tensorflow":
        raise PushError(
            f"repository.push_model writes the tensorflow flavour, not {settings.flavor!r}: "
            "use hoh.components.triton_pusher.flavors.push_model"
        )
    info = read_model_info(saved_model_dir)
    if info.sample_image is not None and not sniff_image(info.sample_image):
        info = dataclasses.replace(info, sample_image=None)  # a failing warmup would block loading
    fs = fs_for(model_repository)
    model_dir = join(model_repository, settings.model_name)
    fs.makedirs(model_dir)
    clean_stale_temps(model_dir)

    source = source or saved_model_dir
    pb_sha = file_sha256(fs_for(saved_model_dir), join(saved_model_dir, "saved_model.pb"))
    versions = list_versions(model_dir)
    if _latest_push_matches(fs, model_dir, versions, source, pb_sha):
        version = versions[-1]
        return PushResult(model_dir, version, join(model_dir, str(version)), pushed=False)
    # A polling Triton may have read the old config just before and still be loading one of its
    # versions: deleting that one now fails the load (the ONNX steps did, docs/SERVING.md), so
    # a version leaves the disk at the push after the one that drops it from the config.
    listed = served_versions(model_dir) or []

    meta = {
        "source": source,
        "saved_model_sha256": pb_sha,
        "pushed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "class_names": list(info.class_names),
        "flavor": "tensorflow",
        "pusher": _temp_name(""),  # host-pid-id: lets a later push tell a dead push's leftovers
    }
    staging = join(model_dir, _temp_name(_STAGING))
    written: list[tuple[str, object]] = []
    version = None
    try:
        _stage_version(fs, staging, saved_model_dir, info, meta, extra_files)
        _checkpoint("staged")
        # Nothing Triton serves changes until config.pbtxt is replaced: the old config pins the
        # old versions and reads the labels inside the newest of them.
        if info.sample_image is not None:  # any image warms any version: no mix
            _write_tracked(join(model_dir, WARMUP_FILE), warmup_data(info.sample_image), written)
        version = _publish(fs, staging, model_dir)
        _checkpoint("renamed version in")
        served = (versions + [version])[-settings.versions_to_serve :]
        names = served_class_names(model_dir, served, {version: info.class_names})
        for rel, data in model_level_files(settings, info, served, names).items():
            _write_tracked(join(model_dir, rel), data, written)  # config.pbtxt last: published
    except BaseException:
        fs.rmtree(staging)
        _restore(written)  # config.pbtxt first: the served versions keep their config
        if version is not None:
            _discard_version(fs, model_dir, version)
        raise
    try:
        removed = _retire(fs, model_dir, settings.versions_to_keep, served + listed)
    except OSError as exc:  # the new version is live; failing the push now would mislead
        _log.warning("could not delete old versions in %s: %s", model_dir, exc)
        removed = ()
    return PushResult(model_dir, version, join(model_dir, str(version)), True, removed)


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
