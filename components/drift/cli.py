"""`hoh drift`: the pipeline's drift check on two folders or spans, without a pipeline.

Argument parsing and printing only; the work is `hoh.components.drift.check.check_drift`.
Unset options take the pipeline config's defaults (`hoh.config.DriftConfig`), read when the
command runs: pydantic would cost `hoh --help` half a second.
"""

from __future__ import annotations

import argparse

from hoh import features
from hoh.errors import ExitCode


def _run(args: argparse.Namespace) -> int:
    import json

    from hoh.components.drift.check import check_drift
    from hoh.components.drift.report import summary_lines
    from hoh.config import DriftConfig, parse_section
    from hoh.data.sources import resolve_path

    flags = {
        "drift_share": args.drift_share,
        "column_method": args.column_method,
        "column_threshold": args.column_threshold,
        "label_drift": not args.no_labels,
    }
    settings = parse_section(
        DriftConfig,
        json.dumps({k: v for k, v in flags.items() if v not in (None, "")}),
        "hoh drift flags",
    )
    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    reference = resolve_path(args.reference, splits, "reference")
    current = resolve_path(args.current, splits, "current")
    summary = check_drift(
        current,
        reference,
        args.out,
        settings,
        args.model,
        echo=print,
        embedding_store=args.embedding_store,
    )
    for line in summary_lines(summary):
        print(line)
    print(f"report: {args.out}/report.html, summary: {args.out}/summary.json")
    drifted = args.fail_on_drift and summary["drift_detected"]
    return ExitCode.DRIFT_DETECTED if drifted else ExitCode.OK


def register(subparsers: argparse._SubParsersAction) -> None:
    drift = subparsers.add_parser(
        "drift",
        help="compare two image sets for data drift (Evidently report + JSON verdict)",
        description="Describe every image of REFERENCE and CURRENT (brightness, contrast, channel "
        "means, saturation, sharpness, size, format; backbone embeddings with --model) and test "
        "whether CURRENT drifted. Each may be a data root (its latest span), a span directory, or "
        "a folder of images (SRC/<class>/<image> gives labels, for the class-proportion test).",
    )
    drift.add_argument("--reference", required=True, metavar="DIR", help="the data the model knows")
    drift.add_argument("--current", required=True, metavar="DIR", help="the new data")
    drift.add_argument(
        "--out", required=True, metavar="DIR", help="report.html, summary.json go here"
    )
    drift.add_argument(
        "--model",
        metavar="DIR",
        help="a hoh model (Trainer output, SavedModel or Triton "
        "version directory): adds the embedding test",
    )
    drift.add_argument(
        "--embedding-store",
        metavar="DIR",
        help="reuse and keep the model's backbone embeddings there (hoh embeddings list)",
    )
    drift.add_argument(
        "--splits",
        default=",".join(features.SPLITS),
        help="splits read from span directories (default: %(default)s)",
    )
    drift.add_argument(
        "--drift-share",
        type=float,
        help="share of drifted descriptors that declares drift (default: drift.drift_share)",
    )
    drift.add_argument(
        "--column-method",
        help="Evidently stattest for the descriptors (default: Evidently's choice)",
    )
    drift.add_argument("--column-threshold", type=float, help="threshold of that stattest")
    drift.add_argument("--no-labels", action="store_true", help="skip the class-proportion test")
    drift.add_argument(
        "--fail-on-drift", action="store_true", help="exit with status 5 when drift is detected"
    )
    drift.set_defaults(handler=_run)
