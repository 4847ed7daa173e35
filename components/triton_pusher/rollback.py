"""Serve an earlier version again, and add files to a published version, with the push's rules.

A rollback is a push of a model the repository already holds: the version's own directory is
published again by `repository.push_model`, so it gets the push's guarantees (staged, one
atomic config.pbtxt replacement, everything put back on failure, retirement afterwards).

A version whose directory is gone (retired by `push.versions_to_keep`), never published or
incomplete cannot be served: refused before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

from hoh.components.triton_pusher import repository
from hoh.components.triton_pusher.filesystem import fs_for, join
from hoh.components.triton_pusher.model_config import (
    CONFIG_FILE,
    GPU_CONFIG_FILE,
    parse_model_config,
)
from hoh.components.triton_pusher.repository import PushResult
from hoh.components.triton_pusher.settings import PushError, TritonPushSettings


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


def version_model(model_dir: str, version: int) -> tuple[str, str]:
    """(SavedModel to push again, its source id) for a published version, or RollbackError."""
    fs = fs_for(model_dir)
    version_dir = join(model_dir, str(version))
    published = repository.list_versions(model_dir)
    if not fs.isdir(version_dir):
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


def push_source(version_dir: str) -> Optional[str]:
    """The model a version was pushed from (its hoh_push.json `source`: the Trainer's serving
    model path), or None when the version does not record it."""
    fs = fs_for(version_dir)
    info_path = join(version_dir, repository.PUSH_INFO_FILE)
    if not fs.exists(info_path):
        return None
    try:
        return json.loads(fs.read_bytes(info_path)).get("source")
    except ValueError:
        return None


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

    The old directory is copied through `push_model` rather than re-pinned in place: the
    repository's rules treat a directory newer than the newest served one as a killed push
    (deleted, its number reused), so pinning an older number would make the newer versions
    vanish at the next push and a number name two models. Re-publishing keeps numbers
    increasing and lets retirement (`versions_to_keep`) work as after any push. The original
    `source` goes with it: rolling back to the model already served publishes nothing new.
    """
    model_dir = model_dir_of(model_repository, settings.model_name)
    saved_model, source = version_model(model_dir, version)
    return repository.push_model(saved_model, model_repository, settings, source=source)


def config_snapshot(model_repository: str, model_name: str) -> dict[str, Optional[bytes]]:
    """The model-level configs as they are, to put back if what follows a push fails."""
    model_dir = model_dir_of(model_repository, model_name)
    fs = fs_for(model_dir)
    paths = {rel: join(model_dir, rel) for rel in (CONFIG_FILE, GPU_CONFIG_FILE)}
    return {rel: fs.read_bytes(p) if fs.exists(p) else None for rel, p in paths.items()}


def undo_push(
    model_repository: str, model_name: str, snapshot: dict[str, Optional[bytes]], version: int
) -> bool:
    """Serve what `snapshot` served again and remove `version` (published since, never used).

    False, and nothing changed, when a version the snapshot pins is gone meanwhile.
    """
    model_dir = model_dir_of(model_repository, model_name)
    fs = fs_for(model_dir)
    old = snapshot.get(CONFIG_FILE)
    if old is None:
        return False
    pinned = parse_model_config(old.decode("utf-8")).version_policy.specific.versions
    if any(not fs.isdir(join(model_dir, str(v))) for v in pinned):
        return False
    for rel, data in snapshot.items():  # config.pbtxt first: CPU servers go back at once
        if data is not None:
            repository.write_if_changed(join(model_dir, rel), data)
    if version not in pinned and fs.isdir(join(model_dir, str(version))):
        repository._discard_version(fs, model_dir, version)
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
