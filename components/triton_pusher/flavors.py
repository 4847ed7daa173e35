"""One entry point for a push of either flavour (`push.flavor`), used by the executor.

`repository.push_model` writes the TensorFlow flavour and `onnx_repository.push_onnx_model` the
ONNX ensemble (which builds on repository's helpers); choosing between them here keeps the two
modules free of an import cycle.
"""

from __future__ import annotations

from typing import Optional

from hoh.components.triton_pusher import onnx_repository, repository


def push_model(
    saved_model_dir: str,
    model_repository: str,
    settings: repository.TritonPushSettings,
    source: Optional[str] = None,
    extra_files: Optional[dict[str, bytes]] = None,
) -> repository.PushResult:
    if settings.validate().flavor == onnx_repository.FLAVOR:
        return onnx_repository.push_onnx_model(
            saved_model_dir, model_repository, settings, source, extra_files
        )
    return repository.push_model(saved_model_dir, model_repository, settings, source, extra_files)
