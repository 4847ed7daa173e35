"""TritonPusher: publishes blessed models to a Triton model repository (see component.py).

`TritonPusher` and `Executor` are resolved lazily: they import TFX (tens of seconds), and code
that only writes or inspects a repository (`repository`, the serving tests) should not pay that.
"""

from typing import Any

__all__ = ["TritonPusher", "Executor"]


def __getattr__(name: str) -> Any:
    if name == "TritonPusher":
        from hoh.components.triton_pusher.component import TritonPusher

        return TritonPusher
    if name == "Executor":
        from hoh.components.triton_pusher.executor import Executor

        return Executor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
