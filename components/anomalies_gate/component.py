"""`AnomaliesGate`: stop the pipeline when ExampleValidator found anomalies.

ExampleValidator only records anomalies; training on data that broke the schema would waste the
run and could ship a model trained on garbage. The gate fails its execution with a message that
lists every anomaly, and Transform is ordered after it. (Kubeflow v2 and the local runner both
stop a DAG at a failed task.)
"""

from tfx.dsl.component.experimental.annotations import InputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils, standard_artifacts

from hoh.components.anomalies_gate.anomalies import describe, read_anomalies
from hoh.errors import DataAnomaliesError


@component
def AnomaliesGate(
    anomalies: InputArtifact[standard_artifacts.ExampleAnomalies],
    fail_on_anomalies: Parameter[int] = 1,
) -> None:
    splits = artifact_utils.decode_split_names(anomalies.split_names)
    found = {
        split: read_anomalies(artifact_utils.get_split_uri([anomalies], split)) for split in splits
    }
    lines = describe(found)
    if lines and fail_on_anomalies:
        raise DataAnomaliesError(
            "ExampleValidator found anomalies; fix the data or update the schema "
            "(see docs/SCHEMA.md):\n  " + "\n  ".join(lines)
        )
