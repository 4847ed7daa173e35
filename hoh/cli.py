"""The `hoh` command line.

Importing TFX costs 20-45 s, so this module and the per-feature `cli` modules it loads import
nothing heavy at module level: `hoh --help` and argument errors answer at once, and each handler
imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

import hoh  # noqa: F401  (sets TF_USE_LEGACY_KERAS & co. before anything imports TensorFlow)
from hoh.errors import ExitCode, HohError

# Each module defines `register(subparsers)`, adding its commands with `set_defaults(handler=...)`.
_COMMAND_MODULES = (
    "hoh.data.cli",
    "hoh.data.stream_cli",
    "hoh.data.embeddings_cli",
    "hoh.pipeline.cli",
    "hoh.pipeline.kfp.cli",
    "hoh.pipeline.tracking.cli",
    "hoh.serving.cli",
    "hoh.serving.gateway_cli",
    "hoh.components.drift.cli",
    "hoh.components.sampling.cli",
    "hoh.components.monitor.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hoh",
        description="Raw images to a Triton-served image classifier, with TFX.",
    )
    parser.add_argument("--version", action="version", version=f"hoh {hoh.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except HohError as exc:
        print(f"hoh: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("hoh: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
