"""Process environment that must be in place before TensorFlow or TFX is imported.

Every entry point (CLI, tests, notebooks, Beam workers, the Trainer) imports `hoh` first, and
`hoh/__init__.py` calls `configure()`, so Keras 2 (tf-keras) is chosen before anything can touch
`tf.keras` and pull in Keras 3, which TFX 1.16 and TFT cannot save or load.
"""

import os

_DEFAULTS = {
    # tf.keras must resolve to tf-keras (Keras 2); TFX/TFT 1.16 do not support Keras 3.
    "TF_USE_LEGACY_KERAS": "1",
    # Local runs import module code from the installed package; without this TFX builds and
    # installs a wheel of the user module for every Transform/Trainer execution (5-7 s each).
    "UNSUPPORTED_DO_NOT_PACKAGE_USER_MODULES": "1",
    # Evidently phones home unless told not to; these machines have no internet.
    "DO_NOT_TRACK": "1",
    # MLflow 3 sends usage telemetry unless told so (it reads DO_NOT_TRACK only as "true").
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # TensorFlow's C++ INFO/WARNING lines (CUDA probing on a CPU machine) drown the CLI output.
    "TF_CPP_MIN_LOG_LEVEL": "2",
}


def configure() -> None:
    """Set the defaults above without overriding anything the user set explicitly."""
    for key, value in _DEFAULTS.items():
        os.environ.setdefault(key, value)
