"""Where images come from: TFRecord spans and Examples artifacts, or a plain folder of files.

Drift and sampling both read images one at a time and never hold more than a batch, so every
source is an iterable that can be walked again (the sampler reads its pool twice) instead of a
list. A source is described by data only (file lists, a folder path), so it can be built from an
artifact inside a TFX executor or from a path on the command line alike.

Records whose bytes cannot even be read (an unreadable file, a hidden or badly named file in a
folder) are yielded with `problem` set rather than raised: one bad file must never stop a scan
of a hundred thousand, but it must show up in the report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

from hoh import features
from hoh.data.images import content_id
from hoh.errors import HohError

# ExampleGen writes `data_tfrecord-*.gz`, `hoh data import` writes `*.tfrecord.gz`: both gzip.
TFRECORD_GLOB = "*.gz"


@dataclass(frozen=True)
class ImageRecord:
    id: str  # sha256 of the bytes: the same image has the same id in a pool and in a span
    source: str  # where it came from (the import's relative path, or the file path)
    label: Optional[str]
    data: bytes
    problem: Optional[str] = None  # set when the record could not be read at all


@dataclass(frozen=True)
class ImageSource:
    """A re-iterable stream of ImageRecords: gzip TFRecord files, or every file under a folder."""

    description: str
    tfrecord_files: tuple[str, ...] = ()
    folder: Optional[str] = None

    def __iter__(self) -> Iterator[ImageRecord]:
        if self.folder is not None:
            return _iter_folder(Path(self.folder))
        return _iter_tfrecords(self.tfrecord_files)


def _glob_split(split_dir: str) -> list[str]:
    import tensorflow as tf  # lazy: also reads gs:// paths

    return sorted(tf.io.gfile.glob(os.path.join(split_dir, TFRECORD_GLOB)))


def tfrecord_source(split_dirs: Sequence[str], description: str) -> ImageSource:
    """All gzip TFRecord files of the given split directories (at least one must hold some)."""
    files = [f for d in split_dirs for f in _glob_split(d)]
    if not files:
        raise HohError(f"{description}: no TFRecord files (*.gz) in {', '.join(split_dirs)}")
    return ImageSource(description, tfrecord_files=tuple(files))


def span_source(data_root: str, span: int, splits: Sequence[str]) -> ImageSource:
    span_dir = os.path.join(str(data_root), f"{features.SPAN_PREFIX}{span}")
    return tfrecord_source(
        [os.path.join(span_dir, s) for s in splits],
        f"span {span} ({', '.join(splits)}) of {data_root}",
    )


def reference_span(
    spans: Sequence[int], current: int, pinned: Optional[int] = None
) -> Optional[int]:
    """The span to compare `current` with: `pinned` if given (it must exist and differ from
    `current`), else the closest span below `current` (spans may have gaps: a deleted bad
    import); None when there is none, i.e. on the first span."""
    if pinned is not None:
        if pinned == current:
            raise HohError(f"drift reference span {pinned} is the current span; pin an older one")
        if pinned not in spans:
            raise HohError(f"drift reference span {pinned} does not exist; spans: {list(spans)}")
        return pinned
    older = [s for s in spans if s < current]
    return max(older) if older else None


def _iter_tfrecords(files: Sequence[str]) -> Iterator[ImageRecord]:
    import tensorflow as tf

    def _bytes(example, key: str) -> Optional[bytes]:
        values = (
            example.features.feature[key].bytes_list.value
            if key in example.features.feature
            else []
        )
        return values[0] if values else None

    for raw in tf.data.TFRecordDataset(list(files), compression_type="GZIP").as_numpy_iterator():
        example = tf.train.Example.FromString(raw)
        data = _bytes(example, features.IMAGE_KEY) or b""
        image_id = (_bytes(example, features.ID_KEY) or b"").decode("ascii") or content_id(data)
        source = (_bytes(example, features.SOURCE_KEY) or b"").decode(
            "utf-8", "replace"
        ) or image_id
        label = _bytes(example, features.LABEL_KEY)
        problem = None if data else f"record has no {features.IMAGE_KEY!r} bytes"
        yield ImageRecord(
            image_id, source, label.decode("utf-8") if label is not None else None, data, problem
        )


def _iter_folder(root: Path) -> Iterator[ImageRecord]:
    """Every non-hidden file under `root`; the first sub-folder of a nested file is its label
    (the layout `hoh data import` reads), files directly in `root` have none."""
    from hoh.data.layout import scan_source

    scan = scan_source(root, unlabeled=True)
    for rejected in scan.rejected:
        yield ImageRecord("", rejected.path, None, b"", rejected.reason)
    for file in scan.files:
        parts = Path(file.source).parts
        label = parts[0] if len(parts) > 1 else None
        try:
            data = file.path.read_bytes()
        except OSError as exc:
            yield ImageRecord("", file.source, label, b"", f"cannot read it: {exc.strerror or exc}")
            continue
        yield ImageRecord(content_id(data), str(file.path), label, data)


def _has_tfrecords(directory: Path) -> bool:
    return directory.is_dir() and any(directory.glob(TFRECORD_GLOB))


def resolve_path(path: str | Path, splits: Sequence[str], what: str) -> ImageSource:
    """A command-line path as a source: a data root (its latest span), a span directory, a
    directory of TFRecord files, or a folder of images (anything else)."""
    path = Path(path)
    if not path.is_dir():
        raise HohError(f"{what} {path} is not a directory")
    spans = features.list_spans(path)
    if spans:
        return resolve_path(features.span_dir(path, spans[-1]), splits, what)
    split_dirs = [path / s for s in splits if _has_tfrecords(path / s)]
    if split_dirs:
        return tfrecord_source([str(d) for d in split_dirs], f"{what} {path}")
    others = [d.name for d in path.iterdir() if _has_tfrecords(d)]
    if others:
        raise HohError(
            f"{what} {path} is a span without the split(s) {', '.join(splits)} (it has: "
            f"{', '.join(sorted(others))})"
        )
    if _has_tfrecords(path):
        return tfrecord_source([str(path)], f"{what} {path}")
    return ImageSource(f"{what} {path} (image folder)", folder=str(path))
