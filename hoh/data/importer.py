"""`hoh data import`: a folder of images becomes one new span of the data lake.

The span is what ImportExampleGen reads (see hoh.features), so this is the one place that
decides what the pipeline will ever see. It works in two streaming passes, holding at most one
image in memory:

1. check: every candidate is header-checked, hashed and decoded with TensorFlow; only a small
   record per good image is kept. Class and split problems are found here, before any output
   exists, so a refused import leaves nothing behind.
2. write: good images are re-read (and re-hashed, in case a file changed meanwhile) and written
   in hash order, which is a deterministic shuffle: records of different classes are mixed, so a
   small shuffle buffer in the Trainer still sees both classes.

Output goes to a private `.tmp-span-N-*` directory in DIR that is renamed to `span-N` only when
complete, so a crash never leaves a half-written span that ImportExampleGen would pick up (a
killed process leaves only the hidden temporary directory, which no `span-{SPAN}` pattern
matches; delete it at leisure).

Publishing the span is the last step that can fail, because a user who sees an error retries, and
a retry after a published span makes a duplicate span N+1. So the outputs (DIR and `--report`)
are checked before any image is read; the span's own report and the `--report` copy are written
and fsynced before the rename; the span's files and directories are fsynced before it and DIR
after it, so a power cut leaves either no span or a complete one. OS errors while writing (disk
full, permissions) become one HohError naming the output; nothing is published then.

Spans are numbered from 1; by default an import appends the span after the latest one in DIR.
An existing span is never overwritten: a span is immutable once the pipeline may have used it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from hoh import features
from hoh.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageRejected,
    TfDecodeCheck,
    check_image_bytes,
    content_id,
    read_header,
)
from hoh.data.layout import SourceFile, scan_source
from hoh.data.report import Duplicate, ImportReport, Rejected, read_import_report
from hoh.data.split import EVAL, POOL, TRAIN, assign_splits
from hoh.data.tfrecords import DEFAULT_SHARD_BYTES, ShardedWriter, serialize_example
from hoh.durable import sync_path, sync_tree, write_hidden_temp
from hoh.errors import HohError, RunFailed, UsageError

DEFAULT_EVAL_RATIO = 0.2
FIRST_SPAN = 1
REPORT_NAME = features.IMPORT_REPORT

# progress(stage, done, total): stage is "check" or "write".
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class _Good:
    file: SourceFile
    id: str
    width: int
    height: int


_CHECK_THREADS = min(4, os.cpu_count() or 1)


def next_span(out_dir: str | Path) -> int:
    """The span an import appends by default: one after the latest, FIRST_SPAN in a new DIR."""
    spans = features.list_spans(out_dir)
    return spans[-1] + 1 if spans else FIRST_SPAN


def _check_arguments(
    src: Path, out_dir: Path, eval_ratio: float, max_pixels: int, shard_bytes: int
) -> None:
    if not src.exists():
        raise HohError(f"import source {src} does not exist")
    if not src.is_dir():
        raise HohError(f"import source {src} is not a directory (expected SRC/<class>/<image>)")
    if not 0.0 < eval_ratio < 1.0:
        raise HohError(f"eval ratio must be strictly between 0 and 1, got {eval_ratio}")
    if max_pixels <= 0 or shard_bytes <= 0:
        raise HohError("max_pixels and shard_bytes must be positive")
    check_creatable("output", out_dir, want_dir=True)
    resolved_src, resolved_out = src.resolve(), out_dir.resolve()
    if resolved_out == resolved_src or resolved_src in resolved_out.parents:
        raise HohError(
            f"output {out_dir} is inside the import source {src}; the next import would read "
            "the TFRecords as images. Choose an output outside SRC."
        )


def check_creatable(what: str, path: Path, want_dir: bool) -> None:
    """Refuse an output that cannot be written before any work is done, and without creating it.

    The first existing path upwards decides: it must be the wanted kind, and a directory to be
    created in must be writable. os.access is only a forecast (root passes it, a full disk does
    not show): the writes themselves are still guarded, but they come before publishing. A path
    flag that cannot work is a usage error (its own exit code), not a failed import.
    """
    if path.exists():
        if path.is_dir() != want_dir:
            kind = "is not a directory" if want_dir else "is a directory"
            raise UsageError(f"{what} {path} exists and {kind}")
        if not os.access(path, (os.W_OK | os.X_OK) if want_dir else os.W_OK):
            raise UsageError(f"{what} {path} is not writable")
        return
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{what} {path} cannot be created: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path} cannot be created: {ancestor} is not writable")


def _check_report_path(report_path: Path, out_dir: Path) -> None:
    check_creatable("report", report_path, want_dir=False)
    try:
        inside = report_path.resolve().relative_to(out_dir.resolve()).parts
    except ValueError:
        return
    if len(inside) > 1 and inside[0].startswith(features.SPAN_PREFIX):
        raise UsageError(
            f"report {report_path} is inside the span directory {out_dir / inside[0]}; spans are "
            f"immutable (each already holds its {REPORT_NAME}). Write the report elsewhere."
        )


def describe_os_error(exc: Exception) -> str:
    """One line for an OSError or a TensorFlow file error, without TF's op-name noise."""
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    return str(getattr(exc, "message", exc)).strip().splitlines()[0]


def _choose_span(out_dir: Path, span: Optional[int]) -> int:
    if span is None:
        return next_span(out_dir)
    if span < 0:
        raise HohError(f"span must be >= 0, got {span}")
    existing = features.span_dir(out_dir, span)
    if existing.exists():
        raise HohError(
            f"span {span} already exists at {existing}; spans are never overwritten. "
            f"Omit --span to append span {next_span(out_dir)}, or delete that directory."
        )
    return span


def _inspect(file: SourceFile, max_pixels: int, decode: TfDecodeCheck) -> tuple[str, int, int]:
    """(sha256, width, height) of one candidate, or ImageRejected saying why not."""
    try:
        info = file.path.stat()
        if not stat.S_ISREG(info.st_mode):  # a FIFO would block the read forever
            raise ImageRejected("not_a_file", "not a regular file")
        if info.st_size == 0:
            raise ImageRejected("empty_file", "empty file (0 bytes)")
        read_header(file.path, max_pixels)  # refuses a bomb before its bytes are read
        data = file.path.read_bytes()
    except OSError as exc:
        reason = f"cannot read it: {exc.strerror or exc}"
        raise ImageRejected("unreadable", reason) from None
    checked = check_image_bytes(data, max_pixels, decode)
    return checked.id, checked.width, checked.height


def _check_files(
    files: list[SourceFile], max_pixels: int, progress: Optional[Progress]
) -> tuple[list[_Good], list[Rejected], list[Duplicate]]:
    """Pass 1: classify every candidate as good, rejected or a duplicate of an earlier good one.

    Files are inspected on a few threads (TF's decoder and hashlib release the GIL: ~1.8x on
    2 cores) but consumed in file order, so which copy of a duplicate is kept stays deterministic.
    Only one small tuple per file is kept; the bytes are dropped as soon as they are checked.
    """
    decode = TfDecodeCheck()
    good: dict[str, _Good] = {}
    rejected: list[Rejected] = []
    duplicates: list[Duplicate] = []

    def job(file: SourceFile):
        try:
            return file, _inspect(file, max_pixels, decode), None
        except ImageRejected as exc:
            return file, None, exc

    with ThreadPoolExecutor(max_workers=_CHECK_THREADS) as pool:
        for done, (file, checked, error) in enumerate(pool.map(job, files), 1):
            if error is not None:
                rejected.append(Rejected(file.source, error.kind, error.reason))
            else:
                image_id, width, height = checked
                first = good.get(image_id)
                if first is not None:
                    kept = first.file
                    duplicates.append(
                        Duplicate(file.source, kept.source, image_id, file.label, kept.label)
                    )
                else:
                    good[image_id] = _Good(file, image_id, width, height)
            if progress:
                progress("check", done, len(files))
    return list(good.values()), rejected, duplicates


def _rejections_in(class_dir: str, rejected: list[Rejected]) -> str:
    kinds = Counter(r.kind for r in rejected if r.path.startswith(class_dir + "/"))
    if not kinds:
        return "no files"
    return ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) + " rejected"


def plan_labeled(
    report: ImportReport, good: list[tuple[str, str]], class_dirs: list[str]
) -> dict[str, str]:
    """Classes, split per image id and warnings; raises before anything is written if unusable.

    `good` holds (id, label) of the images to write; `hoh ingest` seals spans with it too.
    """
    per_class = Counter(label for _, label in good)
    clashes = features.class_name_collisions(sorted(per_class))
    if clashes:
        raise HohError(f"import source {report.src}: {clashes[0]}. Nothing was written.")
    report.classes = sorted(per_class)
    report.empty_classes = [c for c in class_dirs if c not in per_class]
    if len(report.classes) < 2:
        found = ", ".join(f"{c} ({n} usable)" for c, n in sorted(per_class.items())) or "none"
        empty = "; ".join(
            f"{c}: {_rejections_in(c, report.rejected)}" for c in report.empty_classes
        )
        raise HohError(
            f"import source {report.src} needs at least 2 classes with usable images, found "
            f"{found}"
            + (f"; class folders without usable images: {empty}" if empty else "")
            + ". Nothing was written."
        )
    splits = assign_splits(good, report.eval_ratio)
    if EVAL not in splits.values():
        raise HohError(
            f"import source {report.src}: every class has a single usable image, so the eval "
            "split would be empty and the pipeline could not evaluate. Add images (at least 2 "
            "per class). Nothing was written."
        )
    report.counts = {c: {TRAIN: 0, EVAL: 0} for c in report.classes}
    for image_id, label in good:
        report.counts[label][splits[image_id]] += 1
    for c in report.empty_classes:
        report.warnings.append(
            f"class folder {c!r} has no usable image ({_rejections_in(c, report.rejected)}); "
            "it is not a class of this span"
        )
    for c, n in sorted(per_class.items()):
        if n == 1:
            report.warnings.append(f"class {c!r} has a single image: in train, never evaluated")
    return splits


def _write_error(report: ImportReport, exc: Exception) -> HohError:
    return RunFailed(
        f"cannot write span {report.span} to {report.out_dir}: {describe_os_error(exc)}. "
        "Nothing was published; fix the output and run the same import again."
    )


def publish_span(
    report: ImportReport,
    tmp: Path,
    extra: Optional[Path],
    report_path: Optional[Path],
    created_out: bool,
) -> None:
    """Make the span visible: the only step after which a failure must not invite a retry.

    The --report copy is moved into place just before the span's rename (and removed again if
    that rename fails), so a user who sees success finds both, and one who sees an error finds
    neither and can re-run the same command for the same span number.
    """
    out_dir, final = Path(report.out_dir), Path(report.span_dir)
    if final.exists():  # os.rename would silently replace an empty directory
        raise HohError(f"span directory {final} appeared while importing; not overwriting it")
    replaced = False
    try:
        if extra is not None and report_path is not None:
            os.replace(extra, report_path)
            replaced = True
            sync_path(report_path.parent)
        os.rename(tmp, final)
    except OSError as exc:
        if replaced and report_path is not None:
            report_path.unlink(missing_ok=True)
        raise _write_error(report, exc) from None
    synced = [out_dir, out_dir.parent] if created_out else [out_dir]
    try:
        for directory in synced:
            sync_path(directory)
    except OSError as exc:
        raise HohError(
            f"span {report.span} was published at {final}, but flushing {directory} to disk "
            f"failed ({describe_os_error(exc)}); check the disk. Do not import again: that "
            f"would add span {report.span + 1} with the same images."
        ) from None


def _write_span(
    report: ImportReport,
    good: list[_Good],
    splits: dict[str, str],
    shard_bytes: int,
    progress: Optional[Progress],
    report_path: Optional[Path],
) -> None:
    """Pass 2: write every good image into a private directory, then publish it as the span.

    The shards, the span's report and the --report copy are all written and fsynced before the
    rename, so a failure (disk full, a report path that vanished) leaves no span behind.
    """
    import tensorflow as tf  # lazy: the CLI must start without TensorFlow

    out_dir, final = Path(report.out_dir), Path(report.span_dir)
    tmp: Optional[Path] = None
    extra: Optional[Path] = None
    try:
        try:
            created_out = not out_dir.exists()
            out_dir.mkdir(parents=True, exist_ok=True)
            tmp = out_dir / f".tmp-{final.name}-{secrets.token_hex(4)}"
            tmp.mkdir()
            writers: dict[str, ShardedWriter] = {}
            ordered = sorted(good, key=lambda g: g.id)
            for done, g in enumerate(ordered, 1):
                try:
                    data = g.file.path.read_bytes()
                except OSError as exc:
                    raise HohError(
                        f"{g.file.path} became unreadable while importing: "
                        f"{describe_os_error(exc)}; nothing was published, re-run"
                    ) from None
                if content_id(data) != g.id:
                    raise HohError(
                        f"{g.file.path} changed while importing; nothing was published, re-run"
                    )
                split = splits[g.id]
                if split not in writers:
                    writers[split] = ShardedWriter(tf, tmp / split, shard_bytes)
                writers[split].write(
                    serialize_example(
                        tf, data, g.id, g.file.source, g.file.label, g.width, g.height
                    )
                )
                if progress:
                    progress("write", done, len(ordered))
            report.split_counts = {
                s: writers[s].records for s in (TRAIN, EVAL, POOL) if s in writers
            }
            report.shards = {s: len(writers[s].close()) for s in report.split_counts}
            report.written = len(ordered)
            assert report.adds_up, "every file must be written, rejected or a duplicate"
            text = report.to_json()
            (tmp / REPORT_NAME).write_text(text, encoding="utf-8")
            sync_tree(tmp)
            if report_path is not None:
                report_path.parent.mkdir(parents=True, exist_ok=True)
                extra = write_hidden_temp(report_path.parent, report_path.name, text)
        except (OSError, tf.errors.OpError) as exc:
            raise _write_error(report, exc) from None
        publish_span(report, tmp, extra, report_path, created_out)
        tmp = extra = None
    finally:
        if extra is not None:
            extra.unlink(missing_ok=True)
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _check_against_earlier_spans(out_dir: Path, span: int, class_dirs: list[str]) -> None:
    """A class folder spelt differently from a class of the latest earlier span ("Horses" after
    "horses") would become a new class beside the old one; refused before reading any image."""
    earlier = [s for s in features.list_spans(out_dir) if s < span]
    if not earlier:
        return
    try:
        known = [str(c) for c in read_import_report(out_dir, earlier[-1])["classes"]]
    except HohError:
        return  # a foreign span without a readable report: nothing to compare with
    new = [c for c in class_dirs if c not in known]
    for message in features.class_name_collisions(known + new):
        raise HohError(
            f"class folders vs span {earlier[-1]} of {out_dir}: {message} (or rename the class "
            "of the earlier spans). Nothing was written."
        )


def import_images(
    src: str | Path,
    out_dir: str | Path,
    span: Optional[int] = None,
    eval_ratio: float = DEFAULT_EVAL_RATIO,
    *,
    unlabeled: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    report_path: Optional[str | Path] = None,
    progress: Optional[Progress] = None,
) -> ImportReport:
    """Import SRC as span `span` (default: the next one) of the data lake at `out_dir`.

    Labelled (default): SRC/<class>/... as described in hoh.data.layout; writes
    span-N/{train,eval}/ split by content hash (hoh.data.split). `unlabeled=True`: every image
    under SRC goes to span-N/pool/ without a label feature, for scoring or later labelling.
    Bad files and duplicates never stop the import; they are listed in the report, written to
    span-N/import_report.json and, if given, `report_path` (both before the span is published).
    Problems that would make the span unusable or silently partial (missing SRC, an output or
    report path that cannot be written, a folder that cannot be read, a link that would change a
    class, fewer than 2 classes, an empty eval split, an existing span) raise HohError before
    anything is published.
    """
    src, out_dir = Path(src), Path(out_dir)
    _check_arguments(src, out_dir, eval_ratio, max_pixels, shard_bytes)
    if report_path is not None:
        report_path = Path(report_path)
        _check_report_path(report_path, out_dir)
    span = _choose_span(out_dir, span)
    scan = scan_source(src, unlabeled)
    if not unlabeled and not scan.class_dirs:
        raise HohError(
            f"import source {src} has no class folders: expected SRC/<class>/<image>, e.g. "
            f"{src}/horses/1.png (for images without labels use --unlabeled)"
        )
    if not unlabeled:
        _check_against_earlier_spans(out_dir, span, scan.class_dirs)
    good, rejected, duplicates = _check_files(scan.files, max_pixels, progress)
    report = ImportReport(  # absolute paths: the report outlives the shell it was run from
        src=str(src.absolute()),
        out_dir=str(out_dir.absolute()),
        span=span,
        span_dir=str(features.span_dir(out_dir.absolute(), span)),
        eval_ratio=eval_ratio,
        unlabeled=unlabeled,
        seen=len(scan.files) + len(scan.rejected),
        rejected=sorted(scan.rejected + rejected, key=lambda r: r.path),
        duplicates=duplicates,
        warnings=list(scan.warnings),
    )
    if unlabeled:
        if not good:
            raise HohError(f"import source {src} has no usable image; nothing was written")
        splits = {g.id: POOL for g in good}
    else:
        splits = plan_labeled(report, [(g.id, g.file.label) for g in good], scan.class_dirs)
    _write_span(report, good, splits, shard_bytes, progress, report_path)
    return report
