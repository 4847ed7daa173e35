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
