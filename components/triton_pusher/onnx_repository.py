"""The ONNX flavour's push (`push.flavor: onnx`): three models, still one publishing rename.

Layout (`REPO/`), next to what the TensorFlow flavour writes:

    NAME/                       ensemble: image_bytes -> probabilities (+labels), label
      config.pbtxt              pins its version and, in its steps, the version of each model
                                pushed with it: THE publishing file, written last
      N/labels.txt, N/hoh_push.json
    NAME_preprocess/            python backend, numpy + Pillow: limits, decode, resize, /255
      config.pbtxt, warmup/image_bytes
      N/model.py (serving/onnx_preprocess_model.py), N/hoh_triton_model.py, N/hoh_imagecheck.py
    NAME_classifier/            the network
      config.pbtxt              python backend running onnxruntime (hoh's bundled server)
      configs/stock.pbtxt       platform onnxruntime_onnx, CPU (`--model-config-name=stock`)
      configs/gpu.pbtxt         onnxruntime_onnx on KIND_GPU with TensorRT (`=gpu`)
      N/model.onnx, N/model.py (serving/onnx_classifier_model.py), N/labels.txt

Why publishing stays atomic with three models: the ensemble's steps name exact versions. The
preprocess and classifier versions are published first and their configs serve them *beside*
the versions the current ensemble uses, so nothing a client reaches changes; replacing the
ensemble's config.pbtxt then switches every step at once. The step versions the previous
ensemble used stay served until the next push (`_step_versions`): two versions of each step
are loaded between pushes. Failing before the ensemble's config is replaced, every
file written is put back and every new version directory removed, as in `repository.py`.

The ensemble serves one version: its steps are pinned for all its versions at once, so two
served ensemble versions would be the same model (and two class sets are never served at once
under one ensemble: docs/MULTICLASS.md). Older versions of all three stay on disk
(`versions_to_keep`) for a rollback (`rollback.republish` copies one push's three versions into
new ones and publishes them with `publish_versions`, this push's own path). Pushing the other
flavour into the same repository replaces `NAME/config.pbtxt` the same way, so a flavour switch
is atomic too.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
from typing import Optional

from hoh.components.triton_pusher import onnx_config, repository
from hoh.components.triton_pusher.filesystem import file_sha256, fs_for, join
from hoh.components.triton_pusher.model_config import parse_model_config, render_model_config
from hoh.components.triton_pusher.onnx_export import export_onnx
from hoh.components.triton_pusher.repository import (
    CONFIG_FILE,
    IMAGECHECK_FILE,
    MODEL_FILE,
    PUSH_INFO_FILE,
    WARMUP_FILE,
    PushResult,
    ServingModelInfo,
    TritonPushSettings,
    clean_stale_temps,
    list_versions,
    read_model_info,
    sniff_image,
    warmup_data,
    write_sources,
)
from hoh.serving.onnx_preprocess_model import COMMON_FILE

FLAVOR = "onnx"
ONNX_FILE = "model.onnx"
PREPROCESS_SOURCES = {
    MODEL_FILE: ("hoh.serving", "onnx_preprocess_model.py"),
    COMMON_FILE: ("hoh.serving", "triton_model.py"),
    IMAGECHECK_FILE: ("hoh", "imagecheck.py"),
}
CLASSIFIER_SOURCES = {MODEL_FILE: ("hoh.serving", "onnx_classifier_model.py")}
_log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Push:
    """What this push has written so far: undone in reverse if it fails before publishing."""

    fs: object
    written: list = dataclasses.field(default_factory=list)
    published: list = dataclasses.field(default_factory=list)  # (model_dir, version)

    def write(self, path: str, data: bytes) -> None:
        repository._write_tracked(path, data, self.written)

    def version(self, model_dir: str, files: dict[str, bytes], sources: dict) -> int:
        """Stage `files` (+ precompiled `sources`) and rename them in as the next version."""
        staging = join(model_dir, repository._temp_name(repository._STAGING))
        try:
            write_sources(self.fs, staging, sources)
            for name, data in files.items():  # names may hold a "/" (a copied __pycache__)
                if "/" in name:
                    self.fs.makedirs(join(staging, name.rsplit("/", 1)[0]))
                self.fs.write_bytes(join(staging, name), data)
            self.fs.sync_tree(staging)
            repository._checkpoint(f"staged {model_dir}")
            version = repository._publish(self.fs, staging, model_dir)
        except BaseException:
            self.fs.rmtree(staging)
            raise
        self.published.append((model_dir, version))
        repository._checkpoint(f"renamed version {version} into {model_dir}")
        return version

    def undo(self) -> None:
        repository._restore(self.written)
        for model_dir, version in reversed(self.published):
            repository._discard_version(self.fs, model_dir, version)


def _steps_in_use(ensemble_dir: str) -> dict[str, int]:
    """model name -> version, for each step of the ensemble served now (none: no ensemble)."""
    fs = fs_for(ensemble_dir)
    path = join(ensemble_dir, CONFIG_FILE)
    if not fs.exists(path):
        return {}
    config = parse_model_config(fs.read_bytes(path).decode("utf-8"))
    return {s.model_name: s.model_version for s in config.ensemble_scheduling.step}


def _step_versions(model_dir: str, new: int, count: int, in_use: dict[str, int]) -> list[int]:
    """The newest `count` versions, plus the one the served ensemble uses.

    That one stays loaded until the next push: Triton may see the new ensemble and a config
    without the old step in one poll, unload the step first and fail requests still running
    through the old ensemble (measured: hundreds of failed requests in one switch).
    """
    versions = set(list_versions(model_dir))
    newest = sorted(versions | {new})[-count:]
    current = in_use.get(model_dir.rstrip("/").rsplit("/", 1)[-1])
    return sorted(set(newest) | ({current} if current in versions else set()))


def push_onnx_model(
    saved_model_dir: str,
    model_repository: str,
    settings: TritonPushSettings,
    source: Optional[str] = None,
    extra_files: Optional[dict[str, bytes]] = None,
) -> PushResult:
    """`repository.push_model` for `flavor: onnx` (same arguments, same result, same guarantees;
    `extra_files` go into the ensemble's version, the one clients and `hoh monitor` name)."""
    info = read_model_info(saved_model_dir)
    if info.sample_image is not None and not sniff_image(info.sample_image):
        info = dataclasses.replace(info, sample_image=None)
    fs = fs_for(model_repository)
    ensemble_dir = join(model_repository, settings.model_name)
    pre_dir = join(model_repository, onnx_config.preprocess_name(settings))
    cls_dir = join(model_repository, onnx_config.classifier_name(settings))
    for model_dir in (ensemble_dir, pre_dir, cls_dir):
        fs.makedirs(model_dir)
        clean_stale_temps(model_dir)

    source = source or saved_model_dir
    pb_sha = file_sha256(fs_for(saved_model_dir), join(saved_model_dir, "saved_model.pb"))
    ensemble_versions = list_versions(ensemble_dir)
    if repository._latest_push_matches(fs, ensemble_dir, ensemble_versions, source, pb_sha, FLAVOR):
        version = ensemble_versions[-1]
        return PushResult(ensemble_dir, version, join(ensemble_dir, str(version)), pushed=False)

    exported = export_onnx(saved_model_dir)  # may fail: before anything is written
    meta = push_info(
        {
            "source": source,
            "saved_model_sha256": pb_sha,
            "class_names": list(info.class_names),
            "flavor": FLAVOR,
            "image_size": exported.image_size,
        }
    )
    labels = dict([onnx_config.labels_file(info)])
    return publish_versions(
        model_repository,
        settings,
        info,
        exported.image_size,
        VersionFiles(
            preprocess=({PUSH_INFO_FILE: meta}, PREPROCESS_SOURCES),
            classifier=(
                {ONNX_FILE: exported.model, **labels, PUSH_INFO_FILE: meta},
                CLASSIFIER_SOURCES,
            ),
            ensemble={**(extra_files or {}), **labels, PUSH_INFO_FILE: meta},
        ),
    )


def push_info(facts: dict) -> bytes:
    """One hoh_push.json for the three versions of a push: its `pusher` id ties them together
    (`republish` finds an ensemble version's steps by it)."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    meta = {**facts, "pushed_at": now, "pusher": repository._temp_name("")}
    return json.dumps(meta, indent=2).encode("utf-8")


@dataclasses.dataclass(frozen=True)
class VersionFiles:
    """The files of the three new versions: (files, package sources) per step, then the
    ensemble's files. A push exports them; a republish copies them from an old version."""

    preprocess: tuple[dict[str, bytes], dict]
    classifier: tuple[dict[str, bytes], dict]
    ensemble: dict[str, bytes]


def publish_versions(
    model_repository: str,
    settings: TritonPushSettings,
    info: ServingModelInfo,
    image_size: int,
    steps: VersionFiles,
) -> PushResult:
    """Publish the steps, then the ensemble pinning them (the one publishing write), then retire."""
    fs = fs_for(model_repository)
    ensemble_dir = join(model_repository, settings.model_name)
    pre_dir = join(model_repository, onnx_config.preprocess_name(settings))
    cls_dir = join(model_repository, onnx_config.classifier_name(settings))
    in_use = _steps_in_use(ensemble_dir)
    # Listed until this push: a polling Triton may have read that config and be loading them
    # now. Deleting one then failed its load and left the server loading nothing more (seen in
    # a rollback e2e run), so they go at the next push, when no config has named them.
    listed = {d: repository.served_versions(d) or [] for d in (pre_dir, cls_dir)}
    keep = settings.versions_to_serve
    push = _Push(fs)
    try:
        pre_version = push.version(pre_dir, *steps.preprocess)
        if info.sample_image is not None:
            push.write(join(pre_dir, WARMUP_FILE), warmup_data(info.sample_image))
        pre_served = _step_versions(pre_dir, pre_version, keep, in_use)
        config = onnx_config.preprocess_config(settings, info, image_size, pre_served)
        push.write(join(pre_dir, CONFIG_FILE), render_model_config(config).encode("utf-8"))

        cls_version = push.version(cls_dir, *steps.classifier)
        cls_served = _step_versions(cls_dir, cls_version, keep, in_use)
        for rel, data in onnx_config.classifier_files(
            settings, info, image_size, cls_served
        ).items():
            push.write(join(cls_dir, rel), data)

        version = push.version(ensemble_dir, steps.ensemble, {})
        ensemble = onnx_config.ensemble_config(settings, info, [version], pre_version, cls_version)
        push.write(join(ensemble_dir, CONFIG_FILE), render_model_config(ensemble).encode("utf-8"))
    except BaseException:
        push.undo()
        raise
    # Published. Retiring old versions only limits the disk: a failure is a warning.
    removed: tuple[int, ...] = ()
    try:
        repository._retire(fs, pre_dir, settings.versions_to_keep, pre_served + listed[pre_dir])
        repository._retire(fs, cls_dir, settings.versions_to_keep, cls_served + listed[cls_dir])
        removed = repository._retire(fs, ensemble_dir, settings.versions_to_keep, [version])
    except OSError as exc:
        _log.warning("could not delete old versions in %s: %s", model_repository, exc)
    return PushResult(ensemble_dir, version, join(ensemble_dir, str(version)), True, removed)
