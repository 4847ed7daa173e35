"""`hoh run` and `hoh schema promote`. Heavy imports happen inside the handlers."""

from __future__ import annotations

import argparse
from pathlib import Path


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", help="YAML config file (see hoh/configs/*.yaml for documented examples)"
    )
    parser.add_argument(
        "--profile",
        help="built-in config: demo (default without --data), tiny (seconds, for tests), real",
    )
    parser.add_argument(
        "--data", help="span directory from `hoh data import` (default: the demo set)"
    )
    parser.add_argument("--output", help="output directory (pipeline root, MLMD, model repository)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set training.epochs=5 (repeatable)",
    )


def load_cli_config(args: argparse.Namespace):
    from hoh.config import builtin_config_path, load_config
    from hoh.errors import UsageError

    if args.config and args.profile:
        raise UsageError("give either --config or --profile, not both")
    path = args.config
    if args.profile:
        path = builtin_config_path(args.profile)
    elif not args.config and not args.data:
        path = builtin_config_path("demo")
    fields = {"data.root": args.data and str(Path(args.data).resolve()), "output_dir": args.output}
    return load_config(path, args.overrides, **fields), path


def run_exit_code(summary, fail_if_not_blessed: bool) -> int:
    """0 when the run pushed or had nothing to do; NOT_BLESSED only when the caller asked for it.

    A refused model is the Evaluator doing its job, so by default it is not a failure (a daily
    retrain must not page anyone); a scheduler that wants to know passes --fail-if-not-blessed.
    """
    from hoh.errors import ExitCode

    if fail_if_not_blessed and summary.blessed is False:
        return ExitCode.NOT_BLESSED
    return ExitCode.OK


def _run(args: argparse.Namespace) -> int:
    from hoh.pipeline.runners.local import run_local

    cfg, path = load_cli_config(args)
    print(
        f"config: {path or 'defaults'}"
        + (f" + {len(args.overrides)} override(s)" if args.overrides else "")
    )
    summary = run_local(cfg)
    print("-" * 60)
    for line in summary.lines():
        print(line)
    return run_exit_code(summary, args.fail_if_not_blessed)


def _promote(args: argparse.Namespace) -> int:
    from hoh.errors import HohError
    from hoh.pipeline.schema_promotion import latest_inferred_schema, promotable_schema

    source = latest_inferred_schema(str(Path(args.output) / "metadata.sqlite"))
    target = Path(args.to)
    if target.exists() and not args.force:
        raise HohError(f"{target} exists; review the diff and pass --force to replace it")
    text, changes = promotable_schema(Path(source).read_text())
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    for change in changes:
        print(f"  {change}")
    print(f"copied {source} -> {target}; review it, commit it, and runs will use ImportSchemaGen")
    return 0


def register(subparsers) -> None:
    run = subparsers.add_parser("run", help="run the TFX pipeline locally (LocalDagRunner)")
    _add_config_args(run)
    run.add_argument(
        "--fail-if-not-blessed",
        action="store_true",
        help="exit 3 when the Evaluator refuses the model (for schedulers; default: exit 0)",
    )
    run.set_defaults(handler=_run)

    schema = subparsers.add_parser("schema", help="manage the curated schema")
    schema_sub = schema.add_subparsers(dest="schema_command", metavar="SUBCOMMAND")
    schema_sub.required = True
    promote = schema_sub.add_parser(
        "promote", help="copy the schema SchemaGen inferred in the last run into schemas/"
    )
    promote.add_argument("--output", default="hoh-output", help="output directory of the run")
    promote.add_argument("--to", default="schemas/schema.pbtxt")
    promote.add_argument("--force", action="store_true")
    promote.set_defaults(handler=_promote)
