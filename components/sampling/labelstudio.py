"""Label Studio in both directions: tasks with pre-annotations out, labeled images back.

Out: one task per selected image, `data.image` pointing at the copy the sampler wrote and the
model's guess as a prediction, so the annotator confirms or corrects instead of starting blank.
`from_name`/`to_name` must match the project's labeling config (`labeling_config()` writes one
that does). The task also carries `hoh_id` and `hoh_file`, which Label Studio keeps in its
export, so the labels can be matched back to the exact bytes without parsing URLs (and, in a
batch of captured traffic, the request and image index it was served for: `hoh monitor
--labels` scores the served answers with them).

Back: `labels_from_export` reads Label Studio's JSON export and `write_labeled` copies each
labeled image into SRC/<class>/, the layout `hoh data import` reads. The export is untrusted
input (anyone who can edit a task can change `hoh_file` or a label): only files inside the
sample folder are read, only `OUT/<class>/` is written, and the whole export is checked before
the first copy.
"""

from __future__ import annotations

import dataclasses
import html
import json
import shutil
from pathlib import Path
from typing import Any, Iterable, Optional

from hoh.errors import HohError

DEFAULT_FROM_NAME = "choice"
DEFAULT_TO_NAME = "image"
DEFAULT_URL_PREFIX = (
    "/data/local-files/?d="  # Label Studio local storage; document root = sample dir
)
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


def labeling_config(
    classes: Iterable[str], from_name: str = DEFAULT_FROM_NAME, to_name: str = DEFAULT_TO_NAME
) -> str:
    """An image-classification labeling config whose names match the tasks."""
    choices = "\n".join(f'    <Choice value="{html.escape(c, quote=True)}"/>' for c in classes)
    return (
        "<View>\n"
        f'  <Image name="{html.escape(to_name, quote=True)}" value="${DATA_KEY}"/>\n'
        f'  <Choices name="{html.escape(from_name, quote=True)}" '
        f'toName="{html.escape(to_name, quote=True)}" '
        'choice="single" showInLine="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )


def _chosen_label(annotation: dict, from_name: Optional[str]) -> Optional[str]:
    for result in annotation.get("result") or []:
        if not isinstance(result, dict) or not isinstance(result.get("value"), dict):
            continue
        if result.get("type") != "choices" or (from_name and result.get("from_name") != from_name):
            continue
        choices = result.get("value", {}).get("choices", [])
        if choices:
            return str(choices[0])
    return None


def annotated_tasks(
    export: Any, from_name: Optional[str] = DEFAULT_FROM_NAME
) -> tuple[list[tuple[dict, str]], int]:
    """(task data, label) for every task with a usable annotation (the latest one that was not
    cancelled), and how many tasks had none (not labeled yet, or skipped by the annotator)."""
    if not isinstance(export, list):
        raise HohError("Label Studio export: expected a JSON list of tasks (export as 'JSON')")
    labeled, unlabeled = [], 0
    for number, item in enumerate(export, start=1):
        if not isinstance(item, dict):
            raise HohError(f"Label Studio export: task {number} is not a JSON object")
        data = item.get("data") or {}
        if not isinstance(data, dict):
            raise HohError(f"Label Studio export: task {number} has no 'data' object")
        annotations = [a for a in item.get("annotations") or [] if isinstance(a, dict)]
        label = None
        for annotation in reversed([a for a in annotations if not a.get("was_cancelled")]):
            label = _chosen_label(annotation, from_name)
            if label:
                break
        if label:
            labeled.append((data, label))
        else:
            unlabeled += 1
    return labeled, unlabeled


def labels_from_export(
    export: Any, from_name: Optional[str] = DEFAULT_FROM_NAME
) -> tuple[list[tuple[str, str]], int]:
    """(hoh_file, label) of every labeled task; a task without `hoh_file` counts as unlabeled
    (it did not come from a batch `hoh sample` wrote)."""
    tasks, unlabeled = annotated_tasks(export, from_name)
    labeled = [(str(data["hoh_file"]), label) for data, label in tasks if "hoh_file" in data]
    return labeled, unlabeled + len(tasks) - len(labeled)


def read_export(export_path: str | Path) -> Any:
    """The parsed JSON of an export file; an unreadable one is an error naming the file."""
    try:
        return json.loads(Path(export_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HohError(f"Label Studio export {export_path}: cannot read it ({exc})") from None


def _safe_class(label: str) -> str:
    """The label becomes a directory name under OUT, so it must not be able to name another one."""
    if "\0" in label:
        raise HohError(f"label {label!r} holds a NUL character; it cannot be a class folder name")
    if not label or label.startswith(".") or "/" in label or "\\" in label:
        raise HohError(f"label {label!r} cannot be a class folder name (no '/', no leading '.')")
    return label


def _source_in(sample_dir: Path, hoh_file: str) -> Path:
    """The file `hoh_file` names inside the sample folder, resolved; anything that would read
    outside it (an absolute path, `..`, a symlink pointing out) is refused, since the export is
    written by whoever can edit tasks in Label Studio, not by `hoh sample`."""
    relative = Path(hoh_file)
    if "\0" in hoh_file or relative.is_absolute() or ".." in relative.parts:
        raise HohError(f"image {hoh_file!r} is not a path inside the sample directory {sample_dir}")
    root = sample_dir.resolve()
    source = (root / relative).resolve()
    if not source.is_relative_to(root):
        raise HohError(
            f"image {hoh_file!r} leads out of the sample directory {sample_dir} (to {source})"
        )
    if not source.is_file():
        raise HohError(f"image {hoh_file} is not in the sample directory {sample_dir}")
    return source


def _same_bytes(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()


@dataclasses.dataclass
class Labeled:
    """What `write_labeled` did: images copied per class, images already in place (same bytes,
    left alone, so a second run adds nothing) and tasks still without a label."""

    copied: dict[str, int]
    existing: list[Path]
    unlabeled: int


def _plan(
    labeled: list[tuple[str, str]], sample_dir: Path, out: Path
) -> tuple[list[tuple[Path, Path, str]], list[Path]]:
    """(source, target, label) to copy and targets already holding the same bytes; every entry
    is checked before the first copy, so a bad export leaves OUT untouched."""
    copies, existing, planned, labels = [], [], {}, {}
    for hoh_file, label in labeled:
        target = out / _safe_class(label) / Path(hoh_file).name
        source = _source_in(sample_dir, hoh_file)
        if labels.setdefault(source, label) != label:
            raise HohError(f"image {hoh_file} is labeled both {labels[source]!r} and {label!r}")
        if target in planned:
            if planned[target] != source:
                raise HohError(f"{hoh_file} and another image would both be copied to {target}")
            continue
        planned[target] = source
        if target.is_symlink() or (target.exists() and not target.is_file()):
            raise HohError(f"{target} exists and is not a regular file; move it away first")
        if target.exists():
            if not _same_bytes(source, target):
                raise HohError(
                    f"{target} already exists with different content than {hoh_file}; "
                    "move one of them away (nothing was copied)"
                )
            existing.append(target)
            continue
        copies.append((source, target, label))
    return copies, existing


def write_labeled(
    export_path: str | Path,
    sample_dir: str | Path,
    out: str | Path,
    from_name: Optional[str] = DEFAULT_FROM_NAME,
) -> Labeled:
    """Copy each labeled image of a Label Studio export into `out/<label>/`."""
    export_path, sample_dir, out = Path(export_path), Path(sample_dir), Path(out)
    labeled, unlabeled = labels_from_export(read_export(export_path), from_name)
    try:
        copies, existing = _plan(labeled, sample_dir, out)
    except HohError as exc:
        raise HohError(f"{export_path}: {exc}") from None
    copied: dict[str, int] = {}
    for source, target, label in copies:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        copied[label] = copied.get(label, 0) + 1
    return Labeled(dict(sorted(copied.items())), existing, unlabeled)
