"""The on-disk contract between `hoh data import`, the schema, Transform, Trainer and serving.

Examples are gzip TFRecords of `tf.train.Example` laid out as a data lake of spans:
`ROOT/span-{N}/{train,eval}/*.tfrecord.gz`, so that a scheduled run appends span N+1 without
touching older spans and ImportExampleGen can select spans with its `{SPAN}` pattern.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Sequence

IMAGE_KEY = "image_raw"  # bytes: the original encoded file, untouched (PNG/JPEG/BMP/GIF)
LABEL_KEY = "label"  # bytes: class name (folder name); absent in an unlabeled pool
ID_KEY = "id"  # bytes: sha256 hex of IMAGE_KEY; stable across re-imports
SOURCE_KEY = "source"  # bytes: path of the file relative to the import source
WIDTH_KEY = "width"  # int64
HEIGHT_KEY = "height"  # int64

# Transformed feature names (outputs of hoh.transforms.preprocessing.preprocessing_fn).
IMAGE_XF = "image_xf"  # float32 [size, size, 3] in [0, 1]
LABEL_XF = "label_xf"  # int64 class id from the TFT vocabulary
LABEL_VOCAB_NAME = "label_vocab"
# Transform custom_config key: the class names in id order (transforms/preprocessing.py).
CLASSES_KEY = "classes"

IMPORT_REPORT = "import_report.json"  # beside each span: classes, per-class split counts
SPLITS = ("train", "eval")
POOL_SPLIT = "pool"  # unlabeled images (`hoh data import --unlabeled`), scored by the sampler
SPAN_PREFIX = "span-"
_SPAN_RE = re.compile(rf"^{SPAN_PREFIX}(\d+)$")
TFRECORD_SUFFIX = ".tfrecord.gz"  # ImportExampleGen detects gzip from the .gz extension


def span_dir(root: str | Path, span: int) -> Path:
    return Path(root) / f"{SPAN_PREFIX}{span}"


def list_spans(root: str | Path) -> list[int]:
    """Span numbers present under `root` (a local path or a gs:// URI), ascending; [] if none."""
    from hoh import fileio

    spans = []
    for name in fileio.listdir(str(root)):
        m = _SPAN_RE.match(name)
        if m and (fileio.is_remote(root) or (Path(root) / name).is_dir()):
            spans.append(int(m.group(1)))
    return sorted(spans)


def split_pattern(split: str) -> str:
    """ImportExampleGen input pattern for one split, relative to the data root."""
    return f"{SPAN_PREFIX}{{SPAN}}/{split}/*{TFRECORD_SUFFIX}"


def class_key(name: str) -> str:
    """What a class name means to a person: "Horses", "horses " and a decomposed "café" (as
    macOS writes folder names) are one class, so they must never become two ids."""
    return unicodedata.normalize("NFC", name).strip().casefold()


def class_name_collisions(names: Sequence[str]) -> list[str]:
    """One message per group of distinct names that are the same class after normalisation."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(class_key(name), []).append(name)
    return [
        f"class names {sorted(set(g))!r} differ only in case, spaces or Unicode form; they "
        "would be separate classes: rename the folders to one spelling"
        for g in groups.values()
        if len(set(g)) > 1
    ]
