"""`hoh data import` and `hoh data demo`: argument parsing and printing only.

The work happens in hoh.data.importer and hoh.data.demo, which tests call directly; the modules
imported here load neither TensorFlow nor TFX, so `hoh --help` stays instant.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hoh.data import demo, importer
from hoh.data.images import DEFAULT_MAX_PIXELS
from hoh.errors import HohError
from hoh.progress import Progress, StagedProgress


def _run_import(args: argparse.Namespace) -> int:
    progress = StagedProgress()
    try:
        report = importer.import_images(
            args.src,
            args.out,
            span=args.span,
            eval_ratio=args.eval_ratio,
            unlabeled=args.unlabeled,
            max_pixels=args.max_pixels,
            report_path=args.report,
            progress=progress,
        )
    except OSError as exc:
        # The importer names the output for the errors it expects; anything else the OS refuses
        # (a file vanishing under SRC, a full disk) still deserves one line, not a traceback.
        raise HohError(f"import failed: {importer.describe_os_error(exc)}") from None
    finally:
        progress.close()
    paths = [str(Path(report.span_dir) / importer.REPORT_NAME)]
    if args.report:
        paths.append(args.report)
    print("\n".join(report.summary_lines(tuple(paths))))
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    counts = demo.make_demo_dataset(
        args.out, per_class=args.per_class, size=args.size, seed=args.seed, classes=args.classes
    )
    per_class = ", ".join(f"{c} {n}" for c, n in counts.items())
    print(f"wrote {sum(counts.values())} images ({per_class}) to {args.out}")
    print(f"import them with: hoh data import {args.out} --out DATA_DIR")
    return 0


def _class_list(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} must be strictly between 0 and 1")
    return value


def _run_download(args: argparse.Namespace) -> int:
    from hoh.data.download import HORSES_OR_HUMANS, download

    bar = Progress("download", unit="MB")
    total_mb = round(HORSES_OR_HUMANS.size / 1e6, 1)
    try:
        folder = download(
            args.out,
            local_archive=args.archive and Path(args.archive),
            progress=lambda done: bar.update(round(done / 1e6, 1), total_mb),
        )
    finally:
        bar.close()
    print(f"verified (sha256 {HORSES_OR_HUMANS.sha256[:12]}...) and unpacked into {folder}")
    print(f"data: {HORSES_OR_HUMANS.credit}")
    print(f"next: hoh data import {folder} --out DATA_DIR")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser(
        "data",
        help="turn image folders into training data, or make the built-in demo images",
        description="Turn image folders into the TFRecord spans the pipeline reads.",
    )
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    commands.required = True

    imp = commands.add_parser(
        "import",
        help="import SRC/<class>/<image> as a new span DIR/span-N",
        description="Check every image in SRC (one subfolder per class) and write the good ones "
        "as gzip TFRecords to DIR/span-N/{train,eval}/, split by content hash. Bad files and "
        "duplicates are listed in DIR/span-N/import_report.json; an existing span is never "
        "overwritten.",
    )
    imp.add_argument("src", metavar="SRC", help="folder with one subfolder per class")
    imp.add_argument("--out", required=True, metavar="DIR", help="data root holding the spans")
    imp.add_argument(
        "--span", type=int, help="span number to write (default: one after the latest; 1 if none)"
    )
    imp.add_argument(
        "--eval-ratio",
        type=_ratio,
        default=importer.DEFAULT_EVAL_RATIO,
        help="share of images in the eval split (default: %(default)s)",
    )
    imp.add_argument("--report", metavar="FILE", help="also write the JSON report here")
    imp.add_argument(
        "--unlabeled",
        action="store_true",
        help="SRC holds images without classes: write them to span-N/pool/ without labels",
    )
    imp.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="reject images with more pixels than this (default: %(default)s)",
    )
    imp.set_defaults(handler=_run_import)

    dl = commands.add_parser(
        "download",
        help="download and verify the public horses-or-humans training set (needs internet)",
        description="Fetch horse-or-human.zip, check its size and SHA-256, unpack it into "
        "DIR/horse-or-human/{horses,humans}. Data by Laurence Moroney, CC BY 2.0.",
    )
    dl.add_argument("--out", required=True, metavar="DIR", help="folder to unpack into")
    dl.add_argument(
        "--archive", metavar="ZIP", help="verify and unpack an already downloaded copy instead"
    )
    dl.set_defaults(handler=_run_download)

    dem = commands.add_parser(
        "demo",
        help="write the built-in procedural demo images (no download)",
        description="Draw a deterministic image set in the SRC/<class>/<image> layout that "
        "`hoh data import` reads. Known classes: " + ", ".join(demo.known_classes()) + ".",
    )
    dem.add_argument("--out", required=True, metavar="DIR", help="new or empty folder")
    dem.add_argument(
        "--per-class",
        type=int,
        default=demo.DEFAULT_PER_CLASS,
        metavar="N",
        help="images per class (default: %(default)s)",
    )
    dem.add_argument(
        "--size",
        type=int,
        default=demo.DEFAULT_SIZE,
        help="image width and height in pixels (default: %(default)s)",
    )
    dem.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default: 0)")
    dem.add_argument(
        "--classes",
        type=_class_list,
        default=demo.DEFAULT_CLASSES,
        help="comma-separated (default: " + ",".join(demo.DEFAULT_CLASSES) + ")",
    )
    dem.set_defaults(handler=_run_demo)
