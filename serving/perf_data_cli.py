"""`hoh serve perf-data`: real images -> perf_analyzer's `--input-data`, plus the library links
its binary needs, and the command line to run (see serving/perf_data.py). Also runnable as
`python -m hoh.serving.perf_data_cli`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from hoh.errors import HohError
from hoh.serving.perf_data import link_missing_libraries, perf_input_data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    parser.add_argument("--out", type=Path, required=True, help="the --input-data JSON to write")
    parser.add_argument("--limit", type=int, default=0, help="first N images only (0 = all)")
    parser.add_argument(
        "--lib-dir", type=Path, default=None, help="where to link the libraries perf_analyzer lacks"
    )
    parser.add_argument("--model", default="hoh", help="model name for the printed command")
    parser.add_argument("--url", default="127.0.0.1:8000", help="Triton HTTP address to print")


def run(args: argparse.Namespace) -> int:
    from hoh.serving.files import expand_images
    from hoh.serving.installation import find_installation

    if args.limit < 0:
        raise HohError(f"--limit must be 0 (all) or more, got {args.limit}")
    paths = expand_images(args.images)[: args.limit or None]
    args.out.write_text(json.dumps(perf_input_data([p.read_bytes() for p in paths])))
    install = find_installation()
    lib_dir = link_missing_libraries(install.libs, args.lib_dir or args.out.parent / "perf-libs")
    print(
        f"wrote {len(paths)} images to {args.out}; run:\n"
        f"  LD_LIBRARY_PATH={lib_dir}:{install.libs} {Path(sys.executable).parent}/perf_analyzer"
        f" -m {args.model} -u {args.url} --input-data {args.out} --concurrency-range 1:8:2"
    )
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hoh.serving.perf_data_cli", description=__doc__.split("\n")[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except HohError as exc:  # a clear message and the documented exit code, no traceback
        print(f"hoh: {exc}", file=sys.stderr)
        sys.exit(int(exc.exit_code))
