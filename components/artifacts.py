"""TFX artifact helpers shared by hoh's components (kept here so no component imports another)."""

from __future__ import annotations

from typing import Any


def span_of(examples: Any) -> int:
    """ExampleGen's span. Declared as a property of Examples, it reaches a @component executor
    under LocalDagRunner as a custom property, where `examples.span` silently reads 0."""
    mlmd = examples.mlmd_artifact
    for values in (mlmd.properties, mlmd.custom_properties):
        if "span" in values:
            return int(values["span"].int_value)
    return 0
