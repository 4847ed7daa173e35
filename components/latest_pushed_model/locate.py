"""Where the production model is: the newest version a TritonPusher published.

Kept apart from the component so it can be unit-tested without TFX, and so the one place that
knows the repository layout stays `hoh.components.triton_pusher.repository`.
"""

from __future__ import annotations

from typing import Optional

from hoh.components.triton_pusher import repository, rollback
from hoh.components.triton_pusher.filesystem import fs_for, join

SAVED_MODEL_PB = "saved_model.pb"


def _exists(path: str) -> bool:
    return fs_for(path).exists(path)


def latest_pushed_saved_model(model_repository: str, model_name: str) -> Optional[str]:
    """The SavedModel of the newest complete version of `model_name`, or None before any push.

    A version missing its saved_model.pb (a push interrupted on an object store, where the
    pusher cannot rename atomically) is skipped in favour of the one below it: comparing a
    candidate against a half-copied baseline would fail the run for the wrong reason.

    A version of the ONNX flavour holds no SavedModel: its baseline is the model it was exported
    from (hoh_push.json's `source`, the Trainer's serving model in the pipeline root), when that
    is still there. Without it, the loop fell through to an older TensorFlow-flavour version, or
    found no baseline at all, as soon as `push.flavor: onnx` pushed.
    """
    model_dir = join(model_repository, model_name)
    for version in reversed(repository.list_versions(model_dir)):
        version_dir = join(model_dir, str(version))
        saved_model = join(version_dir, repository.SAVED_MODEL_DIR)
        if rollback.version_flavor(model_dir, version) != "tensorflow":
            saved_model = rollback.push_source(version_dir) or ""
        if saved_model and _exists(join(saved_model, SAVED_MODEL_PB)):
            return saved_model
    return None


def served_class_names(model_repository: str, model_name: str) -> Optional[list[str]]:
    """Class names of the newest version Triton serves, or None when nothing is served yet."""
    model_dir = join(model_repository, model_name)
    versions = repository.served_versions(model_dir) or repository.list_versions(model_dir)
    if not versions:
        return None
    return repository.version_class_names(model_dir, max(versions))
