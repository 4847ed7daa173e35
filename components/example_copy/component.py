"""The stock ImportExampleGen (driver, spec, artifact) with hoh's copying executor."""

from __future__ import annotations

from tfx.components.example_gen.import_example_gen.component import ImportExampleGen
from tfx.dsl.components.base import executor_spec

from hoh.components.example_copy.executor import Executor


class CopyingImportExampleGen(ImportExampleGen):
    """Use `.with_id("ImportExampleGen")` to keep the stock node id (MLMD, KFP task names)."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)
