"""Label Studio in both directions: tasks with pre-annotations out, labeled images back.

Out: one task per selected image, `data.image` pointing at the copy the sampler wrote and the
model's guess as a prediction, so the annotator confirms or corrects instead of starting blank.
`from_name`/`to_name` must match the project's labeling config (`labeling_config()` writes one
that does). The task also carries `hoh_id` and `hoh_file`, which Label Studio keeps in its
export, so the labels can be matched back to the exact bytes without parsing URLs.

Back: `labels_from_export` reads Label Studio's JSON export and `write_labeled` copies each
labeled image into SRC/<class>/, the layout `hoh data import` reads.
"""
from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any, Iterable, Optional

from hoh.errors import HohError

DEFAULT_FROM_NAME = "choice"
DEFAULT_TO_NAME = "image"
DEFAULT_URL_PREFIX = "/data/local-files/?d="  # Label Studio local storage; document root = sample dir
DATA_KEY = "image"  # `$image` in the labeling config


def prediction(label: str, score: float, model_version: str, from_name: str, to_name: str) -> dict:
    return {
        "model_version": model_version,
        "score": round(float(score), 6),
        "result": [
            {
                "from_name": from_name,
                "to_name": to_name,
                "type": "choices",
                "value": {"choices": [label]},
            }
        ],
    }


def task(
    image_url: str,
    label: str,
    score: float,
    model_version: str,
    from_name: str = DEFAULT_FROM_NAME,
    to_name: str = DEFAULT_TO_NAME,
    extra: Optional[dict[str, Any]] = None,
) -> dict:
    """One import task; `score` is the model's confidence in `label` (Label Studio sorts on it)."""
    return {
        "data": {DATA_KEY: image_url, **(extra or {})},
        "predictions": [prediction(label, score, model_version, from_name, to_name)],
    }


def labeling_config(classes: Iterable[str], from_name: str = DEFAULT_FROM_NAME, to_name: str = DEFAULT_TO_NAME) -> str:
    """An image-classification labeling config whose names match the tasks."""
    choices = "\n".join(f'    <Choice value="{html.escape(c, quote=True)}"/>' for c in classes)
    return (
        "<View>\n"
        f'  <Image name="{html.escape(to_name, quote=True)}" value="${DATA_KEY}"/>\n'
        f'  <Choices name="{html.escape(from_name, quote=True)}" toName="{html.escape(to_name, quote=True)}" '
        'choice="single" showInLine="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )


def _chosen_label(annotation: dict, from_name: Optional[str]) -> Optional[str]:
    for result in annotation.get("result", []):
        if result.get("type") != "choices" or (from_name and result.get("from_name") != from_name):
            continue
        choices = result.get("value", {}).get("choices", [])
        if choices:
            return str(choices[0])
    return None


def labels_from_export(export: Any, from_name: Optional[str] = DEFAULT_FROM_NAME) -> tuple[list[tuple[str, str]], int]:
    """(hoh_file, label) for every task with a usable annotation (the latest one that was not
    cancelled), and how many tasks had none (not labeled yet, or skipped by the annotator)."""
    if not isinstance(export, list):
        raise HohError("Label Studio export: expected a JSON list of tasks (export as 'JSON')")
    labeled, unlabeled = [], 0
    for item in export:
        data = item.get("data", {}) if isinstance(item, dict) else {}
        annotations = [a for a in item.get("annotations", []) if not a.get("was_cancelled")]
        label = None
        for annotation in reversed(annotations):
            label = _chosen_label(annotation, from_name)
            if label:
                break
        if not label or "hoh_file" not in data:
            unlabeled += 1
            continue
        labeled.append((str(data["hoh_file"]), label))
    return labeled, unlabeled


def _safe_class(label: str) -> str:
    if not label or label.startswith(".") or "/" in label or "\\" in label:
        raise HohError(f"label {label!r} cannot be a class folder name (no '/', no leading '.')")
    return label


def write_labeled(
    export_path: str | Path,
    sample_dir: str | Path,
    out: str | Path,
    from_name: Optional[str] = DEFAULT_FROM_NAME,
) -> dict[str, int]:
    """Copy each labeled image of a Label Studio export into `out/<label>/`; returns counts per
    class. Files already there are left alone, so running it twice adds nothing."""
    export_path, sample_dir, out = Path(export_path), Path(sample_dir), Path(out)
    try:
        export = json.loads(export_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HohError(f"Label Studio export {export_path}: cannot read it ({exc})") from None
    labeled, unlabeled = labels_from_export(export, from_name)
    counts: dict[str, int] = {}
    for hoh_file, label in labeled:
        source = sample_dir / hoh_file
        if not source.is_file():
            raise HohError(f"{export_path}: image {hoh_file} is not in the sample directory {sample_dir}")
        target = out / _safe_class(label) / source.name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        counts[label] = counts.get(label, 0) + 1
    counts_unlabeled = {"(no label yet)": unlabeled} if unlabeled else {}
    return {**dict(sorted(counts.items())), **counts_unlabeled}
