"""`hoh sample` (pick images to label) and `hoh labels` (bring Label Studio's labels back).

Argument parsing and printing only; the work is in `sample.py` and `labelstudio.py`. Unset
options take the pipeline config's defaults (`hoh.config.SamplingConfig`), read when the
command runs: pydantic would cost `hoh --help` half a second.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hoh import features


def _run_sample(args: argparse.Namespace) -> int:
    from hoh.components.sampling.sample import (
        SamplingSettings,
        read_ids,
        sample_pool,
        summary_lines,
    )
    from hoh.config import SamplingConfig
    from hoh.data.sources import resolve_path
    from hoh.errors import HohError
    from hoh.progress import Progress
    from hoh.trainer.predictor import Predictor

    _fill_defaults(args, SamplingConfig())
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise HohError(f"output {out} is not empty; a batch goes into a new directory")
    pool = resolve_path(args.pool, (features.POOL_SPLIT,), "pool")
    exclude = (
        read_ids(resolve_path(args.exclude, features.SPLITS, "exclude"))
        if args.exclude
        else frozenset()
    )
    try:
        settings = SamplingSettings(
            k=args.k,
            strategy=args.strategy,
            diversity=not args.no_diversity,
            candidates_factor=args.candidates_factor,
            from_name=args.from_name,
            to_name=args.to_name,
            url_prefix=args.url_prefix,
        )
    except ValueError as exc:
        raise HohError(str(exc)) from None
    predictor = Predictor(
        args.model, embeddings=settings.diversity, embedding_store=args.embedding_store
    )
    bar = Progress("scored", unit="images")
    try:
        summary = sample_pool(
            pool, predictor, str(out), settings, exclude, echo=print, progress=bar.update
        )
    finally:
        bar.close()
    for line in summary_lines(summary):
        print(line)
    print(
        f"Label Studio import: {out}/label_studio.json (labeling config: {out}/label_config.xml); "
        f"look first: {out}/contact_sheet.html"
    )
    return 0


def _fill_defaults(args: argparse.Namespace, config) -> None:
    for name, key in _CONFIG_KEYS.items():
        if getattr(args, name, None) is None:
            setattr(args, name, getattr(config, key))


def _run_labels(args: argparse.Namespace) -> int:
    from hoh.components.sampling.labelstudio import write_labeled
    from hoh.config import SamplingConfig

    _fill_defaults(args, SamplingConfig())
    result = write_labeled(args.export, args.sample, args.out, args.from_name)
    copied = ", ".join(f"{label} {n}" for label, n in result.copied.items())
    print(f"copied into {args.out}: {copied or 'nothing'}")
    if result.existing:
        print(f"already there with the same bytes, left alone: {len(result.existing)}")
        for path in result.existing[:_LISTED]:
            print(f"  {path}")
        if len(result.existing) > _LISTED:
            print(f"  ... and {len(result.existing) - _LISTED} more")
    if result.unlabeled:
        print(f"tasks without a label yet (not copied): {result.unlabeled}")
    print(f"next: hoh data import {args.out} --out DATA_DIR   (a new span for the next run)")
    return 0


_LISTED = 10  # existing files named one per line; more are counted


# option -> SamplingConfig field supplying its default
_CONFIG_KEYS = {
    "k": "k",
    "strategy": "strategy",
    "candidates_factor": "candidates_factor",
    "from_name": "from_name",
    "to_name": "to_name",
    "url_prefix": "image_url_prefix",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    sample = subparsers.add_parser(
        "sample",
        help="pick the unlabeled images a person should label next (active learning)",
        description="Score every image of POOL with MODEL and write the K most informative ones: "
        "selected.jsonl/.csv, a Label Studio import with the model's guess as pre-annotation, "
        "and an HTML contact sheet. POOL may be a pool data root or span (from `hoh data import "
        "--unlabeled`) or a folder of images; unreadable images are listed and skipped.",
    )
    sample.add_argument(
        "--model",
        required=True,
        metavar="DIR",
        help="a hoh model: Trainer output, SavedModel or Triton version directory",
    )
    sample.add_argument("--pool", required=True, metavar="DIR", help="unlabeled images")
    sample.add_argument(
        "--embedding-store",
        metavar="DIR",
        help="reuse and keep the model's backbone embeddings there (with diversity)",
    )
    sample.add_argument("--k", type=int, help="images to select (default: sampling.k, 50)")
    sample.add_argument("--out", required=True, metavar="DIR", help="new or empty output directory")
    sample.add_argument(
        "--strategy",
        choices=("least_confidence", "margin", "entropy"),
        help="uncertainty score (default: sampling.strategy, margin)",
    )
    sample.add_argument(
        "--no-diversity",
        action="store_true",
        help="plain top-K by uncertainty (default: k-center greedy among the top candidates)",
    )
    sample.add_argument(
        "--candidates-factor",
        type=int,
        help="diversity picks among factor*K most uncertain (default: 5)",
    )
    sample.add_argument(
        "--exclude",
        metavar="DIR",
        help="labeled data (data root or span) whose images are not proposed again",
    )
    sample.add_argument("--from-name", help="Label Studio Choices name (default: choice)")
    sample.add_argument("--to-name", help="Label Studio Image name (default: image)")
    sample.add_argument(
        "--url-prefix", help="prefix of image URLs in the tasks (default: /data/local-files/?d=)"
    )
    sample.set_defaults(handler=_run_sample)

    labels = subparsers.add_parser(
        "labels",
        help="copy images labeled in Label Studio into SRC/<class>/ for `hoh data import`",
        description="Read a Label Studio JSON export of tasks made by `hoh sample` and copy each "
        "labeled image from the sample directory into OUT/<class>/. Tasks without an annotation "
        "are counted and left out; images already in OUT/<class>/ with the same bytes are listed "
        "and left alone. The whole export is checked first: a path leading out of the sample "
        "directory, a label that is not a plain folder name or a clash with a different file in "
        "OUT stops the command before anything is copied.",
    )
    labels.add_argument("export", metavar="EXPORT.json", help="Label Studio export (format 'JSON')")
    labels.add_argument(
        "--sample", required=True, metavar="DIR", help="the `hoh sample` output directory"
    )
    labels.add_argument(
        "--out", required=True, metavar="SRC", help="class folders to add the images to"
    )
    labels.add_argument("--from-name", help="Choices name (default: choice)")
    labels.set_defaults(handler=_run_labels)
