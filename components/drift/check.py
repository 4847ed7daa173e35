"""`check_drift`: two image sources in, report files and a verdict out.

The one entry point the TFX component and `hoh drift` share, so a pipeline run and a command
line check on the same data give the same answer.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

from hoh.components.drift import report
from hoh.components.drift.evaluation import descriptor_report, embedding_report, verdict
from hoh.components.drift.profile import Profile, ReducedEmbeddings, build_profile
from hoh.config import DriftConfig
from hoh.data.sources import ImageSource
from hoh.errors import HohError
from hoh.fileio import is_remote, write_file

Echo = Callable[[str], None]


def _side(profile: Profile) -> dict:
    return {"description": profile.description, "images": profile.rows, "skipped": profile.skipped}


def _profile(source: ImageSource, what: str, predictor, reducer, echo: Echo) -> Profile:
    echo(f"describing {what}: {source.description}")
    profile = build_profile(
        source,
        source.description,
        embed=predictor.predict if predictor is not None else None,
        reducer=reducer if predictor is not None else None,
    )
    if predictor is not None:
        predictor.flush_store()
    if profile.rows == 0:
        raise HohError(
            f"{what} {source.description}: no usable image "
            f"({len(profile.skipped)} skipped, e.g. {profile.skipped[:1]})"
        )
    return profile


def _makedirs(out_dir: str) -> None:
    if not is_remote(out_dir):  # object stores have no directories to create
        os.makedirs(out_dir, exist_ok=True)


def no_reference(current: str, out_dir: str, reason: str, context: Optional[dict] = None) -> dict:
    """The first span has nothing to be compared with: say so, and never block on it."""
    _makedirs(out_dir)
    write_file(os.path.join(out_dir, report.REPORT_FILE), report.no_reference_html(current, reason))
    summary = report.make_summary(
        current={"description": current},
        reference=None,
        reasons=[],
        drifted_share=0.0,
        features=[],
        descriptors=None,
        labels=None,
        embeddings=None,
        notes=[reason],
        files=[report.REPORT_FILE, report.SUMMARY_FILE],
    )
    summary.update(context or {})
    report.write_summary(out_dir, summary)
    return summary


def check_drift(
    current: ImageSource,
    reference: Optional[ImageSource],
    out_dir: str,
    settings: Optional[DriftConfig] = None,
    model_path: Optional[str] = None,
    echo: Echo = lambda line: None,
    context: Optional[dict] = None,
    embedding_store: Optional[str] = None,
    snapshots: Optional[dict] = None,
) -> dict:
    """Compare `current` with `reference`; writes report.html (+ embeddings.html) and
    summary.json into `out_dir` and returns the summary. `context`: facts about the caller to
    record in summary.json (the pipeline notes whether the verdict holds the push).
    `embedding_store`: reuse and keep the model's backbone embeddings there. `snapshots`: a
    dict that receives the descriptor tests' Evidently snapshot (key "descriptors"), for a
    caller that keeps them (the monitor adds them to its Evidently workspace)."""
    settings = settings or DriftConfig()
    if reference is None:
        return no_reference(
            current.description, out_dir, "no reference span (the first span)", context
        )
    _makedirs(out_dir)
    notes: list[str] = []
    predictor = None
    if model_path:
        from hoh.trainer.predictor import Predictor

        predictor = Predictor(model_path, embeddings=True, embedding_store=embedding_store)
        if not predictor.has_embeddings:
            notes.append(predictor.note)
            predictor = None
        elif predictor.note:  # embeddings, but no store: say why
            notes.append(predictor.note)
    embedder = predictor if embedding_store else None
    reducer = ReducedEmbeddings(settings.embedding_components, settings.embedding_fit_rows)
    ref = _profile(reference, "reference", predictor, reducer, echo)
    if predictor is not None and reducer.projection is None:
        notes.append("no embedding test: too few reference images to fit the PCA")
        predictor = None
    cur_reducer = ReducedEmbeddings(
        settings.embedding_components, settings.embedding_fit_rows, reducer.projection
    )
    cur = _profile(current, "current", predictor, cur_reducer, echo)
    if not model_path:
        notes.append("no model given: descriptors and labels only, no embedding test")

    echo("running the Evidently tests")
    snapshot, results = descriptor_report(ref, cur, settings)
    if snapshots is not None:
        snapshots["descriptors"] = snapshot
    report.save_snapshot_html(snapshot, os.path.join(out_dir, report.REPORT_FILE))
    files = [report.REPORT_FILE]
    emb_snapshot, embeddings = embedding_report(ref, cur, settings)
    if emb_snapshot is not None:
        report.save_snapshot_html(
            emb_snapshot, os.path.join(out_dir, report.EMBEDDINGS_REPORT_FILE)
        )
        files.append(report.EMBEDDINGS_REPORT_FILE)
        if embeddings["note"]:
            notes.append(embeddings["note"])
    if results["labels"] is None and settings.label_drift:
        notes.append("no label test: one side has no labels")
    summary = report.make_summary(
        current=_side(cur),
        reference=_side(ref),
        reasons=verdict(results["descriptors"], results["labels"], embeddings),
        drifted_share=results["descriptors"]["share"],
        features=results["features"],
        descriptors=results["descriptors"],
        labels=results["labels"],
        embeddings=embeddings,
        notes=notes,
        files=files + [report.SUMMARY_FILE],
    )
    summary.update(context or {})
    summary["embedding_store"] = (
        {"store": embedding_store, **embedder.store_counts} if embedder is not None else None
    )
    report.write_summary(out_dir, summary)
    return summary
