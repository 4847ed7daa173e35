"""The model builder: heads, losses, tf_keras classes, weights resolution, class weights."""

from __future__ import annotations

import numpy as np
import pytest
import tf_keras

from hoh.errors import HohError
from hoh.trainer import model as model_lib


def _spec(num_classes, **kw):
    return model_lib.ModelSpec(
        num_classes=num_classes, image_size=32, alpha=0.35, weights="none", **kw
    )


def test_binary_head_is_one_sigmoid_unit_with_binary_crossentropy():
    model = model_lib.build_model(_spec(2))
    assert isinstance(model, tf_keras.Model)  # Keras 2 (tf-keras), never Keras 3
    assert model.output_shape == (None, 1)
    assert model.get_layer("head").layers[-1].activation.__name__ == "sigmoid"
    assert isinstance(model.loss, tf_keras.losses.BinaryCrossentropy)
    out = model.predict(np.random.rand(3, 32, 32, 3).astype("float32"), verbose=0)
    assert out.shape == (3, 1) and np.all((out >= 0) & (out <= 1))


def test_multiclass_head_is_softmax_with_sparse_crossentropy_and_hidden_layers():
    model = model_lib.build_model(_spec(3, hidden_units=(16, 8), dropout=0.3))
    assert model.output_shape == (None, 3)
    assert isinstance(model.loss, tf_keras.losses.SparseCategoricalCrossentropy)
    head = model.get_layer("head")
    assert [layer.units for layer in head.layers if layer.name.startswith("head_dense")] == [16, 8]
    out = model.predict(np.random.rand(2, 32, 32, 3).astype("float32"), verbose=0)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_random_backbone_is_trained_and_pretrained_is_frozen(tmp_path):
    assert model_lib.backbone_of(
        model_lib.build_model(_spec(2))
    ).trainable  # weights: none -> trained
    # A "pretrained" backbone from an .h5 file: save random weights, load them frozen.
    donor = tf_keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None, pooling="avg"
    )
    path = tmp_path / "backbone.h5"
    donor.save_weights(path)
    model = model_lib.build_model(
        model_lib.ModelSpec(num_classes=2, image_size=32, alpha=0.35, weights=str(path))
    )
    backbone = model_lib.backbone_of(model)
    assert not backbone.trainable
    np.testing.assert_allclose(backbone.get_weights()[0], donor.get_weights()[0])
    changed = model_lib.unfreeze_top_layers(model, 10)
    assert 0 < changed <= 10
    assert not any(
        layer.trainable
        for layer in backbone.layers
        if isinstance(layer, tf_keras.layers.BatchNormalization)
    )


def test_augmentation_layers_only_when_asked():
    names = [layer.name for layer in model_lib.build_model(_spec(2, augment=True)).layers]
    assert "augment_flip" in names
    assert "augment_flip" not in [layer.name for layer in model_lib.build_model(_spec(2)).layers]


def test_batch_norm_momentum_override():
    model = model_lib.build_model(_spec(2, batch_norm_momentum=0.5))
    backbone = model_lib.backbone_of(model)
    bns = [
        layer for layer in backbone.layers if isinstance(layer, tf_keras.layers.BatchNormalization)
    ]
    assert bns and all(bn.momentum == 0.5 for bn in bns)


def test_weights_errors_name_the_input(tmp_path, monkeypatch):
    with pytest.raises(HohError, match="no such file"):
        model_lib.resolve_weights(str(tmp_path / "missing.h5"), 1.0, 224)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("HOH_ALLOW_WEIGHTS_DOWNLOAD", "0")
    with pytest.raises(
        HohError, match="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    ):
        model_lib.resolve_weights("imagenet", 1.0, 224)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / model_lib.imagenet_weights_filename(0.35, 100)).write_bytes(b"x")
    assert model_lib.resolve_weights("imagenet", 0.35, 100) == "imagenet"  # 100px uses the 224 file
    with pytest.raises(HohError, match="at least 2 classes"):
        model_lib.build_model(_spec(1))


def test_balanced_class_weights():
    weights = model_lib.balanced_class_weights([30, 10])
    assert weights == pytest.approx({0: 40 / 60, 1: 40 / 20})
    with pytest.raises(HohError):
        model_lib.balanced_class_weights([5, 0])


def test_cached_features_feed_the_same_head_the_full_model_uses():
    import tensorflow as tf

    from hoh.trainer import features_cache

    frozen = model_lib.ModelSpec(num_classes=3, image_size=32, alpha=0.35, weights="none")
    assert not features_cache.applies(frozen)  # random weights are trained, not cached
    assert not features_cache.applies(model_lib.ModelSpec(num_classes=2, augment=True))
    assert features_cache.applies(model_lib.ModelSpec(num_classes=2, weights="imagenet"))

    model = model_lib.build_model(frozen)
    images = np.random.default_rng(0).random((10, 32, 32, 3)).astype("float32")
    labels = np.arange(10) % 3
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    with features_cache.feature_cache(model) as cache:
        cached = cache.features(dataset, shuffle=False, seed=0, batch_size=4)
        first = np.concatenate([f.numpy() for f, _ in cached])
        again = np.concatenate([f.numpy() for f, _ in cached])  # second epoch reads the cache
        got_labels = np.concatenate([y.numpy() for _, y in cached])
    np.testing.assert_allclose(first, again)
    assert got_labels.tolist() == labels.tolist()
    head = model.get_layer("head")
    np.testing.assert_allclose(
        head(first, training=False).numpy(),
        model(images, training=False).numpy(),
        rtol=1e-5,
        atol=1e-6,
    )


def test_auto_class_weights_balance_only_past_the_ratio():
    names = ["birds", "horses", "humans"]
    weights, reason = model_lib.choose_class_weights("auto", [10, 30, 30], names, 1.5)
    assert weights == pytest.approx({0: 70 / 30, 1: 70 / 90, 2: 70 / 90})
    assert reason.startswith("balanced (auto: largest class 3.00x the smallest > 1.5")
    assert "birds 10" in reason
    weights, reason = model_lib.choose_class_weights("auto", [20, 30, 30], names, 1.5)
    assert weights is None and reason.startswith(
        "none (auto: largest class 1.50x the smallest <= 1.5"
    )
    assert model_lib.choose_class_weights("none", [1, 30, 30], names, 1.5)[0] is None
    assert model_lib.choose_class_weights("balanced", [30, 30, 30], names, 1.5)[0] == pytest.approx(
        {0: 1.0, 1: 1.0, 2: 1.0}
    )
    with pytest.raises(HohError, match="no training examples"):
        model_lib.choose_class_weights("auto", [0, 30, 30], names, 1.5)
    with pytest.raises(HohError, match="expected auto, none or balanced"):
        model_lib.choose_class_weights("sometimes", [3, 3], names[:2], 1.5)


def test_trainer_config_is_read_with_the_typed_config_defaults_and_checks():
    from hoh.config import ConfigError, ModelConfig, TrainingConfig, load_config
    from hoh.pipeline.factory import trainer_config
    from hoh.trainer.task import parse_trainer_config

    model, training, transform, embeddings = parse_trainer_config({})
    assert model == ModelConfig() and training == TrainingConfig() and transform.image_size == 224
    assert embeddings.store is None  # no data root known: no store
    cfg = load_config(overrides=["training.epochs=7", "model.class_weights=none"])
    model, training, _, embeddings = parse_trainer_config(
        {**trainer_config(cfg, data_root="/lake"), "image_size": 64}
    )
    assert training.epochs == 7 and model.class_weights == "none"
    assert embeddings.store == "/lake/embeddings"  # embeddings.store=auto: beside the spans
    with pytest.raises(ConfigError, match="resolved against the data root"):
        parse_trainer_config({"embeddings": {"store": "auto"}})
    spec = model_lib.ModelSpec.from_config(model, 3, 64, training.learning_rate)
    assert spec.num_classes == 3 and spec.image_size == 64 and spec.dropout == ModelConfig().dropout
    with pytest.raises(ConfigError, match="trainer_config.training"):
        parse_trainer_config({"training": {"epochs": 0}})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['class_weights'\]"):
        parse_trainer_config(
            {"class_weights": "balanced"}
        )  # the pre-0.2 shape: refused, not ignored
