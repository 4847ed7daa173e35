"""Train the head on backbone features computed once, when the backbone cannot change.

With a frozen backbone (BatchNorm in inference mode) and no augmentation, every epoch feeds
the same images through the same fixed function: recomputing it is most of the training cost
(MobileNetV2 224 forward ~16 ms/image on 2 cores vs. microseconds for the head). The features
are computed in one pass, streamed to a TFRecord file on local disk (so memory stays flat
however large the span), and the head sub-model is fitted on them. The exported model is the full
image->probabilities model either way; only the arithmetic that is provably repeated is skipped.

With an embedding store (`embeddings.store`, hoh/data/embeddings.py) the features also outlive
the run: an image whose embedding the store holds for this exact backbone is never decoded nor
run through the backbone again, so a retrain after adding a class computes only the new images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from hoh import features as contract
from hoh.data.embeddings import BackboneId, EmbeddingStore, weights_sha256
from hoh.data.tfrecords import read_ids_labels, record_dataset
from hoh.errors import HohError
from hoh.trainer.model import ModelSpec, backbone_of, feature_extractor
from hoh.transforms.images import decode_and_resize

AUTOTUNE = tf.data.AUTOTUNE
_SHUFFLE_BUFFER = 8192  # features, ~5 KB each at alpha 1.0: 40 MB


def applies(spec: ModelSpec) -> bool:
    return spec.frozen_backbone and not spec.augment


class FeatureCache:
    """Backbone features of (images, labels) datasets, cached under one temporary directory."""

    def __init__(self, model: keras.Model, directory: str):
        self._extractor = feature_extractor(model)
        self._dir = Path(directory)
        self._count = 0

    @tf.function(reduce_retracing=True)
    def _extract(self, images):
        return self._extractor(images, training=False)

    def features(
        self, dataset: tf.data.Dataset, *, shuffle: bool, seed: int, batch_size: int
    ) -> tf.data.Dataset:
        """Compute every batch's features once, then serve them from disk for every epoch.

        The backbone runs here, on the main executor, not inside `dataset.map`: ops in a
        tf.data function run on tf.data's own thread pool with little intra-op parallelism,
        which measured 45 ms/image for MobileNetV2 224 against 16 ms/image here (2 cores).
        """
        self._count += 1
        path = str(self._dir / f"features-{self._count}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for images, labels in dataset:
                writer.write(_serialize(self._extract(images), labels))
        dim = int(self._extractor.output_shape[-1])
        cached = tf.data.TFRecordDataset(path).map(
            lambda r: _parse(r, dim), num_parallel_calls=AUTOTUNE
        )
        if shuffle:
            cached = cached.unbatch().shuffle(
                _SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True
            )
            cached = cached.batch(batch_size)
        return cached.prefetch(AUTOTUNE)


_SPEC = {
    "features": tf.io.FixedLenFeature([], tf.string),
    "labels": tf.io.FixedLenFeature([], tf.string),
}


def _serialize(features: tf.Tensor, labels: tf.Tensor) -> bytes:
    def _bytes(t):
        return tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[tf.io.serialize_tensor(t).numpy()])
        )

    example = tf.train.Example(
        features=tf.train.Features(feature={"features": _bytes(features), "labels": _bytes(labels)})
    )
    return example.SerializeToString()


def _parse(record, feature_dim: int):
    """A cached batch back as ([B, feature_dim] float32, [B] int64), static ranks included.

    `parse_tensor` returns tensors of unknown rank; Keras reads ranks while building the graph
    (the softmax head, class-weight mapping), so an N-class head or `class_weight` fails on
    them while a 2-class sigmoid head happens not to look.
    """
    parsed = tf.io.parse_single_example(record, _SPEC)
    return (
        tf.ensure_shape(tf.io.parse_tensor(parsed["features"], tf.float32), [None, feature_dim]),
        tf.ensure_shape(tf.io.parse_tensor(parsed["labels"], tf.int64), [None]),
    )


def backbone_id(model: keras.Model, image_size: int, alpha: float) -> BackboneId:
    """The store key of `model`'s backbone as it is now: its weights, not its config, so a
    fine-tuned backbone never reads the frozen one's entries."""
    backbone = backbone_of(model)
    return BackboneId(
        weights_sha256=weights_sha256(backbone.get_weights()),
        image_size=int(image_size),
        alpha=float(alpha),
        dim=int(backbone.output_shape[-1]),
    )


@dataclasses.dataclass
class StoreCounts:
    """What the store saved in one Trainer run, for the timing file and the run summary."""

    store: str
    backbone: str
    reused: int = 0
    computed: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


_IMAGE_SPEC = {
    contract.ID_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
    contract.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
}
_PART_ROWS = 1024  # embeddings per store part: a crash loses at most this much work


class StoredFeatures:
    """Backbone features of a split read from the embedding store, computing only the images
    the store lacks (and adding them, so the next run finds them)."""

    def __init__(self, model: keras.Model, store: EmbeddingStore, image_size: int, batch_size: int):
        self._extractor = feature_extractor(model)
        self._store = store
        self._size = image_size
        self._batch = batch_size
        self.counts = StoreCounts(store.root, store.backbone.key)

    @tf.function(reduce_retracing=True)
    def _embed(self, encoded):
        return self._extractor(decode_and_resize(encoded, self._size), training=False)

    def _compute(self, file_patterns: Sequence[str], missing: set[str]) -> None:
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(sorted(missing)), tf.ones([len(missing)], tf.int32)
            ),
            default_value=0,
        )
        wanted = (
            record_dataset(file_patterns)
            .map(lambda r: tf.io.parse_single_example(r, _IMAGE_SPEC))
            .filter(lambda ex: table.lookup(ex[contract.ID_KEY]) > 0)
            .batch(self._batch)
        )
        ids: list[str] = []
        vectors: list[np.ndarray] = []
        done: set[str] = set()
        for batch in wanted:
            batch_ids = [v.decode() for v in batch[contract.ID_KEY].numpy()]
            embedded = self._embed(batch[contract.IMAGE_KEY]).numpy()
            for image_id, vector in zip(batch_ids, embedded):
                if image_id not in done:  # the same image twice in a split: computed once
                    done.add(image_id)
                    ids.append(image_id)
                    vectors.append(vector)
            if len(ids) >= _PART_ROWS:
                self._store.add(ids, np.stack(vectors))
                ids, vectors = [], []
        if ids:
            self._store.add(ids, np.stack(vectors))
        self.counts.computed += len(done)

    def features(
        self,
        file_patterns: Sequence[str],
        class_names: Sequence[str],
        *,
        shuffle: bool,
        seed: int,
    ) -> tf.data.Dataset:
        ids, labels = read_ids_labels(file_patterns)
        if any(not i for i in ids):
            raise HohError(
                f"examples under {list(file_patterns)} lack the `{contract.ID_KEY}` feature that "
                "keys the embedding store (hoh data import and hoh ingest write it); set "
                "embeddings.store to null to train without the store"
            )
        index = {name: i for i, name in enumerate(class_names)}
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise HohError(f"labels {unknown} are not among the classes {list(class_names)}")
        stored = self._store.lookup(ids)
        missing = set(ids) - set(stored)
        self.counts.reused += len(set(ids)) - len(missing)
        if missing:
            self._compute(file_patterns, missing)
            stored.update(self._store.lookup(sorted(missing)))
        lost = missing - set(stored)
        if lost:
            raise HohError(
                f"embedding store {self._store.root}: {len(lost)} embedding(s) written this run "
                "cannot be read back (another process pruned the store meanwhile?)"
            )
        vectors = np.stack([stored[i] for i in ids])
        label_ids = np.asarray([index[name] for name in labels], dtype=np.int64)
        dataset = tf.data.Dataset.from_tensor_slices((vectors, label_ids))
        if shuffle:
            dataset = dataset.shuffle(len(ids), seed=seed, reshuffle_each_iteration=True)
        return dataset.batch(self._batch).prefetch(AUTOTUNE)


def open_store(
    root: Optional[str],
    model: keras.Model,
    image_size: int,
    alpha: float,
    log: Callable[[str], None],
) -> Optional[EmbeddingStore]:
    """The store for this model's backbone, or None (the reason given to `log`) when it cannot
    be opened; the Trainer and the Predictor (drift, sampling) both open it here."""
    if not root:
        return None
    try:
        return EmbeddingStore.open(root, backbone_id(model, image_size, alpha))
    except OSError as exc:  # e.g. a read-only data lake under embeddings.store=auto
        log(
            f"embedding store {root} cannot be opened ({exc}); computing every feature this run "
            "(set embeddings.store to a writable path, or null)"
        )
        return None


@contextlib.contextmanager
def feature_cache(model: keras.Model) -> Iterator[FeatureCache]:
    directory = tempfile.mkdtemp(prefix="hoh-features-")
    try:
        yield FeatureCache(model, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
