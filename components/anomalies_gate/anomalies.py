"""Reading ExampleValidator's output into sentences a person can act on (pure, unit-tested)."""

from __future__ import annotations

import os
from typing import Dict, List

from tensorflow_metadata.proto.v0 import anomalies_pb2

ANOMALIES_FILE = "SchemaDiff.pb"


def read_anomalies(split_dir: str) -> anomalies_pb2.Anomalies:
    import tensorflow as tf

    anomalies = anomalies_pb2.Anomalies()
    with tf.io.gfile.GFile(os.path.join(split_dir, ANOMALIES_FILE), "rb") as f:
        anomalies.ParseFromString(f.read())
    return anomalies


def describe(anomalies_by_split: Dict[str, anomalies_pb2.Anomalies]) -> List[str]:
    """One line per anomalous feature: `split: feature: what is wrong`."""
    lines = []
    for split, anomalies in sorted(anomalies_by_split.items()):
        for feature, info in sorted(anomalies.anomaly_info.items()):
            reason = info.description or info.short_description or "anomaly"
            lines.append(f"{split}: feature {feature!r}: {reason}")
        if anomalies.HasField("dataset_anomaly_info"):
            info = anomalies.dataset_anomaly_info
            lines.append(f"{split}: dataset: {info.description or info.short_description}")
    return lines
