"""The classifier: a MobileNetV2 backbone and a configurable head, built with tf-keras (Keras 2).

Pure construction only (no data, no TFX), so the shape/loss choices are unit-tested in seconds.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional, Sequence

import tf_keras as keras

import hoh  # noqa: F401  (TF_USE_LEGACY_KERAS before tf_keras/tensorflow)
from hoh.autograph import exempt_tf_keras
from hoh.config import ModelConfig, TrainingConfig, TransformConfig
from hoh.errors import HohError
from hoh.features import IMAGE_XF

HEAD_NAME = "head"
RESCALE_NAME = "to_minus1_1"
# MobileNetV2 ImageNet weights exist only for these input sizes; Keras falls back to 224 weights
# (with a warning) for other sizes, which still works for the frozen-feature use here.
_IMAGENET_SIZES = (96, 128, 160, 192, 224)

# Every tf-keras model hoh builds, trains, extracts features from or exports is traced after this.
exempt_tf_keras()


_DEFAULTS = ModelConfig()


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything `build_model` needs; a plain value so tests can build models without a config.

    Defaults are the typed config's (`hoh.config.ModelConfig`), never written here again.
    """

    num_classes: int
    image_size: int = TransformConfig().image_size
    alpha: float = _DEFAULTS.alpha
    weights: str = _DEFAULTS.weights
    hidden_units: Sequence[int] = tuple(_DEFAULTS.hidden_units)
    dropout: float = _DEFAULTS.dropout
    augment: bool = _DEFAULTS.augment
    learning_rate: float = TrainingConfig().learning_rate
    batch_norm_momentum: Optional[float] = _DEFAULTS.batch_norm_momentum

    @classmethod
    def from_config(
        cls, model: ModelConfig, num_classes: int, image_size: int, learning_rate: float
    ) -> "ModelSpec":
        return cls(
            num_classes=num_classes,
            image_size=image_size,
            alpha=model.alpha,
            weights=model.weights,
            hidden_units=tuple(model.hidden_units),
            dropout=model.dropout,
            augment=model.augment,
            learning_rate=learning_rate,
            batch_norm_momentum=model.batch_norm_momentum,
        )

    @property
    def binary(self) -> bool:
        return self.num_classes == 2

    @property
    def frozen_backbone(self) -> bool:
        # Random weights must be trained; pretrained ones are frozen for the first phase.
        return self.weights != "none"


def imagenet_weights_filename(alpha: float, image_size: int) -> str:
    rows = image_size if image_size in _IMAGENET_SIZES else 224
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{rows}_no_top.h5"


def resolve_weights(weights: str, alpha: float, image_size: int) -> Optional[str]:
    """Map the config value to what `MobileNetV2(weights=...)` takes, failing early and clearly.

    'imagenet' is passed through only when Keras' cache already has the file or when a download
    may work; on machines without internet the Keras error is an opaque URL failure minutes into
    the Trainer, so the missing file is named here instead.
    """
    if weights == "none":
        return None
    if weights == "imagenet":
        cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
        cached = cache / imagenet_weights_filename(alpha, image_size)
        if cached.is_file() or os.environ.get("HOH_ALLOW_WEIGHTS_DOWNLOAD", "1") == "1":
            return "imagenet"
        raise HohError(
            f"model.weights=imagenet but {cached} does not exist and downloads are disabled "
            "(HOH_ALLOW_WEIGHTS_DOWNLOAD=0); "
            "copy the file there or set model.weights to a path or 'none'"
        )
    path = Path(weights)
    if not path.is_file():
        raise HohError(
            f"model.weights={weights!r}: no such file "
            "(expected 'imagenet', 'none' or a path to an .h5 backbone)"
        )
    return str(path)


def _backbone(spec: ModelSpec) -> keras.Model:
    weights = resolve_weights(spec.weights, spec.alpha, spec.image_size)
    try:
        backbone = keras.applications.MobileNetV2(
            input_shape=(spec.image_size, spec.image_size, 3),
            alpha=spec.alpha,
            include_top=False,
            weights=weights,
            pooling="avg",
        )
    except Exception as exc:  # Keras reports a bad file or a download failure very vaguely.
        raise HohError(
            f"could not load MobileNetV2 weights {spec.weights!r} (alpha={spec.alpha}): {exc}"
        ) from exc
    if spec.batch_norm_momentum is not None:
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = spec.batch_norm_momentum
    backbone.trainable = not spec.frozen_backbone
    return backbone


def build_model(spec: ModelSpec) -> keras.Model:
    """Images in [0, 1] -> class probabilities (sigmoid [N, 1] for 2 classes,
    softmax [N, C] else)."""
    if spec.num_classes < 2:
        raise HohError(
            f"need at least 2 classes to train a classifier, the data has {spec.num_classes}"
        )
    inputs = keras.Input(shape=(spec.image_size, spec.image_size, 3), name=IMAGE_XF)
    x = inputs
    if spec.augment:
        # Keras preprocessing layers are identity at inference, so serving is unaffected.
        x = keras.layers.RandomFlip("horizontal", name="augment_flip")(x)
        x = keras.layers.RandomRotation(0.05, name="augment_rotate")(x)
        x = keras.layers.RandomZoom(0.1, name="augment_zoom")(x)
    # MobileNetV2 expects [-1, 1]; doing it inside the model keeps Transform's output in [0, 1].
    x = keras.layers.Rescaling(2.0, offset=-1.0, name=RESCALE_NAME)(x)
    backbone = _backbone(spec)
    # A frozen backbone must also keep its BatchNorm in inference mode (fine-tuning relies on it).
    features = backbone(x, training=False if spec.frozen_backbone else None)
    head = build_head(spec, int(features.shape[-1]))
    model = keras.Model(inputs, head(features), name="hoh_classifier")
    compile_model(model, spec, spec.learning_rate)
    return model


def build_head(spec: ModelSpec, feature_dim: int) -> keras.Model:
    """The trainable classifier on top of the pooled backbone features, as its own sub-model so
    the Trainer can fit it alone on cached features (see trainer/features_cache.py)."""
    features = keras.Input(shape=(feature_dim,), name="backbone_features")
    x = features
    for i, units in enumerate(spec.hidden_units):
        x = keras.layers.Dense(units, activation="relu", name=f"head_dense_{i}")(x)
        x = keras.layers.Dropout(spec.dropout, name=f"head_dropout_{i}")(x)
    x = keras.layers.Dropout(spec.dropout, name="head_dropout")(x)
    if spec.binary:
        outputs = keras.layers.Dense(1, activation="sigmoid", name="probability")(x)
    else:
        outputs = keras.layers.Dense(spec.num_classes, activation="softmax", name="probabilities")(
            x
        )
    return keras.Model(features, outputs, name=HEAD_NAME)


def backbone_of(model: keras.Model) -> keras.Model:
    return next(layer for layer in model.layers if layer.name.startswith("mobilenetv2"))


def feature_extractor(model: keras.Model) -> keras.Model:
    """Images -> pooled backbone features, sharing the model's layer objects (no weight copy).

    Only valid without augmentation layers (the caller checks), since it skips straight from the
    input to the rescaling and the backbone."""
    return keras.Sequential(
        [model.get_layer(RESCALE_NAME), backbone_of(model)], name="feature_extractor"
    )


def compile_model(model: keras.Model, spec: ModelSpec, learning_rate: float) -> None:
    if spec.binary:
        loss = keras.losses.BinaryCrossentropy()
        metrics = [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")]
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=metrics)


def unfreeze_top_layers(model: keras.Model, num_layers: int) -> int:
    """Make the top `num_layers` backbone layers trainable for fine-tuning; returns how many.

    BatchNorm layers stay frozen: updating their statistics on a small data set wrecks the
    pretrained features, and the backbone is called with training=False anyway.
    """
    backbone = backbone_of(model)
    backbone.trainable = True
    layers = backbone.layers
    cut = max(0, len(layers) - num_layers)
    changed = 0
    for i, layer in enumerate(layers):
        trainable = i >= cut and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = trainable
        changed += int(trainable)
    return changed


def choose_class_weights(
    mode: str, counts: Sequence[int], class_names: Sequence[str], ratio: float
) -> tuple[Optional[dict[int, float]], str]:
    """(Keras `class_weight` or None, the reason in words) for the config's `class_weights` mode.

    The reason travels to the run summary: a user who sees a rare class' recall jump between two
    runs must be able to tell that balancing switched on, and why.
    """
    shown = ", ".join(f"{name} {count}" for name, count in zip(class_names, counts))
    if mode == "none":
        return None, f"none (model.class_weights=none; train counts {shown})"
    if mode == "balanced":
        return balanced_class_weights(counts), f"balanced (model.class_weights=balanced; {shown})"
    if mode != "auto":
        raise HohError(f"model.class_weights={mode!r}: expected auto, none or balanced")
    smallest, largest = min(counts), max(counts)
    if smallest <= 0:
        raise HohError(f"cannot train: a class has no training examples ({shown})")
    skew = largest / smallest
    if skew > ratio:
        return balanced_class_weights(counts), (
            f"balanced (auto: largest class {skew:.2f}x the smallest > {ratio:g}; {shown})"
        )
    return None, f"none (auto: largest class {skew:.2f}x the smallest <= {ratio:g}; {shown})"


def balanced_class_weights(counts: Sequence[int]) -> dict[int, float]:
    """sklearn's 'balanced' rule: n_samples / (n_classes * count_c), so rare classes weigh more."""
    total = float(sum(counts))
    if total <= 0 or any(c <= 0 for c in counts):
        raise HohError(
            f"cannot balance classes with counts {list(counts)}: every class needs examples"
        )
    return {i: total / (len(counts) * c) for i, c in enumerate(counts)}
