"""The Trainer's `run_fn` on every training path, for 2 and 3 classes, with and without balancing.

The real profile (frozen pretrained backbone) fits the head on cached backbone features, a path
the demo profile (random backbone) never takes; a 3-class run of it crashed in the softmax head
while every 2-class test passed. So each path is run here for both head kinds: cached features,
augmentation (full model fitted, backbone frozen) and fine-tuning (second phase, backbone top
unfrozen). The "pretrained" backbone is a random MobileNetV2 saved to an .h5 file: the same
code path as the ImageNet weights, without a download.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

from hoh import features

IMAGE_SIZE = 32
ALPHA = 0.35


class _DataAccessor:
    """What TFX hands `run_fn` as `fn_args.data_accessor`, for plain gzip TFRecord splits."""

    @staticmethod
    def tf_dataset_factory(file_pattern, options, schema):
        from tfx_bsl.public import tfxio

        source = tfxio.TFExampleRecord(
            file_pattern=file_pattern, schema=schema, telemetry_descriptors=["hoh-test"]
        )
        return source.TensorFlowDataset(options)


@pytest.fixture(scope="module")
def backbone_h5(tmp_path_factory) -> str:
    import tf_keras

    donor = tf_keras.applications.MobileNetV2(
        input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
        alpha=ALPHA,
        include_top=False,
        weights=None,
        pooling="avg",
    )
    path = tmp_path_factory.mktemp("backbone") / "backbone.h5"
    donor.save_weights(path)
    return str(path)


def _span_and_transform(root: Path, counts: dict[str, int]):
    """An imported span with `counts` images per class (imbalanced when they differ)."""
    from tests_support.transform import analyze_span

    from hoh.data.demo import make_demo_dataset
    from hoh.data.importer import import_images

    images = root / "images"
    make_demo_dataset(images, per_class=max(counts.values()), size=48, classes=tuple(counts))
    for name, count in counts.items():
        for extra in sorted((images / name).iterdir())[count:]:
            extra.unlink()
    data_root = root / "data"
    import_images(images, data_root)
    return data_root, analyze_span(data_root, root / "transform", image_size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def two_class(tmp_path_factory):
    return _span_and_transform(tmp_path_factory.mktemp("two"), {"horses": 12, "humans": 12})


@pytest.fixture(scope="module")
def three_class(tmp_path_factory):
    # Birds are a third of the others: `model.class_weights: auto` must switch balancing on.
    return _span_and_transform(
        tmp_path_factory.mktemp("three"), {"birds": 6, "horses": 18, "humans": 18}
    )


def _run(tmp_path: Path, span, weights: str, **training):
    from hoh.trainer import HISTORY_FILE, TIMING_FILE
    from hoh.trainer.task import run_fn

    data_root, transform_output = span
    split = lambda name: [str(features.span_dir(data_root, 1) / name / "*.tfrecord.gz")]  # noqa: E731
    fn_args = SimpleNamespace(
        transform_output=str(transform_output),
        train_files=split("train"),
        eval_files=split("eval"),
        data_accessor=_DataAccessor(),
        model_run_dir=str(tmp_path / "run"),
        serving_model_dir=str(tmp_path / "serving"),
        custom_config={
            "image_size": IMAGE_SIZE,
            "model": {
                "alpha": ALPHA,
                "weights": weights,
                "augment": training.pop("augment", False),
                "class_weights": "auto",
                "class_balance_ratio": 1.5,
            },
            "training": {"epochs": 1, "batch_size": 8, **training},
        },
    )
    run_fn(fn_args)
    run_dir = Path(fn_args.model_run_dir)
    return (
        json.loads((run_dir / HISTORY_FILE).read_text()),
        json.loads((run_dir / TIMING_FILE).read_text()),
        Path(fn_args.serving_model_dir),
    )


def _served_probabilities(serving_dir: Path, num_classes: int) -> np.ndarray:
    """Probabilities from the exported `serving_default` on one real encoded image."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (120, 80, 30)).save(buf, format="PNG")
    loaded = tf.saved_model.load(str(serving_dir))
    out = loaded.signatures["serving_default"](image_bytes=tf.constant([buf.getvalue()]))
    probabilities = out["probabilities"].numpy()
    assert probabilities.shape == (1, num_classes)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    return probabilities


PATHS = {
    "cached_features": dict(),
    "augmentation": dict(augment=True),
    "fine_tuning": dict(fine_tune_layers=5, fine_tune_epochs=1),
}


@pytest.mark.e2e
@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("classes", ["two_class", "three_class"])
def test_every_training_path_trains_and_exports(request, tmp_path, backbone_h5, path, classes):
    """Balancing is the default's decision: on for the imbalanced 3-class set, off for 2 classes."""
    span = request.getfixturevalue(classes)
    num_classes = 2 if classes == "two_class" else 3
    history, timing, serving_dir = _run(tmp_path, span, backbone_h5, **dict(PATHS[path]))
    assert timing["cached_features"] is (path != "augmentation")
    assert timing["class_weights"].startswith(
        "balanced (auto" if num_classes == 3 else "none (auto"
    )
    epochs = 2 if path == "fine_tuning" else 1
    assert len(history["loss"]) == epochs and all(np.isfinite(history["loss"]))
    assert len(history["val_accuracy"]) == epochs
    _served_probabilities(serving_dir, num_classes)
