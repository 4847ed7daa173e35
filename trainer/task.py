"""The Trainer's `run_fn`, addressed by dotted path: `hoh.trainer.task.run_fn`.

TFX glue only: read the custom_config written by `create_pipeline`, build inputs and model,
fit, export. Everything with a decision in it lives in model.py / inputs.py / export.py.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Dict, List

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from absl import logging

import hoh  # noqa: F401  (TF_USE_LEGACY_KERAS before tf_keras/tensorflow)
from hoh import features
from hoh.config import (
    ConfigError,
    EmbeddingsConfig,
    ModelConfig,
    TrainingConfig,
    TransformConfig,
    parse_section,
)
from hoh.errors import HohError
from hoh.trainer import EPOCH_PREFIX, HISTORY_FILE, TIMING_FILE, export, features_cache, inputs
from hoh.trainer import model as model_lib
from hoh.transforms.preprocessing import LABEL_COUNTS_NAME


def _class_names(tf_transform_output: tft.TFTransformOutput) -> List[str]:
    return [
        v.decode() if isinstance(v, bytes) else v
        for v in tf_transform_output.vocabulary_by_name(features.LABEL_VOCAB_NAME)
    ]


def _label_counts(tf_transform_output: tft.TFTransformOutput, class_names: List[str]) -> List[int]:
    """Training label counts in class-id order, from the frequency vocabulary Transform wrote."""
    path = tf_transform_output.vocabulary_file_by_name(LABEL_COUNTS_NAME)
    counts: Dict[str, int] = {}
    with tf.io.gfile.GFile(path) as f:
        for line in f:
            count, _, name = line.rstrip("\n").partition(" ")
            counts[name] = int(count)
    return check_label_counts(counts, class_names)


def check_label_counts(counts: Dict[str, int], class_names: List[str]) -> List[int]:
    """Counts in class-id order; refuses labels outside the classes (Transform gave them id -1)
    and classes without a training image, which no loss can learn."""
    unknown = sorted(set(counts) - set(class_names))
    if unknown:
        raise HohError(
            f"the training data has label(s) {unknown} outside the pipeline's classes "
            f"{class_names}; add them at the end of data.classes and rebuild the pipeline"
        )
    missing = [name for name in class_names if not counts.get(name)]
    if missing:
        raise HohError(
            f"class(es) {missing} of {class_names} have no training image in this span; import "
            "images of them or remove them from data.classes"
        )
    return [counts[name] for name in class_names]


def _first_image(file_patterns: List[str]) -> bytes:
    """One real training image, for Triton's warmup request."""
    files = [f for pattern in file_patterns for f in tf.io.gfile.glob(pattern)]
    if not files:
        raise HohError(f"no training files match {file_patterns}")
    spec = {features.IMAGE_KEY: tf.io.FixedLenFeature([1], tf.string)}
    for record in tf.data.TFRecordDataset(files[:1], compression_type="GZIP").take(1):
        return tf.io.parse_single_example(record, spec)[features.IMAGE_KEY][0].numpy()
    raise HohError(f"training file {files[0]} holds no examples")


def _epoch_logger() -> keras.callbacks.Callback:
    """Epoch results as log lines the CLI echoes under the Trainer (Keras' own bar is off)."""

    def log(epoch, logs):
        shown = " ".join(f"{k} {v:.4f}" for k, v in sorted((logs or {}).items()))
        logging.info("%sepoch %d: %s", EPOCH_PREFIX, epoch + 1, shown)

    return keras.callbacks.LambdaCallback(on_epoch_end=log)


def _lr_schedule(kind: str, learning_rate: float, epochs: int) -> list:
    if kind == "cosine":
        return [
            keras.callbacks.LearningRateScheduler(
                lambda epoch: learning_rate * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
            )
        ]
    return []


_TRAINER_KEYS = ("model", "training", "embeddings", "image_size", "materialize")


def parse_trainer_config(
    config: Dict[str, Any],
) -> tuple[ModelConfig, TrainingConfig, TransformConfig, EmbeddingsConfig]:
    """The Trainer's custom_config (factory.trainer_config + image_size/materialize) as the typed
    config sections: their defaults and checks are the only ones, also for a Kubeflow run whose
    `trainer_config` parameter was edited by hand. `embeddings.store` arrives resolved (a path
    or null), never `auto`: only the pipeline knows the data root."""
    unknown = sorted(set(config) - set(_TRAINER_KEYS))
    if unknown:
        raise ConfigError(
            f"trainer_config: unknown key(s) {unknown}; expected {', '.join(_TRAINER_KEYS)}"
        )
    transform = {k: config[k] for k in ("image_size", "materialize") if k in config}
    embeddings = parse_section(
        EmbeddingsConfig, config.get("embeddings", {"store": None}), "trainer_config.embeddings"
    )
    if embeddings.store == "auto":
        raise ConfigError(
            "trainer_config.embeddings.store: give a path or null; `auto` is resolved against the "
            "data root when the pipeline is built"
        )
    return (
        parse_section(ModelConfig, config.get("model", {}), "trainer_config.model"),
        parse_section(TrainingConfig, config.get("training", {}), "trainer_config.training"),
        parse_section(TransformConfig, transform, "trainer_config"),
        embeddings,
    )


def run_fn(fn_args) -> None:
    model_cfg, train_cfg, transform_cfg, embeddings_cfg = parse_trainer_config(
        fn_args.custom_config or {}
    )
    image_size, materialized = transform_cfg.image_size, transform_cfg.materialize
    seed, batch_size = train_cfg.seed, train_cfg.batch_size
    keras.utils.set_random_seed(seed)

    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    class_names = _class_names(tf_transform_output)
    spec = model_lib.ModelSpec.from_config(
        model_cfg, len(class_names), image_size, train_cfg.learning_rate
    )
    logging.info("Training %s on classes %s", spec, class_names)

    def dataset(files, shuffle):
        return inputs.make_dataset(
            files,
            fn_args.data_accessor,
            tf_transform_output,
            batch_size,
            materialized=materialized,
            shuffle=shuffle,
            seed=seed,
        )

    train_ds, eval_ds = dataset(fn_args.train_files, True), dataset(fn_args.eval_files, False)
    class_weight, balance_reason = model_lib.choose_class_weights(
        model_cfg.class_weights,
        _label_counts(tf_transform_output, class_names),
        class_names,
        model_cfg.class_balance_ratio,
    )
    logging.info("Class weights: %s", balance_reason)

    model = model_lib.build_model(spec)
    epochs = train_cfg.epochs
    callbacks = [
        keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir, update_freq="epoch"),
        _epoch_logger(),
    ]
    schedule = _lr_schedule(train_cfg.lr_schedule, spec.learning_rate, epochs)
    fit_started = time.monotonic()
    fit_args = dict(
        epochs=epochs, class_weight=class_weight, callbacks=callbacks + schedule, verbose=0
    )
    cached = train_cfg.cache_backbone_features and features_cache.applies(spec)
    store_counts = None
    store = None
    if cached and embeddings_cfg.store:
        if materialized:
            logging.info(
                "Embedding store not used: transform.materialize=true drops the image ids it is "
                "keyed by"
            )
        else:
            store = features_cache.open_store(
                embeddings_cfg.store, model, spec.image_size, spec.alpha, logging.info
            )
            if store is not None:
                logging.info(
                    "Embedding store %s: backbone %s (key %s)",
                    store.root,
                    store.backbone.describe(),
                    store.backbone.key,
                )
    if cached:
        logging.info("Frozen backbone, no augmentation: fitting the head on cached features")
        head = model.get_layer(model_lib.HEAD_NAME)
        model_lib.compile_model(head, spec, spec.learning_rate)
        if store is not None:
            stored = features_cache.StoredFeatures(model, store, image_size, batch_size)
            train_features = stored.features(
                fn_args.train_files, class_names, shuffle=True, seed=seed
            )
            eval_features = stored.features(
                fn_args.eval_files, class_names, shuffle=False, seed=seed
            )
            store_counts = stored.counts.as_dict()
            logging.info(
                "Embedding store: %d image(s) reused, %d computed and added",
                stored.counts.reused,
                stored.counts.computed,
            )
            history = head.fit(train_features, validation_data=eval_features, **fit_args)
        else:
            with features_cache.feature_cache(model) as cache:
                history = head.fit(
                    cache.features(train_ds, shuffle=True, seed=seed, batch_size=batch_size),
                    validation_data=cache.features(
                        eval_ds, shuffle=False, seed=seed, batch_size=batch_size
                    ),
                    **fit_args,
                )
    else:
        history = model.fit(train_ds, validation_data=eval_ds, **fit_args)
    fit_seconds = time.monotonic() - fit_started
    curves = {k: [float(x) for x in v] for k, v in history.history.items()}

    fine_tune_layers, fine_tune_epochs = train_cfg.fine_tune_layers, train_cfg.fine_tune_epochs
    if fine_tune_layers and fine_tune_epochs:
        unfrozen = model_lib.unfreeze_top_layers(model, fine_tune_layers)
        logging.info("Fine-tuning %d backbone layers for %d epochs", unfrozen, fine_tune_epochs)
        model_lib.compile_model(model, spec, train_cfg.fine_tune_learning_rate)
        tuned = model.fit(
            train_ds,
            validation_data=eval_ds,
            initial_epoch=epochs,
            epochs=epochs + fine_tune_epochs,
            class_weight=class_weight,
            callbacks=callbacks,
            verbose=0,
        )
        for k, v in tuned.history.items():
            curves.setdefault(k, []).extend(float(x) for x in v)

    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, HISTORY_FILE), "w") as f:
        json.dump(curves, f, indent=2)
    # Wall time of the first training phase (incl. graph tracing and, when cached, the one
    # backbone pass), for benchmarks: images/s = train examples * epochs / fit_seconds.
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, TIMING_FILE), "w") as f:
        json.dump(
            {
                "fit_seconds": fit_seconds,
                "epochs": epochs,
                "class_weights": balance_reason,
                "cached_features": cached,
                "embedding_store": store_counts,
            },
            f,
        )
    export.export_model(
        model,
        fn_args.serving_model_dir,
        tf_transform_output,
        class_names,
        image_size,
        sample_image=_first_image(fn_args.train_files),
        extra_info={"alpha": spec.alpha, "weights": spec.weights, "epochs": epochs},
    )
