"""Serve an earlier version again, and add files to a published version, with the push's rules.

A rollback is a push of a model the repository already holds: the version's own directory is
published again by `repository.push_model`, so it gets the push's guarantees (staged, one
atomic config.pbtxt replacement, everything put back on failure, retirement afterwards).

A version pushed as the ONNX flavour is three versions (ensemble, preprocess, classifier, tied
by the `pusher` id in their hoh_push.json): their files are copied into three new versions and
published by `onnx_repository.publish_versions`, the ONNX push's own publishing path, so the
exact model.onnx served before is served again without a TensorFlow export. Each version's
flavour is read from its directory, not from the config: a repository that switched flavours
rolls back to whichever flavour the old version was.

A version whose directory is gone (retired by `push.versions_to_keep`), never published or
incomplete cannot be served: refused before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

from hoh.components.triton_pusher import onnx_config, onnx_repository, repository
from hoh.components.triton_pusher.filesystem import fs_for, join
from hoh.components.triton_pusher.model_config import (
    CONFIG_FILE,
    GPU_CONFIG_FILE,
    WARMUP_FILE,
    parse_model_config,
)
from hoh.components.triton_pusher.repository import PUSH_INFO_FILE, PushResult
from hoh.components.triton_pusher.settings import (
    PushError,
    ServingModelInfo,
    TritonPushSettings,
)


class RollbackError(PushError):
    """The version cannot be served: the message says which and why; nothing was changed."""


@dataclasses.dataclass(frozen=True)
class VersionState:
    version: int
    on_disk: bool
    served: bool


def model_dir_of(model_repository: str, model_name: str) -> str:
    return join(model_repository, model_name)


def version_states(model_dir: str) -> list[VersionState]:
    """Published versions on disk and which of them config.pbtxt serves (served but missing
    ones too: a config pinning a deleted version is exactly what `hoh models list` must show)."""
    on_disk = set(repository.list_versions(model_dir))
    served = set(repository.served_versions(model_dir) or [])
    return [VersionState(v, v in on_disk, v in served) for v in sorted(on_disk | served)]


def _check_published(model_dir: str, version: int) -> str:
    """The directory of published version `version`, or RollbackError saying why not."""
    version_dir = join(model_dir, str(version))
    published = repository.list_versions(model_dir)
    if not fs_for(version_dir).isdir(version_dir):
        kept = ", ".join(map(str, published)) or "none"
        raise RollbackError(
            f"version {version} of {model_dir} is gone from disk (retired by "
            f"push.versions_to_keep or deleted); versions on disk: {kept}"
        )
    if version not in published:
        raise RollbackError(
            f"version {version} of {model_dir} was never published (a push killed before it "
            "replaced config.pbtxt left it); it cannot be served"
        )
    return version_dir


def version_model(model_dir: str, version: int) -> tuple[str, str]:
    """(SavedModel to push again, its source id) for a published version, or RollbackError."""
    version_dir = _check_published(model_dir, version)
    source = push_source(version_dir)
    # A TensorFlow-flavour version holds the SavedModel; other flavours hold what was exported
    # from it, so the model they came from (hoh_push.json `source`) is pushed again instead.
    for candidate in (join(version_dir, repository.SAVED_MODEL_DIR), source):
        if candidate and fs_for(candidate).exists(join(candidate, "saved_model.pb")):
            return candidate, source or candidate
    raise RollbackError(
        f"version {version} of {model_dir} is incomplete: neither it nor its source model "
        f"({source or 'not recorded'}) holds a saved_model.pb"
    )


def _push_info(version_dir: str) -> dict:
    """A version's hoh_push.json ({} when absent or unreadable)."""
    fs = fs_for(version_dir)
    info_path = join(version_dir, PUSH_INFO_FILE)
    if not fs.exists(info_path):
        return {}
    try:
        info = json.loads(fs.read_bytes(info_path))
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def version_flavor(model_dir: str, version: int) -> str:
    """The flavour version `version` was pushed as, from its own directory: a SavedModel inside
    means tensorflow (also for versions older than hoh_push.json's `flavor`)."""
    version_dir = join(model_dir, str(version))
    saved_model = join(version_dir, repository.SAVED_MODEL_DIR, "saved_model.pb")
    if fs_for(version_dir).exists(saved_model):
        return "tensorflow"
    return _push_info(version_dir).get("flavor", "tensorflow")


def push_source(version_dir: str) -> Optional[str]:
    """The model a version was pushed from (its hoh_push.json `source`: the Trainer's serving
    model path), or None when the version does not record it."""
    return _push_info(version_dir).get("source")


def pushed_version_of(model_repository: str, model_name: str, model_uri: str) -> Optional[int]:
    """The newest published version of `model_name` pushed from `model_uri`, or None.

    How a node that cannot consume the pusher's PushedModel (it sits under the drift gate's
    `Cond`) learns what the pusher published: the pusher records the model it pushed in each
    version's hoh_push.json, and a rollback re-publishes a version with its original source, so
    the newest match is what serves this model now. Versions a killed push left unpublished are
    not versions (`list_versions`).
    """
    model_dir = model_dir_of(model_repository, model_name)
    wanted = model_uri.rstrip("/")
    for version in reversed(repository.list_versions(model_dir)):
        source = push_source(join(model_dir, str(version)))
        if source and source.rstrip("/") == wanted:
            return version
    return None


def republish(model_repository: str, settings: TritonPushSettings, version: int) -> PushResult:
    """Serve version `version`'s model again, as the next version number.

    The old directory is copied through the push's publishing path rather than re-pinned in
    place: the repository's rules treat a directory newer than the newest served one as a killed
    push (deleted, its number reused), so pinning an older number would make the newer versions
    vanish at the next push and a number name two models. Re-publishing keeps numbers
    increasing and lets retirement (`versions_to_keep`) work as after any push. The original
    `source` goes with it: rolling back to the model already served publishes nothing new.
    The flavour is the old version's (`version_flavor`), whatever `settings.flavor` says.
    """
    model_dir = model_dir_of(model_repository, settings.model_name)
    _check_published(model_dir, version)
    if version_flavor(model_dir, version) == onnx_repository.FLAVOR:
        onnx = dataclasses.replace(settings, flavor=onnx_repository.FLAVOR)
        return _republish_onnx(model_repository, onnx, version)
    saved_model, source = version_model(model_dir, version)
    tensorflow = dataclasses.replace(settings, flavor="tensorflow")
    return repository.push_model(saved_model, model_repository, tensorflow, source=source)


def _version_files(version_dir: str) -> dict[str, bytes]:
    """Every file under a version directory but its hoh_push.json, by relative path."""
    fs = fs_for(version_dir)
    files, pending = {}, [""]
    while pending:
        rel = pending.pop()
        for name in fs.listdir(join(version_dir, rel) if rel else version_dir):
            child = f"{rel}/{name}" if rel else name
            if fs.isdir(join(version_dir, child)):
                pending.append(child)
            elif child != PUSH_INFO_FILE:
                files[child] = fs.read_bytes(join(version_dir, child))
    return files


def _step_version(
    model_repository: str, step: str, pusher: Optional[str], served: dict[str, int], what: str
) -> tuple[str, str]:
    """(model dir, version dir) of `step`'s version pushed together with the ensemble `what`.

    Found by the push's `pusher` id; `served`: the steps of the ensemble config, when it
    serves `what`.
    """
    step_dir = join(model_repository, step)
    for version in reversed(repository.list_versions(step_dir)):
        version_dir = join(step_dir, str(version))
        if pusher and _push_info(version_dir).get("pusher") == pusher:
            return step_dir, version_dir
    if step in served and fs_for(step_dir).isdir(join(step_dir, str(served[step]))):
        return step_dir, join(step_dir, str(served[step]))
    raise RollbackError(
        f"{what} cannot be served: the {step} version pushed with it is gone from disk "
        "(retired by push.versions_to_keep or deleted)"
    )


def _require(version_dir: str, names: tuple[str, ...], what: str) -> None:
    fs = fs_for(version_dir)
    missing = [n for n in names if not fs.exists(join(version_dir, n))]
    if missing:
        raise RollbackError(f"{what} cannot be served: {version_dir} has no {', '.join(missing)}")


def _republish_onnx(
    model_repository: str, settings: TritonPushSettings, version: int
) -> PushResult:
    """Copy an ONNX-flavour version's three directories into three new versions and publish
    them as a push does; every file is checked before anything is written."""
    ensemble_dir = model_dir_of(model_repository, settings.model_name)
    version_dir = join(ensemble_dir, str(version))
    what = f"version {version} of {ensemble_dir} (onnx flavour)"
    meta = _push_info(version_dir)
    if not isinstance(meta.get("image_size"), int):
        raise RollbackError(f"{what} cannot be served: its {PUSH_INFO_FILE} has no image_size")
    versions = repository.list_versions(ensemble_dir)
    fs = fs_for(ensemble_dir)
    source, sha = meta.get("source"), meta.get("saved_model_sha256", "")
    if repository._latest_push_matches(
        fs, ensemble_dir, versions, source, sha, onnx_repository.FLAVOR
    ):
        latest = versions[-1]
        return PushResult(ensemble_dir, latest, join(ensemble_dir, str(latest)), pushed=False)
    served = {}  # the served ensemble names its steps: a fallback for a version without pusher id
    if version in (repository.served_versions(ensemble_dir) or []):
        served = onnx_repository._steps_in_use(ensemble_dir)
    pusher = meta.get("pusher")
    pre_dir, pre = _step_version(
        model_repository, onnx_config.preprocess_name(settings), pusher, served, what
    )
    cls_dir, cls = _step_version(
        model_repository, onnx_config.classifier_name(settings), pusher, served, what
    )
    _require(version_dir, (repository.LABELS_FILE,), what)
    _require(pre, tuple(onnx_repository.PREPROCESS_SOURCES), what)
    sources = tuple(onnx_repository.CLASSIFIER_SOURCES)
    _require(cls, (onnx_repository.ONNX_FILE, repository.LABELS_FILE, *sources), what)
    class_names = repository.version_class_names(cls_dir, int(cls.rsplit("/", 1)[-1]))
    warmup = join(pre_dir, WARMUP_FILE)
    sample = fs.read_bytes(warmup)[4:] if fs.exists(warmup) else None  # uint32 length + image
    facts = {k: v for k, v in meta.items() if k not in ("pushed_at", "pusher")}
    info_bytes = onnx_repository.push_info({**facts, "republished_from": version})
    with_info = {PUSH_INFO_FILE: info_bytes}
    for model_dir in (ensemble_dir, pre_dir, cls_dir):
        repository.clean_stale_temps(model_dir)
    return onnx_repository.publish_versions(
        model_repository,
        settings,
        ServingModelInfo(tuple(class_names or ()), sample),
        meta["image_size"],
        onnx_repository.VersionFiles(
            preprocess=({**_version_files(pre), **with_info}, {}),
            classifier=({**_version_files(cls), **with_info}, {}),
            ensemble={**_version_files(version_dir), **with_info},
        ),
    )


def config_snapshot(model_repository: str, model_name: str) -> dict[str, Optional[bytes]]:
    """The model-level configs as they are (the ONNX flavour's steps too), to put back if what
    follows a push fails; keys are paths under the repository, the ensemble's config first."""
    step_files = (CONFIG_FILE, GPU_CONFIG_FILE, onnx_config.STOCK_CONFIG_FILE)
    rels = [f"{model_name}/{rel}" for rel in (CONFIG_FILE, GPU_CONFIG_FILE)]
    for suffix in (onnx_config.PREPROCESS_SUFFIX, onnx_config.CLASSIFIER_SUFFIX):
        rels += [f"{model_name}{suffix}/{rel}" for rel in step_files]
    fs = fs_for(model_repository)
    paths = {rel: join(model_repository, rel) for rel in rels}
    return {rel: fs.read_bytes(p) if fs.exists(p) else None for rel, p in paths.items()}


def undo_push(
    model_repository: str, model_name: str, snapshot: dict[str, Optional[bytes]], version: int
) -> bool:
    """Serve what `snapshot` served again and remove `version` (published since, never used),
    with the step versions an ONNX push published beside it.

    False, and nothing changed, when a version the snapshot pins is gone meanwhile.
    """
    model_dir = model_dir_of(model_repository, model_name)
    fs = fs_for(model_dir)
    old = snapshot.get(f"{model_name}/{CONFIG_FILE}")
    if old is None:
        return False
    config = parse_model_config(old.decode("utf-8"))
    pinned = config.version_policy.specific.versions
    needed = [join(model_dir, str(v)) for v in pinned] + [
        join(model_repository, s.model_name, str(s.model_version))
        for s in config.ensemble_scheduling.step
    ]
    if any(not fs.isdir(path) for path in needed):
        return False
    new_steps = onnx_repository._steps_in_use(model_dir)  # what the push being undone pinned
    for rel, data in snapshot.items():  # the ensemble's config first: it names the old steps
        if data is not None:
            repository.write_if_changed(join(model_repository, rel), data)
    if version not in pinned and fs.isdir(join(model_dir, str(version))):
        repository._discard_version(fs, model_dir, version)
    for step, step_version in new_steps.items():
        step_dir = join(model_repository, step)
        if step_version not in (repository.served_versions(step_dir) or []) and fs.isdir(
            join(step_dir, str(step_version))
        ):
            repository._discard_version(fs, step_dir, step_version)
    return True


def add_version_file(
    model_repository: str, model_name: str, version: int, name: str, data: bytes
) -> Optional[str]:
    """Atomically write `name` (a plain file name) into a published version's directory.

    Used for files describing the version (its model card). The path is returned, or None when
    the version is gone. In poll mode Triton notices the new file and reloads that version once
    (the old instance serves until the new one is ready).
    """
    if "/" in name or name in ("", ".", "..") or name.startswith(repository._TEMP_PREFIX):
        raise ValueError(f"{name!r} is not a plain file name")
    model_dir = model_dir_of(model_repository, model_name)
    version_dir = join(model_dir, str(version))
    if not fs_for(version_dir).isdir(version_dir):
        return None
    path = join(version_dir, name)
    repository.write_if_changed(path, data)
    return path
