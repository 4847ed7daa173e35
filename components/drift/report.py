"""Files of a drift check: `summary.json` for machines and gates, HTML reports for people.

`summary.json` is the contract (the TFX component copies its verdict into artifact properties,
the run summary and `hoh drift` print from it), so it is written last: a directory with a
summary is complete. Paths go through tf.io.gfile only when they are not local, so the CLI on
plain folders never loads TensorFlow for writing.
"""

from __future__ import annotations

import html
import os
from typing import Any, Optional

from hoh.fileio import is_remote, read_json, write_file, write_json

SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"
EMBEDDINGS_REPORT_FILE = "embeddings.html"
SCHEMA_VERSION = 1


def save_snapshot_html(snapshot: Any, path: str) -> None:
    """Evidently writes local files only; a remote target gets a local temporary copy first."""
    if not is_remote(path):
        snapshot.save_html(path)
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, os.path.basename(path))
        snapshot.save_html(local)
        with open(local, encoding="utf-8") as f:
            write_file(path, f.read())


def no_reference_html(current: str, reason: str) -> str:
    return (
        "<!doctype html><meta charset='utf-8'><title>hoh drift: no reference</title>"
        f"<h1>No drift check</h1><p>{html.escape(reason)}</p>"
        f"<p>Current data: {html.escape(current)}</p>"
    )


def make_summary(
    *,
    current: dict,
    reference: Optional[dict],
    reasons: list[str],
    drifted_share: float,
    features: list[dict],
    descriptors: Optional[dict],
    labels: Optional[dict],
    embeddings: Optional[dict],
    notes: list[str],
    files: list[str],
) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "drift_detected": bool(reasons),
        "drifted_share": drifted_share,
        "reasons": reasons,
        "reference": reference,
        "current": current,
        "descriptors": descriptors,
        "features": features,
        "labels": labels,
        "embeddings": embeddings,
        "notes": notes,
        "files": files,
    }


def write_summary(out_dir: str, summary: dict) -> str:
    return write_json(os.path.join(out_dir, SUMMARY_FILE), summary)


def summary_lines(summary: dict) -> list[str]:
    """A few lines for a terminal: the verdict, then what moved."""
    if summary["reference"] is None:
        return ["drift: not checked - " + "; ".join(summary["notes"] or ["no reference"])]
    head = "drift: DETECTED" if summary["drift_detected"] else "drift: none"
    ref, cur = summary["reference"], summary["current"]
    lines = [
        f"{head} ({cur['images']} current vs {ref['images']} reference images; "
        f"descriptor share {summary['drifted_share']:.2f})"
    ]
    lines += [f"  - {reason}" for reason in summary["reasons"]]
    for feature in summary["features"]:
        if feature["drifted"] and "reference_mean" in feature:
            lines.append(
                f"  {feature['name']}: mean {feature['reference_mean']:.4g} "
                f"-> {feature['current_mean']:.4g} "
                f"({feature['test']} {feature['value']:.3g})"
            )
    skipped = len(ref["skipped"]) + len(cur["skipped"])
    if skipped:
        lines.append(f"  {skipped} image(s) skipped (unreadable); see summary.json")
    lines += [f"  note: {note}" for note in summary["notes"]]
    return lines


def read_summary(out_dir: str) -> Optional[dict]:
    """The summary.json of a drift check; None when absent or unreadable."""
    return read_json(os.path.join(out_dir, SUMMARY_FILE))
