"""hoh: a TFX pipeline from raw images to an image classifier served by NVIDIA Triton."""

from hoh import env as _env

_env.configure()

__version__ = "0.1.0"
