"""`preprocessing_fn` through real tft_beam, and the shared decoder on every supported format."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tests_support.transform import read_examples

from hoh import features
from hoh.transforms.images import decode_and_resize


def _encoded(fmt: str, mode: str, size=(40, 30)) -> bytes:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(
        mode
    )
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    "fmt,mode",
    [
        ("PNG", "RGB"),
        ("PNG", "RGBA"),
        ("PNG", "L"),
        ("PNG", "P"),
        ("JPEG", "RGB"),
        ("BMP", "RGB"),
        ("GIF", "P"),
    ],
)
def test_decode_and_resize_every_format_gives_rgb_in_unit_range(fmt, mode):
    batch = tf.constant([[_encoded(fmt, mode)]])  # [batch, 1] as SchemaGen shapes it
    out = decode_and_resize(batch, 24).numpy()
    assert out.shape == (1, 24, 24, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0 and out.std() > 0.01


def test_decode_and_resize_accepts_flat_batches_of_mixed_sizes():
    batch = tf.constant([_encoded("PNG", "RGB", (40, 30)), _encoded("JPEG", "RGB", (300, 300))])
    assert decode_and_resize(batch, 16).shape == (2, 16, 16, 3)


def test_preprocessing_fn_through_tft_beam(tiny_span, transform_output):
    import tensorflow_transform as tft

    tft_output = tft.TFTransformOutput(str(transform_output))
    vocab = [v.decode() for v in tft_output.vocabulary_by_name(features.LABEL_VOCAB_NAME)]
    assert sorted(vocab) == ["horses", "humans"]

    examples = read_examples(tiny_span)[:6]
    layer = tft_output.transform_features_layer()
    out = layer(
        {
            features.IMAGE_KEY: tf.constant([e[features.IMAGE_KEY] for e in examples]),
            features.LABEL_KEY: tf.constant([e[features.LABEL_KEY] for e in examples]),
        }
    )
    images, labels = out[features.IMAGE_XF].numpy(), out[features.LABEL_XF].numpy()
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert labels.dtype == np.int64
    expected = [vocab.index(e[features.LABEL_KEY][0].decode()) for e in examples]
    assert labels.reshape(-1).tolist() == expected
    # The transform is exactly the shared decoder: no second, drifting copy of preprocessing.
    direct = decode_and_resize(tf.constant([e[features.IMAGE_KEY] for e in examples]), 32).numpy()
    np.testing.assert_allclose(images, direct, atol=1e-6)


def test_label_counts_vocabulary_feeds_balanced_class_weights(tiny_span, transform_output):
    import tensorflow_transform as tft

    from hoh.trainer.task import _class_names, _label_counts

    tft_output = tft.TFTransformOutput(str(transform_output))
    names = _class_names(tft_output)
    counts = _label_counts(tft_output, names)
    train = read_examples(tiny_span, "train")
    expected = [sum(e[features.LABEL_KEY][0].decode() == n for e in train) for n in names]
    assert counts == expected and sum(counts) == len(train)


@pytest.mark.parametrize(
    "classes",
    [["a", "b", "c"], ["c", "a", "b"], ["b", "c", "a", "new"]],
    ids=["sorted", "explicit-order", "class-not-in-span-yet"],
)
def test_class_ids_follow_the_given_order_not_label_frequencies(tmp_path, classes):
    """Frequencies b > a > c must not decide ids: a retrain on other proportions keeps them."""
    import tensorflow_transform as tft
    from tests_support.transform import analyze_instances

    png = _encoded("PNG", "RGB", (8, 8))
    labels = ["b"] * 5 + ["a"] * 3 + ["c"]
    instances = [
        {features.IMAGE_KEY: np.array([png]), features.LABEL_KEY: np.array([x.encode()])}
        for x in labels
    ]
    out = tft.TFTransformOutput(str(analyze_instances(instances, tmp_path, 32, classes)))
    vocab = [v.decode() for v in out.vocabulary_by_name(features.LABEL_VOCAB_NAME)]
    assert vocab == classes
    ids = out.transform_features_layer()(
        {
            features.IMAGE_KEY: tf.constant([[png]] * 3),
            features.LABEL_KEY: tf.constant([[b"a"], [b"c"], [b"zebra"]]),
        }
    )[features.LABEL_XF]
    # A label outside the classes is -1; the factory refuses such a span before any run.
    assert list(np.reshape(ids.numpy(), [-1])) == [classes.index("a"), classes.index("c"), -1]


def test_preprocessing_fn_needs_the_classes(tmp_path):
    from tests_support.transform import analyze_instances

    from hoh.config import ConfigError

    png = _encoded("PNG", "RGB", (8, 8))
    instances = [{features.IMAGE_KEY: np.array([png]), features.LABEL_KEY: np.array([b"a"])}]
    with pytest.raises(ConfigError, match="classes"):
        analyze_instances(instances, tmp_path, 32, [])
