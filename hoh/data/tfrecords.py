"""Serialising images as `tf.train.Example` records into size-bounded gzip TFRecord shards.

Shards are bounded by bytes rather than by count so that a set of 4 MB photos and a set of
20 KB thumbnails both give files of a size Beam parallelises well and object stores copy
efficiently. The `-of-N` suffix is only known when the last record is written, so shards are
named at `close()`; the whole split directory is still private to the import at that point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from hoh import features
from hoh.errors import HohError

DEFAULT_SHARD_BYTES = 64 * 1024 * 1024
# PNG and JPEG are already compressed: level 1 costs little CPU and the other features still
# shrink. Gzip itself is kept because ImportExampleGen recognises the .gz suffix.
GZIP_LEVEL = 1


def serialize_example(
    tf: Any,
    data: bytes,
    image_id: str,
    source: str,
    label: Optional[str],
    width: int,
    height: int,
) -> bytes:
    """One record in the layout documented in hoh.features; no label for an unlabelled pool."""
    train = tf.train

    def _bytes(value: bytes) -> Any:
        return train.Feature(bytes_list=train.BytesList(value=[value]))

    def _int(value: int) -> Any:
        return train.Feature(int64_list=train.Int64List(value=[value]))

    feature = {
        features.IMAGE_KEY: _bytes(data),
        features.ID_KEY: _bytes(image_id.encode("ascii")),
        features.SOURCE_KEY: _bytes(source.encode("utf-8")),
        features.WIDTH_KEY: _int(width),
        features.HEIGHT_KEY: _int(height),
    }
    if label is not None:
        feature[features.LABEL_KEY] = _bytes(label.encode("utf-8"))
    return train.Example(features=train.Features(feature=feature)).SerializeToString()


def shard_name(index: int, count: int) -> str:
    return f"data-{index:05d}-of-{count:05d}{features.TFRECORD_SUFFIX}"


class ShardedWriter:
    """Appends records to `directory`, starting a new shard once one reaches `shard_bytes`."""

    def __init__(
        self,
        tf: Any,
        directory: Path,
        shard_bytes: int = DEFAULT_SHARD_BYTES,
        compression_level: int = GZIP_LEVEL,
    ):
        self._tf = tf
        self._level = compression_level
        self._dir = Path(directory)
        self._shard_bytes = shard_bytes
        self._paths: list[Path] = []
        self._writer: Any = None
        self._bytes = 0
        self.records = 0

    def _open_next(self) -> None:
        self._close_current()
        self._dir.mkdir(parents=True, exist_ok=True)
        path = self._dir / f"partial-{len(self._paths):05d}"
        options = self._tf.io.TFRecordOptions(
            compression_type="GZIP", compression_level=self._level
        )
        self._writer = self._tf.io.TFRecordWriter(str(path), options)
        self._paths.append(path)
        self._bytes = 0

    def _close_current(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def write(self, record: bytes) -> None:
        if self._writer is None or self._bytes >= self._shard_bytes:
            self._open_next()
        self._writer.write(record)
        self._bytes += len(record)
        self.records += 1

    def close(self) -> list[Path]:
        """Finish the last shard and give every shard its final `data-i-of-n` name."""
        self._close_current()
        final = []
        for index, path in enumerate(self._paths):
            target = path.with_name(shard_name(index, len(self._paths)))
            path.rename(target)
            final.append(target)
        return final


def record_dataset(file_patterns: Sequence[str]) -> Any:
    """A tf.data dataset of the serialized examples in every gzip TFRecord file matching."""
    import tensorflow as tf

    files = sorted(f for pattern in file_patterns for f in tf.io.gfile.glob(pattern))
    if not files:
        raise HohError(f"no example files match {list(file_patterns)}")
    return tf.data.TFRecordDataset(files, compression_type="GZIP")


def read_ids_labels(file_patterns: Sequence[str]) -> tuple[list[str], list[str]]:
    """Every example's content id and label ("" when absent), without decoding any image: the
    embedding store is keyed by the id, so a warm store never needs the pixels."""
    import tensorflow as tf

    spec = {
        features.ID_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
        features.LABEL_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
    }
    ids: list[str] = []
    labels: list[str] = []
    batches = record_dataset(file_patterns).batch(1024).map(lambda r: tf.io.parse_example(r, spec))
    for batch in batches:
        ids.extend(v.decode() for v in batch[features.ID_KEY].numpy())
        labels.extend(v.decode() for v in batch[features.LABEL_KEY].numpy())
    return ids, labels
