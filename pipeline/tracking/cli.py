"""`hoh runs`, `hoh models` and `hoh config show`: run history and the registry, from MLflow.

Handlers import MLflow inside the function (it costs seconds); each command prints and returns
an exit code, bad input raises UsageError (exit 2) with the input named.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path
from typing import List

_STORE_LIBRARIES = {"mlflow", "sqlalchemy", "requests", "urllib3", "psycopg2", "alembic"}


def _store_errors(handler):
    """A store that is down or refuses a request is one line and exit 1, not a traceback."""

    def wrapped(args: argparse.Namespace) -> int:
        from hoh.errors import HohError

        try:
            return handler(args)
        except HohError:
            raise
        except Exception as exc:
            if type(exc).__module__.split(".")[0] not in _STORE_LIBRARIES:
                raise
            from hoh.pipeline.tracking import store

            cfg = _config(args)
            uri = store.tracking_uris(cfg)[0]
            raise store.TrackingUnavailable(
                store.scrub(
                    f"MLflow store {store.redact(uri)}: {store.short(exc)}",
                    cfg.tracking.uri,
                    cfg.tracking.registry_uri,
                )
            ) from None

    return wrapped


def _config(args: argparse.Namespace):
    from hoh.pipeline.cli import load_cli_config

    return load_cli_config(args)[0]


def _client(cfg):
    from hoh.pipeline.tracking import store

    return store.client(cfg)


def _when(ms) -> str:
    if not ms:
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def _runs(cfg, mlflow_client) -> list:
    from hoh.pipeline.tracking import store

    experiment = store.experiment_id(mlflow_client, cfg, create=False)
    if experiment is None:
        return []
    return mlflow_client.search_runs(
        [experiment], order_by=["attributes.start_time DESC"], max_results=1000
    )


def run_line(run) -> str:
    """One line per run: when, span, examples, blessed and why, key metrics, push, duration."""
    tags, metrics = run.data.tags, run.data.metrics
    examples = "/".join(
        f"{s} {int(metrics[f'examples.{s}'])}"
        for s in ("train", "eval")
        if f"examples.{s}" in metrics
    )
    key = ", ".join(
        f"{k[len('eval.') :]} {v:.4f}"
        for k, v in sorted(metrics.items())
        if k
        in ("eval.auc", "eval.binary_accuracy", "eval.sparse_categorical_accuracy", "eval.accuracy")
    )
    if tags.get("hoh.status") == "failed":
        return "  ".join(
            [
                _when(run.info.start_time),
                run.info.run_id[:12],
                f"FAILED: {tags.get('hoh.error', '')}",
            ]
        )
    blessed = tags.get("hoh.blessed", "?")
    if blessed == "no":
        blessed += f" ({tags.get('hoh.blessing_reason', '')})"
    pushed = (
        f"pushed v{tags['hoh.pushed_version']}" if tags.get("hoh.pushed_version") else "not pushed"
    )
    duration = f"{metrics['duration_s']:.0f}s" if "duration_s" in metrics else "-"
    return "  ".join(
        [
            _when(run.info.start_time),
            run.info.run_id[:12],
            f"span {tags.get('hoh.span', '?')}",
            examples or "examples ?",
            f"blessed {blessed}",
            key or "no metrics",
            pushed,
            duration,
        ]
    )


def find_run(cfg, mlflow_client, ref: str):
    """A run by MLflow run id (or a unique prefix) or by its MLMD pipeline run id."""
    from hoh.errors import UsageError

    runs = _runs(cfg, mlflow_client)
    exact = [r for r in runs if ref in (r.info.run_id, r.data.tags.get("hoh.mlmd.pipeline_run"))]
    matches = exact or [r for r in runs if r.info.run_id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UsageError(f"no tracked run {ref!r} (see `hoh runs list`)")
    raise UsageError(f"run {ref!r} is ambiguous: {', '.join(r.info.run_id for r in matches)}")


def _artifact_text(mlflow_client, run_id: str, path: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow_client.download_artifacts(run_id, path, tmp)
        except Exception as exc:
            return f"({path} unavailable: {type(exc).__name__}: {exc})\n"
        return Path(local).read_text(encoding="utf-8")


def _runs_list(args) -> int:
    cfg = _config(args)
    runs = _runs(cfg, _client(cfg))
    if not runs:
        from hoh.pipeline.tracking.store import experiment_name, redact, tracking_uris

        print(
            f"no runs tracked in experiment {experiment_name(cfg)!r} "
            f"({redact(tracking_uris(cfg)[0])})"
        )
        return 0
    for run in runs[: args.limit]:
        print(run_line(run))
    return 0


def _runs_show(args) -> int:
    from hoh.pipeline.tracking.log import CONFIG_ARTIFACT, SUMMARY_ARTIFACT

    cfg = _config(args)
    mlflow_client = _client(cfg)
    run = find_run(cfg, mlflow_client, args.run)
    tags = run.data.tags
    print(f"run {run.info.run_id} ({run.info.status}), started {_when(run.info.start_time)}")
    print(
        f"MLMD pipeline run: {tags.get('hoh.mlmd.pipeline_run', '-')} "
        f"({tags.get('hoh.mlmd.metadata_path', '-')})"
    )
    if tags.get("hoh.status") == "failed":
        print(f"FAILED: {tags.get('hoh.error', '')}")
    else:
        print(_artifact_text(mlflow_client, run.info.run_id, SUMMARY_ARTIFACT).rstrip())
    print("-" * 60 + "\nconfig:")
    print(_artifact_text(mlflow_client, run.info.run_id, CONFIG_ARTIFACT).rstrip())
    return 0


def compare_lines(a, b) -> List[str]:
    """Params that differ and every metric of either run, side by side."""
    out = [f"{'':40} {a.info.run_id[:12]:>14} {b.info.run_id[:12]:>14}"]
    pa, pb = a.data.params, b.data.params
    differ = sorted(k for k in set(pa) | set(pb) if pa.get(k) != pb.get(k))
    out.append("params that differ:" if differ else "params: identical")
    out += [f"  {k:38} {pa.get(k, '-'):>14} {pb.get(k, '-'):>14}" for k in differ]
    out.append("metrics:")
    ma, mb = a.data.metrics, b.data.metrics
    for k in sorted(set(ma) | set(mb)):
        va = f"{ma[k]:.4f}" if k in ma else "-"
        vb = f"{mb[k]:.4f}" if k in mb else "-"
        out.append(f"  {k:38} {va:>14} {vb:>14}")
    return out


def _runs_compare(args) -> int:
    cfg = _config(args)
    mlflow_client = _client(cfg)
    a, b = (find_run(cfg, mlflow_client, ref) for ref in (args.run_a, args.run_b))
    print("\n".join(compare_lines(a, b)))
    return 0


def _models_list(args) -> int:
    from hoh.pipeline.tracking.registry import model_rows

    cfg = _config(args)
    rows, problems = model_rows(cfg, _client(cfg))
    print(f"model {cfg.push.model_name!r}: registry (MLflow) beside {cfg.model_repository}")
    print(f"{'registry':>9} {'triton':>7}  {'state':10} {'aliases':20} {'span':>5}  metrics")
    for r in rows:
        print(
            f"{r.registry_version or '-':>9} {r.triton_version or '-':>7}  {r.state:10} "
            f"{','.join(r.aliases) or '-':20} {r.span or '-':>5}  {r.metrics}"
        )
    for problem in problems:
        print(f"MISMATCH: {problem}")
    if not rows:
        print("(nothing registered and nothing in the repository yet)")
    return 1 if problems and args.strict else 0


def _models_show(args) -> int:
    from hoh.components.triton_pusher.rollback import model_dir_of
    from hoh.pipeline.tracking.model_card import CARD_MD
    from hoh.pipeline.tracking.registry import TRITON_VERSION, aliases, find_version

    cfg = _config(args)
    mlflow_client = _client(cfg)
    mv = find_version(mlflow_client, cfg, args.version)
    mine = [
        a
        for a, v in aliases(mlflow_client, cfg.push.model_name).items()
        if str(v) == str(mv.version)
    ]
    print(
        f"{cfg.push.model_name} registry version {mv.version}"
        f" [{', '.join(mine) or 'no alias'}], source {mv.source}, run {mv.run_id}"
    )
    for key, value in sorted(mv.tags.items()):
        print(f"  {key}: {value}")
    card = None
    tv = mv.tags.get(TRITON_VERSION)
    if tv:
        path = Path(model_dir_of(cfg.model_repository, cfg.push.model_name)) / tv / CARD_MD
        if path.is_file():
            card = path.read_text(encoding="utf-8")
    card = card or mv.description
    print("-" * 60)
    print(card.rstrip() if card else "(no model card recorded)")
    return 0


def _serve(args, action: str) -> int:
    from hoh.pipeline.tracking.registry import serve_version

    cfg = _config(args)
    for line in serve_version(cfg, args.version, action, reason=args.reason, who=args.by):
        print(line)
    return 0


def tensorboard_logdir(cfg, mlflow_client, ref) -> str:
    """The Trainer's log directory (its ModelRun artifact) of run `ref`, or of the newest run."""
    from hoh.errors import UsageError
    from hoh.pipeline.tracking.log import TRAINER_LOGS_TAG

    if ref:
        run = find_run(cfg, mlflow_client, ref)
    else:
        runs = [r for r in _runs(cfg, mlflow_client) if TRAINER_LOGS_TAG in r.data.tags]
        if not runs:
            raise UsageError("no tracked run trained a model yet (see `hoh runs list`)")
        run = runs[0]
    logdir = run.data.tags.get(TRAINER_LOGS_TAG)
    if not logdir:
        raise UsageError(f"run {run.info.run_id} recorded no Trainer logs (ModelRun artifact)")
    return logdir


def tensorboard_command(logdir: str, port: int) -> List[str]:
    """TensorBoard on loopback only: its UI has no authentication."""
    exe = Path(sys.executable).with_name("tensorboard")
    return [str(exe), "--logdir", logdir, "--host", "127.0.0.1", "--port", str(port)]


def _tensorboard(args) -> int:
    import subprocess

    cfg = _config(args)
    logdir = tensorboard_logdir(cfg, _client(cfg), args.run)
    print(f"TensorBoard on {logdir}: http://127.0.0.1:{args.port}/ (Ctrl-C stops it)")
    try:
        return subprocess.run(tensorboard_command(logdir, args.port)).returncode
    except KeyboardInterrupt:
        return 0


def _config_show(args) -> int:
    print(_config(args).to_yaml().rstrip())
    return 0


def _with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from hoh.pipeline.cli import _add_config_args

    _add_config_args(parser)
    return parser


def register(subparsers) -> None:
    runs = subparsers.add_parser("runs", help="past pipeline runs (MLflow): list, show, compare")
    runs_sub = runs.add_subparsers(dest="runs_command", metavar="SUBCOMMAND")
    runs_sub.required = True
    listing = _with_config(runs_sub.add_parser("list", help="one line per run, newest first"))
    listing.add_argument("-n", "--limit", type=int, default=50)
    listing.set_defaults(handler=_store_errors(_runs_list))
    show = _with_config(runs_sub.add_parser("show", help="a run's summary and resolved config"))
    show.add_argument("run", help="MLflow run id (or a unique prefix) or MLMD pipeline run id")
    show.set_defaults(handler=_store_errors(_runs_show))
    compare = _with_config(runs_sub.add_parser("compare", help="two runs side by side"))
    compare.add_argument("run_a")
    compare.add_argument("run_b")
    compare.set_defaults(handler=_store_errors(_runs_compare))

    models = subparsers.add_parser(
        "models", help="registered model versions beside Triton's: list, show, promote, rollback"
    )
    models_sub = models.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    models_sub.required = True
    mlist = _with_config(
        models_sub.add_parser(
            "list", help="registry versions beside Triton versions; flags any mismatch"
        )
    )
    mlist.add_argument("--strict", action="store_true", help="exit 1 when they disagree")
    mlist.set_defaults(handler=_store_errors(_models_list))
    mshow = _with_config(models_sub.add_parser("show", help="a version's tags and model card"))
    mshow.add_argument("version", help="registry version")
    mshow.set_defaults(handler=_store_errors(_models_show))
    for action, text in (
        ("promote", "serve registry version V (pushing a challenger first)"),
        (
            "rollback",
            "serve an earlier registry version again (default: the one before the champion)",
        ),
    ):
        p = _with_config(models_sub.add_parser(action, help=text))
        p.add_argument(
            "version", nargs="?" if action == "rollback" else None, help="registry version"
        )
        p.add_argument("--reason", help="why (recorded on the version and in the audit log)")
        p.add_argument("--by", help="who (default: the login name)")
        p.set_defaults(handler=_store_errors(lambda args, a=action: _serve(args, a)))

    board = _with_config(
        subparsers.add_parser(
            "tensorboard", help="TensorBoard on a run's training logs (127.0.0.1 only)"
        )
    )
    board.add_argument("run", nargs="?", help="tracked run (default: the newest that trained)")
    board.add_argument("--port", type=int, default=6006)
    board.set_defaults(handler=_store_errors(_tensorboard))

    config = subparsers.add_parser("config", help="the resolved configuration")
    config_sub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    config_sub.required = True
    cshow = _with_config(
        config_sub.add_parser(
            "show", help="print the config a run would use (file + profile + --set)"
        )
    )
    cshow.set_defaults(handler=_store_errors(_config_show))
