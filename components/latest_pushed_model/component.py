"""`LatestPushedModel`: the model Triton serves, as a Model artifact for the Evaluator's baseline.

TFX's usual baseline is `Resolver(LatestBlessedModelStrategy)`, an MLMD query. Open-source
Kubeflow Pipelines' v2 backend refuses Resolver tasks, so on Kubeflow the baseline comes from
where the pusher put it: the newest version in the Triton model repository. That is also the
better answer to "better than what?": the model in production, not the last one blessed (which a
disabled push or a rollback may have kept out of production).

Before the first push there is nothing to compare with, and a Kubeflow task cannot emit "no
artifact". The candidate itself is then the baseline: every change threshold passes (a model is
never worse than itself) and the value thresholds alone decide, exactly what TFMA does without
a baseline. `hoh_pushed_baseline` (1/0) on the artifact says which case it was.

The SavedModel is copied into the artifact (a MobileNetV2 is ~10-15 MB): an artifact whose URI
points into the live repository could change under the Evaluator when the pusher retires old
versions.
"""

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts
from tfx.utils import io_utils, path_utils

from hoh.components.latest_pushed_model.locate import latest_pushed_saved_model

FOUND_PROPERTY = "hoh_pushed_baseline"
SOURCE_PROPERTY = "hoh_baseline_source"


@component
def LatestPushedModel(
    candidate: InputArtifact[standard_artifacts.Model],
    model: OutputArtifact[standard_artifacts.Model],
    model_repository: Parameter[str],
    model_name: Parameter[str] = "hoh",
) -> None:
    source = latest_pushed_saved_model(model_repository, model_name)
    found = source is not None
    if source is None:
        source = path_utils.serving_model_path(candidate.uri)
    io_utils.copy_dir(source, path_utils.serving_model_dir(model.uri))
    model.set_int_custom_property(FOUND_PROPERTY, int(found))
    model.set_string_custom_property(SOURCE_PROPERTY, source)
