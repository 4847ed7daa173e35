"""Shared fixtures. Tests make their own data: nothing here reads ../shared or the network."""

from __future__ import annotations

from pathlib import Path

import pytest

import hoh  # noqa: F401  (TF_USE_LEGACY_KERAS before anything imports TensorFlow)


def make_span_root(
    root: Path, classes=("horses", "humans"), per_class: int = 24, size: int = 64
) -> Path:
    """A demo image set of `classes`, imported as span 1 of a data root; returns the data root."""
    from hoh.data.demo import make_demo_dataset
    from hoh.data.importer import import_images

    images = root / "images"
    make_demo_dataset(images, per_class=per_class, size=size, classes=tuple(classes))
    data_root = root / "data"
    import_images(images, data_root)
    return data_root


@pytest.fixture(scope="session")
def tiny_span(tmp_path_factory) -> Path:
    return make_span_root(tmp_path_factory.mktemp("tiny_span"))


@pytest.fixture(scope="session")
def transform_output(tmp_path_factory, tiny_span) -> Path:
    """A real transform graph: `preprocessing_fn` analysed by tft_beam over the tiny span's
    train split."""
    from tests_support.transform import analyze_span

    return analyze_span(tiny_span, tmp_path_factory.mktemp("transform_output"), image_size=32)


@pytest.fixture(scope="module")
def known_model(tmp_path_factory) -> Path:
    """The closed-form Keras model of tests/test_sampling_model.py, saved as a Model artifact."""
    from test_sampling_model import make_known_model

    return make_known_model(tmp_path_factory.mktemp("known_model"))


# A "pretrained" backbone for the frozen-backbone paths (cached features, the embedding store):
# a random MobileNetV2 saved to .h5 takes the same code path as the ImageNet weights, offline.
BACKBONE_SIZE = 32
BACKBONE_ALPHA = 0.35


@pytest.fixture(scope="session")
def backbone_h5(tmp_path_factory) -> str:
    import tf_keras

    donor = tf_keras.applications.MobileNetV2(
        input_shape=(BACKBONE_SIZE, BACKBONE_SIZE, 3),
        alpha=BACKBONE_ALPHA,
        include_top=False,
        weights=None,
        pooling="avg",
    )
    path = tmp_path_factory.mktemp("backbone") / "backbone.h5"
    donor.save_weights(path)
    return str(path)
