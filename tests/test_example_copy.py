"""The copying ImportExampleGen executor: same artifact as the stock one, checked input,
no re-encode."""

from __future__ import annotations

import gzip
import os
import tempfile

import pytest
import tensorflow as tf
from tfx.components.example_gen import utils as example_gen_utils
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts
from tfx.types import standard_component_specs as specs
from tfx.utils import proto_utils

from hoh import features
from hoh.components.example_copy import executor as copy_executor
from hoh.components.example_copy import files
from hoh.errors import HohError


def _exec_properties(input_base, splits, output_config=None):
    return {
        specs.INPUT_BASE_KEY: str(input_base),
        specs.INPUT_CONFIG_KEY: proto_utils.proto_to_json(
            example_gen_pb2.Input(
                splits=[example_gen_pb2.Input.Split(name=n, pattern=p) for n, p in splits]
            )
        ),
        specs.OUTPUT_CONFIG_KEY: proto_utils.proto_to_json(
            output_config or example_gen_pb2.Output()
        ),
        specs.OUTPUT_DATA_FORMAT_KEY: example_gen_pb2.FORMAT_TF_EXAMPLE,
        specs.OUTPUT_FILE_FORMAT_KEY: example_gen_pb2.FORMAT_TFRECORDS_GZIP,
    }


def _run(tmp_path, exec_properties):
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "out")
    copy_executor.Executor().Do({}, {specs.EXAMPLES_KEY: [examples]}, exec_properties)
    return examples


def _read(split_dir):
    records = tf.data.TFRecordDataset(
        tf.io.gfile.glob(os.path.join(split_dir, "*")), compression_type="GZIP"
    )
    return sorted(r.numpy() for r in records)


SPAN_SPLITS = [(split, os.path.join("span-1", split, "*")) for split in features.SPLITS]


def test_copies_each_split_byte_for_byte_with_the_stock_artifact_properties(tmp_path, tiny_span):
    examples = _run(tmp_path, _exec_properties(tiny_span, SPAN_SPLITS))
    assert artifact_utils.decode_split_names(examples.split_names) == list(features.SPLITS)
    assert (
        examples.get_string_custom_property(example_gen_utils.PAYLOAD_FORMAT_PROPERTY_NAME)
        == "FORMAT_TF_EXAMPLE"
    )
    assert (
        examples.get_string_custom_property(example_gen_utils.FILE_FORMAT_PROPERTY_NAME)
        == "tfrecords_gzip"
    )
    for split in features.SPLITS:
        sources = sorted(tf.io.gfile.glob(str(features.span_dir(tiny_span, 1) / split / "*")))
        copies = sorted(
            tf.io.gfile.glob(os.path.join(artifact_utils.get_split_uri([examples], split), "*"))
        )
        assert [os.path.basename(c) for c in copies] == [
            files.OUTPUT_NAME.format(index=i, count=len(sources)) for i in range(len(sources))
        ]
        assert [open(c, "rb").read() for c in copies] == [open(s, "rb").read() for s in sources]
        assert len(_read(artifact_utils.get_split_uri([examples], split))) > 0


def test_one_input_split_into_one_output_split_is_copied_under_the_output_name(tmp_path, tiny_span):
    output = example_gen_pb2.Output(
        split_config=example_gen_pb2.SplitConfig(
            splits=[example_gen_pb2.SplitConfig.Split(name="pool", hash_buckets=1)]
        )
    )
    props = _exec_properties(tiny_span, [("train", os.path.join("span-1", "train", "*"))], output)
    assert copy_executor.reencode_reason(props) is None
    examples = _run(tmp_path, props)
    assert artifact_utils.decode_split_names(examples.split_names) == ["pool"]
    assert _read(artifact_utils.get_split_uri([examples], "pool")) == _read(
        features.span_dir(tiny_span, 1) / "train"
    )


def test_hash_bucket_splits_and_other_formats_take_the_stock_beam_path(tmp_path, tiny_span):
    two_way = example_gen_pb2.Output(
        split_config=example_gen_pb2.SplitConfig(
            splits=[
                example_gen_pb2.SplitConfig.Split(name="a", hash_buckets=1),
                example_gen_pb2.SplitConfig.Split(name="b", hash_buckets=1),
            ]
        )
    )
    props = _exec_properties(tiny_span, [("all", os.path.join("span-1", "*", "*"))], two_way)
    assert "hashing" in copy_executor.reencode_reason(props)
    examples = _run(tmp_path, props)  # the stock executor: records re-encoded and partitioned
    together = _read(artifact_utils.get_split_uri([examples], "a")) + _read(
        artifact_utils.get_split_uri([examples], "b")
    )
    original = _read(features.span_dir(tiny_span, 1) / "train") + _read(
        features.span_dir(tiny_span, 1) / "eval"
    )
    assert len(together) == len(original)
    proto = _exec_properties(tiny_span, SPAN_SPLITS)
    proto[specs.OUTPUT_DATA_FORMAT_KEY] = example_gen_pb2.FORMAT_PROTO
    assert "payload format" in copy_executor.reencode_reason(proto)


def test_uncompressed_input_takes_the_stock_path_and_is_gzipped(tmp_path):
    split_dir = tmp_path / "in" / "train"
    split_dir.mkdir(parents=True)
    example = tf.train.Example(
        features=tf.train.Features(
            feature={"x": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))}
        )
    ).SerializeToString()
    with tf.io.TFRecordWriter(str(split_dir / "plain.tfrecord")) as writer:
        writer.write(example)
    examples = _run(tmp_path, _exec_properties(tmp_path / "in", [("train", "train/*")]))
    copied = tf.io.gfile.glob(os.path.join(artifact_utils.get_split_uri([examples], "train"), "*"))
    assert open(copied[0], "rb").read(2) == files.GZIP_MAGIC
    assert _read(artifact_utils.get_split_uri([examples], "train")) == [example]


def _split(tmp_path, name, payload: bytes):
    path = tmp_path / f"{name}.gz"
    path.write_bytes(payload)
    return files.SplitFiles(name, str(tmp_path / "*.gz"), [str(path)])


def _gzip_records(*records: bytes) -> bytes:
    with tempfile.NamedTemporaryFile(suffix=".gz") as f:
        with tf.io.TFRecordWriter(f.name, tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
            for record in records:
                writer.write(record)
        return open(f.name, "rb").read()


def test_bad_inputs_are_refused_with_the_file_named(tmp_path):
    good = tf.train.Example(
        features=tf.train.Features(
            feature={"x": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))}
        )
    ).SerializeToString()
    full = _gzip_records(good, good)
    with pytest.raises(HohError, match=r"truncated\.gz is not a readable gzip TFRecord"):
        files.count_examples(_split(tmp_path, "truncated", full[: len(full) // 2]))
    with pytest.raises(HohError, match="hold no examples"):
        files.count_examples(_split(tmp_path, "empty", _gzip_records()))
    with pytest.raises(HohError, match="not a tf.train.Example"):
        files.count_examples(_split(tmp_path, "text", _gzip_records(b"\xff\xfe not a proto")))
    assert files.count_examples(_split(tmp_path, "ok", full)) == 2
    assert not files.all_gzip(_split(tmp_path, "plain", b"\x00\x01plain"))
    assert files.all_gzip(_split(tmp_path, "gz", gzip.compress(b"x")))
    with pytest.raises(HohError, match=r"split 'eval': no input files match .*nothing-here"):
        files.resolve_splits(str(tmp_path), [("eval", "nothing-here/*")])


def test_a_bad_split_writes_nothing(tmp_path, tiny_span):
    bad_root = tmp_path / "root"
    for split in features.SPLITS:
        (bad_root / "span-1" / split).mkdir(parents=True)
        for src in tf.io.gfile.glob(str(features.span_dir(tiny_span, 1) / split / "*")):
            tf.io.gfile.copy(src, str(bad_root / "span-1" / split / os.path.basename(src)))
    victim = sorted((bad_root / "span-1" / "eval").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(HohError, match="eval"):
        _run(tmp_path, _exec_properties(bad_root, SPAN_SPLITS))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.gz"))
