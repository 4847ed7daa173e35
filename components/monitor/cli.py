"""`hoh monitor`: judge a window of captured gateway traffic against the data the model knows.

Argument parsing and printing only; the work is `hoh.components.monitor.monitor.run_monitor`.
Unset options take the config's defaults (`monitor`, `drift` and `sampling` sections of
`hoh.config`), read when the command runs: pydantic would cost `hoh --help` half a second.
"""

from __future__ import annotations

import argparse

from hoh.errors import ExitCode


def _run(args: argparse.Namespace) -> int:
    import shlex
    from datetime import datetime, timezone
    from pathlib import Path

    from hoh.components.monitor.monitor import run_monitor, served_identity, summary_lines
    from hoh.components.monitor.window import read_window, window_dates
    from hoh.config import DriftConfig, MonitorConfig, SamplingConfig
    from hoh.errors import UsageError

    config = MonitorConfig()
    if args.k is not None:
        if args.k < 1:
            raise UsageError(f"--k must be at least 1, got {args.k}")
        config.label_k = args.k
    if args.no_label_batch:
        config.label_batch = False
    if args.on_alert is not None:
        config.on_alert = args.on_alert
    if args.cooldown_hours is not None:
        if args.cooldown_hours < 0:
            raise UsageError(f"--cooldown-hours must be 0 or more, got {args.cooldown_hours}")
        config.cooldown_hours = args.cooldown_hours
    if args.trigger_state is not None:
        config.trigger_state = args.trigger_state
    if args.trigger_args is not None:
        try:
            config.trigger_args = shlex.split(args.trigger_args)
        except ValueError as exc:
            raise UsageError(f"--trigger-args {args.trigger_args!r}: {exc}") from None
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"output {out} is not an empty directory; each run writes a new one")
    name, version = served_identity(args.model, args.version, args.served_model)
    today = datetime.now(timezone.utc).date()
    since, until = window_dates(args.since, args.until, config.window_days, today)
    window = read_window(args.capture, since, until, version, name)
    summary = run_monitor(
        window,
        args.model,
        args.reference,
        out,
        config,
        DriftConfig(),
        SamplingConfig(),
        reference_predictions=args.reference_predictions,
        textfile_dir=args.textfile_dir,
        echo=print,
        audit_dirs=args.audit,
    )
    for line in summary_lines(summary):
        print(line)
    print(f"summary: {out}/summary.json, metrics: {out}/{config.textfile}")
    drifted = args.fail_on_drift and summary["checks"]["drift"]
    return ExitCode.DRIFT_DETECTED if drifted else ExitCode.OK


def register(subparsers: argparse._SubParsersAction) -> None:
    monitor = subparsers.add_parser(
        "monitor",
        help="check captured gateway traffic: drift, online accuracy, service health, verdict",
        description="Read the images and results `hoh gateway --capture-dir` kept for the days "
        "SINCE..UNTIL (UTC), keep those served by MODEL's version, and test them against "
        "REFERENCE: input drift with the drift check's descriptors and embeddings, prediction "
        "drift of the served classes and confidences against the model's predictions on the "
        "reference eval split. Writes summary.json, Evidently HTML reports and a Prometheus "
        "textfile; when the verdict is not ok, the least certain captures become a Label Studio "
        "batch (as `hoh sample` makes). With --audit, the window's request rate, error rate and "
        "latency percentiles against the objective; with labels fed back (POST /v1/feedback), "
        "online accuracy; with --on-alert, a retraining run (docs/MONITORING.md).",
    )
    monitor.add_argument(
        "--capture", required=True, metavar="DIR", help="the gateway's capture dir"
    )
    monitor.add_argument("--since", metavar="YYYY-MM-DD", help="first day (default: see --until)")
    monitor.add_argument(
        "--until",
        metavar="YYYY-MM-DD",
        help="last day, inclusive (default: today UTC; the window spans monitor.window_days)",
    )
    monitor.add_argument(
        "--model",
        required=True,
        metavar="DIR",
        help="the served model: a Triton version directory (<repository>/<name>/<N>/) or any hoh "
        "model with --version",
    )
    monitor.add_argument("--version", help="served version the captures carry (default: from DIR)")
    monitor.add_argument(
        "--served-model", metavar="NAME", help="served model name (default: from DIR, else any)"
    )
    monitor.add_argument(
        "--reference",
        required=True,
        metavar="DIR",
        help="the data the model knows: data root (latest span), span directory or image folder",
    )
    monitor.add_argument(
        "--reference-predictions",
        metavar="FILE",
        help="a reference_predictions.json of an earlier run of the same model version: skips "
        "predicting the reference split again",
    )
    monitor.add_argument(
        "--out", required=True, metavar="DIR", help="new or empty output directory"
    )
    monitor.add_argument(
        "--textfile-dir",
        metavar="DIR",
        help="also write the Prometheus textfile there (node_exporter's "
        "--collector.textfile.directory)",
    )
    monitor.add_argument(
        "--audit",
        action="append",
        default=[],
        metavar="DIR",
        help="the gateway's audit log directory (--audit-dir; repeat for each replica): "
        "request rate, error rate and p50/p95/p99 latency of the window against "
        "monitor.latency_p95_objective_ms; verdict slo_breached when broken",
    )
    monitor.add_argument(
        "--k", type=int, help="images in the labelling batch (default: sampling.k)"
    )
    monitor.add_argument(
        "--no-label-batch", action="store_true", help="never write a labelling batch"
    )
    monitor.add_argument(
        "--on-alert",
        choices=("none", "local", "kubeflow"),
        help="when the window drifted or accuracy is low, start retraining: `hoh run` here "
        "(local) or `hoh kfp submit` (kubeflow); at most once per --cooldown-hours "
        "(default: monitor.on_alert)",
    )
    monitor.add_argument("--cooldown-hours", type=float, help="default: monitor.cooldown_hours")
    monitor.add_argument(
        "--trigger-state",
        metavar="FILE",
        help="when and why the trigger fired (default: monitor.trigger_state, beside --out)",
    )
    monitor.add_argument(
        "--trigger-args",
        metavar="'ARGS'",
        help="arguments of the retraining command, one shell-quoted string, e.g. "
        "'--data data --profile real' (default: monitor.trigger_args)",
    )
    monitor.add_argument(
        "--fail-on-drift", action="store_true", help="exit with status 5 when the verdict is drift"
    )
    monitor.set_defaults(handler=_run)
