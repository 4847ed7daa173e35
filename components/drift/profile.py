"""One side of a drift comparison, built in one streaming pass: a table of numbers per image.

Memory is the table (a dozen descriptors, the label and a few embedding components per image),
never the images: each one is described and dropped, and at most one batch of encoded bytes
waits for the model. Embeddings (1280 floats per image for MobileNetV2) are reduced on the fly
by a PCA fitted on the first `fit_rows` reference images: records are stored in content-hash
order (a deterministic shuffle, see hoh.data.importer), so the first rows are a fair sample, and
only their raw embeddings are ever held at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import numpy as np

from hoh.components.drift.descriptors import COLUMNS, UndecodableImage, describe_image
from hoh.data.sources import ImageRecord

LABEL = "label"
ID = "id"
EMBEDDING_PREFIX = "emb_"


@dataclass(frozen=True)
class PcaProjection:
    mean: np.ndarray  # [D]
    basis: np.ndarray  # [D, c]

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return ((rows - self.mean) @ self.basis).astype(np.float32)


def fit_pca(rows: np.ndarray, components: int) -> PcaProjection:
    """Principal axes of `rows` (at most rows-1 of them: more would only fit noise)."""
    mean = rows.mean(axis=0)
    _, _, vt = np.linalg.svd(rows - mean, full_matrices=False)
    keep = max(1, min(components, rows.shape[0] - 1, vt.shape[0]))
    return PcaProjection(mean, vt[:keep].T)


class ReducedEmbeddings:
    """Collects one side's embeddings reduced by PCA. Without a projection (the reference side)
    it buffers the first `fit_rows` raw rows, fits on them, then projects as rows arrive."""

    def __init__(self, components: int, fit_rows: int, projection: Optional[PcaProjection] = None):
        self.components, self.fit_rows, self.projection = components, fit_rows, projection
        self._raw: list[np.ndarray] = []
        self._raw_rows = 0
        self._reduced: list[np.ndarray] = []

    def add(self, rows: np.ndarray) -> None:
        if self.projection is not None:
            self._reduced.append(self.projection(rows))
            return
        self._raw.append(rows)
        self._raw_rows += len(rows)
        if self._raw_rows >= self.fit_rows:
            self._fit()

    def _fit(self) -> None:
        raw = np.concatenate(self._raw)
        self.projection = fit_pca(raw, self.components)
        self._reduced, self._raw = [self.projection(raw)], []

    def finish(self) -> Optional[np.ndarray]:
        """The reduced rows [n, c]; None when there were too few rows to fit a projection."""
        if self.projection is None:
            if self._raw_rows < 2:
                return None
            self._fit()
        return np.concatenate(self._reduced) if self._reduced else None


@dataclass
class Profile:
    description: str
    columns: dict[str, list] = field(default_factory=lambda: {c: [] for c in (*COLUMNS, LABEL, ID)})
    skipped: list[dict[str, str]] = field(default_factory=list)
    embeddings: Optional[np.ndarray] = None  # [rows, c], aligned with the columns

    @property
    def rows(self) -> int:
        return len(self.columns[ID])

    def skip(self, source: str, reason: str) -> None:
        self.skipped.append({"source": source, "reason": reason})

    def frame(self) -> Any:
        """The table as a pandas DataFrame, with `emb_i` columns when there are embeddings."""
        import pandas as pd

        frame = pd.DataFrame(self.columns)
        if self.embeddings is not None:
            for i in range(self.embeddings.shape[1]):
                frame[f"{EMBEDDING_PREFIX}{i}"] = self.embeddings[:, i]
        return frame


# (encoded images, their content ids) -> hoh.trainer.predictor.Prediction
Embed = Callable[[list[bytes], list[str]], Any]


def build_profile(
    records: Iterable[ImageRecord],
    description: str,
    embed: Optional[Embed] = None,
    reducer: Optional[ReducedEmbeddings] = None,
    batch_size: int = 32,
) -> Profile:
    """Describe every record; with `embed` and `reducer`, also its reduced embedding. Records
    that cannot be read or decoded are listed in `skipped`, never fatal."""
    if (embed is None) != (reducer is None):
        raise ValueError("build_profile: give both `embed` and `reducer`, or neither")
    profile = Profile(description)
    pending: list[tuple[ImageRecord, dict]] = []

    def keep(record: ImageRecord, row: dict) -> None:
        for key, value in row.items():
            profile.columns[key].append(value)
        profile.columns[LABEL].append(record.label)
        profile.columns[ID].append(record.id)

    def flush() -> None:
        if not pending:
            return
        prediction = embed([r.data for r, _ in pending], [r.id for r, _ in pending])
        for position, reason in sorted(prediction.failed.items()):
            profile.skip(pending[position][0].source, reason)
        for position in prediction.ok:
            keep(*pending[position])
        if prediction.embeddings is not None and len(prediction.ok):
            reducer.add(prediction.embeddings)
        pending.clear()

    for record in records:
        if record.problem:
            profile.skip(record.source, record.problem)
            continue
        try:
            row = describe_image(record.data)
        except UndecodableImage as exc:
            profile.skip(record.source, str(exc))
            continue
        if embed is None:
            keep(record, row)
            continue
        pending.append((record, row))
        if len(pending) >= batch_size:
            flush()
    if embed is not None:
        flush()
        profile.embeddings = reducer.finish() if reducer is not None else None
    return profile
