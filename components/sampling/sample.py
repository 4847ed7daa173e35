"""`sample_pool`: score an unlabeled pool with a model and write the batch to label.

Two streaming passes keep memory flat however large the pool is:
1. score: images go through the model a batch at a time; only the best `candidates` (k, or
   5k with diversity) are kept, with their probabilities and embedding, in a bounded heap.
2. collect: the pool is read again and only the selected images' bytes are written out, as
   files Label Studio can show and as thumbnails for the contact sheet.

Images already labeled (their content id is in `exclude_ids`, e.g. the training span) and
duplicates inside the pool are not proposed; unreadable images are listed and skipped.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from hoh.components.sampling import contact_sheet, labelstudio, scoring
from hoh.data.sources import ImageRecord, ImageSource
from hoh.fileio import is_remote, write_file

SELECTED_JSONL = "selected.jsonl"
SELECTED_CSV = "selected.csv"
LABEL_STUDIO_FILE = "label_studio.json"
LABEL_CONFIG_FILE = "label_config.xml"
CONTACT_SHEET = "contact_sheet.html"
SUMMARY_FILE = "summary.json"
IMAGES_DIR = "images"
_EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "BMP": "bmp", "GIF": "gif"}

Echo = Callable[[str], None]


@dataclass(frozen=True)
class SamplingSettings:
    k: int = 50
    strategy: str = "margin"
    diversity: bool = True
    candidates_factor: int = 5  # diversity picks among the factor*k most uncertain
    batch_size: int = 32
    from_name: str = labelstudio.DEFAULT_FROM_NAME
    to_name: str = labelstudio.DEFAULT_TO_NAME
    url_prefix: str = labelstudio.DEFAULT_URL_PREFIX  # "{out_dir}" = this output directory

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if self.strategy not in scoring.STRATEGIES:
            raise ValueError(
                f"unknown strategy {self.strategy!r}; known: {', '.join(scoring.STRATEGIES)}"
            )
        if self.candidates_factor < 1:
            raise ValueError(f"candidates_factor must be at least 1, got {self.candidates_factor}")


@dataclass
class _Scan:
    scored: int = 0
    excluded: int = 0
    duplicates: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)


def _score_pool(
    pool: ImageSource,
    predictor: Any,
    settings: SamplingSettings,
    exclude_ids: frozenset,
    keep: int,
    echo: Echo,
    progress: Optional[Callable[[int], None]] = None,
) -> tuple[_Scan, list[tuple[float, int, tuple]]]:
    """Pass 1: returns counts and the `keep` most uncertain (score, position, payload)."""
    scan, top, seen = _Scan(), scoring.TopK(keep), set()
    batch: list[ImageRecord] = []

    def flush() -> None:
        prediction = predictor.predict([r.data for r in batch], [r.id for r in batch])
        for position, reason in sorted(prediction.failed.items()):
            scan.skipped.append({"source": batch[position].source, "reason": reason})
        scores = (
            scoring.uncertainty(prediction.probabilities, settings.strategy)
            if prediction.ok
            else []
        )
        for row, position in enumerate(prediction.ok):
            record = batch[position]
            # Copies: a row view would keep its whole batch array alive in the heap.
            embedding = None if prediction.embeddings is None else prediction.embeddings[row].copy()
            probabilities = prediction.probabilities[row].copy()
            top.push(scores[row], scan.scored, (record.id, record.source, probabilities, embedding))
            scan.scored += 1
        if progress is not None:
            progress(scan.scored)
        elif scan.scored and scan.scored % (50 * settings.batch_size) < len(batch):
            echo(f"scored {scan.scored} images")
        batch.clear()

    for record in pool:
        if record.problem:
            scan.skipped.append({"source": record.source, "reason": record.problem})
        elif record.id in exclude_ids:
            scan.excluded += 1
        elif record.id in seen:
            scan.duplicates += 1
        else:
            seen.add(record.id)
            batch.append(record)
            if len(batch) >= settings.batch_size:
                flush()
    if batch:
        flush()
    return scan, top.items()


def _collect(pool: ImageSource, wanted: set[str]) -> dict[str, bytes]:
    """Pass 2: the bytes of the selected images (a few dozen), stopping once all are found."""
    found: dict[str, bytes] = {}
    for record in pool:
        if record.id in wanted and record.id not in found:
            found[record.id] = record.data
            if len(found) == len(wanted):
                break
    return found


def _extension(data: bytes) -> str:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return _EXTENSIONS.get(img.format or "", "img")
    except (OSError, ValueError, SyntaxError):
        return "img"


def _csv(rows: list[dict], class_names: list[str]) -> str:
    buf = io.StringIO()
    fields = ["rank", "id", "source", "file", "score", "predicted", "confidence"]
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(fields + [f"p_{c}" for c in class_names])
    for row in rows:
        writer.writerow([row[f] for f in fields] + [row["probabilities"][c] for c in class_names])
    return buf.getvalue()


def sample_pool(
    pool: ImageSource,
    predictor: Any,
    out_dir: str,
    settings: SamplingSettings = SamplingSettings(),
    exclude_ids: frozenset = frozenset(),
    echo: Echo = lambda line: None,
    progress: Optional[Callable[[int], None]] = None,
    task_fields: Callable[[str], dict] = lambda source: {},
) -> dict:
    """Score `pool` with `predictor` (hoh.trainer.predictor.Predictor or anything
    with its `predict`, `class_names`, `has_embeddings`, `model_version`) and write the outputs
    listed in docs/ACTIVE_LEARNING.md into `out_dir`; returns the summary. `progress(scored)`
    after each batch replaces the periodic "scored N images" lines (a bar on a terminal).
    `task_fields(source)` adds data fields to an image's Label Studio task, which its export
    keeps: what the pool knows of the image beyond its bytes (the monitor: the request it was
    captured from, so labels come back to that request)."""
    notes: list[str] = []
    diversity = settings.diversity and predictor.has_embeddings
    if settings.diversity and not predictor.has_embeddings:
        why = getattr(predictor, "note", "") or "the model gives no embeddings"
        notes.append(f"diversity off ({why}); ranked by uncertainty only")
    keep = settings.k * (settings.candidates_factor if diversity else 1)
    echo(f"scoring {pool.description} ({settings.strategy}, k={settings.k})")
    scan, best = _score_pool(pool, predictor, settings, exclude_ids, keep, echo, progress)
    predictor.flush_store()
    scores = [s for s, _, _ in best]
    embeddings = np.stack([p[3] for _, _, p in best]) if diversity and best else None
    order = scoring.select(scores, settings.k, embeddings, candidates=len(best))
    chosen = [best[i] for i in order]
    images = _collect(pool, {payload[0] for _, _, payload in chosen})

    classes = list(predictor.class_names)
    where = out_dir if is_remote(out_dir) else os.path.abspath(out_dir)
    url_prefix = settings.url_prefix.replace("{out_dir}", where.lstrip("/"))
    rows, tasks, thumbnails = [], [], {}
    for rank, (score, _, (image_id, source, probabilities, _)) in enumerate(chosen, 1):
        data = images[image_id]
        file = f"{IMAGES_DIR}/{rank:05d}-{image_id[:16]}.{_extension(data)}"
        write_file(os.path.join(out_dir, file), data)
        thumbnails[image_id] = contact_sheet.thumbnail_data_uri(data)
        top = int(np.argmax(probabilities))
        row = {
            "rank": rank,
            "id": image_id,
            "source": source,
            "file": file,
            "uri": os.path.join(out_dir, file),
            "score": round(float(score), 6),
            "strategy": settings.strategy,
            "predicted": classes[top],
            "confidence": round(float(probabilities[top]), 6),
            "probabilities": {c: round(float(p), 6) for c, p in zip(classes, probabilities)},
        }
        rows.append(row)
        tasks.append(
            labelstudio.task(
                url_prefix + file,
                row["predicted"],
                row["confidence"],
                predictor.model_version,
                settings.from_name,
                settings.to_name,
                extra={
                    "hoh_id": image_id,
                    "hoh_file": file,
                    "source": source,
                    "hoh_score": row["score"],
                    **task_fields(source),
                },
            )
        )

    write_file(os.path.join(out_dir, SELECTED_JSONL), "".join(json.dumps(r) + "\n" for r in rows))
    write_file(os.path.join(out_dir, SELECTED_CSV), _csv(rows, classes))
    write_file(os.path.join(out_dir, LABEL_STUDIO_FILE), json.dumps(tasks, indent=1) + "\n")
    write_file(
        os.path.join(out_dir, LABEL_CONFIG_FILE),
        labelstudio.labeling_config(classes, settings.from_name, settings.to_name),
    )
    if scan.skipped:
        notes.append(f"{len(scan.skipped)} pool image(s) skipped: unreadable or undecodable")
    title = f"{len(rows)} images to label ({settings.strategy}{', diverse' if diversity else ''})"
    write_file(
        os.path.join(out_dir, CONTACT_SHEET), contact_sheet.render(title, rows, thumbnails, notes)
    )
    summary = {
        "schema_version": 1,
        "pool": pool.description,
        "model": {
            "path": str(getattr(predictor, "serving_dir", "")),
            "version": predictor.model_version,
        },
        "strategy": settings.strategy,
        "k": settings.k,
        "diversity": diversity,
        "candidates": len(best),
        "selected": len(rows),
        "scored": scan.scored,
        "excluded_labeled": scan.excluded,
        "duplicates": scan.duplicates,
        "skipped": scan.skipped,
        "notes": notes,
        "files": [
            SELECTED_JSONL,
            SELECTED_CSV,
            LABEL_STUDIO_FILE,
            LABEL_CONFIG_FILE,
            CONTACT_SHEET,
            IMAGES_DIR + "/",
            SUMMARY_FILE,
        ],
    }
    write_file(os.path.join(out_dir, SUMMARY_FILE), json.dumps(summary, indent=2) + "\n")
    return summary


def summary_lines(summary: dict) -> list[str]:
    how = summary["strategy"]
    if summary["diversity"]:
        how += f", k-center diversity over {summary['candidates']} candidates"
    lines = [f"sampled {summary['selected']} of {summary['scored']} pool images ({how})"]
    if summary["excluded_labeled"] or summary["duplicates"]:
        lines.append(
            f"  not proposed: {summary['excluded_labeled']} already labeled, "
            f"{summary['duplicates']} duplicates"
        )
    for item in summary["skipped"]:
        lines.append(f"  skipped {item['source']}: {item['reason']}")
    lines += [f"  note: {n}" for n in summary["notes"]]
    return lines


def read_ids(source: Optional[ImageSource]) -> frozenset:
    """Content ids of a labeled source (to exclude from sampling); empty for None."""
    return frozenset(r.id for r in source if not r.problem) if source is not None else frozenset()
