"""The exported SavedModel's three signatures and its assets.extra files, for 2 and 3 classes."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_span_root
from PIL import Image
from tests_support.transform import analyze_span, read_examples

from hoh import features
from hoh.trainer import export
from hoh.trainer import model as model_lib


@pytest.fixture(scope="module", params=[2, 3], ids=["2-class", "3-class"])
def exported(request, tmp_path_factory, tiny_span):
    import tensorflow_transform as tft

    if request.param == 2:
        data_root = tiny_span
    else:
        data_root = make_span_root(
            tmp_path_factory.mktemp("three"), ("birds", "horses", "humans"), per_class=8
        )
    tft_dir = analyze_span(data_root, tmp_path_factory.mktemp("tft"), image_size=32)
    tft_output = tft.TFTransformOutput(str(tft_dir))
    class_names = [v.decode() for v in tft_output.vocabulary_by_name(features.LABEL_VOCAB_NAME)]
    model = model_lib.build_model(
        model_lib.ModelSpec(num_classes=len(class_names), image_size=32, alpha=0.35, weights="none")
    )
    examples = read_examples(data_root, "eval")
    serving_dir = tmp_path_factory.mktemp("model") / "Format-Serving"
    export.export_model(
        model,
        str(serving_dir),
        tft_output,
        class_names,
        32,
        sample_image=examples[0][features.IMAGE_KEY][0],
    )
    return serving_dir, class_names, examples


def _example(image: bytes) -> bytes:
    feature = {features.IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_serving_default_takes_raw_png_and_jpeg_and_matches_tf_example_path(exported):
    serving_dir, class_names, examples = exported
    loaded = tf.saved_model.load(str(serving_dir))
    assert {"serving_default", "serving_tf_example", "transform_features"} <= set(loaded.signatures)
    png = examples[0][features.IMAGE_KEY][0]
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buf, "JPEG", quality=95)
    images = [png, buf.getvalue()]

    out = loaded.signatures["serving_default"](image_bytes=tf.constant(images))
    probs = out[export.PROBABILITIES].numpy()
    assert probs.shape == (2, len(class_names)) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    labels = [label.decode() for label in out[export.LABEL].numpy()]
    assert labels == [class_names[i] for i in probs.argmax(axis=1)]

    via_example = loaded.signatures["serving_tf_example"](
        examples=tf.constant([_example(i) for i in images])
    )
    np.testing.assert_allclose(via_example[export.PROBABILITIES].numpy(), probs, atol=1e-6)
    predictions = via_example[export.PREDICTIONS].numpy()
    assert predictions.shape == ((2, 1) if len(class_names) == 2 else (2, len(class_names)))


def test_transform_features_yields_label_ids_for_tfma(exported):
    serving_dir, class_names, examples = exported
    loaded = tf.saved_model.load(str(serving_dir))
    serialized = []
    for e in examples[:4]:
        feature = {
            k: tf.train.Feature(bytes_list=tf.train.BytesList(value=list(e[k])))
            for k in (features.IMAGE_KEY, features.LABEL_KEY)
        }
        serialized.append(
            tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
        )
    out = loaded.signatures["transform_features"](examples=tf.constant(serialized))
    ids = out[features.LABEL_XF].numpy().reshape(-1).tolist()
    assert ids == [class_names.index(e[features.LABEL_KEY][0].decode()) for e in examples[:4]]


def test_model_extras_describe_the_model(exported):
    serving_dir, class_names, examples = exported
    extra = serving_dir / export.EXTRA_DIR
    assert (extra / export.LABELS_FILE).read_text().splitlines() == class_names
    info = json.loads((extra / export.MODEL_INFO_FILE).read_text())
    assert info["class_names"] == class_names and info["num_classes"] == len(class_names)
    assert info["image_size"] == 32
    assert (extra / export.SAMPLE_IMAGE_FILE).read_bytes() == examples[0][features.IMAGE_KEY][0]


def test_bad_bytes_raise_instead_of_returning_garbage(exported):
    loaded = tf.saved_model.load(str(exported[0]))
    with pytest.raises(tf.errors.InvalidArgumentError):
        loaded.signatures["serving_default"](image_bytes=tf.constant([b"not an image"]))
