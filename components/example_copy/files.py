"""Which input files make up each split, whether they are what downstream expects, and the copy.

Kept free of TFX so it is unit-tested on small files; executor.py decides when it applies.
"""

from __future__ import annotations

import dataclasses
import os
from typing import List, Sequence

import tensorflow as tf

from hoh.errors import HohError

GZIP_MAGIC = b"\x1f\x8b"
# The stock ExampleGen's file names, so a split looks the same whichever executor wrote it.
OUTPUT_NAME = "data_tfrecord-{index:05d}-of-{count:05d}.gz"


@dataclasses.dataclass(frozen=True)
class SplitFiles:
    name: str
    pattern: str
    files: List[str]


def resolve_splits(input_base: str, splits: Sequence[tuple[str, str]]) -> List[SplitFiles]:
    """(split name, pattern relative to input_base) -> the files, in a stable order."""
    resolved = []
    for name, pattern in splits:
        full = os.path.join(input_base, pattern)
        files = sorted(tf.io.gfile.glob(full))
        if not files:
            raise HohError(f"split {name!r}: no input files match {full}")
        resolved.append(SplitFiles(name, full, files))
    return resolved


def all_gzip(split: SplitFiles) -> bool:
    """True when every file starts with the gzip magic bytes (TFX's ExampleGen output format)."""
    for path in split.files:
        with tf.io.gfile.GFile(path, "rb") as f:
            if f.read(2) != GZIP_MAGIC:
                return False
    return True


def count_examples(split: SplitFiles) -> int:
    """Read every record (C++ reader: decompression and record CRCs checked) and parse the first.

    A truncated or corrupt file fails here with its name, before anything is written, instead
    of in a later Beam step; an empty split is refused because nothing downstream can use it.
    """
    count = 0
    for path in split.files:
        try:
            for record in tf.data.TFRecordDataset(
                path, compression_type="GZIP", buffer_size=1 << 20
            ):
                if count == 0:
                    _check_example(record.numpy(), path)
                count += 1
        except tf.errors.OpError as exc:
            raise HohError(
                f"split {split.name!r}: {path} is not a readable gzip TFRecord file "
                f"({type(exc).__name__}: {exc.message})"
            ) from None
    if count == 0:
        raise HohError(f"split {split.name!r}: the files matching {split.pattern} hold no examples")
    return count


def _check_example(record: bytes, path: str) -> None:
    example = tf.train.Example()
    try:
        example.ParseFromString(record)
    except Exception as exc:  # protobuf's DecodeError type differs between implementations
        raise HohError(f"{path}: the first record is not a tf.train.Example ({exc})") from None
    if not example.features.feature:
        raise HohError(f"{path}: the first record is not a tf.train.Example with features")


def copy_split(split: SplitFiles, destination: str) -> List[str]:
    """Byte-for-byte copies named like the stock ExampleGen's shards; returns the written paths.

    A copy, not a link: the artifact must not change if the source span is edited later.
    """
    tf.io.gfile.makedirs(destination)
    written = []
    for index, path in enumerate(split.files):
        target = os.path.join(destination, OUTPUT_NAME.format(index=index, count=len(split.files)))
        tf.io.gfile.copy(path, target, overwrite=True)
        written.append(target)
    return written
