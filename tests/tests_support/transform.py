"""Run `preprocessing_fn` through tft_beam outside a pipeline, as Transform would."""

from __future__ import annotations

import glob
import json
import tempfile
from pathlib import Path

from hoh import features


def raw_schema():
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    path = Path(__file__).resolve().parents[2] / "schemas" / "schema.pbtxt"
    return text_format.Parse(path.read_text(), schema_pb2.Schema())


def read_examples(data_root: Path, split: str = "train", span: int = 1) -> list[dict]:
    """Raw examples as TFT instance dicts (the dense `[1]` shape the schema gives each feature)."""
    import tensorflow as tf

    files = sorted(glob.glob(str(features.span_dir(data_root, span) / split / "*.tfrecord.gz")))
    spec = {
        features.IMAGE_KEY: tf.io.FixedLenFeature([1], tf.string),
        features.LABEL_KEY: tf.io.FixedLenFeature([1], tf.string),
    }
    out = []
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        parsed = tf.io.parse_single_example(record, spec)
        out.append({k: v.numpy() for k, v in parsed.items()})
    return out


def analyze_span(data_root: Path, out_dir: Path, image_size: int, classes=None) -> Path:
    """`classes` None = the span's classes sorted, as the pipeline's factory passes them."""
    if classes is None:
        report = json.loads((features.span_dir(data_root, 1) / "import_report.json").read_text())
        classes = sorted(report["classes"])
    return analyze_instances(read_examples(data_root), out_dir, image_size, classes)


def analyze_instances(instances: list[dict], out_dir: Path, image_size: int, classes) -> Path:
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

    from hoh.transforms.preprocessing import preprocessing_fn

    schema = raw_schema()
    spec = {
        k: v
        for k, v in schema_utils.schema_as_feature_spec(schema).feature_spec.items()
        if k in (features.IMAGE_KEY, features.LABEL_KEY)
    }
    metadata = dataset_metadata.DatasetMetadata.from_feature_spec(spec)
    with tft_beam.Context(temp_dir=tempfile.mkdtemp(), force_tf_compat_v1=False):
        transform_fn = (instances, metadata) | tft_beam.AnalyzeDataset(
            lambda inputs: preprocessing_fn(
                inputs, {"image_size": image_size, "classes": list(classes)}
            )
        )
        _ = transform_fn | tft_beam.WriteTransformFn(str(out_dir))
    # The Transform component also records the raw schema; the Trainer's export reads it.
    metadata_io.write_metadata(metadata, str(out_dir / tft.TFTransformOutput.RAW_METADATA_DIR))
    return out_dir
