"""The embedding store: backbone embeddings computed once per image and kept beside the data lake.

A frozen backbone is a fixed function of the image, so its output for an image never changes:
computing it again on every retrain (the Trainer), every drift check and every sampling run is
most of their cost. The store keys an embedding by the image's content hash (the `id` that
`hoh data import` and `hoh ingest` write) and by the backbone's identity (a hash of its weights,
the input size and the width multiplier), so an entry can only ever be reused for the same pixels
through the same network, whichever span, run or component asked first.

Layout (Parquet, readable by anything that reads a Hive-partitioned folder: pandas, Spark, a
Feast `FileSource`, see deploy/feast/)::

    STORE/backbone=<key>/backbone.json           what <key> stands for (checked on every open)
    STORE/backbone=<key>/part-<time>-<rand>.parquet  image_id, event_timestamp, embedding

- Crash-safe: a part is written to a hidden temporary name, synced, then renamed; readers only
  list `part-*.parquet`, so a half-written file is never read (on gs:// an object appears
  whole or not at all).
- Two runs at once: each writes its own parts, never rewrites one; the same image written twice
  is the same vector and is read once.
- Prune (`hoh embeddings prune`): compaction writes the merged part first and only then deletes
  the parts it read, so a crash in between leaves duplicates, never a gap.

Memory: a lookup holds the vectors it returns (1280 float32 = 5 KB per image for MobileNetV2 at
alpha 1.0: 100,000 images = 512 MB).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import hashlib
import io
import json
import os
import secrets
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from hoh import fileio
from hoh.errors import HohError

ID_COLUMN = "image_id"
TIME_COLUMN = "event_timestamp"
EMBEDDING_COLUMN = "embedding"
BACKBONE_FILE = "backbone.json"
PARTITION = "backbone="
PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
FORMAT_VERSION = 1
# Bump when decoding/resizing changes what pixels reach the backbone: old entries then no
# longer match any key, instead of silently mixing two preprocessings.
PIXELS_VERSION = 1
_CACHED_PARTS = 4  # parts whose vectors a store keeps in memory (5 MB each at 1024 x 1280)


class EmbeddingStoreError(HohError):
    """The store cannot be used as asked (another backbone, not a store, unreadable part)."""


@dataclasses.dataclass(frozen=True)
class BackboneId:
    """What makes two embeddings of one image comparable: same weights, same input, same net."""

    weights_sha256: str
    image_size: int
    alpha: float
    dim: int
    architecture: str = "MobileNetV2"
    pixels_version: int = PIXELS_VERSION

    @property
    def key(self) -> str:
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def describe(self) -> str:
        return (
            f"{self.architecture} alpha {self.alpha:g}, {self.image_size}px, {self.dim}-d, "
            f"weights sha256 {self.weights_sha256[:12]}"
        )


def weights_sha256(arrays: Iterable[np.ndarray]) -> str:
    """A fingerprint of a network's weights: equal iff every array is bitwise equal, in order."""
    digest = hashlib.sha256()
    for array in arrays:
        a = np.ascontiguousarray(array)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _join(root: str, *names: str) -> str:
    return (
        "/".join([root.rstrip("/"), *names]) if fileio.is_remote(root) else str(Path(root, *names))
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class EmbeddingStore:
    """One backbone's entries in a store folder (local or gs://)."""

    def __init__(self, root: str, backbone: BackboneId):
        self.root = str(root)
        self.backbone = backbone
        self.directory = _join(self.root, PARTITION + backbone.key)
        # Which part holds each id (read from the id column alone), and the vectors of the
        # parts read last: a caller asking batch by batch (the drift check, the sampler) reads
        # each part about once instead of every part for every batch.
        self._where: dict[str, str] = {}
        self._indexed: set[str] = set()
        self._cached: collections.OrderedDict[str, dict[str, np.ndarray]] = (
            collections.OrderedDict()
        )

    # --- opening -----------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str, backbone: BackboneId) -> "EmbeddingStore":
        """The store at `root` for `backbone`, created if absent; refuses a folder that is not a
        store (e.g. the data lake itself) and a partition written by another backbone."""
        check_store_root(root)
        store = cls(root, backbone)
        manifest = _join(store.directory, BACKBONE_FILE)
        if manifest_exists(manifest):
            store._check_manifest(manifest)
        else:
            store._write_manifest(manifest)
        return store

    def _check_manifest(self, path: str) -> None:
        found = fileio.read_json(path)
        expected = {**dataclasses.asdict(self.backbone), "format": FORMAT_VERSION}
        if not isinstance(found, dict):
            raise EmbeddingStoreError(f"embedding store {self.root}: {path} is not readable JSON")
        if found != expected:
            raise EmbeddingStoreError(
                f"embedding store {self.root}: {path} was written for another backbone "
                f"({found}), not {self.backbone.describe()} (key {self.backbone.key}); a folder "
                "named backbone=KEY must only hold that backbone's entries — move it away or "
                "prune it (hoh embeddings prune --store STORE --drop-other-backbones)"
            )

    def _write_manifest(self, path: str) -> None:
        text = json.dumps({**dataclasses.asdict(self.backbone), "format": FORMAT_VERSION}, indent=2)
        if fileio.is_remote(path):
            fileio.write_file(path, text + "\n")
            return
        os.makedirs(self.directory, exist_ok=True)
        _publish_local(path, (text + "\n").encode())

    # --- reading -----------------------------------------------------------------------------
    def parts(self) -> list[str]:
        return sorted(
            _join(self.directory, name)
            for name in fileio.listdir(self.directory)
            if name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX)
        )

    def lookup(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored embedding of each of `ids` that has one (float32 [dim])."""
        wanted = set(ids)
        if any(i not in self._where for i in wanted):
            self._index_new_parts()  # written since, by this process or another
        try:
            return self._from_parts(wanted)
        except FileNotFoundError:  # a part compacted away since it was indexed
            self._forget()
            self._index_new_parts()
            return self._from_parts(wanted)

    def _from_parts(self, wanted: set[str]) -> dict[str, np.ndarray]:
        by_part: dict[str, list[str]] = collections.defaultdict(list)
        for image_id in wanted:
            if image_id in self._where:
                by_part[self._where[image_id]].append(image_id)
        found: dict[str, np.ndarray] = {}
        for path, part_ids in by_part.items():
            vectors = self._part(path)
            found.update((i, vectors[i]) for i in part_ids)
        return found

    def _forget(self) -> None:
        self._where.clear()
        self._indexed.clear()
        self._cached.clear()

    def _index_new_parts(self) -> None:
        for path in self.parts():
            if path in self._indexed:
                continue
            try:
                ids = _read_table(path, columns=[ID_COLUMN]).column(ID_COLUMN).to_pylist()
            except FileNotFoundError:
                continue
            self._indexed.add(path)
            for image_id in ids:
                self._where.setdefault(image_id, path)

    def _part(self, path: str) -> dict[str, np.ndarray]:
        if path in self._cached:
            self._cached.move_to_end(path)
            return self._cached[path]
        table = _read_table(path)
        _check_columns(path, table)
        vectors = _vectors(table, self.backbone.dim)
        by_id = dict(zip(table.column(ID_COLUMN).to_pylist(), vectors))
        self._cached[path] = by_id
        while len(self._cached) > _CACHED_PARTS:
            self._cached.popitem(last=False)
        return by_id

    def _tables(self, parts: Sequence[str]):
        """The tables of `parts` that still exist (a part compacted away since it was listed
        has its rows in a newer part), each checked to be a store part."""
        for path in parts:
            try:
                table = _read_table(path)
            except FileNotFoundError:
                continue
            _check_columns(path, table)
            if table.num_rows:
                yield table

    def count(self) -> int:
        parts = self.parts()
        return len({i for t in self._tables(parts) for i in t.column(ID_COLUMN).to_pylist()})

    # --- writing -----------------------------------------------------------------------------
    def add(self, ids: Sequence[str], vectors: np.ndarray) -> Optional[str]:
        """Store `vectors[i]` as the embedding of `ids[i]` in one new part; returns its path."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} embeddings")
        if not len(ids):
            return None
        if vectors.ndim != 2 or vectors.shape[1] != self.backbone.dim:
            raise EmbeddingStoreError(
                f"embedding store {self.root}: embeddings of shape {vectors.shape} do not match "
                f"the backbone's {self.backbone.dim} dimensions ({self.backbone.describe()})"
            )
        path = self._write_part(_table(list(ids), vectors, self.backbone.dim))
        self._indexed.add(path)
        for image_id in ids:
            self._where.setdefault(image_id, path)
        return path

    def _write_part(self, table) -> str:
        import pyarrow.parquet as pq

        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        stamp = _now().strftime("%Y%m%dT%H%M%S%f")
        name = f"{PART_PREFIX}{stamp}-{secrets.token_hex(4)}{PART_SUFFIX}"
        path = _join(self.directory, name)
        if fileio.is_remote(path):
            fileio.write_file(path, buffer.getvalue())
        else:
            os.makedirs(self.directory, exist_ok=True)
            _publish_local(path, buffer.getvalue())
        return path

    def compact(self, keep: Optional[set[str]] = None) -> tuple[int, int]:
        """Merge every part into one (dropping duplicates and, with `keep`, ids not in it);
        returns (rows kept, rows dropped). New parts written meanwhile are left alone."""
        import pyarrow as pa

        parts = self.parts()  # exactly these are deleted below, once their rows are merged
        tables = list(self._tables(parts))
        if not tables:
            return 0, 0
        merged = pa.concat_tables(tables)
        seen: set[str] = set()
        rows = []
        for i, image_id in enumerate(merged.column(ID_COLUMN).to_pylist()):
            if image_id in seen or (keep is not None and image_id not in keep):
                continue
            seen.add(image_id)
            rows.append(i)
        kept = merged.take(pa.array(rows, pa.int64()))
        if kept.num_rows:
            self._write_part(kept)
        for path in parts:
            _remove(path)
        self._forget()
        return kept.num_rows, merged.num_rows - kept.num_rows


def manifest_exists(path: str) -> bool:
    if fileio.is_remote(path):
        import tensorflow as tf

        return tf.io.gfile.exists(path)
    return os.path.isfile(path)


def check_store_root(root: str) -> None:
    """Refuse a folder that holds something other than a store: writing embeddings into the
    data lake or an output folder by a wrong path would mix them with what lives there."""
    if not fileio.is_remote(root) and os.path.exists(root) and not os.path.isdir(root):
        raise EmbeddingStoreError(f"embedding store {root}: exists and is not a folder")
    foreign = [
        n
        for n in fileio.listdir(root)
        if not n.startswith(PARTITION) and not n.startswith(".") and n != "README.md"
    ]
    if foreign:
        raise EmbeddingStoreError(
            f"embedding store {root}: holds {sorted(foreign)[:5]}, which a store does not; "
            "give an empty folder or an existing store (embeddings.store)"
        )


def backbones(root: str) -> list[dict]:
    """Every backbone partition of the store with its manifest and row count, for listing and
    pruning."""
    check_store_root(root)
    out = []
    for name in sorted(fileio.listdir(root)):
        if not name.startswith(PARTITION):
            continue
        manifest = fileio.read_json(_join(root, name, BACKBONE_FILE)) or {}
        fields = {f.name for f in dataclasses.fields(BackboneId)}
        usable = isinstance(manifest, dict) and fields <= set(manifest)
        backbone = BackboneId(**{k: manifest[k] for k in fields}) if usable else None
        store = EmbeddingStore(root, backbone) if backbone else None
        out.append(
            {
                "key": name[len(PARTITION) :],
                "backbone": backbone,
                "parts": len(store.parts()) if store else None,
                "rows": store.count() if store else None,
            }
        )
    return out


def drop_backbone(root: str, key: str) -> None:
    directory = _join(root, PARTITION + key)
    if fileio.is_remote(directory):
        import tensorflow as tf

        tf.io.gfile.rmtree(directory)
        return
    import shutil

    shutil.rmtree(directory)


def _table(ids: list[str], vectors: np.ndarray, dim: int):
    import pyarrow as pa

    flat = pa.array(vectors.reshape(-1), pa.float32())
    stamp = pa.array([_now()] * len(ids), pa.timestamp("us", tz="UTC"))
    return pa.table(
        {
            ID_COLUMN: pa.array(ids, pa.string()),
            TIME_COLUMN: stamp,
            # A plain list (not fixed_size_list): Feast and most readers map it to Array(Float32).
            EMBEDDING_COLUMN: pa.ListArray.from_arrays(
                pa.array(np.arange(0, len(ids) * dim + 1, dim, dtype=np.int32)), flat
            ),
        }
    )


def _check_columns(path: str, table) -> None:
    if not {ID_COLUMN, TIME_COLUMN, EMBEDDING_COLUMN} <= set(table.column_names):
        raise EmbeddingStoreError(
            f"embedding store part {path} lacks the columns {ID_COLUMN}, {TIME_COLUMN}, "
            f"{EMBEDDING_COLUMN} (found {table.column_names}); not written by hoh"
        )


def _vectors(table, dim: int) -> np.ndarray:
    column = table.column(EMBEDDING_COLUMN).combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if flat.size != table.num_rows * dim:
        raise EmbeddingStoreError(
            f"embedding store: a part holds embeddings of another width than {dim}"
        )
    return flat.reshape(table.num_rows, dim)


def _read_table(path: str, columns: Optional[list[str]] = None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if fileio.is_remote(path):
            import tensorflow as tf

            with tf.io.gfile.GFile(path, "rb") as f:
                return pq.read_table(io.BytesIO(f.read()), columns=columns)
        return pq.read_table(path, columns=columns)
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise EmbeddingStoreError(f"embedding store part {path} is unreadable: {exc}") from None


def _publish_local(path: str, data: bytes) -> None:
    from hoh.durable import sync_path, write_hidden_temp

    directory = os.path.dirname(path)
    temp = write_hidden_temp(directory, os.path.basename(path), data)
    try:
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    sync_path(directory)


def _remove(path: str) -> None:
    if fileio.is_remote(path):
        import tensorflow as tf

        tf.io.gfile.remove(path)
    else:
        Path(path).unlink(missing_ok=True)
