"""Executors that measure themselves: what a Kubeflow run records per component.

Locally the runner watches every component in its own process (hoh.pipeline.telemetry). On
Kubeflow each component is a pod that nothing outside watches, so `hoh kfp compile` points each
node's `--executor_class_path` at `hoh.pipeline.kfp.measured.<node id>__<original path, dots as
__>`. This module makes that class on first use (module `__getattr__`): a subclass of the
original executor whose `Do` runs the original one, then stamps every output artifact with the
node id, the seconds `Do` took and the pod's peak RSS. Kubeflow keeps those custom properties
with the artifacts, so TrackRun reads them from its inputs (`facts.measured_components`), and a
cache hit hands on the measurements of the execution it reuses.

The peak is the process's `ru_maxrss` (and its children's, e.g. Beam workers): one component
per pod makes that the component's own peak, imports included. Because the class is named by
its path, a pickled executor (Beam) finds the same class again on the worker.
"""

from __future__ import annotations

import resource
import time
from typing import Optional, Tuple

COMPONENT, SECONDS, PEAK_RSS_MB = "hoh_component", "hoh_seconds", "hoh_peak_rss_mb"
_SEP = "__"


def class_path(node_id: str, executor_class_path: str) -> str:
    """The measuring class for `executor_class_path`, as the compiled pipeline names it."""
    name = node_id + _SEP + executor_class_path.replace(".", _SEP)
    if _decode(name) != (node_id, executor_class_path):
        raise ValueError(
            f"executor {executor_class_path!r} of node {node_id!r} cannot be wrapped: a name "
            f"holding {_SEP!r} or a part ending in '_' would not read back"
        )
    return f"{__name__}.{name}"


def _decode(name: str) -> Optional[Tuple[str, str]]:
    node_id, sep, path = name.partition(_SEP)
    if not (node_id and sep and path) or any(not p for p in path.split(_SEP)):
        return None
    return node_id, path.replace(_SEP, ".")


def unwrap(path: str) -> str:
    """The executor a measuring class path wraps (any other path as it is)."""
    module, _, name = path.rpartition(".")
    decoded = _decode(name) if module == __name__ else None
    return decoded[1] if decoded else path


def peak_rss_mb() -> float:
    """The peak resident memory of this process and its waited-for children (Linux: KB)."""
    kb = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    return kb / 1024.0


def measuring(node_id: str, executor_cls: type) -> type:
    """A subclass of `executor_cls` whose Do stamps its measurements on the outputs."""

    def Do(self, input_dict, output_dict, exec_properties):
        started = time.monotonic()
        result = executor_cls.Do(self, input_dict, output_dict, exec_properties)
        seconds, peak = time.monotonic() - started, peak_rss_mb()
        for artifacts in output_dict.values():
            for artifact in artifacts:
                artifact.set_string_custom_property(COMPONENT, node_id)
                artifact.set_float_custom_property(SECONDS, seconds)
                artifact.set_float_custom_property(PEAK_RSS_MB, peak)
        return result

    return type(executor_cls.__name__, (executor_cls,), {"Do": Do, "__module__": __name__})


def __getattr__(name: str) -> type:
    decoded = _decode(name)
    if decoded is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from tfx.utils import import_utils

    node_id, path = decoded
    cls = measuring(node_id, import_utils.import_class_by_path(path))
    cls.__name__ = cls.__qualname__ = name  # found again by this name (pickling)
    globals()[name] = cls
    return cls
