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
from conftest import BACKBONE_ALPHA as ALPHA
from conftest import BACKBONE_SIZE as IMAGE_SIZE

from hoh import features


class _DataAccessor:
    """What TFX hands `run_fn` as `fn_args.data_accessor`, for plain gzip TFRecord splits."""

    @staticmethod
    def tf_dataset_factory(file_pattern, options, schema):
        from tfx_bsl.public import tfxio

        source = tfxio.TFExampleRecord(
            file_pattern=file_pattern, schema=schema, telemetry_descriptors=["hoh-test"]
        )
        return source.TensorFlowDataset(options)


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


def _run(tmp_path: Path, span, weights: str, store=None, **training):
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
            "embeddings": {"store": store},
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

    loaded = tf.saved_model.load(str(serving_dir))
    out = loaded.signatures["serving_default"](image_bytes=tf.constant([_png_bytes((120, 80, 30))]))
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


def _split_ids(span, split: str) -> set[str]:
    from hoh.data.tfrecords import read_ids_labels

    data_root, _ = span
    return set(read_ids_labels([str(features.span_dir(data_root, 1) / split / "*.gz")])[0])


@pytest.mark.e2e
def test_the_embedding_store_computes_each_image_once_across_runs_and_components(
    tmp_path, backbone_h5, two_class, three_class
):
    """Run 1 (2 classes) fills the store; run 2 (a 3-class span sharing no image) computes only
    its own images; run 3 (the 3-class span again) computes nothing. The drift check's and the
    sampler's Predictor then reads the same entries (the frozen backbone has the same key) and
    gives the probabilities the full model gives."""
    from hoh.data.embeddings import EmbeddingStore, backbones
    from hoh.trainer.predictor import Predictor

    store = str(tmp_path / "store")
    two_ids = _split_ids(two_class, "train") | _split_ids(two_class, "eval")
    three_ids = _split_ids(three_class, "train") | _split_ids(three_class, "eval")
    _, first, _ = _run(tmp_path / "1", two_class, backbone_h5, store=store)
    assert first["embedding_store"]["computed"] == len(two_ids)
    assert first["embedding_store"]["reused"] == 0
    _, second, _ = _run(tmp_path / "2", three_class, backbone_h5, store=store)
    assert second["embedding_store"]["computed"] == len(three_ids - two_ids) > 0
    assert second["embedding_store"]["reused"] == len(three_ids & two_ids)
    history, third, serving_dir = _run(tmp_path / "3", three_class, backbone_h5, store=store)
    assert third["embedding_store"] == {**third["embedding_store"], "computed": 0}
    assert third["embedding_store"]["reused"] == len(three_ids)
    assert all(np.isfinite(history["loss"]))
    [partition] = backbones(store)
    assert partition["rows"] == len(two_ids | three_ids)

    from hoh.data.sources import span_source

    records = list(span_source(str(three_class[0]), 1, ["eval"]))[:6]
    images, ids = [r.data for r in records], [r.id for r in records]
    plain = Predictor(serving_dir, embeddings=True).predict(images)
    stored = Predictor(serving_dir, embeddings=True, embedding_store=store)
    answer = stored.predict(images, ids)
    assert stored.store_counts == {"reused": len(images), "computed": 0}
    assert answer.ok == list(range(len(images)))
    np.testing.assert_allclose(answer.probabilities, plain.probabilities, atol=1e-5)
    np.testing.assert_allclose(answer.embeddings, plain.embeddings, atol=1e-4)
    # An image the store does not know is computed, kept, and found by the next reader.
    extra = _png_bytes((10, 200, 30))
    stored.predict([extra, images[0]], ["new-image", ids[0]])
    stored.flush_store()
    key = partition["backbone"]
    assert EmbeddingStore.open(store, key).lookup(["new-image"]).keys() == {"new-image"}


def _png_bytes(colour) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 40), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_an_unwritable_store_is_reported_and_the_run_computes_every_feature(tmp_path, backbone_h5):
    """embeddings.store=auto on a data root this process cannot write (here: under a file, which
    fails for root too): the Trainer says so and trains without a store; the Predictor notes it."""
    from hoh.trainer import features_cache
    from hoh.trainer import model as model_lib

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    spec = model_lib.ModelSpec(
        num_classes=2, image_size=IMAGE_SIZE, alpha=ALPHA, weights=backbone_h5
    )
    lines = []
    store = features_cache.open_store(
        str(blocker / "embeddings"), model_lib.build_model(spec), IMAGE_SIZE, ALPHA, lines.append
    )
    assert store is None
    assert (
        len(lines) == 1 and "cannot be opened" in lines[0] and "computing every feature" in lines[0]
    )
